"""Start-up rides out a ClickHouse that is not there yet, and says so in one line when it never comes."""

from __future__ import annotations

import threading
import time

import clickhouse_connect
import pytest

from flows.cli import StartupError, _init_db, main
from simulators.chdb_http import start_chdb_http
from tests.conftest import CONFIG, flow_settings, free_port


def test_schema_creation_waits_for_clickhouse_to_come_up(tmp_path, caplog):
    port = free_port()
    settings = flow_settings(
        **{"clickhouse.dsn": f"http://127.0.0.1:{port}", "clickhouse.startup_timeout_s": 60}
    )
    up, stop = threading.Event(), threading.Event()

    def serve_later() -> None:
        time.sleep(3)  # ClickHouse comes up after the job started
        with start_chdb_http(tmp_path / "chdb", port=port):
            up.set()
            stop.wait(60)

    server = threading.Thread(target=serve_later, daemon=True)
    server.start()
    try:
        with caplog.at_level("WARNING", logger="judgeflow"):
            _init_db(settings)
        assert up.is_set()
        tries = [r for r in caplog.records if "ClickHouse not ready" in r.getMessage()]
        assert len(tries) >= 2  # one line per try, no traceback
        client = clickhouse_connect.get_client(host="127.0.0.1", port=port)
        tables = {r[0] for r in client.query("SHOW TABLES FROM judgeflow").result_rows}
        assert {"llm_events", "cost_windows", "dead_letters"} <= tables
    finally:
        stop.set()
        server.join(timeout=30)


def test_a_clickhouse_that_never_comes_up_ends_the_job_with_one_clear_line(tmp_path, capsys, monkeypatch):
    port = free_port()
    settings = flow_settings(
        **{"clickhouse.dsn": f"http://127.0.0.1:{port}", "clickhouse.startup_timeout_s": 1}
    )
    with pytest.raises(StartupError, match="ClickHouse unreachable for 1 s at start"):
        _init_db(settings)
    monkeypatch.setenv("JUDGEFLOW_CLICKHOUSE_DSN", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("JUDGEFLOW_KAFKA_BROKERS", f"127.0.0.1:{free_port()}")  # never reached
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    config = tmp_path / "flow.toml"
    config.write_text(CONFIG.read_text().replace("[clickhouse]", "[clickhouse]\nstartup_timeout_s = 1", 1))
    assert main(["run", "--config", str(config), "--bounded"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("judgeflow: ClickHouse unreachable for 1 s at start")


def test_kafka_without_the_input_topic_ends_the_job_with_one_clear_line(kafka, chdb_dsn, database, capsys):
    from flows.cli import _check_kafka

    settings = flow_settings(
        **{"kafka.brokers": kafka.bootstrap, "kafka.topics": ["missing"], "clickhouse.startup_timeout_s": 1}
    )
    with pytest.raises(StartupError, match=r"Kafka unreachable for 1 s at start .*missing not found"):
        _check_kafka(settings)
    kafka.create_topic("llm-events", 2)
    _check_kafka(flow_settings(**{"kafka.brokers": kafka.bootstrap, "kafka.topics": ["llm-events"]}))


def test_the_judge_sdks_are_imported_before_the_workers_start():
    """Imported on first use in the judge runtime's thread, the SDKs' import (which builds an AST:
    anyio's lazy importer) raced the workers and failed a run with "SystemError: AST constructor
    recursion depth mismatch" (CPython 3.11). `build_runtime` imports them on the calling thread."""
    import subprocess
    import sys

    code = (
        "import sys; from tests.conftest import flow_settings; from flows.deps import build_runtime;"
        " build_runtime(flow_settings()); print('anthropic' in sys.modules, 'openai' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]
