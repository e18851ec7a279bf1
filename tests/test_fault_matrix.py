"""The determinism matrix: one topic — re-deliveries (some with a changed payload), late events and a
skewed partition — run by `judgeflow run` as real processes, clean and under perturbations, and every
table compared with the clean run's, row for row (wall-clock columns left out, see
`tests.test_recovery.TABLES`):

- ClickHouse gone for 15 s mid-run (the chdb HTTP front stopped, then restarted on the same port and data);
- Redis (verdict cache and control store) killed mid-run and restarted.

Two processes instead of one are `tests/test_processes.py`.

Each run starts with an empty Redis. Judge spend windows (`judge_windows`) may differ where the verdict
cache saved a call in one run and not in the other (identical texts judged close together); the
evaluations — what was judged, at which tier, with which label and probability — may not.

SIGKILL restarts are `tests/test_recovery.py`; source batches of 1 and a second run into the same
database are `tests/test_determinism.py`."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import clickhouse_connect
import pytest

from simulators.chdb_http import start_chdb_http
from simulators.kafka_mock import produce_all
from tests.conftest import CONFIG, free_port, job_env
from tests.test_determinism import topic_with_redeliveries
from tests.test_recovery import TABLES, count, tables, wait_for_events

ROOT = Path(__file__).resolve().parents[1]
DATABASE = "judgeflow"  # the example config's; each ClickHouse here is private to one run
TOPIC = "llm-events"


def skewed_topic(n: int) -> list[tuple[bytes, bytes, int]]:
    """`n` messages with 3% re-deliveries (1% with a changed payload), 2% events minutes late, and
    half the traffic keyed to one partition."""
    messages = topic_with_redeliveries(n)
    rng = random.Random(5)
    late = []
    for k, v, ts in rng.sample([m for m in messages if not m[0].startswith(b"bad-")], n // 50):
        d = json.loads(v)
        d["event_id"] = "late-" + d["event_id"]
        late.append((b"late-" + k, json.dumps(d).encode(), ts))
    # a key's copies stay on one partition (first = first in the partition); half the keys on one
    hot = [(b"hot" if zlib.crc32(k) % 2 == 0 else k, v, ts) for k, v, ts in messages]
    return hot + late  # the late copies come after everything else, with their old times


def run_job(env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "flows.cli", "run", "--config", str(CONFIG), "--bounded", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(*procs: subprocess.Popen[bytes]) -> None:
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-3000:]


@contextmanager
def clickhouse(path: Path, port: int = 0) -> Iterator[tuple[str, object]]:
    with start_chdb_http(path, port=port) as url:
        host, p = url.removeprefix("http://").split(":")
        yield url, clickhouse_connect.get_client(host=host, port=int(p), database="default")


def result(url: str) -> dict[str, set[tuple]]:
    host, port = url.removeprefix("http://").split(":")
    return tables(clickhouse_connect.get_client(host=host, port=int(port), database=DATABASE))


def compare(got: dict[str, set[tuple]], want: dict[str, set[tuple]]) -> dict[str, list[str]]:
    differ = [name for name in TABLES if got[name] != want[name]]
    return {name: [str(r) for r in sorted(got[name] ^ want[name])[:6]] for name in differ}


@pytest.mark.slow
def test_the_same_topic_gives_the_same_tables_under_outages(kafka, judge_endpoint, redis_server, tmp_path):
    kafka.create_topic(TOPIC, 4)
    messages = skewed_topic(6000)
    produce_all(kafka.bootstrap, TOPIC, messages)
    base_env = job_env(kafka, "", judge_endpoint) | {"JUDGEFLOW_REDIS_URL": redis_server.url}

    def env(url: str) -> dict[str, str]:
        return base_env | {"JUDGEFLOW_CLICKHOUSE_DSN": url}

    def fresh_redis() -> None:
        redis_server.stop()
        redis_server.start()

    with clickhouse(tmp_path / "clean") as (url, _):
        finish(run_job(env(url)))
        want = result(url)
    assert len(want["llm_events"]) > 5000 and len(want["evaluations"]) > 1000
    differ: dict[str, dict[str, list[str]]] = {}

    # ClickHouse gone for 15 s in the middle: inserts wait and retry (clickhouse.max_retry_s = 60)
    fresh_redis()
    port = free_port()
    path = tmp_path / "outage"
    with clickhouse(path, port) as (url, client):
        job = run_job(env(url))
        seen = wait_for_events(client, job, DATABASE, 1500)
        assert job.poll() is None and seen < len(messages), "the job finished before the outage"
    time.sleep(15)  # the front is down: nothing answers on the port
    with clickhouse(path, port) as (url, client):
        finish(job)
        assert count(client, f"{DATABASE}.llm_events") == len(want["llm_events"])
        differ["clickhouse down 15 s"] = compare(result(url), want)

    # Redis killed while the job runs, restarted 5 s later: judging goes on without the cache
    with clickhouse(tmp_path / "redis") as (url, client):
        fresh_redis()
        job = run_job(env(url))
        wait_for_events(client, job, DATABASE, 1500)
        redis_server.stop()
        restart = threading.Timer(5, redis_server.start)
        restart.start()
        finish(job)
        restart.join()
        differ["redis killed"] = compare(result(url), want)

    for name in differ:
        differ[name].pop("judge_windows", None)  # calls the cache saved in one run and not the other
    assert differ == {name: {} for name in differ}, json.dumps(differ, indent=1)


def test_clickhouse_gone_for_good_stops_the_job_with_the_reason(kafka, judge_endpoint, tmp_path):
    """ClickHouse stops answering and stays down past `clickhouse.max_retry_s`: every table's writer
    gives up. The job must exit with an error that says so — not abort in bytewax's clean-up (a second
    failure raised while it unwinds from the first aborts the process, SIGABRT, and the reason is lost)."""
    kafka.create_topic(TOPIC, 4)
    produce_all(kafka.bootstrap, TOPIC, skewed_topic(6000))
    config = tmp_path / "judgeflow.toml"
    text = CONFIG.read_text().replace("[clickhouse]", "[clickhouse]\nmax_retry_s = 2", 1)
    # small inserts, so that the job is still writing when ClickHouse goes
    text = text.replace("insert_rows = 10000", "insert_rows = 200")
    text = text.replace("insert_linger_s = 1.0", "insert_linger_s = 0.1")
    assert "insert_rows = 200" in text and "insert_linger_s = 0.1" in text
    config.write_text(text)
    with clickhouse(tmp_path / "gone") as (url, client):
        env = job_env(kafka, url, judge_endpoint)
        cmd = [sys.executable, "-m", "flows.cli", "run", "--config", str(config), "--bounded"]
        job = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seen = wait_for_events(client, job, DATABASE, 500)
        assert job.poll() is None and seen < 6000, "the job wrote everything before ClickHouse went away"
    _, err = job.communicate(timeout=300)  # the front is gone: nothing answers on its port

    assert job.returncode == 1, err.decode()[-2000:]  # an error exit, not -6 (SIGABRT)
    text = err.decode()
    assert "gave up after" in text and "max_retry_s=2" in text, text[-2000:]
    assert "panic in a destructor" not in text
