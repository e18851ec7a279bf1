"""The re-delivery seen-set: memory and CPU per event, sealed arrays against the plain dict.

One shard's `_SeenLogic` (operators/redeliveries.py) fed `--events` first deliveries spread evenly
over `--hours` of event time (a day by default) in batches of `--batch`, with 2% of each batch
re-delivered; beside it, in the same run, the plain dict it replaced (id hash -> fingerprint, hour
buckets: ~100 bytes per id). Prints, at every quarter: the ids remembered, the memory they hold
(tracemalloc, Python and numpy allocations), the pickled snapshot size, and the CPU µs per event
(from a second run of the same input without tracemalloc).

    .venv/bin/python bench/seen_set.py [--events 1000000] [--hours 24] [--batch 64]
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.records import Event, Source, entry_hash
from operators.redeliveries import _BUCKET_MS, _SeenLogic, fingerprint

HOUR = 3_600_000


class PlainDict:
    """The seen-set before sealing: every remembered id in a dict, hour buckets to forget them."""

    def __init__(self, horizon_ms: int) -> None:
        self.horizon = horizon_ms
        self.newest = -1
        self.seen: dict[int, int] = {}
        self.buckets: dict[int, list[int]] = {}

    def on_batch(self, values: list[list[Event]]) -> None:
        for e in values[0]:
            h = entry_hash(e.event_id)
            fp = fingerprint(e)
            if self.seen.get(h) is None:
                self.seen[h] = fp
                self.buckets.setdefault(e.ts_ms - e.ts_ms % _BUCKET_MS, []).append(h)
                self.newest = max(self.newest, e.ts_ms)
        edge = self.newest - self.horizon
        for b in [b for b in self.buckets if b + _BUCKET_MS <= edge]:
            for h in self.buckets.pop(b):
                self.seen.pop(h, None)

    def snapshot(self) -> tuple:
        return self.newest, dict(self.seen), {b: list(x) for b, x in self.buckets.items()}


def event(i: int, ts_ms: int) -> Event:
    return Event(
        f"evt-{i:012d}", ts_ms, "acme", "bot", "gpt-4o-mini", "openai", "baseline", "hi", "ok", None,
        10, 5, 0, 0, 0, None, None, None, None, {}, Source("llm-events", 0, i),
    )  # fmt: skip


def run(
    kind: str, n: int, hours: float, batch: int, *, traced: bool
) -> list[tuple[int, int, float, int, float]]:
    """Feed one seen-set; at every quarter (done, ids held, bytes per id, snapshot bytes, CPU µs per event).
    With `traced`, memory is measured (tracemalloc slows every allocation: the CPU column is not
    meaningful then); without, it is 0."""
    horizon = int(24.5 * HOUR)
    logic = _SeenLogic(horizon, None) if kind == "sealed" else PlainDict(horizon)
    step = hours * HOUR / n
    t0 = 1_700_000_000_000 // HOUR * HOUR
    rows = []
    if traced:
        tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    cpu = 0.0
    marks = sorted(n * q // 4 for q in range(1, 5))
    for start in range(0, n, batch):
        events = [event(i, t0 + int(i * step)) for i in range(start, min(n, start + batch))]
        events += events[: max(1, batch // 50)]  # 2% re-delivered
        c = time.process_time()
        logic.on_batch([events])
        cpu += time.process_time() - c
        done = min(n, start + batch)
        if marks and done >= marks[0]:
            marks = [m for m in marks if m > done]
            held = tracemalloc.get_traced_memory()[0] - base
            snap = logic.snapshot()
            size = len(pickle.dumps(snap, protocol=pickle.HIGHEST_PROTOCOL))
            ids = snap.remembered() if kind == "sealed" else len(snap[1])
            rows.append((done, ids, held / max(ids, 1), size, cpu / done * 1e6))
            del snap
    tracemalloc.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    print(f"{args.events:,} first deliveries over {args.hours:g} h of event time, batches of {args.batch}")
    print("| form | events | ids held | bytes/id | snapshot MB | CPU µs/event |")
    print("|---|---|---|---|---|---|")
    for kind in ("plain dict", "sealed"):
        timed = run(kind, args.events, args.hours, args.batch, traced=False)
        traced = run(kind, args.events, args.hours, args.batch, traced=True)
        for (done, ids, per_id, size, _), (*_, us) in zip(traced, timed, strict=True):
            print(f"| {kind} | {done:,} | {ids:,} | {per_id:.0f} | {size / 1e6:.1f} | {us:.2f} |")


if __name__ == "__main__":
    main()
