"""The write-behind ClickHouse sink: a partition hands each insert to its writer thread and its
`snapshot()` — which bytewax calls before the epoch commits — waits for them.

The bytewax contract it rests on is checked first (when `snapshot()` is called); then, on the
embedded engine, with inserts held at a gate where it matters: rows are in ClickHouse when
`snapshot()` returns, inserts land in order and at most `MAX_PENDING` wait, a failed insert stops the
worker, dead letters work as in the in-line sink, and flows on one and two workers write every row
once. Last (slow), `judgeflow run` killed with SIGKILL while its inserts crawl resumes to the tables
of a clean run.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import clickhouse_connect
import msgspec
import pytest
from bytewax.dataflow import Dataflow
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSource, cluster_main, run_main

from simulators.chdb_http import start_chdb_http
from simulators.kafka_mock import produce_all
from simulators.traffic import generate
from sinks import clickhouse as ch
from sinks.clickhouse_sink import WriteBehindClickHouseSink, key_batches
from tests.conftest import job_env
from tests.test_clickhouse_sink import make_event, make_window
from tests.test_recovery import (
    count,
    crash_differences,
    judge_minutes_unexplained,
    judgeflow_run,
    kill_twice_then_finish,
    tables,
)


@pytest.fixture
def client(chdb_dsn: str, database: str) -> ch.LockedClient:
    client = ch.connect(chdb_dsn, database)
    ch.ensure_schema(client, database)
    return client


class _GatedClient:
    """A client whose inserts wait for `gate` and record the first value of each insert's first column
    (the first row's key); `arrived` counts the inserts that reached the gate."""

    def __init__(
        self, client: ch.LockedClient, gate: threading.Event, inserted: list[Any], arrived: list[int]
    ) -> None:
        self._client, self._gate, self._inserted, self._arrived = client, gate, inserted, arrived

    def insert(self, *, context: Any) -> Any:
        self._arrived.append(1)
        self._gate.wait()
        self._inserted.append(context.data[0][0])
        return self._client.insert(context=context)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class _GatedSink(WriteBehindClickHouseSink):
    def __init__(self, *args: Any, gate: threading.Event, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate, self.inserted, self.arrived = gate, [], []

    def _open(self) -> Any:
        client, context = super()._open()
        return _GatedClient(client, self.gate, self.inserted, self.arrived), context


def held(chdb_dsn: str, database: str, table: str, **kwargs: Any) -> tuple[_GatedSink, Any]:
    """A sink whose inserts wait until `sink.gate` is set, and one of its partitions."""
    sink = _GatedSink(chdb_dsn, database, table, gate=threading.Event(), **kwargs)
    return sink, sink.build_part("out", "00", None)


def returns(call: Any, *args: Any) -> threading.Event:
    """Run `call(*args)` on a thread; the event is set when it returned."""
    done = threading.Event()

    def run() -> None:
        call(*args)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done


def events_count(client: ch.LockedClient) -> int:
    return client.command("SELECT count() FROM llm_events FINAL")


# --- the bytewax contract -----------------------------------------------------------------


class _Probe(StatefulSinkPartition[int, None]):
    def __init__(self, part: str, log: list[tuple[str, str]]) -> None:
        self._part, self._log = part, log

    def write_batch(self, values: list[int]) -> None:
        self._log.append(("write", self._part))

    def snapshot(self) -> None:
        self._log.append(("snapshot", self._part))

    def close(self) -> None:
        self._log.append(("close", self._part))


class _ProbeSink(FixedPartitionedSink[int, None]):
    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []

    def list_parts(self) -> list[str]:
        return ["a", "b"]

    def part_fn(self, item_key: str) -> int:
        return 0 if item_key == "a" else 1

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Probe:
        return _Probe(for_part, self.log)


@pytest.mark.parametrize("recovery", [False, True], ids=["no recovery", "recovery"])
def test_bytewax_snapshots_each_partition_written_in_an_epoch_at_its_end(
    recovery: bool, tmp_path: Path
) -> None:
    """What the write-behind sink relies on (bytewax 0.21): every epoch that wrote to a partition ends
    with its `snapshot()` — with or without recovery, the last epoch too — and `close()` comes last."""
    sink = _ProbeSink()
    flow = Dataflow("probe")
    items = [("a", 1), ("a", 2), ("b", 3), ("a", 4)]  # one item per batch, one batch per epoch
    op.output("out", op.input("in", flow, TestingSource(items, batch_size=1)), sink)
    config = None
    if recovery:
        init_db_dir(tmp_path, 1)
        config = RecoveryConfig(str(tmp_path))
    run_main(flow, epoch_interval=timedelta(0), recovery_config=config)

    writes_and_snapshots = [entry for entry in sink.log if entry[0] != "close"]
    assert writes_and_snapshots == [
        ("write", "a"),
        ("snapshot", "a"),
        ("write", "a"),
        ("snapshot", "a"),
        ("write", "b"),
        ("snapshot", "b"),
        ("write", "a"),
        ("snapshot", "a"),
    ]
    assert sorted(sink.log[-2:]) == [("close", "a"), ("close", "b")]


# --- the partition ------------------------------------------------------------------------


def test_rows_are_in_clickhouse_when_snapshot_returns(
    chdb_dsn: str, client: ch.LockedClient, database: str
) -> None:
    sink, part = held(chdb_dsn, database, "llm_events")
    part.write_batch([[make_event(i) for i in range(60)], [make_event(i) for i in range(60, 100)]])
    assert events_count(client) == 0  # handed over: the worker went on while the insert waits

    snapshotted = returns(part.snapshot)
    assert not snapshotted.wait(0.3)  # the epoch cannot commit while its insert is out
    sink.gate.set()
    assert snapshotted.wait(30)
    assert events_count(client) == 100
    assert sink.inserted == ["ev-0"]  # the two groups of the batch went in as one insert
    part.close()


def test_batches_that_wait_go_in_as_one_insert_at_the_epochs_end(
    chdb_dsn: str, client: ch.LockedClient, database: str
) -> None:
    sink, part = held(chdb_dsn, database, "llm_events", insert_rows=1000, linger_s=3600)
    sink.gate.set()
    for k in range(5):
        part.write_batch([[make_event(i) for i in range(k * 10, k * 10 + 10)]])
    assert events_count(client) == 0  # neither 1,000 rows nor an hour: they wait
    part.snapshot()

    assert sink.inserted == ["ev-0"]
    assert events_count(client) == 50
    part.close()


def test_rows_go_in_once_insert_rows_wait(chdb_dsn: str, client: ch.LockedClient, database: str) -> None:
    sink, part = held(chdb_dsn, database, "llm_events", insert_rows=25, linger_s=3600)
    sink.gate.set()
    for k in range(3):  # 30 rows: the third batch makes 25
        part.write_batch([[make_event(i) for i in range(k * 10, k * 10 + 10)]])
    part.write_batch([[make_event(30)]])
    deadline = time.monotonic() + 30
    while events_count(client) < 30 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert events_count(client) == 30  # without a snapshot; the last row waits
    assert sink.inserted == ["ev-0"]
    part.snapshot()
    assert sink.inserted == ["ev-0", "ev-30"]
    part.close()


def test_rows_go_in_once_the_first_has_waited_linger_s(
    chdb_dsn: str, client: ch.LockedClient, database: str
) -> None:
    sink, part = held(chdb_dsn, database, "llm_events", insert_rows=1000, linger_s=0.3)
    sink.gate.set()
    handed = time.monotonic()
    part.write_batch([[make_event(i) for i in range(10)]])
    part.write_batch([[make_event(i) for i in range(10, 20)]])
    while events_count(client) < 20 and time.monotonic() < handed + 30:
        time.sleep(0.02)
    waited = time.monotonic() - handed

    assert events_count(client) == 20  # without a snapshot
    assert waited >= 0.3  # not before the first row's linger (an upper bound would time the machine)
    assert sink.inserted == ["ev-0"]
    part.close()


def test_linger_counts_from_the_oldest_waiting_row_not_the_newest(
    chdb_dsn: str, client: ch.LockedClient, database: str
) -> None:
    """Batches keep coming, each sooner than `linger_s` after the one before: the rows still go in
    once the first has waited `linger_s`, not only when the trickle stops."""
    sink, part = held(chdb_dsn, database, "llm_events", insert_rows=1000, linger_s=0.5)
    sink.gate.set()
    for k in range(30):  # 3 s of batches, one every 0.1 s
        part.write_batch([[make_event(k)]])
        time.sleep(0.1)
    assert sink.inserted  # before any snapshot, while batches were still coming
    part.snapshot()
    assert events_count(client) == 30
    part.close()


def test_inserts_land_in_order_and_at_most_insert_rows_wait(
    chdb_dsn: str, client: ch.LockedClient, database: str
) -> None:
    sink, part = held(chdb_dsn, database, "llm_events", insert_rows=10, linger_s=3600)
    batches = [[make_event(i) for i in range(k * 10, k * 10 + 10)] for k in range(6)]
    part.write_batch([batches[0]])  # 10 rows: taken at once, held at the gate
    deadline = time.monotonic() + 30
    while not sink.arrived and time.monotonic() < deadline:
        time.sleep(0.01)
    part.write_batch([batches[1]])  # waits behind the insert in flight
    handed = returns(part.write_batch, [batches[2]])
    assert not handed.wait(0.3)  # 10 rows wait: the worker waits instead of piling up rows
    sink.gate.set()
    assert handed.wait(30)
    for batch in batches[3:]:
        part.write_batch([batch])
    part.snapshot()

    assert sink.inserted[0] == "ev-0"
    assert sink.inserted == sorted(sink.inserted, key=lambda event_id: int(event_id.removeprefix("ev-")))
    assert events_count(client) == 10 * len(batches)
    part.close()


def test_a_failed_insert_stops_the_worker_at_its_next_call(
    chdb_dsn: str, client: ch.LockedClient, database: str
) -> None:
    sink, part = held(chdb_dsn, database, "llm_events")
    part.write_batch([[make_event(0)]])
    client.command(f"DROP TABLE {database}.llm_events")
    part.write_batch([[make_event(1)]])  # handed over behind the first, which now fails
    sink.gate.set()

    with pytest.raises(ch.InsertRejectedError, match="table 'llm_events' failed and cannot be retried"):
        part.snapshot()
    with pytest.raises(ch.InsertRejectedError):
        part.write_batch([[make_event(2)]])
    assert sink.inserted == ["ev-0"]  # nothing after a failed insert is written
    part.close()  # already raised: the flow is stopping because of it


class _TableDroppedSink(WriteBehindClickHouseSink):
    """Drops its table once the partition has opened it: every insert is rejected by the server."""

    def _open(self) -> Any:
        client, context = super()._open()
        client.command(f"DROP TABLE {self.database}.{self.spec.name}")
        return client, context


def test_a_flow_stops_when_an_insert_fails_in_the_background(chdb_dsn: str, database: str) -> None:
    flow = Dataflow("write_behind_fails")
    events = op.input("in", flow, TestingSource([make_event(i) for i in range(50)], batch_size=10))
    sink = _TableDroppedSink(chdb_dsn, database, "llm_events")
    op.output("out", key_batches("key", events, sink=sink), sink)

    with pytest.raises(Exception) as raised:  # bytewax wraps it: the cause says what failed
        run_main(flow)
    causes = []
    exc: BaseException | None = raised.value
    while exc is not None:
        causes.append(exc)
        exc = exc.__cause__
    rejected = [c for c in causes if isinstance(c, ch.InsertRejectedError)]
    assert any("cannot be retried" in str(c) for c in rejected), causes


def test_dead_letters_work_as_in_line(chdb_dsn: str, client: ch.LockedClient, database: str) -> None:
    good = [make_event(i) for i in range(40)]
    unencodable = msgspec.structs.replace(good[7], event_id="bad-row", tenant_id="t\udc80")  # no UTF-8 form
    sink, part = held(chdb_dsn, database, "llm_events")
    sink.gate.set()
    part.write_batch([good[:20], [unencodable, *good[20:]]])
    windows = WriteBehindClickHouseSink(chdb_dsn, database, "cost_windows").build_part("out", "00", None)
    windows.write_batch([[make_window(0, window_ms=1500), make_window(1)]])  # its row cannot be built
    part.snapshot()
    windows.snapshot()

    assert events_count(client) == len(good)
    assert client.command("SELECT count() FROM cost_windows FINAL") == 1
    reasons = dict(client.query("SELECT stage, reason FROM dead_letters FINAL").result_rows)
    assert reasons.keys() == {"sink_llm_events", "sink_cost_windows"}
    assert "UnicodeEncodeError" in reasons["sink_llm_events"]
    assert "window_ms=1500 is not a positive whole number" in reasons["sink_cost_windows"]
    part.close()
    windows.close()


# --- in flows -----------------------------------------------------------------------------


class _WhereBuilt(WriteBehindClickHouseSink):
    def __init__(self, *args: Any, built: list[tuple[str, int]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.built = built

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> Any:
        self.built.append((for_part, threading.get_ident()))
        return super().build_part(step_id, for_part, resume_state)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_flow_writes_every_row_once_and_each_worker_inserts_its_own_batches(
    workers: int, chdb_dsn: str, client: ch.LockedClient, database: str
) -> None:
    events = [make_event(i) for i in range(3000)]
    built: list[tuple[str, int]] = []
    pairs: list[tuple[str, int]] = []  # (shard, the worker thread that made the pair)
    flow = Dataflow("write_behind_flow")
    spread = op.redistribute("spread", op.input("in", flow, TestingSource(events, batch_size=100)))
    sink = _WhereBuilt(chdb_dsn, database, "llm_events", built=built)
    keyed = key_batches("key", spread, sink=sink, shards=workers)
    op.output(
        "out", op.inspect("made", keyed, lambda _s, kv: pairs.append((kv[0], threading.get_ident()))), sink
    )

    cluster_main(flow, [], 0, worker_count_per_proc=workers, epoch_interval=timedelta(milliseconds=50))

    assert client.command("SELECT count() FROM llm_events") == len(events)  # no row written twice
    assert client.command("SELECT uniqExact(event_id) FROM llm_events") == len(events)
    assert sorted(part for part, _ in built) == [f"{i:02d}" for i in range(workers)]
    owner = {str(int(part)): thread for part, thread in built}
    assert len(set(owner.values())) == workers  # one partition on each worker
    crossed = sum(1 for shard, thread in pairs if owner[shard] != thread)
    assert crossed <= len(pairs) // 4, (crossed, len(pairs))  # only while a worker has no partition yet


def test_shards_are_checked() -> None:
    flow = Dataflow("shards")
    stream = op.input("in", flow, TestingSource([make_event(0)]))
    with pytest.raises(ValueError, match=r"shards must be in 1\.\.64, got 65"):
        key_batches("key", stream, sink=WriteBehindClickHouseSink("chdb:///x", "db", "alerts"), shards=65)


# --- SIGKILL while inserts are in flight ---------------------------------------------------


@pytest.mark.slow
def test_a_job_killed_while_its_inserts_crawl_resumes_to_a_clean_runs_tables(
    kafka, judge_endpoint, tmp_path: Path
) -> None:
    """Every insert takes 0.15 s more at the server, so the writer threads always have inserts out
    (and queued) when the job is killed; the restart must still write what a clean run writes."""
    kafka.create_topic("llm-events", 4)
    messages = list(generate(limit=6_000))
    produce_all(kafka.bootstrap, "llm-events", messages)
    bad = sum(1 for k, _, _ in messages if k.startswith(b"bad-"))
    database = "judgeflow"

    def result(url: str) -> dict[str, set[tuple]]:
        host, port = url.removeprefix("http://").split(":")
        client = clickhouse_connect.get_client(host=host, port=int(port), database=database)
        assert judge_minutes_unexplained(client) == []
        return tables(client)

    with start_chdb_http(tmp_path / "clean_chdb") as url:
        clean = judgeflow_run(tmp_path / "clean_recovery", job_env(kafka, url, judge_endpoint))
        _, err = clean.communicate(timeout=300)
        assert clean.returncode == 0, err.decode()[-3000:]
        want = result(url)

    with start_chdb_http(tmp_path / "chdb", insert_delay_s=0.15) as url:
        env = job_env(kafka, url, judge_endpoint)
        kill_twice_then_finish(url, env, tmp_path / "recovery", database, (500, 2500), len(messages) - bad)
        host, port = url.removeprefix("http://").split(":")
        client = clickhouse_connect.get_client(host=host, port=int(port), database="default")
        assert count(client, f"{database}.llm_events") == len(messages) - bad
        got = result(url)

    assert crash_differences(got, want) == {}
