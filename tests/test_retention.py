"""Retention: every table gets the TTL the flow config's [retention] section asks for, from
`judgeflow init-db` and from `judgeflow run` at start, altered only when it changes; on the real
engine (chdb), rows written longer ago than their table's TTL are gone after OPTIMIZE ... FINAL
and newer ones stay — whatever their event time, so a backfill of old traffic is kept."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from flows.cli import main
from flows.config import RetentionConfig, load_settings
from sinks.clickhouse import TABLES, connect
from sinks.clickhouse_retention import apply_ttls, current_ttls, ttl_clauses
from tests.conftest import CONFIG

DEFAULT_TTLS = {
    "llm_events": "inserted_at + toIntervalDay(90)",
    "evaluations": "inserted_at + toIntervalDay(90)",
    "cost_windows": "inserted_at + toIntervalDay(35) WHERE window_s = 60",
    "quality_estimates": "inserted_at + toIntervalDay(90)",
    "judge_savings": "inserted_at + toIntervalDay(90)",
    "alerts": "",
    "dead_letters": "inserted_at + toIntervalDay(30)",
    "pricing_issues": "",
    "abuse_windows": "inserted_at + toIntervalDay(90)",
}


@pytest.fixture(autouse=True)
def no_environment(monkeypatch):
    for var in ("JUDGEFLOW_CLICKHOUSE_DSN", "JUDGEFLOW_KAFKA_BROKERS", "JUDGEFLOW_REDIS_URL"):
        monkeypatch.delenv(var, raising=False)


def flow_config(tmp_path: Path, chdb_dsn: str, database: str, retention: str = "") -> Path:
    path = tmp_path / "flow.toml"
    path.write_text(
        f'[judges]\nenabled = false\n\n[clickhouse]\ndsn = "{chdb_dsn}"\ndatabase = "{database}"\n\n'
        f"[retention]\n{retention}\n"
    )
    return path


def shown_ttl(client, table: str) -> str:
    """The TTL line of SHOW CREATE TABLE ('' when the table has none)."""
    create = client.command(f"SHOW CREATE TABLE {table}").replace("\\n", "\n")
    lines = [line for line in create.splitlines() if line.startswith("TTL ")]
    return lines[0].removeprefix("TTL ") if lines else ""


def test_init_db_gives_every_table_its_default_ttl(tmp_path, chdb_dsn, database):
    assert main(["init-db", "--config", str(flow_config(tmp_path, chdb_dsn, database))]) == 0
    client = connect(chdb_dsn, database)
    assert {t: shown_ttl(client, t) for t in TABLES} == DEFAULT_TTLS


def test_a_changed_retention_alters_the_ttls_and_an_unchanged_one_alters_nothing(
    tmp_path, chdb_dsn, database, caplog
):
    client = connect(chdb_dsn, database)
    assert main(["init-db", "--config", str(flow_config(tmp_path, chdb_dsn, database))]) == 0
    changed = "llm_events_days = 7\ncost_rollups_days = 400\ndead_letters_days = 0\n"
    with caplog.at_level("INFO", logger="sinks.clickhouse_retention"):
        assert main(["init-db", "--config", str(flow_config(tmp_path, chdb_dsn, database, changed))]) == 0
    assert {t: shown_ttl(client, t) for t in TABLES} == {
        **DEFAULT_TTLS,
        "llm_events": "inserted_at + toIntervalDay(7)",
        "cost_windows": "inserted_at + toIntervalDay(35) WHERE window_s = 60, "
        "inserted_at + toIntervalDay(400) WHERE window_s = 3600, "
        "inserted_at + toIntervalDay(400) WHERE window_s = 86400",
        "dead_letters": "",
    }
    said = sorted(r.getMessage().split(":")[0] for r in caplog.records if "retention of" in r.getMessage())
    assert said == [f"retention of {database}.{t}" for t in ("cost_windows", "dead_letters", "llm_events")]
    # the same config again (a restart): nothing is altered, no part is rewritten
    settings = load_settings(flow_config(tmp_path, chdb_dsn, database, changed), env={})
    retention = settings.flow.retention
    ttls = ttl_clauses(retention.table_days(), window_days=retention.window_days(settings.flow.windows))
    assert apply_ttls(client, database, ttls) == []
    assert current_ttls(client, database) == ttls


def test_rows_written_longer_ago_than_the_ttl_go_at_optimize_final_and_newer_ones_stay(
    tmp_path, chdb_dsn, database
):
    assert main(["init-db", "--config", str(flow_config(tmp_path, chdb_dsn, database))]) == 0
    client = connect(chdb_dsn, database)

    def written(days_ago: int) -> str:
        return f"now64(3) - toIntervalDay({days_ago})"

    # (key, event time, written): a backfill of two-year-old traffic written today stays
    client.command(
        "INSERT INTO llm_events (event_id, ts, tenant_id, inserted_at) VALUES "
        f"('expired', {written(91)}, 'acme', {written(91)}), "
        f"('recent', {written(89)}, 'acme', {written(89)}), "
        f"('backfilled', {written(730)}, 'acme', now64(3))"
    )
    client.command(
        "INSERT INTO cost_windows (tenant_id, window_s, window_start, requests, inserted_at) VALUES "
        f"('minute-expired', 60, {written(36)}, 1, {written(36)}), "
        f"('minute-recent', 60, {written(34)}, 1, {written(34)}), "
        f"('hour-old', 3600, {written(400)}, 1, {written(400)}), "
        f"('day-old', 86400, {written(400)}, 1, {written(400)})"
    )
    client.command(
        "INSERT INTO dead_letters (key, ts, inserted_at) VALUES "
        f"('expired', {written(31)}, {written(31)}), ('recent', {written(29)}, {written(29)})"
    )
    client.command(
        f"INSERT INTO alerts (alert_id, ts, inserted_at) VALUES ('old', {written(800)}, {written(800)})"
    )
    for table in ("llm_events", "cost_windows", "dead_letters", "alerts"):
        client.command(f"OPTIMIZE TABLE {table} FINAL")

    def keys(sql: str) -> set[str]:
        return {r[0] for r in client.query(sql).result_rows}

    assert keys("SELECT event_id FROM llm_events") == {"recent", "backfilled"}
    assert keys("SELECT tenant_id FROM cost_windows") == {"minute-recent", "hour-old", "day-old"}
    assert keys("SELECT key FROM dead_letters") == {"recent"}
    assert keys("SELECT alert_id FROM alerts") == {"old"}


def test_judgeflow_run_sets_the_retention_at_start(tmp_path, kafka, chdb_dsn, database, monkeypatch):
    kafka.create_topic("llm-events", 1)
    monkeypatch.setenv("JUDGEFLOW_KAFKA_BROKERS", kafka.bootstrap)
    config = flow_config(tmp_path, chdb_dsn, database, "evaluations_days = 14\n")
    assert main(["run", "--config", str(config), "--bounded"]) == 0
    client = connect(chdb_dsn, database)
    assert shown_ttl(client, "evaluations") == "inserted_at + toIntervalDay(14)"
    assert shown_ttl(client, "llm_events") == DEFAULT_TTLS["llm_events"]


def test_the_example_config_lists_every_retention_key_with_its_default():
    example = tomllib.loads(CONFIG.read_text())["retention"]
    assert example == RetentionConfig().model_dump()
