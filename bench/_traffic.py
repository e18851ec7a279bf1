"""Bench traffic and the plain-Python reference loops shared by the bench scripts.

Traffic: `simulators.traffic.generate()` (real Azure arrival times and token
counts, ~28k events over ~1 h), repeated as often as needed with fresh event
ids, each repetition shifted forward in event time so windows keep closing as
in production (not replayed into the same minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from core.records import Event
from operators.decode import DecodeLimits, decode_message
from operators.ledger import combine_events, key_of
from operators.price import Pricer, _count, pricing_issue
from operators.rollups import _RollupLogic
from operators.windows import _WindowLogic
from simulators.ports import free_port
from simulators.traffic import generate

HOUR_MS = 3_600_000
TOPIC = "llm-events"


def payloads(n: int) -> list[tuple[bytes, int]]:
    """n (JSON value, ts) pairs: the sample traffic, cycled with fresh ids and later times."""
    base = [(v, ts) for _, v, ts in generate(bad=False)]
    span = (max(ts for _, ts in base) - min(ts for _, ts in base)) // HOUR_MS * HOUR_MS + HOUR_MS
    out = []
    cycle = 0
    while len(out) < n:
        if cycle == 0:
            out.extend(base[: n - len(out)])
        else:
            for v, ts in base[: n - len(out)]:
                d = json.loads(v)
                d["event_id"] = f"{d['event_id']}-r{cycle}"
                d["ts"] = ts + cycle * span
                out.append((json.dumps(d).encode(), d["ts"]))
        cycle += 1
    return out


def messages(n: int, *, partitions: int = 1, offset: int = 0) -> list[list[KafkaSourceMessage]]:
    """The payloads as Kafka messages, dealt round-robin to `partitions` partitions."""
    parts: list[list[KafkaSourceMessage]] = [[] for _ in range(partitions)]
    for i, (value, ts) in enumerate(payloads(n)):
        p = (i + offset) % partitions
        parts[p].append(
            KafkaSourceMessage(
                key=None, value=value, topic=TOPIC, partition=p, offset=len(parts[p]), timestamp=(1, ts)
            )
        )
    return parts


def batched(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class _Partition(StatefulSourcePartition[KafkaSourceMessage, int]):
    def __init__(self, batches: list[list[KafkaSourceMessage]], marks: dict[str, float]) -> None:
        self._batches = batches
        self._i = 0
        self._marks = marks

    def next_batch(self) -> list[KafkaSourceMessage]:
        if self._i == 0:
            self._marks.setdefault("first", time.time())  # wall clock: compared across processes
        if self._i >= len(self._batches):
            self._marks["last"] = time.time()
            raise StopIteration
        self._i += 1
        return self._batches[self._i - 1]

    def snapshot(self) -> int:
        return self._i


class PartitionedSource(FixedPartitionedSource[KafkaSourceMessage, int]):
    """An in-memory source with several partitions (like a Kafka topic): each
    process builds only the partitions it is assigned. `marks` gets the time of
    the first and the last batch handed out."""

    def __init__(self, make: Callable[[int], list[list[KafkaSourceMessage]]], n: int) -> None:
        self._make = make
        self._n = n
        self.marks: dict[str, float] = {}

    def list_parts(self) -> list[str]:
        return [str(i) for i in range(self._n)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Partition:
        return _Partition(self._make(int(for_part)), self.marks)


# --- the plain-Python reference ------------------------------------------------------


class CostPathReference:
    """decode -> price -> ledger -> windows -> rollups with the same functions and
    state logic the operators use, in a plain loop, one batch at a time."""

    def __init__(
        self, limits: DecodeLimits, pricer: Pricer, *, size_s: int, lateness_s: int, rollups_s
    ) -> None:
        self.limits = limits
        self.pricer = pricer
        self.size_ms = size_s * 1000
        self.lateness_ms = lateness_s * 1000
        self.rollups_ms = [s * 1000 for s in rollups_s]
        self.windows: dict[str, _WindowLogic] = {}
        self.rollups: dict[str, _RollupLogic] = {}
        self.reported: set[tuple[str, str, int]] = set()
        self.newest = 0
        self.rows = 0

    def batch(self, msgs: list[KafkaSourceMessage], now_ms: int) -> list[Event]:
        events = [x for x in (decode_message(m, self.limits, now_ms) for m in msgs) if type(x) is Event]
        events = [self.pricer.price(e) for e in events]
        _count(events)
        for e in events:
            if e.cost_source == "unknown":
                key = (e.model, e.provider, e.ts_ms // 86_400_000)
                if key not in self.reported:
                    self.reported.add(key)
                    pricing_issue(e.model, e.provider, e.ts_ms)
        self.windows_of(events)
        return events

    def windows_of(self, events: list[Event]) -> None:
        if not events:
            return
        self.newest = max(self.newest, max(x.ts_ms for x in events))
        per_key: dict[str, list] = {}
        for x in combine_events(events, self.size_ms, self.newest - self.lateness_ms):
            per_key.setdefault(key_of(x), []).append(x)
        for key, values in per_key.items():
            logic = self.windows.get(key)
            if logic is None:
                logic = self.windows[key] = _WindowLogic(self.size_ms, self.lateness_ms, time.time, None)
            rows, _ = logic.on_batch(values)
            self.rollup(list(rows))

    def rollup(self, rows: list) -> None:
        self.rows += len(rows)
        if not rows or not self.rollups_ms:
            return
        key = key_of(rows[0]) + "|" + rows[0].category
        logic = self.rollups.get(key)
        if logic is None:
            logic = self.rollups[key] = _RollupLogic(
                self.rollups_ms, self.lateness_ms, lambda: time.time_ns() // 1000, None
            )
        out, _ = logic.on_batch(rows)
        self.rows += len(list(out))

    def finish(self) -> None:
        for logic in self.windows.values():
            rows, _ = logic.on_eof()
            self.rollup(list(rows))


def median_rate(n: int, runs: list[float]) -> tuple[float, float]:
    """(events/s at the median run time, relative spread of the run times)."""
    med = statistics.median(runs)
    spread = (max(runs) - min(runs)) / med if len(runs) > 1 else 0.0
    return n / med, spread


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = [title, "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join(lines)


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    """The hidden arguments `run_cluster` passes each child: `--child`, `--process-id`, `--addresses`
    and `--out`."""
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--addresses", default="", help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)


def run_cluster(script: str, processes: int, args: list[str], *, prefix: str) -> list[dict[str, Any]]:
    """Run `script --child` as a bytewax cluster of `processes` on free loopback ports, each child with
    `args`, its `--process-id`, the cluster's `--addresses` and an `--out` file it writes its results to
    as JSON; returns those results in process order."""
    ports = [free_port() for _ in range(processes)]
    addresses = ";".join(f"127.0.0.1:{p}" for p in ports) if processes > 1 else ""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    script,
                    "--child",
                    *args,
                    f"--process-id={i}",
                    f"--addresses={addresses}",
                    f"--out={tmp}/{i}.json",
                ]
            )
            for i in range(processes)
        ]
        for p in procs:
            if p.wait(timeout=1800) != 0:
                msg = f"bench child exited with {p.returncode}"
                raise RuntimeError(msg)
        return [json.loads(Path(f"{tmp}/{i}.json").read_text()) for i in range(processes)]


def cluster_span_s(results: list[dict[str, Any]]) -> float:
    """Wall time from the first batch read in any process to the end of the last one."""
    return max(r["done"] for r in results) - min(r["first"] for r in results if "first" in r)


def chunks(it: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch = []
    for x in it:
        batch.append(x)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Count(StatelessSinkPartition):
    def __init__(self, counts: dict[str, int], name: str) -> None:
        self._counts, self._name = counts, name

    def write_batch(self, items: list) -> None:
        self._counts[self._name] += len(items)
        _mark(self._name)


# per sink name, the wall time of the first and the last batch it received
WRITTEN: dict[str, list[float]] = {}


def _mark(name: str) -> None:
    now = time.time()  # wall clock: compared across processes
    WRITTEN.setdefault(name, [now, now])[1] = now


class CountingSink(DynamicSink):
    """Counts what reaches it, per name (the benches' stand-in for the real sinks)."""

    def __init__(self, counts: dict[str, int], name: str) -> None:
        self._counts, self._name = counts, name

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Count:
        return _Count(self._counts, self._name)


class _CountingClickHouseSink(DynamicSink):
    """Stands in for `ClickHouseSink` in `build_flow`: counts the rows per table, writes nothing."""

    counts: dict[str, int] = defaultdict(int)

    def __init__(self, dsn: str, database: str, table: str, **_kwargs: Any) -> None:
        self._table = table

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Count:
        return _Count(self.counts, self._table)


class _CountKeyed(StatelessSinkPartition):
    def __init__(self, counts: dict[str, int], name: str) -> None:
        self._counts, self._name = counts, name

    def write_batch(self, items: list) -> None:
        self._counts[self._name] += sum(len(records) for _, records in items)
        _mark(self._name)


class _CountingWriteBehindSink(_CountingClickHouseSink):
    """Stands in for `WriteBehindClickHouseSink`: counts the rows of its `(shard, records)` pairs."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CountKeyed:  # type: ignore[override]
        return _CountKeyed(self.counts, self._table)

    def owned_shard(self) -> str | None:
        return None


@contextlib.contextmanager
def without_clickhouse() -> Iterator[dict[str, int]]:
    """`build_flow` with counting sinks in place of the ClickHouse ones (the flow's own work
    only); yields the rows counted per table."""
    import flows.judgeflow

    real = flows.judgeflow.ClickHouseSink, flows.judgeflow.WriteBehindClickHouseSink
    flows.judgeflow.ClickHouseSink = _CountingClickHouseSink  # type: ignore[misc,assignment]
    flows.judgeflow.WriteBehindClickHouseSink = _CountingWriteBehindSink  # type: ignore[misc,assignment]
    _CountingClickHouseSink.counts.clear()
    try:
        yield _CountingClickHouseSink.counts
    finally:
        flows.judgeflow.ClickHouseSink, flows.judgeflow.WriteBehindClickHouseSink = real  # type: ignore[misc]
