"""Soak: millions of events through `build_flow` (judges off), RSS and events/s as they go.

The traffic: the sample traffic's payloads (real prompts, responses and token counts) re-keyed over
`--keys` tenant x agent pairs (1,000 tenants x 100 agents by default) with event times spread evenly
and in order over `--hours` of event time (a day by default), generated batch by batch as the source
hands them out (nothing is held in memory ahead). Every `--every` events the source prints the
process's RSS (VmRSS), the throughput so far and since the previous line, the CPU time per event
since the previous line (steadier than events/s on a shared machine) and the time the cyclic garbage
collector took per event (wall time of its collections, with the flow's `gc.callbacks`); the table at
the end repeats them. What to expect: RSS grows while new keys appear (each stateful step keeps a key's
state once it has seen the key) and with the state a day of event time holds (the 1-day rollups, the
re-delivery seen-set: the longest window plus the lateness), then levels off. With `--churn N` every
tenant's agents are replaced by new ones every N events (keys that come and go), and RSS keeps growing
with the keys ever seen (README, "Keys that come and go") unless the source reports its position as the
flow's Kafka source does (`--positions`): then a cost-window key is dropped once its windows are done
(`windows.drop_finished_keys`; `--keep-finished` keeps every key, to compare).

Sinks: by default the ClickHouse sinks are replaced by counting sinks (the flow's own work only);
`--sinks http` writes every table to ClickHouse over HTTP (the chdb HTTP front in another process),
`--sinks chdb` to the engine inside this process.

    .venv/bin/python bench/soak.py [--events 10000000] [--keys 100000] [--hours 24] [--every 1000000]
        [--batch 5000] [--sinks none|http|chdb] [--dedup-horizon-s S] [--stop-after N] [--churn N]
        [--positions] [--keep-finished]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import run_main

sys.path.insert(0, str(Path(__file__).resolve().parent))

import itertools

from _traffic import TOPIC, table, without_clickhouse

import flows.judgeflow
from flows.config import KafkaConfig, load_settings
from flows.deps import build_deps
from flows.sources import _AlignedPartition
from simulators.traffic import generate

_SLOTS = ("event_id", "ts", "tenant_id", "agent", "conversation_id")
_MARK = "\x00{}\x00"
COUNTS: list[dict[str, int]] = []  # the rows counted per table, without ClickHouse
_GC = {"s": 0.0, "at": 0.0}  # seconds spent in the cyclic garbage collector, with the flow's callbacks


def _collection_starts(phase: str, info: dict[str, Any]) -> None:  # the first callback
    if phase == "start":
        _GC["at"] = time.perf_counter()


def _collection_ends(phase: str, info: dict[str, Any]) -> None:  # the last one
    if phase == "stop":
        _GC["s"] += time.perf_counter() - _GC["at"]


def rss_mb() -> float:
    """This process's resident set size in MB (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Traffic:
    """Payload templates (the sample traffic with its id, time and keys cut out) and the
    deterministic i -> message that fills them in: cheap enough to make 10M on the fly."""

    def __init__(
        self, n: int, *, keys: int, hours: float, agents: int = 100, spread: int = 0, churn: int = 0
    ) -> None:
        self.templates: list[list[bytes]] = []
        for _, value, _ in generate(bad=False):
            d = json.loads(value)
            for slot in _SLOTS:
                d[slot] = _MARK.format(slot)
            text = json.dumps(d)
            for slot in _SLOTS:
                text = text.replace(f'"{_MARK.format(slot)}"'.replace("\x00", "\\u0000"), f"\x00{slot}\x00")
            self.templates.append([part.encode() for part in text.split("\x00")])
        self.n = n
        self.keys = keys
        self.agents = min(agents, keys)
        self.churn = churn  # every `churn` events every tenant's agents are replaced by new ones (0: never)
        self.t0 = 1_700_000_000_000 // 3_600_000 * 3_600_000
        self.step = hours * 3_600_000 / max(spread or n, 1)  # event time as if `spread` events came

    def message(self, i: int) -> KafkaSourceMessage:
        k = (i * 2_654_435_761) % self.keys  # every key, spread over the whole run
        tenant, agent = divmod(k, self.agents)
        if self.churn:
            agent += i // self.churn * self.agents  # a new generation of agents: new keys
        ts = self.t0 + int(i * self.step)
        values = {
            b"event_id": f'"soak-{i}"'.encode(),
            b"ts": str(ts).encode(),
            b"tenant_id": f'"t{tenant:04d}"'.encode(),
            b"agent": f'"a{agent:02d}"'.encode(),
            b"conversation_id": f'"t{tenant:04d}-c{i // 50_000}"'.encode(),
        }
        parts = self.templates[i % len(self.templates)]  # literal, slot, literal, ..., literal
        value = b"".join(p if n % 2 == 0 else values[p] for n, p in enumerate(parts))
        return KafkaSourceMessage(
            key=None, value=value, topic=TOPIC, partition=0, offset=i, timestamp=(1, ts)
        )


class _Partition(StatefulSourcePartition[KafkaSourceMessage, int]):
    def __init__(self, traffic: Traffic, batch: int, every: int, marks: list[dict[str, float]]) -> None:
        self._t = traffic
        self._batch = batch
        self._every = every
        self._marks = marks
        self._i = 0

    def next_batch(self) -> list[KafkaSourceMessage]:
        i, n = self._i, self._t.n
        if i == 0:
            self._mark(0)
        elif i % self._every == 0 or i == n:
            self._mark(i)
        if i >= n:
            raise StopIteration
        end = min(n, i + self._batch, (i // self._every + 1) * self._every)
        self._i = end
        return [self._t.message(j) for j in range(i, end)]

    def _mark(self, i: int) -> None:
        now = time.perf_counter()
        mark = {"events": i, "t": now, "cpu": time.process_time(), "rss": rss_mb(), "gc": _GC["s"]}
        if self._marks and i:
            start, last = self._marks[0], self._marks[-1]
            rate, recent = i / (now - start["t"]), (i - last["events"]) / (now - last["t"])
            cpu = (mark["cpu"] - last["cpu"]) / (i - last["events"]) * 1e6
            collector = (mark["gc"] - last["gc"]) / (i - last["events"]) * 1e6
            print(
                f"{i:>11,} events  RSS {mark['rss']:7.0f} MB  {rate:8,.0f} events/s so far,"
                f" {recent:8,.0f} since {last['events']:,} ({cpu:,.0f} µs CPU/event;"
                f" the collector {collector:,.0f} µs/event)",
                flush=True,
            )
        self._marks.append(mark)

    def snapshot(self) -> int:
        return self._i


class SoakSource(FixedPartitionedSource[KafkaSourceMessage, int]):
    """One partition that makes its messages as it hands them out, marking time and RSS."""

    def __init__(self, traffic: Traffic, *, batch: int, every: int, positions: bool = False) -> None:
        self._args = (traffic, batch, every)
        self._positions = positions
        self.marks: list[dict[str, float]] = []

    def list_parts(self) -> list[str]:
        return ["0"]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> StatefulSourcePartition:
        part = _Partition(*self._args, self.marks)
        if not self._positions:
            return part
        # as the flow's Kafka source: each message tagged with where the partition stood, and how far
        # the flow has processed it reported at every epoch (lateness by position; not aligned)
        return _AlignedPartition(part, f"{TOPIC}-{for_part}", -1)


@contextlib.contextmanager
def clickhouse(kind: str, tmp: str):
    """(dsn, database) for the sinks; none: the counting sinks instead of ClickHouse."""
    if kind == "none":
        with without_clickhouse() as counts:
            COUNTS.append(counts)
            yield "", "soak"
    elif kind == "chdb":
        yield f"chdb://{tmp}/chdb", "soak"
    else:
        from simulators.chdb_http import start_chdb_http

        with start_chdb_http(Path(tmp) / "chdb") as url:
            yield url, "soak"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--keys", type=int, default=100_000, help="tenant x agent pairs (100 agents per tenant)")
    p.add_argument(
        "--churn",
        type=int,
        default=0,
        help="every N events each tenant's agents are replaced by new ones (keys come and go; 0: never)",
    )
    p.add_argument("--hours", type=float, default=24.0, help="event time the events are spread over")
    p.add_argument("--every", type=int, default=0, help="print RSS and events/s every N events (default 1M)")
    p.add_argument(
        "--batch", type=int, default=KafkaConfig().batch_size, help="source batch size (default: the flow's)"
    )
    p.add_argument("--sinks", choices=("none", "http", "chdb"), default="none")
    p.add_argument(
        "--stop-after",
        type=int,
        default=0,
        help="stop after N events, their event times those of the whole --events run (its start, to profile)",
    )
    p.add_argument("--dedup-horizon-s", type=int, default=None, help="windows.dedup_horizon_s")
    p.add_argument(
        "--positions",
        action="store_true",
        help="the source tags positions and reports progress as the flow's Kafka source does",
    )
    p.add_argument("--keep-finished", action="store_true", help="windows.drop_finished_keys = false")
    args = p.parse_args()
    every = args.every or min(1_000_000, max(args.batch, args.events // 10))

    print(f"templates from the sample traffic ... (RSS {rss_mb():.0f} MB)", file=sys.stderr)
    made = min(args.stop_after or args.events, args.events)
    traffic = Traffic(made, keys=args.keys, hours=args.hours, spread=args.events, churn=args.churn)
    source = SoakSource(traffic, batch=args.batch, every=every, positions=args.positions)
    with tempfile.TemporaryDirectory(prefix="jf_soak_") as tmp, clickhouse(args.sinks, tmp) as (dsn, db):
        overrides: dict[str, Any] = {"judges.enabled": False}
        if dsn:
            overrides |= {"clickhouse.dsn": dsn, "clickhouse.database": db}
        if args.dedup_horizon_s is not None:
            overrides["windows.dedup_horizon_s"] = args.dedup_horizon_s
        if args.keep_finished:
            overrides["windows.drop_finished_keys"] = False
        settings = load_settings(None, env={}, **overrides)
        deps = build_deps(settings)
        gc.callbacks.insert(0, _collection_starts)  # around the flow's own (`flows.gc_policy`)
        gc.callbacks.append(_collection_ends)
        try:
            run_main(flows.judgeflow.build_flow(settings, source=source, deps=deps))
        finally:
            deps.close()

    marks = source.marks
    positions = ""
    if args.positions:
        kept = "kept" if args.keep_finished else "dropped"
        positions = f", positions as from Kafka, finished keys {kept}"
    start = marks[0]
    rows = []
    for prev, m in itertools.pairwise(marks):
        rows.append(
            [
                f"{m['events']:,.0f}",
                f"{m['rss']:,.0f}",
                f"{m['events'] / (m['t'] - start['t']):,.0f}",
                f"{(m['events'] - prev['events']) / (m['t'] - prev['t']):,.0f}",
                f"{(m['cpu'] - prev['cpu']) / (m['events'] - prev['events']) * 1e6:,.0f}",
                f"{(m['gc'] - prev['gc']) / (m['events'] - prev['events']) * 1e6:,.0f}",
            ]
        )
    print()
    print(
        table(
            f"build_flow, judges off, sinks: {args.sinks}{positions}; {made:,} events "
            f"(event times of {args.events:,}) "
            f"over {args.keys:,} "
            f"tenant x agent keys and {args.hours:g} h of event time, batches of {args.batch}; "
            f"RSS before the flow {start['rss']:,.0f} MB",
            [
                "events",
                "RSS (MB)",
                "events/s so far",
                "events/s since the previous line",
                "CPU µs/event since",
                "collector µs/event since (wall)",
            ],
            rows,
        )
    )
    if args.sinks == "none":
        written = ", ".join(f"{t} {n:,}" for t, n in sorted(COUNTS[0].items()))
        print(f"\nrows the sinks would have written: {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
