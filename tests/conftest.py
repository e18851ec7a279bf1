"""Real components for the tests: Kafka (librdkafka mock cluster), redis-server,
ClickHouse (chdb, one data directory per pytest process), and a local
OpenAI/Anthropic-compatible judge endpoint."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from flows import gc_policy
from flows.config import Settings, load_settings
from operators import event_time, owed
from simulators.kafka_mock import MockCluster
from simulators.local_endpoint import EndpointConfig, LocalEndpoint
from simulators.ports import free_port
from sinks import clickhouse as ch


def reset_input_progress() -> None:
    """No Kafka partitions known to the process (operators.event_time), and no stage owing anything
    (operators.owed): as in a process of its own."""
    event_time.INPUT.reset()
    owed.OWED.reset()
    owed.JOINED.reset()


@pytest.fixture(autouse=True)
def _fresh_input_progress() -> None:
    """Each test starts with no input progress (`reset_input_progress`)."""
    reset_input_progress()


@pytest.fixture(autouse=True)
def _no_frozen_objects() -> Iterator[None]:
    """A test that built the flow's dependencies tuned the collector to freeze what survives full
    collections (`flows.gc_policy`); the next test starts without it (`gc.get_referrers`, which
    Hypothesis uses, does not see frozen objects)."""
    yield
    gc_policy.reset()


@pytest.fixture(scope="session")
def chdb_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    # chdb allows one data directory per process: reuse the one already open
    path = ch.chdb_dir_in_use() or tmp_path_factory.mktemp("chdb")
    return f"chdb://{path}"


@pytest.fixture
def database() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def kafka() -> Iterator[MockCluster]:
    with MockCluster() as cluster:
        yield cluster


class RedisServer:
    """A real redis-server on a free loopback port; can be stopped and restarted."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed: run `make test` (it installs it with apt)")
        self.exe = exe
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        pytest.fail("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def judge_endpoint() -> Iterator[LocalEndpoint]:
    with LocalEndpoint(EndpointConfig(latency=5.0)) as ep:
        yield ep


CONFIG = Path(__file__).resolve().parents[1] / "flows" / "judgeflow.example.toml"


def flow_settings(**overrides: object) -> Settings:
    """The example config with test overrides and no environment leaking in."""
    return load_settings(CONFIG, env={"OPENAI_API_KEY": "test-key"}, **overrides)


def topic_flow_settings(
    kafka: MockCluster,
    chdb_dsn: str,
    database: str,
    judge_endpoint: LocalEndpoint | None = None,
    *,
    topic: str = "llm-events",
    **overrides: object,
) -> Settings:
    """A whole-flow test's settings: read `topic` on the mock cluster to its end, write to
    this test's database, judge with the local endpoint (judges off without one)."""
    base: dict[str, object] = {
        "kafka.brokers": kafka.bootstrap,
        "kafka.tail": False,
        "kafka.topics": [topic],
        "clickhouse.dsn": chdb_dsn,
        "clickhouse.database": database,
    }
    if judge_endpoint is None:
        base["judges.enabled"] = False
    else:
        base["judges.tier1.base_url"] = judge_endpoint.openai_base_url
    return flow_settings(**{**base, **overrides})


def rows(client, sql: str) -> list[tuple]:
    return client.query(sql).result_rows


def job_env(kafka: MockCluster, clickhouse_url: str, judge_endpoint: LocalEndpoint) -> dict[str, str]:
    """The environment of a `judgeflow run` subprocess against the test's components."""
    env = {
        **os.environ,
        "JUDGEFLOW_KAFKA_BROKERS": kafka.bootstrap,
        "JUDGEFLOW_CLICKHOUSE_DSN": clickhouse_url,
        "OPENAI_BASE_URL": judge_endpoint.openai_base_url,
        "OPENAI_API_KEY": "test-key",
        "PYTHONPATH": str(CONFIG.parents[1]),
    }
    env.pop("JUDGEFLOW_REDIS_URL", None)
    return env


def run_flow(
    settings: Settings, *, workers: int = 1, control: object | None = None, epoch_s: float = 1.0
) -> None:
    """Run the whole judgeflow dataflow to the end of its (bounded) input, as a process of its own
    would (no input progress from an earlier run: `reset_input_progress`); `control` replaces the
    control store (a test shares one with the flow)."""
    import dataclasses

    from bytewax.run import cli_main

    from flows.deps import build_deps
    from flows.judgeflow import build_flow

    reset_input_progress()
    deps = build_deps(settings)
    if control is not None:
        deps = dataclasses.replace(deps, control=control)
    try:
        cli_main(
            build_flow(settings, deps=deps, workers=workers),
            workers_per_process=workers,
            epoch_interval=timedelta(seconds=epoch_s),
        )
    finally:
        deps.close()
