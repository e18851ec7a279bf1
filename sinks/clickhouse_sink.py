"""The ClickHouse sinks: each writes one judgeflow record type into its table.

Two ways to wait for an insert, the same rows:

- `WriteBehindClickHouseSink` (the flow's default): a bytewax `FixedPartitionedSink`. A partition
  builds the rows in the worker, as before, and hands them to a writer thread of its own (one per
  partition, so its rows land in the order they were handed over). The thread inserts the rows that
  waited together: once `insert_rows` wait, once the first has waited `linger_s`, or at the epoch's
  end; while `insert_rows` rows wait behind the insert in flight, `write_batch` waits. `snapshot()`
  returns only once every row handed over is acknowledged. bytewax 0.21 calls it at the end of every
  epoch for each partition written in that epoch — with or without recovery — and commits the epoch
  only after it returned, so no epoch commits before its rows are in ClickHouse: the guarantee of a
  sink that waits for each insert, with the wait moved to the epoch's end and overlapped with the
  worker's work. An insert that fails for good in the writer thread is raised in the worker at the
  next `write_batch` or `snapshot` (the flow stops, as it does when an insert fails in line); `close`
  never raises (it logs such a failure), because bytewax closes partitions while it unwinds.
- `ClickHouseSink`: a `DynamicSink` that inserts each batch and returns from `write_batch` when the
  insert is acknowledged (`clickhouse.write_behind = false`).

A write-behind sink takes `(shard, records)` pairs, which `key_batches` makes: one pair per batch.
Each shard is a partition, and bytewax routes a pair to the worker that owns its shard (it spreads
the `shards` over the workers, one each when there are as many). A worker keys its batches to a
shard it owns once it has built one, so they stay on it; until then it deals them round robin, which
builds every shard's partition on its owner. With one worker nothing ever crosses; with several,
only the first batches may. Which writer thread inserts a row never changes a table: rows with the
same key are identical, or the newest `version` wins.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.outputs import DynamicSink, FixedPartitionedSink, StatefulSinkPartition, StatelessSinkPartition
from clickhouse_connect.driver.insert import InsertContext

from core.dead_letters import guarded, item_error
from core.records import DeadLetter
from sinks.clickhouse import (
    FAILURES,
    RETRIES,
    ROWS,
    InsertRejectedError,
    LockedClient,
    check_dsn,
    check_identifier,
    connect,
    ensure_schema_once,
    insert_context,
    is_data_fault,
    retry,
)
from sinks.clickhouse_rows import dead_letter_row, event_row
from sinks.clickhouse_tables import table_spec

logger = logging.getLogger(__name__)

CLOSE_WAIT_S = 5.0  # how long `close` waits for an insert in flight (the thread is a daemon)
INSERT_ROWS = 10_000  # a write-behind partition inserts once this many rows wait ...
LINGER_S = 1.0  # ... or once the first of them has waited this long (or at the epoch's end)
MAX_SHARDS = 64  # partitions every worker lists: a cluster uses its worker count of them
_PARTS = [f"{i:02d}" for i in range(MAX_SHARDS)]


class _TableWriter:
    """One table's rows: built from records, inserted, and a batch the client cannot encode split in
    halves until the records it rejects alone are found. Such a record, or one whose row cannot be built,
    becomes a dead letter (stage `sink_<table>`) in the `dead_letters` table, and the rest is written. A
    rejection by the server (a missing table, wrong credentials) is a setup problem and raises."""

    def __init__(
        self,
        client: LockedClient,
        context: InsertContext,
        table: str,
        build_row: Callable[[Any], tuple[Any, ...]],
        max_retry_s: float,
    ) -> None:
        self._client = client
        self._context = context
        self._spec = table_spec(table)
        self._build_row = build_row
        self._max_retry_s = max_retry_s
        self._stage = f"sink_{table}"
        self._dead_context: InsertContext | None = None

    def rows(self, items: list[Any]) -> tuple[list[tuple[Any, tuple[Any, ...]]], list[DeadLetter]]:
        """(record, row) for each record whose row could be built, and dead letters for the others."""
        record_type = self._spec.record_type
        for item in items:
            if not isinstance(item, record_type):  # a wiring bug: fail at the first batch
                msg = (
                    f"ClickHouse sink for {self._spec.name!r} expects {record_type.__name__} "
                    f"records, got {type(item).__name__}: {item!r:.200}"
                )
                raise TypeError(msg)
        build_row = self._build_row
        return guarded(self._stage, lambda xs: [(x, build_row(x)) for x in xs], items)

    def write(self, rows: list[tuple[Any, tuple[Any, ...]]], dead: list[DeadLetter]) -> None:
        """Insert `rows`, then the dead letters: those given and those the insert found."""
        dead = dead + self._write(rows)
        if dead:
            self._write_dead_letters(dead)

    def _write(self, rows: list[tuple[Any, tuple[Any, ...]]]) -> list[DeadLetter]:
        if not rows:
            return []
        try:
            # a rejected row is found below and dead-lettered: not a failure of the sink
            self._insert_rows(self._context, self._spec.name, [row for _, row in rows], count_rejection=False)
        except InsertRejectedError as exc:
            if not is_data_fault(exc):
                FAILURES.labels(self._spec.name).inc()
                raise
            if len(rows) == 1:
                return [item_error(self._stage, exc, rows[0][0])]
            mid = len(rows) // 2
            return self._write(rows[:mid]) + self._write(rows[mid:])
        if self._spec.on_written is not None:
            self._spec.on_written([record for record, _ in rows])
        return []

    def _write_dead_letters(self, dead: list[DeadLetter]) -> None:
        if self._spec.name == "dead_letters":  # nowhere further to put them
            msg = f"ClickHouse rejected dead letters: {[d.reason for d in dead][:3]}"
            raise InsertRejectedError(msg)
        if self._dead_context is None:
            spec = table_spec("dead_letters")
            self._dead_context = insert_context(self._client, spec, self._client.database)
        self._insert_rows(self._dead_context, "dead_letters", [dead_letter_row(d) for d in dead])

    def _insert_rows(
        self, context: InsertContext, table: str, rows: list[tuple[Any, ...]], *, count_rejection: bool = True
    ) -> None:
        # Column-oriented: the Native encoder works per column, and handing it
        # columns measured ~5-10% faster than row tuples.
        columns = list(zip(*rows, strict=True))
        retry(
            lambda: self._insert(context, columns),
            table=table,
            action="insert",
            max_retry_s=self._max_retry_s,
            count_rejection=count_rejection,
        )
        ROWS.labels(table).inc(len(rows))

    def _insert(self, context: InsertContext, columns: list[tuple[Any, ...]]) -> None:
        # A fresh `data` resets the reusable context, also after a failed attempt.
        context.insert_exception = None
        context.data = columns
        try:
            self._client.insert(context=context)
        finally:
            context.data = None


class _WriterThread:
    """Inserts the rows handed to it, in order, on a thread of its own (started with the first).

    Rows wait to go in together: an insert takes everything waiting once `insert_rows` rows wait, once
    the first of them has waited `linger_s`, or when `flush` or `close` asks. So a partition makes one
    insert per `insert_rows` rows or per `linger_s`, not one per batch: each insert costs the worker
    ~1-2 ms of the client's CPU whatever its size, and a ClickHouse server makes a part of each.
    `submit` waits while `insert_rows` rows wait behind the insert in flight. The first insert that
    fails is kept, the rows after it are dropped, and `check` raises it in the caller."""

    def __init__(
        self, name: str, table: _TableWriter, *, insert_rows: int = INSERT_ROWS, linger_s: float = LINGER_S
    ) -> None:
        self._name = name
        self._table = table
        self._insert_rows = insert_rows
        self._linger_s = linger_s
        self._cond = threading.Condition()
        self._rows: list[tuple[Any, tuple[Any, ...]]] = []  # waiting, not yet taken by an insert
        self._dead: list[DeadLetter] = []
        self._first_at = 0.0  # when the oldest waiting batch was handed over (monotonic)
        self._handed = 0  # batches handed over
        self._done = 0  # batches whose insert returned (or that were dropped after a failure)
        self._flushing = 0  # callers waiting in flush()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._error: Exception | None = None
        self._raised = False

    def submit(self, rows: list[tuple[Any, tuple[Any, ...]]], dead: list[DeadLetter]) -> None:
        self.check()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        with self._cond:
            while len(self._rows) >= self._insert_rows and self._error is None:
                self._cond.wait()
            self.check()
            if not (self._rows or self._dead):
                self._first_at = time.monotonic()
            self._rows += rows
            self._dead += dead
            self._handed += 1
            self._cond.notify_all()

    def flush(self) -> None:
        """Wait until every row handed over is inserted; raise the first insert that failed."""
        with self._cond:
            handed = self._handed
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._done < handed and self._error is None:
                    self._cond.wait()
            finally:
                self._flushing -= 1
        self.check()

    def check(self) -> None:
        if self._error is not None:
            self._raised = True
            raise self._error

    def close(self) -> None:
        """Stop the thread; never raises. bytewax snapshots every partition (`flush`) before it closes
        them at the end of the input, so rows still waiting here belong to an epoch that will not
        commit — the flow is stopping on an error — and are dropped: a restart writes them again from
        the last snapshot. bytewax also closes partitions while it unwinds from that error, where a
        second exception aborts the process and loses the first one's message; so an insert failure
        not raised yet is logged here instead."""
        if self._thread is None:
            return
        with self._cond:
            self._closing = True
            self._rows, self._dead = [], []
            self._cond.notify_all()
        self._thread.join(CLOSE_WAIT_S)  # an insert in flight may be retrying for `max_retry_s`
        self._thread = None
        if self._error is not None and not self._raised:
            logger.error("ClickHouse writer %s stopped on: %s", self._name, self._error)

    def _take(self) -> tuple[list[tuple[Any, tuple[Any, ...]]], list[DeadLetter], int] | None:
        """What the next insert writes, when it is due; None when closing with nothing left."""
        with self._cond:
            while not (self._rows or self._dead):
                if self._closing:
                    return None
                self._cond.wait()
            while (due_in := self._due_in()) > 0:
                self._cond.wait(due_in)
            taken = self._rows, self._dead, self._handed
            self._rows, self._dead = [], []
            self._cond.notify_all()  # room for submit
            return taken

    def _due_in(self) -> float:
        """Seconds until the rows that wait are due (called with rows waiting, under the lock)."""
        if self._flushing or self._closing or len(self._rows) >= self._insert_rows:
            return 0.0
        return self._first_at + self._linger_s - time.monotonic()

    def _run(self) -> None:
        while (taken := self._take()) is not None:
            rows, dead, handed = taken
            try:
                if self._error is None:
                    self._table.write(rows, dead)
            except Exception as ex:
                logger.debug("ClickHouse writer %s failed: %r", self._name, ex)
                self._error = ex
            with self._cond:
                self._done = handed
                self._cond.notify_all()


class _ClickHouseSinkPartition(StatelessSinkPartition[Any]):
    """One insert per batch, acknowledged before `write_batch` returns."""

    def __init__(self, writer: _TableWriter) -> None:
        self._writer = writer

    def write_batch(self, items: list[Any]) -> None:
        if items:
            self._writer.write(*self._writer.rows(items))


class _WriteBehindPartition(StatefulSinkPartition[list[Any], None]):
    """Rows built here and handed to this partition's writer thread; `snapshot()` waits for them."""

    def __init__(self, writer: _TableWriter, thread: _WriterThread) -> None:
        self._writer = writer
        self._thread = thread

    def write_batch(self, values: list[list[Any]]) -> None:
        items = values[0] if len(values) == 1 else list(itertools.chain.from_iterable(values))
        if not items:
            return
        self._thread.check()  # a failed insert stops the worker before it builds more rows
        self._thread.submit(*self._writer.rows(items))

    def snapshot(self) -> None:
        # the epoch commits after this returns: its rows must be in ClickHouse by then
        self._thread.flush()

    def close(self) -> None:
        self._thread.close()


class _ClickHouseTable:
    """Settings shared by both sinks, and how a worker opens its writer."""

    def __init__(
        self, dsn: str, database: str, table: str, *, store_text: bool = False, max_retry_s: float = 60.0
    ) -> None:
        if max_retry_s < 0:
            msg = f"{type(self).__name__}({table!r}): max_retry_s must be >= 0, got {max_retry_s}"
            raise ValueError(msg)
        check_dsn(dsn)  # fail at flow build time on a malformed DSN, without connecting
        self.dsn = dsn
        self.database = check_identifier(database)
        self.spec = table_spec(table)
        self.store_text = store_text
        self.max_retry_s = max_retry_s

    def _row_builder(self) -> Callable[[Any], tuple[Any, ...]]:
        if self.spec.build_row is event_row:
            store_text = self.store_text
            return lambda e: event_row(e, store_text=store_text)
        return self.spec.build_row

    def _open(self) -> tuple[LockedClient, InsertContext]:
        client = connect(self.dsn, self.database)
        ensure_schema_once(client, self.database)
        return client, insert_context(client, self.spec, self.database)

    def _writer(self) -> _TableWriter:
        """Open the shared client on this worker (retrying like an insert) and make sure the
        schema exists."""
        client, context = retry(
            self._open, table=self.spec.name, action="connect", max_retry_s=self.max_retry_s
        )
        # the series exist at 0 from the start: Prometheus's increase() misses a series' first value
        RETRIES.labels(self.spec.name)
        FAILURES.labels(self.spec.name)
        return _TableWriter(client, context, self.spec.name, self._row_builder(), self.max_retry_s)


class ClickHouseSink(_ClickHouseTable, DynamicSink[Any]):
    """Write one judgeflow record type into its ClickHouse table, one insert per batch, acknowledged
    before the next batch.

    Args:
        dsn: where ClickHouse is (see `sinks.clickhouse.connect`).
        database: the judgeflow database; created with its tables if missing.
        table: one of `TABLES` (`llm_events`, `evaluations`, `cost_windows`,
            `alerts`, `dead_letters`, `pricing_issues`, ...); the records must be of its type.
        store_text: keep prompts and responses in `llm_events` (off by default).
        max_retry_s: how long to keep retrying a failing connect or insert
            (exponential backoff with jitter) before raising.
    """

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ClickHouseSinkPartition:
        return _ClickHouseSinkPartition(self._writer())


class WriteBehindClickHouseSink(_ClickHouseTable, FixedPartitionedSink[list[Any], None]):
    """`ClickHouseSink`'s rows, inserted by a writer thread per partition and flushed before each
    epoch commits (see the module docstring). Takes the `(shard, records)` pairs of `key_batches`;
    the arguments are `ClickHouseSink`'s, and:

    Args:
        insert_rows: a partition inserts once this many rows wait (and the worker waits while as
            many wait behind the insert in flight).
        linger_s: ... or once the first waiting row has waited this long; every epoch's end inserts
            what waits in any case.
    """

    def __init__(
        self,
        dsn: str,
        database: str,
        table: str,
        *,
        store_text: bool = False,
        max_retry_s: float = 60.0,
        insert_rows: int = INSERT_ROWS,
        linger_s: float = LINGER_S,
    ) -> None:
        super().__init__(dsn, database, table, store_text=store_text, max_retry_s=max_retry_s)
        if insert_rows < 1 or linger_s < 0:
            msg = f"{type(self).__name__}({table!r}): insert_rows must be >= 1 and linger_s >= 0"
            raise ValueError(msg)
        self.insert_rows = insert_rows
        self.linger_s = linger_s
        self._owned: dict[int, str] = {}  # worker thread (of this process) -> a shard it owns

    def owned_shard(self) -> str | None:
        """A shard whose partition the calling worker thread has built, if any."""
        return self._owned.get(threading.get_ident())

    def list_parts(self) -> list[str]:
        # Every worker lists the same fixed set, whatever the cluster's size, so a restart on
        # another worker count finds every partition its snapshots name.
        return _PARTS

    def part_fn(self, item_key: str) -> int:
        return int(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _WriteBehindPartition:
        # nothing to resume: what an epoch handed over is written before it commits
        self._owned.setdefault(threading.get_ident(), str(int(for_part)))  # bytewax builds it on its owner
        writer = self._writer()
        thread = _WriterThread(
            f"clickhouse-{step_id}-{for_part}", writer, insert_rows=self.insert_rows, linger_s=self.linger_s
        )
        return _WriteBehindPartition(writer, thread)


@operator
def key_batches(
    step_id: str, up: Stream[Any], *, sink: WriteBehindClickHouseSink, shards: int = 1
) -> Stream[tuple[str, list[Any]]]:
    """`(shard, records)` pairs for `sink`, one per batch: the shard the worker owns once it has
    built one, round robin over `shards` until then. `shards` is the number of workers to spread
    the inserts over (at most `MAX_SHARDS`); with one, every batch stays on its worker."""
    if not 1 <= shards <= MAX_SHARDS:
        msg = f"{step_id}: shards must be in 1..{MAX_SHARDS}, got {shards}"
        raise ValueError(msg)
    if shards == 1:
        return op.flat_map_batch("shard", up, lambda records: [("0", records)])
    turns = itertools.count()

    def pair(records: list[Any]) -> list[tuple[str, list[Any]]]:
        shard = sink.owned_shard()
        if shard is None:
            shard = str(next(turns) % shards)
        return [(shard, records)]

    return op.flat_map_batch("shard", up, pair)


__all__ = [
    "INSERT_ROWS",
    "LINGER_S",
    "MAX_SHARDS",
    "ClickHouseSink",
    "WriteBehindClickHouseSink",
    "key_batches",
]
