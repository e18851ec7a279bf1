"""What a quiet key costs bytewax's stateful step, kept, on the schedule, or dropped: the trade behind
dropping finished cost-window and rollup keys (README, "Keys that come and go").

A `stateful_batch` step first sees `--quiet` keys once each (one record per key); then `--events` records
over `--hot` keys run through it in batches of `--batch`. The quiet keys are, by configuration:

- dropped: their logic returns `DISCARD` after their record (what a finished key would do);
- kept: retained, asking for no wake-up (what a quiet cost-window key does today);
- scheduled: retained, asking for a wake-up a day away (what a key waiting to be dropped would do).

The table gives the CPU per hot record (the second phase only, from the source's marks) and the RSS the
quiet keys added, for each configuration and number of quiet keys, in one run. The logic does nothing
else, so the differences are bytewax's own per-key work.

    .venv/bin/python bench/schedule_scan.py [--quiet 0,100000,300000] [--events 200000] [--hot 1000]
        [--batch 1000]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.operators import StatefulBatchLogic
from bytewax.testing import run_main

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _traffic import table
from soak import rss_mb

FAR = datetime.now(tz=UTC) + timedelta(days=1)


class _Logic(StatefulBatchLogic[str, str, int]):
    def __init__(self, mode: str) -> None:
        self._mode = mode
        self._n = 0
        self._quiet = False

    def on_batch(self, values: list[str]) -> tuple[Iterable[str], bool]:
        self._n += len(values)
        self._quiet = values[0].startswith("q")
        if self._quiet and self._mode == "dropped":
            return (), StatefulBatchLogic.DISCARD
        return (), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        return FAR if self._quiet and self._mode == "scheduled" else None

    def snapshot(self) -> int:
        return self._n


class _Part(StatefulSourcePartition[str, None]):
    def __init__(self, quiet: int, events: int, hot: int, batch: int, marks: dict[str, float]) -> None:
        self._batches = [[f"q{i}" for i in range(s, min(quiet, s + batch))] for s in range(0, quiet, batch)]
        self._hot = (events, hot, batch)
        self._sent = 0
        self._marks = marks

    def next_batch(self) -> list[str]:
        if self._batches:
            return self._batches.pop(0)
        events, hot, batch = self._hot
        if self._sent == 0:
            gc.collect()
            self._marks.update(cpu=time.process_time(), rss=rss_mb())
        if self._sent >= events:
            self._marks.setdefault("end", time.process_time())
            raise StopIteration
        start, self._sent = self._sent, min(events, self._sent + batch)
        return [f"h{i % hot}" for i in range(start, self._sent)]

    def snapshot(self) -> None:
        return None


class _Source(FixedPartitionedSource[str, None]):
    def __init__(self, *args: int) -> None:
        self._args = args
        self.marks: dict[str, float] = {}

    def list_parts(self) -> list[str]:
        return ["0"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Part:
        return _Part(*self._args, self.marks)


def run(mode: str, quiet: int, events: int, hot: int, batch: int) -> tuple[float, float]:
    """(CPU µs per hot record, RSS MB the quiet keys added over the RSS before them)."""
    gc.collect()
    before = rss_mb()
    source = _Source(quiet, events, hot, batch)
    flow = Dataflow("schedule_scan")
    keyed = op.key_on("key", op.input("in", flow, source), lambda x: x)
    out = op.stateful_batch("step", keyed, lambda resume: _Logic(mode))
    op.inspect("sink", out, lambda step_id, item: None)
    run_main(flow)
    m = source.marks
    return (m["end"] - m["cpu"]) / events * 1e6, m["rss"] - before


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quiet", default="0,100000,300000", help="numbers of quiet keys, comma-separated")
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--hot", type=int, default=1_000)
    p.add_argument("--batch", type=int, default=1_000)
    p.add_argument("--one", default="", help=argparse.SUPPRESS)  # MODE,QUIET: one run, JSON out
    args = p.parse_args()
    if args.one:
        mode, quiet = args.one.split(",")
        print(json.dumps(run(mode, int(quiet), args.events, args.hot, args.batch)))
        return 0
    rows = []
    common = ["--events", str(args.events), "--hot", str(args.hot), "--batch", str(args.batch)]
    for quiet in (int(q) for q in args.quiet.split(",")):
        for mode in ("dropped", "kept", "scheduled"):  # each in its own process: RSS starts clean
            one = [sys.executable, __file__, "--one", f"{mode},{quiet}", *common]
            cpu, added = json.loads(subprocess.run(one, check=True, capture_output=True).stdout)
            rows.append([f"{quiet:,}", mode, f"{cpu:.2f}", f"{added:,.0f}"])
            print(rows[-1], file=sys.stderr, flush=True)
    print(
        table(
            f"bytewax stateful_batch, {args.events:,} records over {args.hot:,} hot keys in batches of "
            f"{args.batch:,}, after the quiet keys' one record each",
            ["quiet keys", "quiet keys are", "CPU µs per hot record", "RSS MB the quiet keys added"],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
