"""Fresh numbers: an open minute is in ClickHouse within seconds as a provisional row, which the
final row replaces — a real `judgeflow run` tailing the Kafka mock cluster, ClickHouse over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import clickhouse_connect
import pytest

from simulators.chdb_http import start_chdb_http
from simulators.kafka_mock import produce_all
from tests.conftest import CONFIG, job_env
from tests.test_health_flow import wait_for

ROOT = Path(__file__).resolve().parents[1]
MIN = 60_000


def native(i: int, ts_ms: int) -> tuple[bytes, bytes, int]:
    body = {
        "event_id": f"fresh-{i}",
        "ts": ts_ms,
        "tenant_id": "fresh",
        "agent": "a",
        "model": "gpt-4o-mini",
        "input": "hello",
        "output": "hi there",
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }
    return f"fresh-{i}".encode(), json.dumps(body).encode(), ts_ms


@pytest.mark.slow
def test_an_open_minute_is_visible_within_seconds(kafka, judge_endpoint, tmp_path):
    kafka.create_topic("llm-events", 2)
    # stamped 30 minutes ahead: the minute stays open for the whole test, whatever the wall clock
    start = (int(time.time() * 1000) + 30 * MIN) // MIN * MIN
    produce_all(kafka.bootstrap, "llm-events", [native(i, start + 1_000 * i) for i in range(30)])
    config = tmp_path / "flow.toml"
    config.write_text(CONFIG.read_text().replace("provisional_s = 5 ", "provisional_s = 1 ", 1))
    assert "provisional_s = 1 " in config.read_text()
    proc: subprocess.Popen[bytes] | None = None
    try:
        with start_chdb_http(tmp_path / "chdb") as url:
            cmd = [sys.executable, "-m", "flows.cli", "run", "--config", str(config)]  # tails the topic
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=job_env(kafka, url, judge_endpoint), stdout=subprocess.DEVNULL
            )
            host, port = url.removeprefix("http://").split(":")
            client = clickhouse_connect.get_client(host=host, port=int(port))

            def open_minute() -> list[tuple]:
                try:
                    return client.query(
                        "SELECT window_s, requests, provisional FROM judgeflow.cost_windows FINAL"
                        " WHERE tenant_id = 'fresh' AND category = 'llm' ORDER BY window_s"
                    ).result_rows
                except Exception:  # the job creates the tables after start-up
                    return []

            # the minute and its hour and day, all open: written as they stand, marked provisional (the hour
            # and day follow the minute through the rollup step, so they may land in the next insert)
            expected = [(60, 30, True), (3600, 30, True), (86400, 30, True)]
            rows = wait_for("all three windows", lambda: [tuple(r) for r in open_minute()] == expected, proc)
            assert rows
            proc.terminate()
            proc.wait(timeout=60)
            # a bounded run over the same topic ends by writing its windows as they stand: final rows,
            # newer than the provisional ones, which they replace
            bounded = subprocess.run(
                [*cmd, "--bounded"],
                cwd=ROOT,
                env=job_env(kafka, url, judge_endpoint),
                stdout=subprocess.DEVNULL,
                timeout=300,
                check=False,
            )
            assert bounded.returncode == 0
            assert [tuple(r) for r in open_minute()] == [
                (60, 30, False),
                (3600, 30, False),
                (86400, 30, False),
            ]
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
