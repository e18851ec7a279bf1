"""The ClickHouse sink: schema, exact values, idempotent replays, bytewax runs, retries.

chdb hosts one data directory per process, so every in-process test shares
one session-wide directory and isolates itself with its own database. Tests
that need a server URL start `simulators.chdb_http` in a subprocess over their own
tmp dir.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, cluster_main, run_main
from clickhouse_connect.driver.exceptions import OperationalError
from prometheus_client import REGISTRY

from core.records import Alert, CostWindow, DeadLetter, Evaluation, Event, Source
from flows.cli import configure_logging
from simulators.chdb_http import front_stats, start_chdb_http
from simulators.ports import free_port
from sinks import clickhouse as ch
from sinks.clickhouse_sink import ClickHouseSink

REPO = Path(__file__).resolve().parents[1]
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms
PICO = 10**12


# --- fixtures and record factories ------------------------------------------


@pytest.fixture
def client(chdb_dsn: str, database: str) -> ch.LockedClient:
    client = ch.connect(chdb_dsn, database)
    ch.ensure_schema(client, database)
    return client


def make_event(i: int, **changes: Any) -> Event:
    fields: dict[str, Any] = {
        "event_id": f"ev-{i}",
        "ts_ms": T0 + i,
        "tenant_id": f"tenant-{i % 3}",
        "agent": "support-bot",
        "model": "gpt-4o-mini",
        "provider": "openai",
        "variant": "baseline",
        "input_text": f"question {i}: héllo",
        "output_text": "answer",
        "context": None,
        "input_tokens": 100 + i,
        "output_tokens": 20,
        "cache_read_tokens": 50,
        "cache_write_tokens": 1,
        "reasoning_tokens": 5,
        "provided_cost_pusd": None,
        "latency_ms": 812.5,
        "conversation_id": f"conv-{i}",
        "user_id": None,
        "metadata": {},
        "source": Source("llm-events", 2, 1000 + i),
        "cost_pusd": 123_456_789 + i,
        "cost_source": "catalog",
    }
    fields.update(changes)
    return Event(**fields)


def make_evaluation(i: int, **changes: Any) -> Evaluation:
    fields: dict[str, Any] = {
        "eval_id": f"eval-{i}",
        "event_id": f"ev-{i}",
        "ts_ms": T0 + i,
        "tenant_id": "tenant-1",
        "agent": "support-bot",
        "model": "gpt-4o-mini",
        "variant": "ft-v2",
        "metric": "toxicity",
        "score": 0.25,
        "label": "safe",
        "explanation": "no insults",
        "judge": "openai/gpt-4o-mini",
        "tier": 1,
        "cache_hit": i % 2 == 0,
        "inclusion_prob": 0.1,
        "content_hash": f"{i:032x}",
        "judge_cost_pusd": 7 + i,
        "judge_latency_ms": 950.0,
        "error": "",
    }
    fields.update(changes)
    return Evaluation(**fields)


def make_window(i: int, **changes: Any) -> CostWindow:
    fields: dict[str, Any] = {
        "window_start_ms": T0 + i * 60_000,
        "window_ms": 60_000,
        "tenant_id": "tenant-1",
        "agent": "support-bot",
        "model": "gpt-4o-mini",
        "variant": "baseline",
        "requests": 10 + i,
        "input_tokens": 1000,
        "output_tokens": 200,
        "cost_pusd": 5 * PICO + i,
        "unknown_cost_requests": 1,
        "judge_calls": 3,
        "judge_cost_pusd": 1,
        "max_request_cost_pusd": 2 * PICO,
        "version": 1_767_225_700_000_000,
    }
    fields.update(changes)
    return CostWindow(**fields)


def make_alert(i: int, **changes: Any) -> Alert:
    fields: dict[str, Any] = {
        "alert_id": f"alert-{i}",
        "rule": "burn_rate",
        "tenant_id": "tenant-1",
        "scope": "",
        "level": "critical",
        "previous_level": "warn",
        "value": 21.5,
        "threshold": 20.0,
        "window_start_ms": T0,
        "window_end_ms": T0 + 3_600_000,
        "ts_ms": T0 + 3_600_000 + i,
        "message": "tenant-1 burns $21.50/h",
        "runbook": "https://runbooks.example/burn-rate",
    }
    fields.update(changes)
    return Alert(**fields)


def make_dead_letter(i: int, **changes: Any) -> DeadLetter:
    fields: dict[str, Any] = {
        "key": f"llm-events/0/{i}",
        "stage": "decode",
        "reason": "invalid JSON",
        "raw": b"\xff\x00{not json" + bytes([i % 256]),
        "source": Source("llm-events", 0, i),
        "ts_ms": T0 + i,
    }
    fields.update(changes)
    return DeadLetter(**fields)


def write(dsn: str, database: str, table: str, records: list[Any], **options: Any) -> None:
    sink = ClickHouseSink(dsn, database, table, **options)
    sink.build("out", 0, 1).write_batch(records)


def usd(pico: int) -> Decimal:
    return Decimal(pico) / Decimal(PICO)  # exact: the context has room for 28 digits


def counter(name: str, table: str) -> float:
    return REGISTRY.get_sample_value(name, {"table": table}) or 0.0


def http_dsn(url: str) -> str:
    return url.replace("http://", "http://default:@", 1)


# --- schema ----------------------------------------------------------------------


def test_schema_is_idempotent_and_matches_the_insert_columns(client: ch.LockedClient, database: str) -> None:
    ch.ensure_schema(client, database)  # a second time: no error, no change

    tables = client.query(
        "SELECT name, engine_full FROM system.tables WHERE database = {db:String}",
        parameters={"db": database},
    ).result_rows
    engines = dict(tables)
    assert set(engines) == set(ch.TABLES)
    for name, engine in engines.items():
        assert engine.startswith("ReplacingMergeTree"), name
        assert "PARTITION BY toYYYYMM(" in engine, name
    assert engines["cost_windows"].startswith("ReplacingMergeTree(version)")
    for name, spec in ch.TABLES.items():
        described = client.query(f"DESCRIBE TABLE {database}.{name}").result_rows
        columns = [(row[0], row[1]) for row in described]
        assert columns == [*spec.columns, ("inserted_at", "DateTime64(3, 'UTC')")], name


def test_database_names_are_checked() -> None:
    with pytest.raises(ValueError, match="invalid ClickHouse database name"):
        ch.schema_statements("judgeflow; DROP TABLE x")


# --- exact values, one record type at a time ---------------------------------------


def test_events_land_with_exact_values(chdb_dsn: str, client: ch.LockedClient, database: str) -> None:
    events = [
        make_event(0),
        make_event(1, cost_pusd=1, user_id="u-1", latency_ms=None, source=None),
        make_event(2, cost_pusd=123_456_789_012_345_678_901_234_567, cost_source="unknown"),
        make_event(3, cost_pusd=0),
    ]
    write(chdb_dsn, database, "llm_events", events)

    rows = client.query(
        "SELECT event_id, toUnixTimestamp64Milli(ts), tenant_id, agent, model, provider, variant,"
        " input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens,"
        " cost_usd, toString(cost_usd), cost_source, latency_ms, conversation_id, user_id,"
        " input_chars, output_chars, input_text, output_text,"
        " source_topic, source_partition, source_offset"
        " FROM llm_events FINAL ORDER BY event_id"
    ).result_rows
    assert [r[0] for r in rows] == ["ev-0", "ev-1", "ev-2", "ev-3"]
    first = rows[0]
    assert first[1:12] == (T0, "tenant-0", "support-bot", "gpt-4o-mini", "openai", "baseline",
                           100, 20, 50, 1, 5)  # fmt: skip
    assert first[12] == usd(123_456_789) == Decimal("0.000123456789")
    assert first[13] == "0.000123456789"
    assert first[14:] == ("catalog", 812.5, "conv-0", None, len("question 0: héllo"), 6, "", "",
                          "llm-events", 2, 1000)  # fmt: skip
    assert rows[1][12] == usd(1) and rows[1][13] == "0.000000000001"
    assert rows[1][15] is None and rows[1][17] == "u-1"
    assert rows[1][22:] == (None, None, None)
    assert rows[2][12] == usd(123_456_789_012_345_678_901_234_567)
    assert rows[2][13] == "123456789012345.678901234567"
    assert rows[3][13] == "0"
    total = client.command("SELECT sum(cost_usd) FROM llm_events FINAL")
    assert Decimal(total) == sum(usd(e.cost_pusd) for e in events)


def test_event_text_is_stored_only_when_asked(chdb_dsn: str, client: ch.LockedClient, database: str) -> None:
    write(chdb_dsn, database, "llm_events", [make_event(0)])
    write(chdb_dsn, database, "llm_events", [make_event(1)], store_text=True)

    rows = client.query(
        "SELECT event_id, input_text, output_text, input_chars FROM llm_events FINAL ORDER BY event_id"
    ).result_rows
    assert rows == [
        ("ev-0", "", "", 17),
        ("ev-1", "question 1: héllo", "answer", 17),
    ]


def test_evaluations_land_with_exact_values(chdb_dsn: str, client: ch.LockedClient, database: str) -> None:
    evaluations = [make_evaluation(0), make_evaluation(1, error="timeout", score=0.0, tier=2)]
    write(chdb_dsn, database, "evaluations", evaluations)

    rows = client.query(
        "SELECT eval_id, event_id, toUnixTimestamp64Milli(ts), tenant_id, agent, model, variant,"
        " metric, score, label, explanation, judge, tier, judge_cost_usd, judge_latency_ms,"
        " cache_hit, inclusion_prob, content_hash, error FROM evaluations FINAL ORDER BY eval_id"
    ).result_rows
    assert rows == [
        ("eval-0", "ev-0", T0, "tenant-1", "support-bot", "gpt-4o-mini", "ft-v2", "toxicity",
         0.25, "safe", "no insults", "openai/gpt-4o-mini", 1, usd(7), 950.0, True, 0.1,
         f"{0:032x}", ""),
        ("eval-1", "ev-1", T0 + 1, "tenant-1", "support-bot", "gpt-4o-mini", "ft-v2", "toxicity",
         0.0, "safe", "no insults", "openai/gpt-4o-mini", 2, usd(8), 950.0, False, 0.1,
         f"{1:032x}", "timeout"),
    ]  # fmt: skip


def test_cost_windows_land_with_exact_values(chdb_dsn: str, client: ch.LockedClient, database: str) -> None:
    windows = [
        make_window(0),
        make_window(0, window_ms=3_600_000, requests=600),  # same start, the 1 h roll-up
        make_window(0, window_ms=86_400_000, requests=14_400),
    ]
    write(chdb_dsn, database, "cost_windows", windows)

    rows = client.query(
        "SELECT tenant_id, agent, model, variant, window_s, toUnixTimestamp64Milli(window_start),"
        " kind, correction_id, requests, input_tokens, output_tokens, cost_usd,"
        " unknown_cost_requests, judge_calls, judge_cost_usd, max_request_cost_usd, version"
        " FROM cost_windows FINAL ORDER BY window_s"
    ).result_rows
    common = ("tenant-1", "support-bot", "gpt-4o-mini", "baseline")
    money = (1000, 200, usd(5 * PICO), 1, 3, usd(1), usd(2 * PICO), 1_767_225_700_000_000)
    assert rows == [
        (*common, 60, T0, "window", "", 10, *money),
        (*common, 3600, T0, "window", "", 600, *money),
        (*common, 86400, T0, "window", "", 14_400, *money),
    ]


def test_a_window_of_fractional_seconds_is_a_dead_letter(
    chdb_dsn: str, client: ch.LockedClient, database: str
) -> None:
    part = ClickHouseSink(chdb_dsn, database, "cost_windows").build("out", 0, 1)
    part.write_batch([make_window(0, window_ms=1500), make_window(1)])
    assert client.query("SELECT count() FROM cost_windows FINAL").result_rows == [(1,)]
    ((stage, reason),) = client.query("SELECT stage, reason FROM dead_letters FINAL").result_rows
    assert stage == "sink_cost_windows" and "window_ms=1500 is not a positive whole number" in reason


def test_alerts_land_with_exact_values(chdb_dsn: str, client: ch.LockedClient, database: str) -> None:
    write(chdb_dsn, database, "alerts", [make_alert(0)])

    rows = client.query(
        "SELECT alert_id, rule, tenant_id, scope, level, previous_level, value, threshold,"
        " toUnixTimestamp64Milli(window_start), toUnixTimestamp64Milli(window_end),"
        " toUnixTimestamp64Milli(ts), message, runbook FROM alerts FINAL"
    ).result_rows
    assert rows == [
        ("alert-0", "burn_rate", "tenant-1", "", "critical", "warn", 21.5, 20.0, T0,
         T0 + 3_600_000, T0 + 3_600_000, "tenant-1 burns $21.50/h",
         "https://runbooks.example/burn-rate"),
    ]  # fmt: skip


def test_dead_letters_keep_raw_bytes(chdb_dsn: str, client: ch.LockedClient, database: str) -> None:
    letters = [make_dead_letter(0), make_dead_letter(1, source=None, raw=b"")]
    write(chdb_dsn, database, "dead_letters", letters)

    rows = client.query(
        "SELECT key, toUnixTimestamp64Milli(ts), stage, reason, raw, source_topic,"
        " source_partition, source_offset FROM dead_letters FINAL ORDER BY key",
        column_formats={"raw": "bytes"},
    ).result_rows
    assert rows == [
        ("llm-events/0/0", T0, "decode", "invalid JSON", b"\xff\x00{not json\x00",
         "llm-events", 0, 0),
        ("llm-events/0/1", T0 + 1, "decode", "invalid JSON", b"", None, None, None),
    ]  # fmt: skip


# --- idempotence ------------------------------------------------------------------------


def test_replaying_a_batch_leaves_one_row_per_key(
    chdb_dsn: str, client: ch.LockedClient, database: str
) -> None:
    events = [make_event(i) for i in range(50)]
    evaluations = [make_evaluation(i) for i in range(10)]
    for _ in range(2):  # the batch, then its replay after a crash-restart
        write(chdb_dsn, database, "llm_events", events)
        write(chdb_dsn, database, "evaluations", evaluations)
        write(chdb_dsn, database, "alerts", [make_alert(0)])
        write(chdb_dsn, database, "dead_letters", [make_dead_letter(0)])

    assert client.command("SELECT count() FROM llm_events") == 100  # both writes are stored
    assert client.command("SELECT count() FROM llm_events FINAL") == 50
    assert client.command("SELECT count() FROM evaluations FINAL") == 10
    assert client.command("SELECT count() FROM alerts FINAL") == 1
    assert client.command("SELECT count() FROM dead_letters FINAL") == 1
    total = client.command("SELECT sum(cost_usd) FROM llm_events FINAL")
    assert Decimal(total) == sum(usd(e.cost_pusd) for e in events)


def test_the_newest_window_version_wins_and_corrections_add_up(
    chdb_dsn: str, client: ch.LockedClient, database: str
) -> None:
    first = make_window(0, requests=10, cost_pusd=PICO, version=100)
    revised = make_window(0, requests=11, cost_pusd=PICO + 5, version=200)
    late = make_window(0, requests=1, cost_pusd=7, version=300, kind="correction", correction_id="ev-late")
    write(chdb_dsn, database, "cost_windows", [revised, late])
    write(chdb_dsn, database, "cost_windows", [first, late])  # older version written later

    rows = client.query(
        "SELECT kind, requests, cost_usd, version FROM cost_windows FINAL ORDER BY kind DESC"
    ).result_rows
    assert rows == [("window", 11, usd(PICO + 5), 200), ("correction", 1, usd(7), 300)]
    totals = client.query(
        "SELECT sum(requests), sum(cost_usd) FROM cost_windows FINAL WHERE window_s = 60"
    ).result_rows
    assert totals == [(12, usd(PICO + 12))]


# --- the sink inside bytewax -------------------------------------------------------------


def test_a_bytewax_flow_writes_through_the_sink(
    chdb_dsn: str, client: ch.LockedClient, database: str
) -> None:
    events = [make_event(i) for i in range(300)]
    alerts = [make_alert(i) for i in range(3)]
    flow = Dataflow("clickhouse_sink_test")
    op.output(
        "events_out",
        op.input("events", flow, TestingSource(events, batch_size=64)),
        ClickHouseSink(chdb_dsn, database, "llm_events"),
    )
    op.output(
        "alerts_out",
        op.input("alerts", flow, TestingSource(alerts)),
        ClickHouseSink(chdb_dsn, database, "alerts"),
    )
    run_main(flow)

    assert client.command("SELECT count() FROM llm_events FINAL") == 300
    assert client.command("SELECT count() FROM alerts FINAL") == 3
    total = client.command("SELECT sum(cost_usd) FROM llm_events FINAL")
    assert Decimal(total) == sum(usd(e.cost_pusd) for e in events)


class _RecordingSink(ClickHouseSink):
    def __init__(self, *args: Any, built: list[int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.built = built

    def build(self, step_id: str, worker_index: int, worker_count: int) -> Any:
        self.built.append(worker_index)
        return super().build(step_id, worker_index, worker_count)


def test_two_workers_write_every_row_once(chdb_dsn: str, client: ch.LockedClient, database: str) -> None:
    events = [make_event(i) for i in range(2000)]
    built: list[int] = []
    flow = Dataflow("clickhouse_two_workers")
    spread = op.redistribute("spread", op.input("events", flow, TestingSource(events, 100)))
    op.output("out", spread, _RecordingSink(chdb_dsn, database, "llm_events", built=built))

    cluster_main(flow, [], 0, worker_count_per_proc=2)

    assert sorted(built) == [0, 1]
    assert client.command("SELECT count() FROM llm_events") == 2000  # no row written twice
    assert client.command("SELECT uniqExact(event_id) FROM llm_events") == 2000


def two_process_flow(url: str, database: str, n: int) -> Dataflow:
    """The flow `python -m bytewax.run` starts in each process of the test below."""
    flow = Dataflow("clickhouse_two_processes")
    events = op.input("events", flow, TestingSource([make_event(i) for i in range(n)], 100))
    spread = op.redistribute("spread", events)
    op.output("out", spread, ClickHouseSink(url, database, "llm_events"))
    return flow


def test_two_processes_write_every_row_once_through_the_http_front(tmp_path: Path) -> None:
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(2))
    with start_chdb_http(tmp_path / "chdb") as url:
        target = f"tests.test_clickhouse_sink:two_process_flow({url!r}, 'judgeflow', 3000)"
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "bytewax.run", target, "-i", str(i), "-a", addresses], cwd=REPO
            )
            for i in range(2)
        ]
        try:
            codes = [proc.wait(timeout=120) for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        client = ch.connect(url, "judgeflow")
        count, unique = client.query("SELECT count(), uniqExact(event_id) FROM llm_events").result_rows[0]

    assert codes == [0, 0]
    assert (count, unique) == (3000, 3000)


def test_over_http_threads_insert_side_by_side_each_into_its_own_database(tmp_path: Path) -> None:
    """Over HTTP the sinks' threads do not queue behind one lock: with every insert answered 0.5 s
    late, the inserts of six threads (four on one database) wait at the server together; and handles
    on two databases share nothing that could send a row to the other one."""
    with start_chdb_http(tmp_path / "chdb", insert_delay_s=0.5) as url:
        dsn = http_dsn(url)
        for database in ("jf_a", "jf_b"):
            ch.ensure_schema(ch.connect(dsn, database), database)
        start = threading.Barrier(6)
        errors: list[BaseException] = []

        def insert(i: int) -> None:
            database = "jf_b" if i % 3 == 2 else "jf_a"
            try:
                start.wait(timeout=30)
                events = [make_event(100 * i + k, tenant_id=database) for k in range(5)]
                write(dsn, database, "llm_events", events)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=insert, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        stats = front_stats(url)
        by_tenant = "SELECT tenant_id, count() FROM llm_events GROUP BY 1"
        landed = {db: ch.connect(dsn, db).query(by_tenant).result_rows for db in ("jf_a", "jf_b")}

    assert errors == []
    assert stats["max_waiting_inserts"] > 2  # one at a time before (the client's lock), or one per database
    assert landed == {"jf_a": [("jf_a", 20)], "jf_b": [("jf_b", 10)]}


# --- misuse fails loudly ---------------------------------------------------------------------


def test_the_wrong_record_type_is_a_clear_error(chdb_dsn: str, database: str) -> None:
    part = ClickHouseSink(chdb_dsn, database, "llm_events").build("out", 0, 1)
    with pytest.raises(TypeError, match="'llm_events' expects Event records, got Alert"):
        part.write_batch([make_alert(0)])


def test_unknown_tables_and_dsns_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown judgeflow table 'events'"):
        ClickHouseSink("chdb:///tmp/x", "judgeflow", "events")
    with pytest.raises(ValueError, match="unsupported ClickHouse DSN 'tcp://default:\\*\\*\\*@h"):
        ClickHouseSink("tcp://default:secret@h:9000", "judgeflow", "alerts")


def test_a_second_chdb_directory_is_refused(client: ch.LockedClient, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one data directory per process"):
        ch.connect(f"chdb://{tmp_path / 'other'}")
    assert not (tmp_path / "other").exists()


def test_a_fatal_error_is_not_retried(chdb_dsn: str, client: ch.LockedClient, database: str) -> None:
    part = ClickHouseSink(chdb_dsn, database, "alerts", max_retry_s=30).build("out", 0, 1)
    client.command(f"DROP TABLE {database}.alerts")
    failures = counter("judgeflow_clickhouse_insert_failures_total", "alerts")

    started = time.monotonic()
    with pytest.raises(ch.InsertRejectedError, match="table 'alerts' failed and cannot be retried"):
        part.write_batch([make_alert(0)])
    assert time.monotonic() - started < 5
    assert counter("judgeflow_clickhouse_insert_failures_total", "alerts") == failures + 1


# --- retries ---------------------------------------------------------------------------------


def test_retry_backs_off_and_never_sleeps_on_success() -> None:
    def no_sleep(seconds: float) -> None:
        raise AssertionError("slept on the success path")

    assert ch.retry(lambda: 42, table="alerts", action="insert", max_retry_s=5, sleep=no_sleep) == 42

    delays: list[float] = []
    attempts = iter([OperationalError("down"), ConnectionRefusedError("down"), None])

    def flaky() -> str:
        failure = next(attempts)
        if failure is not None:
            raise failure
        return "ok"

    result = ch.retry(flaky, table="alerts", action="insert", max_retry_s=5, sleep=delays.append)
    assert result == "ok"
    assert len(delays) == 2
    assert 0.025 <= delays[0] <= 0.05 and 0.05 <= delays[1] <= 0.1  # jittered, doubling


def test_an_outage_logs_a_line_per_doubling_of_the_attempts_and_one_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = "http://127.0.0.1:8123/?query_id=0f1e&date_time_input_format=best_effort"
    attempts = iter([OperationalError(f"Error Max retries exceeded with url: {url} (refused)")] * 9 + [None])

    def flaky() -> str:
        failure = next(attempts)
        if failure is not None:
            raise failure
        return "ok"

    with caplog.at_level(logging.INFO, logger="sinks.clickhouse"):
        assert ch.retry(flaky, table="alerts", action="insert", max_retry_s=5, sleep=lambda s: None) == "ok"

    lines = [r.getMessage() for r in caplog.records if r.name == "sinks.clickhouse"]
    assert [line.split("(attempt ")[1].split(",")[0] for line in lines[:-1]] == ["1", "2", "4", "8"]
    assert all("query_id" not in line and "127.0.0.1:8123/?..." in line for line in lines[:-1])
    assert lines[-1].startswith("ClickHouse insert for alerts succeeded after 10 attempts")


def test_the_http_client_libraries_do_not_repeat_the_retry_lines(caplog: pytest.LogCaptureFixture) -> None:
    levels = {name: logging.getLogger(name).level for name in ("urllib3", "clickhouse_connect")}
    configure_logging()  # as `judgeflow` sets it up
    try:
        with caplog.at_level(logging.INFO), pytest.raises(ch.InsertGaveUpError):
            write(f"http://127.0.0.1:{free_port()}", "judgeflow", "alerts", [make_alert(0)], max_retry_s=0.5)
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)

    names = {r.name for r in caplog.records}
    assert names == {"sinks.clickhouse"}, names  # before: urllib3.connectionpool and the driver too


def test_inserts_are_retried_until_the_server_accepts_them(tmp_path: Path) -> None:
    retries = counter("judgeflow_clickhouse_insert_retries_total", "llm_events")
    events = [make_event(i) for i in range(20)]
    with start_chdb_http(tmp_path / "chdb", fail_inserts=2) as url:
        write(http_dsn(url), "judgeflow", "llm_events", events, max_retry_s=30)
        client = ch.connect(url, "judgeflow")
        assert client.command("SELECT count() FROM llm_events FINAL") == 20
        total = client.command("SELECT sum(cost_usd) FROM llm_events FINAL")

    assert Decimal(total) == sum(usd(e.cost_pusd) for e in events)
    assert counter("judgeflow_clickhouse_insert_retries_total", "llm_events") == retries + 2


def test_the_sink_waits_for_a_server_that_starts_late(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    retries = counter("judgeflow_clickhouse_insert_retries_total", "dead_letters")
    stop = threading.Event()

    def start_late() -> None:
        time.sleep(1.0)
        with start_chdb_http(tmp_path / "chdb", port=port):
            stop.wait(60)

    server = threading.Thread(target=start_late)
    server.start()
    try:
        write(url, "judgeflow", "dead_letters", [make_dead_letter(i) for i in range(5)])
        count = ch.connect(url, "judgeflow").command("SELECT count() FROM dead_letters FINAL")
    finally:
        stop.set()
        server.join()

    assert count == 5
    assert counter("judgeflow_clickhouse_insert_retries_total", "dead_letters") > retries


def test_a_dead_server_fails_clearly_after_max_retry_s() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    failures = counter("judgeflow_clickhouse_insert_failures_total", "evaluations")

    started = time.monotonic()
    with pytest.raises(ch.InsertGaveUpError) as raised:
        write(url, "judgeflow", "evaluations", [make_evaluation(0)], max_retry_s=1.0)
    elapsed = time.monotonic() - started

    message = str(raised.value)
    assert "table 'evaluations' gave up after" in message
    assert "max_retry_s=1.0" in message and "last error" in message
    assert 1.0 <= elapsed < 8
    assert counter("judgeflow_clickhouse_insert_failures_total", "evaluations") == failures + 1
