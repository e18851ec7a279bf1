"""`judgeflow backfill`: a slice of the topic, re-run into a database of its own, with progress.

The whole flow runs on the librdkafka mock cluster and chdb; the interrupted run
is a real process stopped with SIGINT (Ctrl-C) and started again with the same
command, then compared table by table with an uninterrupted one."""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import clickhouse_connect
import pytest

from flows import backfill
from flows.backfill import BackfillError, parse_bound
from flows.backfill_progress import ProgressDisplay, ProgressTracker, progress_line
from flows.cli import main
from simulators.chdb_http import start_chdb_http
from simulators.kafka_mock import produce_all
from simulators.traffic import generate
from sinks.clickhouse import connect, ensure_schema
from tests.conftest import CONFIG, job_env, run_flow, topic_flow_settings
from tests.test_recovery import crash_differences, judge_minutes_unexplained, tables

ROOT = Path(__file__).resolve().parents[1]
T0 = int(datetime(2026, 11, 19, tzinfo=UTC).timestamp() * 1000)
HOUR = 3_600_000


# --- the range syntax and the progress numbers ------------------------------------------------


def test_from_and_to_take_times_epoch_ms_and_offsets() -> None:
    topics = ("llm-events",)
    assert parse_bound("2026-11-19T00:00:00Z", topics=topics).time_ms == T0
    assert parse_bound("2026-11-19T01:00:00+01:00", topics=topics).time_ms == T0
    assert parse_bound("2026-11-19", topics=topics).time_ms == T0  # a bare date: 00:00 UTC
    assert parse_bound(str(T0), topics=topics).time_ms == T0
    assert parse_bound("0:10,1:12", topics=topics).offsets == {("llm-events", 0): 10, ("llm-events", 1): 12}
    two = ("a", "b")
    assert parse_bound("a:0:5,b:0:7", topics=two).offsets == {("a", 0): 5, ("b", 0): 7}
    for bad, topics_ in (
        ("2026-11-19T00:00:00", topics),  # no offset: ambiguous
        ("yesterday", topics),
        ("0:10", two),  # which topic?
        ("other:0:10", topics),
    ):
        with pytest.raises(BackfillError):
            parse_bound(bad, topics=topics_)


def test_progress_counts_offsets_handed_to_the_flow_and_this_runs_rate() -> None:
    ranges = {("t", 0): (100, 200), ("t", 1): (0, 50)}
    tracker = ProgressTracker(ranges, now=0.0)
    start = tracker.observe({}, now=0.0)
    assert (start.done, start.total, start.eta_s) == (0, 150, None)
    # resumed: partition 0 was at 160 when this run opened it; first seen at 165, 180 ten seconds on
    opened = {("t", 0): 160, ("t", 1): 0}
    tracker.observe({("t", 0): 165}, now=1.0, opened=opened)
    s = tracker.observe({("t", 0): 180, ("t", 1): 0}, now=11.0, opened=opened)
    assert (s.done, s.this_run, s.lags) == (80, 20, {("t", 0): 20, ("t", 1): 50})
    assert s.rate == pytest.approx(20 / 11)
    assert s.eta_s == pytest.approx(70 / (20 / 11))
    line = progress_line(s)
    assert "80/150 events (53.3%)" in line and "t[1]=50 t[0]=20" in line
    done = tracker.observe({("t", 0): 200, ("t", 1): 50}, now=12.0)
    assert (done.done, done.eta_s, progress_line(done).endswith("lag none")) == (150, 0.0, True)


def test_on_a_terminal_the_progress_is_a_live_display() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    ranges = {("llm-events", 0): (0, 40), ("llm-events", 1): (0, 60)}
    backfill.POSITIONS.reset()
    screen = Terminal()
    handler = logging.StreamHandler(screen)
    logging.getLogger().addHandler(handler)
    try:
        display = ProgressDisplay(ranges, screen)
        display.start()
        backfill.POSITIONS.set(("llm-events", 0), 40)
        backfill.POSITIONS.set(("llm-events", 1), 15)
        logging.getLogger("judgeflow").warning("a log line while the display runs")
        final = display.stop()
    finally:
        logging.getLogger().removeHandler(handler)
    assert handler.stream is screen
    assert "a log line while the display runs" in screen.getvalue()
    assert (final.done, final.total, final.lags[("llm-events", 1)]) == (55, 100, 45)
    shown = screen.getvalue()
    assert "55/100 events" in shown and "events/s" in shown and "ETA" in shown
    assert "llm-events[1]" in shown and "45" in shown


def test_the_live_database_is_refused_and_the_recovery_dir_names_the_range() -> None:
    with pytest.raises(BackfillError, match="live database"):
        backfill.check_database("judgeflow", live="judgeflow")
    with pytest.raises(BackfillError, match="database name"):
        backfill.check_database("x; DROP TABLE y", live="judgeflow")
    path = backfill.default_recovery_dir("rejudge", "2026-11-19T00:00:00Z", None)
    assert path == Path(".judgeflow/backfill/rejudge/2026-11-19T00_00_00Z--end")


# --- the whole flow -------------------------------------------------------------------------------


def messages() -> list[tuple[bytes, bytes, int]]:
    """300 requests, one a minute for five hours, and a malformed one each hour."""
    out = []
    for i in range(300):
        ts = T0 + i * 60_000
        e = {
            "event_id": f"e{i}",
            "ts": ts,
            "tenant_id": ("acme", "globex")[i % 2],
            "agent": "bot",
            "model": "gpt-4o-mini",
            "input": f"question {i}",
            "output": "answer",
            "usage": {"input_tokens": 1000, "output_tokens": 100},
        }
        out.append((e["event_id"].encode(), json.dumps(e).encode(), ts))
        if i % 60 == 30:
            out.append((f"bad-{i}".encode(), b"{not json", ts))
    return out


def backfill_cli(monkeypatch, kafka, chdb_dsn, judge_endpoint, *args: str) -> int:
    for var, value in {
        "JUDGEFLOW_KAFKA_BROKERS": kafka.bootstrap,
        "JUDGEFLOW_CLICKHOUSE_DSN": chdb_dsn,
        "OPENAI_BASE_URL": judge_endpoint.openai_base_url,
        "OPENAI_API_KEY": "test-key",
    }.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("JUDGEFLOW_REDIS_URL", raising=False)
    return main(["backfill", "--config", str(CONFIG), "--snapshot-s", "1", *args])


def test_a_backfill_writes_only_its_range_and_only_into_its_database(
    kafka, chdb_dsn, database, judge_endpoint, tmp_path, monkeypatch, capsys
):
    kafka.create_topic("llm-events", 3)
    produce_all(kafka.bootstrap, "llm-events", messages())
    live = topic_flow_settings(kafka, chdb_dsn, database, judge_endpoint)
    client = connect(chdb_dsn)
    ensure_schema(client, database)
    run_flow(live)
    before = tables(connect(chdb_dsn, database))
    assert len(before["llm_events"]) == 300

    into = f"{database}_bf"
    cfg = tmp_path / "flow.toml"
    cfg.write_text(CONFIG.read_text().replace('database = "judgeflow"', f'database = "{database}"'))
    frm, to = "2026-11-19T01:00:00Z", str(T0 + 3 * HOUR)  # hours 1 and 2: an ISO time and epoch ms
    code = backfill_cli(
        monkeypatch,
        kafka,
        chdb_dsn,
        judge_endpoint,
        *("--config", str(cfg), "--from", frm, "--to", to, "--into", into),
        *("--recovery-dir", str(tmp_path / "bf"), "--workers", "2"),
    )
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]

    # only the range, and every event of it, in the target; the live database as it was
    target = connect(chdb_dsn, into)
    got = {r[0] for r in target.query("SELECT event_id FROM llm_events FINAL").result_rows}
    assert got == {f"e{i}" for i in range(60, 180)}
    assert target.query("SELECT count() FROM dead_letters FINAL").result_rows[0][0] == 2
    hours = target.query(
        "SELECT window_start, sum(requests) FROM cost_windows FINAL"
        " WHERE window_s = 3600 AND category = 'llm' GROUP BY 1 ORDER BY 1"
    ).result_rows
    assert [n for _, n in hours] == [60, 60]
    assert target.query("SELECT count() FROM evaluations FINAL").result_rows[0][0] > 0
    assert tables(connect(chdb_dsn, database)) == before

    # the runbook's comparison runs as written: the same rubric gives the same verdicts
    compared = target.query(runbook_sql(live=database, into=into)).result_rows
    assert compared and all(judged > 0 and changed == 0 for _, _, judged, changed, *_ in compared)

    # progress lines (stderr is not a terminal) end at the whole range; the summary on stdout
    assert "backfill: 122/122 events (100.0%)" in err
    assert "backfill complete" in out and "events read    122 of 122 (this run 122)" in out
    assert "dead letters   2" in out and "llm_events 120" in out

    # the same range again into the filled database, without its recovery directory: refused
    refused = (
        "--config",
        str(cfg),
        "--from",
        frm,
        "--to",
        to,
        "--into",
        into,
        "--recovery-dir",
        str(tmp_path / "x"),
    )
    code = backfill_cli(monkeypatch, kafka, chdb_dsn, judge_endpoint, *refused)
    assert code == 2 and "already holds rows" in capsys.readouterr().err
    code = backfill_cli(monkeypatch, kafka, chdb_dsn, judge_endpoint, *refused)  # not taken for a resume
    assert code == 2 and "already holds rows" in capsys.readouterr().err
    # into the live database: refused before anything runs
    code = backfill_cli(
        monkeypatch, kafka, chdb_dsn, judge_endpoint, "--config", str(cfg), "--from", frm, "--into", database
    )
    assert code == 2 and "live database" in capsys.readouterr().err


def runbook_sql(*, live: str, into: str) -> str:
    """The README runbook's comparison query, on these databases."""
    readme = (ROOT / "README.md").read_text()
    runbook = readme.split("### Runbook: re-judge last week with a new rubric", 1)[1]
    sql = runbook.split("```sql", 1)[1].split("```", 1)[0]
    return sql.replace("judgeflow_rejudge.", f"{into}.").replace("judgeflow.", f"{live}.")


def test_offsets_from_to_the_end_of_each_partition(kafka, chdb_dsn, database, tmp_path):
    kafka.create_topic("llm-events", 3)
    msgs = messages()
    produce_all(kafka.bootstrap, "llm-events", msgs)
    settings = topic_flow_settings(kafka, chdb_dsn, database)
    connect(chdb_dsn).command(f"CREATE DATABASE IF NOT EXISTS {database}")
    ensure_schema(connect(chdb_dsn), database)
    plan = backfill.load_or_plan(
        settings.flow.kafka,
        database=database,
        start="0:10,1:10,2:10",
        stop=None,
        recovery_dir=tmp_path / "bf",
        rubric_version="r",
    )
    assert plan.total == len(msgs) - 30
    assert all(a == 10 for a, _ in plan.ranges.values())
    produce_all(kafka.bootstrap, "llm-events", [(b"late", b"{}", T0)])  # after the start: not read
    summary = backfill.run_backfill(settings, plan, snapshot_s=1, stream=io.StringIO())
    assert summary.completed and summary.progress.done == plan.total
    assert sum(summary.rows[t] for t in ("llm_events", "dead_letters")) == len(msgs) - 30
    # the same command finds its plan: same offsets, whatever was produced since
    again = backfill.load_or_plan(
        settings.flow.kafka,
        database=database,
        start="0:10,1:10,2:10",
        stop=None,
        recovery_dir=tmp_path / "bf",
        rubric_version="r",
    )
    assert again.resumed and again.ranges == plan.ranges


# --- Ctrl-C and resume --------------------------------------------------------------------------


def judgeflow_backfill(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "flows.cli", "backfill", "--config", str(CONFIG), "--snapshot-s", "0.5"]
    return subprocess.Popen([*cmd, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_a_backfill_stopped_with_ctrl_c_resumes_and_ends_with_the_tables_of_one_run(
    kafka, judge_endpoint, tmp_path
):
    kafka.create_topic("llm-events", 4)
    msgs = list(generate(limit=14_000))
    produce_all(kafka.bootstrap, "llm-events", msgs)
    # a slice that leaves traffic out on both sides
    ts = sorted(t for _, _, t in msgs)
    frm, to = ts[1000], ts[-1000]
    args = ["--from", str(frm), "--to", str(to), "--into", "rejudge", "--progress-s", "0.5"]
    want_events = {k for k, _, t in msgs if frm <= t < to and not k.startswith(b"bad-")}

    with start_chdb_http(tmp_path / "clean_chdb") as url:
        clean = judgeflow_backfill(
            [*args, "--recovery-dir", str(tmp_path / "clean")], job_env(kafka, url, judge_endpoint)
        )
        out, err = clean.communicate(timeout=300)
        assert clean.returncode == 0, err.decode()[-3000:]
        want = tables(http_client(url, "rejudge"))
        assert judge_minutes_unexplained(http_client(url, "rejudge")) == []

    with start_chdb_http(tmp_path / "chdb") as url:
        env = job_env(kafka, url, judge_endpoint)
        client = http_client(url, "default")
        recovery = ["--recovery-dir", str(tmp_path / "recovery")]
        proc = judgeflow_backfill([*args, *recovery], env)
        seen = wait_for_rows(client, proc, at_least=2000)
        assert proc.poll() is None, (
            f"ended before it could be stopped: {proc.communicate()[1].decode()[-3000:]}"
        )
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err.decode()[-3000:]
        assert "backfill interrupted" in out.decode() and "resume with the same command" in out.decode()
        assert 0 < seen < len(want_events)

        again = judgeflow_backfill([*args, *recovery], env)
        out, err = again.communicate(timeout=300)
        assert again.returncode == 0, err.decode()[-3000:]
        assert "backfill complete" in out.decode()
        assert "backfill: " in err.decode()  # progress lines

        rejudge = http_client(url, "rejudge")
        got = tables(rejudge)
        assert {r[0].encode() for r in got["llm_events"]} == want_events
        # the stopped process's in-process verdict cache died with it: judge calls may differ (as
        # after a crash), judge spend must still match the evaluations minute by minute
        assert crash_differences(got, want) == {}
        assert judge_minutes_unexplained(rejudge) == []


def http_client(url: str, database: str):
    host, port = url.removeprefix("http://").split(":")
    return clickhouse_connect.get_client(host=host, port=int(port), database=database)


def wait_for_rows(client, proc: subprocess.Popen[bytes], *, at_least: int) -> int:
    deadline = time.monotonic() + 120
    seen = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            seen = client.query("SELECT count() FROM rejudge.llm_events FINAL").result_rows[0][0]
        except Exception:  # the tables are created after start-up
            seen = 0
        if seen > at_least:
            break
        time.sleep(0.2)
    return seen
