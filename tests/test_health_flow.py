"""/healthz and /readyz of a real `judgeflow run` on the Kafka mock cluster and ClickHouse over HTTP
(the chdb front): both answer 200 while the job runs, and /readyz turns 503, naming ClickHouse,
once ClickHouse goes away — while /healthz stays 200 (a restart would not bring ClickHouse back)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import clickhouse_connect
import pytest

from simulators.chdb_http import start_chdb_http
from simulators.kafka_mock import produce_all
from simulators.traffic import generate
from tests.conftest import CONFIG, free_port, job_env

ROOT = Path(__file__).resolve().parents[1]


def probe(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:  # not listening yet
        return 0, {}


def wait_for(what: str, fn, proc: subprocess.Popen[bytes], timeout_s: float = 120.0):
    """Poll `fn` until it returns something truthy; fail if the job exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"judgeflow run exited early while waiting for {what}"
        got = fn()
        if got:
            return got
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def answered(url: str, status: int, proc: subprocess.Popen[bytes]) -> dict:
    """The JSON body of `url` once it answers `status`."""
    return wait_for(f"{url} {status}", lambda: (r := probe(url))[0] == status and r[1], proc)


@pytest.mark.slow
def test_health_endpoints_answer_during_a_run_and_readiness_follows_clickhouse(
    kafka, judge_endpoint, tmp_path
):
    kafka.create_topic("llm-events", 2)
    messages = list(generate(limit=300))
    produce_all(kafka.bootstrap, "llm-events", messages)
    good = len(messages) - sum(1 for k, _, _ in messages if k.startswith(b"bad-"))
    port = free_port()
    config = tmp_path / "flow.toml"
    config.write_text(CONFIG.read_text().replace("[metrics]", f"[metrics]\nport = {port}", 1))
    base = f"http://127.0.0.1:{port}"

    proc: subprocess.Popen[bytes] | None = None
    try:
        with start_chdb_http(tmp_path / "chdb") as url:
            cmd = [sys.executable, "-m", "flows.cli", "run", "--config", str(config)]  # tails the topic
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=job_env(kafka, url, judge_endpoint), stdout=subprocess.DEVNULL
            )
            host, ch_port = url.removeprefix("http://").split(":")
            client = clickhouse_connect.get_client(host=host, port=int(ch_port))

            def events_written() -> bool:
                try:
                    q = "SELECT count() FROM judgeflow.llm_events FINAL"
                    return client.query(q).result_rows[0][0] == good
                except Exception:  # the job creates the tables after start-up
                    return False

            wait_for("every event in ClickHouse", events_written, proc)
            assert answered(f"{base}/healthz", 200, proc)["status"] == "ok"
            checks = {c["name"]: c for c in answered(f"{base}/readyz", 200, proc)["checks"]}
            assert set(checks) == {"clickhouse", "kafka", "judges"}
            assert checks["kafka"]["detail"].startswith("2 of 2 partitions assigned")
            with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
                assert f"judgeflow_events_total {float(good)}" in resp.read().decode()
        # ClickHouse (the chdb front) is gone; the job keeps running
        body = answered(f"{base}/readyz", 503, proc)
        failing = [c["name"] for c in body["checks"] if not c["ok"]]
        assert failing == ["clickhouse"]
        assert probe(f"{base}/healthz")[0] == 200
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
