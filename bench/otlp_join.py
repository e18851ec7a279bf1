"""OTLP content join cost: what taking items in by where their partitions stood (the clock with Kafka
input) costs against the shard's newest time (the clock without), through the join's logic alone.

Each call is a span without content, its prompt's log record and its answer's, spread over three
partitions with a call starting every 50 ms of event time and lasting 1 s; every item is tagged with
where its partition stood, as the Kafka source tags it. Batches of `--batch` items; with the
partition clock the flow's processed position moves to where the last batch's partitions stood
before each batch, so items wait one batch, as they wait about one epoch in a run. Counted: items
through per second, median of `--repeat`.

    .venv/bin/python bench/otlp_join.py [--calls 50000] [--batch 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _traffic import median_rate, table

from core.records import Event, Source
from operators.otlp import OtlpCall, OtlpContent
from operators.otlp_join import _JoinLogic
from operators.owed import OwedWork

T0 = 1_795_379_050_000
Item = OtlpCall | OtlpContent


class _Progress:
    def __init__(self, kafka: bool) -> None:
        self.kafka = kafka
        self.at: int | None = -1

    def has_input(self) -> bool:
        return self.kafka

    def processed_ms(self) -> int | None:
        return self.at


def items(calls: int) -> list[Item]:
    out: list[Item] = []
    stood = [-1, -1, -1]
    offsets = [0, 0, 0]

    def source(partition: int, written_ms: int) -> Source:
        s = Source("otlp", partition, offsets[partition], stood[partition] if stood[partition] >= 0 else None)
        offsets[partition] += 1
        stood[partition] = max(stood[partition], written_ms)
        return s

    for i in range(calls):
        start = T0 + 50 * i
        end = start + 1_000
        key = f"{i:032x}:{i:016x}"
        out.append(OtlpContent(key, start, (start, 0, 0, 0), "user", "q", source=source(i % 3, start)))
        event = Event(
            key, start, "acme", "bot", "gpt-4o-mini", "openai", "baseline", "", "", None,
            10, 5, 0, 0, 0, None, 20.0, None, None, {}, source((i + 1) % 3, end),
        )  # fmt: skip
        out.append(OtlpCall(key, end, event, False))
        out.append(
            OtlpContent(key, end, (end, 0, 0, 1), "assistant", "a", 0, source=source((i + 2) % 3, end))
        )
    return sorted(out, key=lambda x: x.end_ms if isinstance(x, OtlpCall) else x.ts_ms)


def run(all_items: list[Item], batch: int, *, kafka: bool) -> tuple[float, int]:
    progress = _Progress(kafka)
    join = _JoinLogic(5_000, lambda: 0.0, None, call_max_ms=900_000, progress=progress, joined=OwedWork())
    sent = 0
    began = time.perf_counter()
    for i in range(0, len(all_items), batch):
        chunk = all_items[i : i + batch]
        got, _ = join.on_batch([chunk])
        sent += sum(len(x) for x in got)
        progress.at = min(_after(x) for x in chunk[-3:])  # where the last batch's partitions stood
    got, _ = join.on_eof()
    sent += sum(len(x) for x in got)
    return time.perf_counter() - began, sent


def _after(x: Item) -> int:
    source = x.event.source if isinstance(x, OtlpCall) else x.source
    assert source is not None and source.after_ms is not None
    return source.after_ms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=1_000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    all_items = items(args.calls)
    n = len(all_items)
    rows, base = [], 0.0
    for name, kafka in (
        ("shard's newest time (no Kafka input)", False),
        ("where the partitions stood", True),
    ):
        runs, sent = [], set()
        for _ in range(args.repeat):
            took, out = run(all_items, args.batch, kafka=kafka)
            runs.append(took)
            sent.add(out)
        rate, spread = median_rate(n, runs)
        base = base or rate
        rows.append(
            [
                name,
                f"{rate:,.0f}",
                f"{1e6 / rate:.2f}",
                f"{rate / base:.2f}x",
                f"{spread:.0%}",
                str(sent.pop()),
            ]
        )
    header = ["clock", "items/s (median)", "µs/item", "vs shard clock", "spread", "calls sent on"]
    print(table(f"OTLP join, {args.calls:,} calls ({n:,} items), batches of {args.batch:,}", header, rows))


if __name__ == "__main__":
    main()
