"""Crash and resume: `judgeflow run` as a real process, killed with SIGKILL in the
middle of a topic, restarted on the same recovery directory, finishes with every
event counted exactly once in ClickHouse (over HTTP, through the chdb front),
the windows and the judge spend reconciling."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import clickhouse_connect
import pytest

from flows.kafka_mock import produce_all
from flows.traffic import generate
from sinks.chdb_http import start_chdb_http
from tests.conftest import CONFIG, job_env

ROOT = Path(__file__).resolve().parents[1]


def judgeflow_run(recovery: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "flows.cli", "run", "--config", str(CONFIG)]
    cmd += ["--recovery-dir", str(recovery), "--bounded", "--snapshot-s", "0.5"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def count(client, table: str) -> int:
    return client.query(f"SELECT count() FROM {table} FINAL").result_rows[0][0]


@pytest.mark.slow
def test_killed_job_resumes_from_its_snapshot_without_losing_or_double_counting(
    kafka, judge_endpoint, tmp_path
):
    kafka.create_topic("llm-events", 4)
    messages = list(generate(limit=12_000))
    produce_all(kafka.bootstrap, "llm-events", messages)
    bad = sum(1 for k, _, _ in messages if k.startswith(b"bad-"))
    database = "judgeflow"  # the example config's; this ClickHouse is private to the test
    with start_chdb_http(tmp_path / "chdb") as url:
        env = job_env(kafka, url, judge_endpoint)
        host, port = url.removeprefix("http://").split(":")
        client = clickhouse_connect.get_client(host=host, port=int(port), database="default")
        recovery = tmp_path / "recovery"

        first = judgeflow_run(recovery, env)
        deadline = time.monotonic() + 120
        seen = 0
        while time.monotonic() < deadline and first.poll() is None:
            try:
                seen = count(client, f"{database}.llm_events")
            except Exception:  # the job creates the tables after start-up
                seen = 0
            if seen > 1000:
                break
            time.sleep(0.2)
        assert first.poll() is None, "the job finished before it could be killed; produce more events"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        assert 0 < seen < len(messages) - bad

        second = judgeflow_run(recovery, env)
        _, err = second.communicate(timeout=300)
        assert second.returncode == 0, err.decode()[-3000:]

        client = clickhouse_connect.get_client(host=host, port=int(port), database=database)
        assert count(client, "llm_events") == len(messages) - bad
        assert count(client, "dead_letters") == bad
        events_sql = "SELECT sum(cost_usd), count() FROM llm_events FINAL"
        events_cost, events_n = client.query(events_sql).result_rows[0]
        window_cost, window_n = client.query(
            "SELECT sum(cost_usd), sum(requests) FROM cost_windows FINAL"
            " WHERE window_s = 60 AND category = 'llm'"
        ).result_rows[0]
        assert (window_cost, window_n) == (events_cost, events_n)
        eval_cost = client.query("SELECT sum(judge_cost_usd) FROM evaluations FINAL").result_rows[0][0]
        judge_cost = client.query(
            "SELECT sum(judge_cost_usd) FROM cost_windows FINAL WHERE window_s = 60 AND category = 'judge'"
        ).result_rows[0][0]
        assert judge_cost == eval_cost > 0
