"""ClickHouse sinks on one process and across two: `build_flow` (judges off) writing over HTTP to a
ClickHouse in another process (the chdb HTTP front), with the write-behind sinks and with inserts in
line, against counting sinks in the same run.

The write-behind sinks take `(shard, records)` pairs routed to the worker that owns the shard; with
two shards (`build_flow(workers=2)`, what `judgeflow run` builds for a cluster of two) each worker keys
its batches to its own shard once it has built it, so only the first batches may cross, and the
in-line sinks write every batch on the worker that made it. "shards 1" routes every pair to one
worker (a contrast: every batch of the other process crosses). The last two rows run the counting sinks
without the re-delivery step (`windows.drop_redeliveries = false`): what its exchange by `event_id`
costs the scaling ("vs 1 process" compares each configuration with itself on one process). The input
is a two-partition in-memory source, each process reading one partition; every configuration runs in
fresh child processes. That source does not align partitions across processes (no progress board): each
process runs ahead on its own, so the two-process rows are a worst case — `bench/scale_out.py` measures
scale-out the way `judgeflow run` reads Kafka.

    .venv/bin/python bench/clickhouse_sinks.py [--events 50000] [--batch 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _traffic import (
    PartitionedSource,
    add_cluster_args,
    batched,
    cluster_span_s,
    median_rate,
    messages,
    run_cluster,
    table,
    without_clickhouse,
)

from flows.config import load_settings
from flows.deps import build_deps

PARTITIONS = 2

# name, processes, ClickHouse (False: counting sinks), write-behind, shards (0: one per worker),
# the re-delivery step (`windows.drop_redeliveries`)
CONFIGS = [
    ("1 process, counting sinks", 1, False, True, 0, True),
    ("1 process, inserts in line", 1, True, False, 0, True),
    ("1 process, write-behind", 1, True, True, 0, True),
    ("2 processes, counting sinks", 2, False, True, 0, True),
    ("2 processes, inserts in line", 2, True, False, 0, True),
    ("2 processes, write-behind (2 shards)", 2, True, True, 0, True),
    ("2 processes, write-behind (shards 1)", 2, True, True, 1, True),
    # what the exchange by event_id costs two processes (see the README's "Scaling")
    ("1 process, counting sinks, no re-delivery step", 1, False, True, 0, False),
    ("2 processes, counting sinks, no re-delivery step", 2, False, True, 0, False),
]


def child(args: argparse.Namespace) -> int:
    """One bytewax process: build the data, run `build_flow`, write what it measured."""
    from bytewax.run import cli_main

    from flows.judgeflow import build_flow
    from sinks.clickhouse import connect, ensure_schema

    overrides = {
        "judges.enabled": False,
        "clickhouse.write_behind": args.write_behind,
        "windows.drop_redeliveries": args.redelivery_step,
    }
    if args.dsn:
        overrides |= {"clickhouse.dsn": args.dsn, "clickhouse.database": args.database}
        ensure_schema(connect(args.dsn, args.database), args.database)
    settings = load_settings(None, env={}, **overrides)
    parts = messages(args.events, partitions=PARTITIONS)
    source = PartitionedSource(lambda p: batched(parts[p], args.batch), PARTITIONS)
    addresses = args.addresses.split(";") if args.addresses else None
    d = build_deps(settings)
    counting = contextlib.nullcontext() if args.dsn else without_clickhouse()
    cpu = time.process_time()
    with counting:
        flow = build_flow(settings, source=source, deps=d, workers=args.shards)
        cli_main(
            flow,
            workers_per_process=1,
            process_id=args.process_id if addresses else None,
            addresses=addresses,
            epoch_interval=timedelta(seconds=10),
        )
    done = time.time()  # the whole flow has finished, not just the source
    cpu = time.process_time() - cpu
    d.close()
    Path(args.out).write_text(json.dumps({**source.marks, "done": done, "cpu": cpu}), encoding="utf-8")
    return 0


def run_processes(
    args: argparse.Namespace,
    processes: int,
    dsn: str,
    write_behind: bool,
    shards: int,
    redelivery_step: bool,
    run: int,
) -> tuple[float, float]:
    """(wall time from the first batch read in any process to the end of the last one, CPU seconds
    of all processes)."""
    child_args = [
        f"--events={args.events}",
        f"--batch={args.batch}",
        f"--dsn={dsn}",
        f"--database=bench_{run}_{processes}_{int(write_behind)}_{shards}",
        f"--shards={shards or processes}",
        *([] if write_behind else ["--in-line"]),
        *([] if redelivery_step else ["--no-redelivery-step"]),
    ]
    results = run_cluster(__file__, processes, child_args, prefix="jf_ch_sinks_")
    return cluster_span_s(results), sum(r["cpu"] for r in results)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    add_cluster_args(p)
    p.add_argument("--in-line", dest="write_behind", action="store_false", help=argparse.SUPPRESS)
    p.add_argument("--dsn", default="", help=argparse.SUPPRESS)
    p.add_argument(
        "--no-redelivery-step", dest="redelivery_step", action="store_false", help=argparse.SUPPRESS
    )
    p.add_argument("--database", default="bench", help=argparse.SUPPRESS)
    p.add_argument("--shards", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    from simulators.chdb_http import start_chdb_http

    walls: dict[str, list[float]] = defaultdict(list)
    cpus: dict[str, list[float]] = defaultdict(list)
    with (
        tempfile.TemporaryDirectory(prefix="jf_ch_sinks_") as tmp,
        start_chdb_http(Path(tmp) / "chdb") as url,
    ):
        for i in range(args.repeat):
            for name, processes, clickhouse, write_behind, shards, step in CONFIGS:
                dsn = url if clickhouse else ""
                wall, cpu = run_processes(args, processes, dsn, write_behind, shards, step, i)
                walls[name].append(wall)
                cpus[name].append(cpu)
            print(f"run {i + 1}/{args.repeat} done", file=sys.stderr)

    n = args.events
    rows = []
    for name, processes, *_ in CONFIGS:
        rate, spread = median_rate(n, walls[name])
        best = n / min(walls[name])
        baseline = n / min(walls[f"{processes} process{'es' if processes > 1 else ''}, counting sinks"])
        cpu = sorted(cpus[name])[len(cpus[name]) // 2] / n * 1e6
        # scaling: against the same configuration on one process
        single = name.replace("2 processes", "1 process").split(" (")[0]
        scale = f"{best / (n / min(walls[single])):.2f}x" if processes > 1 and single in walls else "-"
        rows.append(
            [
                name,
                f"{rate:,.0f}",
                f"{best:,.0f}",
                f"{best / baseline:.2f}x",
                scale,
                f"{cpu:.1f}",
                f"±{spread * 50:.0f}%",
            ]
        )
    print()
    print(
        table(
            f"build_flow, judges off, ClickHouse over HTTP (chdb front in another process): {n:,} events,"
            f" {PARTITIONS} partitions, batches of {args.batch}, {args.repeat} runs, {os.cpu_count()} cores",
            [
                "configuration",
                "events/s (median)",
                "events/s (best)",
                "vs counting sinks (best)",
                "vs 1 process (best)",
                "CPU µs/event, all processes (median)",
                "spread",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
