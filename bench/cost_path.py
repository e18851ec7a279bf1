"""Cost-path throughput: decode -> re-delivery dedup -> price -> ledger -> 1-minute windows
-> 1 h / 1 d rollups,
per worker and across two processes, against a plain-Python reference in the same run.

The input is a two-partition in-memory source (as a two-partition Kafka
topic), so two processes each read one partition and the keyed window step
exchanges partial sums between them. Every bytewax configuration runs in
fresh child processes (`cli_main` with process ids and addresses, as
`python -m bytewax.run -i/-a` would); the plain-Python loop runs the same
functions and state logic in one process.

    .venv/bin/python bench/cost_path.py [--events 200000] [--batch 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _traffic import (
    CostPathReference,
    CountingSink,
    PartitionedSource,
    add_cluster_args,
    batched,
    cluster_span_s,
    median_rate,
    messages,
    run_cluster,
    table,
)

from core import metrics
from flows.config import Settings, load_settings
from flows.deps import build_deps
from operators.decode import decode
from operators.ledger import ledger_entry
from operators.price import price
from operators.redeliveries import drop_redeliveries
from operators.rollups import rollup
from operators.windows import cost_window

PARTITIONS = 2


def settings() -> Settings:
    return load_settings(None, env={}, **{"judges.enabled": False})


def cost_path_flow(
    s: Settings, source: PartitionedSource, counts: dict[str, int], *, redeliveries: bool = True
) -> Dataflow:
    """flows/judgeflow.py's cost path, as wired there (`redeliveries=False`: without the
    exactly-once step, the baseline it is measured against)."""
    d = build_deps(s)
    cfg = s.flow
    flow = Dataflow("bench_cost_path")
    raw = op.input("kafka_in", flow, source)
    decoded = decode("decode", raw, limits=d.decode_limits, now_ms=d.now_ms, otlp=d.otlp)
    events = decoded.oks
    if redeliveries:
        events = drop_redeliveries("redeliveries", events, horizon_s=cfg.windows.redelivery_horizon_s).oks
    priced = price("price", events, pricer=d.pricer)
    windows = cost_window(
        "cost_window",
        op.map("ledger", priced.events, ledger_entry),
        size_s=cfg.windows.size_s,
        allowed_lateness_s=cfg.windows.allowed_lateness_s,
    ).rows
    rollups = rollup(
        "rollup", windows, sizes_s=cfg.windows.rollups_s, allowed_lateness_s=cfg.windows.allowed_lateness_s
    )
    op.output("windows_out", op.merge("all_windows", windows, rollups), CountingSink(counts, "windows"))
    op.output("issues_out", priced.issues, CountingSink(counts, "issues"))
    op.output("dead_out", decoded.errs, CountingSink(counts, "dead"))
    return flow


def child(args: argparse.Namespace) -> int:
    """One bytewax process: build the data, run the flow, write what it measured."""
    from bytewax.run import cli_main

    parts = messages(args.events, partitions=PARTITIONS)
    source = PartitionedSource(lambda p: batched(parts[p], args.batch), PARTITIONS)
    counts: dict[str, int] = defaultdict(int)
    flow = cost_path_flow(settings(), source, counts, redeliveries=not args.no_redeliveries)
    addresses = args.addresses.split(";") if args.addresses else None
    cli_main(
        flow,
        workers_per_process=args.workers,
        process_id=args.process_id if addresses else None,
        addresses=addresses,
        epoch_interval=timedelta(seconds=10),
    )
    done = time.time()  # the whole flow has finished, not just the source
    keyed = metrics.WINDOW_ENTRIES.labels("cost_window", "keyed")._value.get()
    entries = metrics.WINDOW_ENTRIES.labels("cost_window", "in")._value.get()
    Path(args.out).write_text(
        json.dumps({**source.marks, "done": done, **counts, "keyed": keyed, "entries": entries}),
        encoding="utf-8",
    )
    return 0


def run_processes(
    events: int, batch: int, processes: int, workers: int, *, redeliveries: bool = True
) -> tuple[float, dict]:
    """Wall time from the first batch read in any process to the end of the last one."""
    child_args = [
        f"--events={events}",
        f"--batch={batch}",
        f"--workers={workers}",
        *([] if redeliveries else ["--no-redeliveries"]),
    ]
    results = run_cluster(__file__, processes, child_args, prefix="jf_cost_path_")
    totals = {k: sum(r.get(k, 0) for r in results) for k in ("windows", "keyed", "entries", "dead")}
    return cluster_span_s(results), totals


def run_plain(events: int, batch: int) -> tuple[float, int]:
    s = settings()
    d = build_deps(s)
    parts = messages(events, partitions=PARTITIONS)
    ref = CostPathReference(
        d.decode_limits,
        d.pricer,
        size_s=s.flow.windows.size_s,
        lateness_s=s.flow.windows.allowed_lateness_s,
        rollups_s=s.flow.windows.rollups_s,
    )
    # the two partitions interleaved batch by batch, as one worker would read them
    batches = [b for pair in zip(*(batched(p, batch) for p in parts), strict=False) for b in pair]
    started = time.time()
    for b in batches:
        ref.batch(b, d.now_ms())
    ref.finish()
    return time.time() - started, ref.rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    add_cluster_args(p)
    p.add_argument("--no-redeliveries", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    configs = [
        ("plain Python loop, 1 process", 0, 0, True),
        ("bytewax, 1 process x 1 worker", 1, 1, True),
        ("bytewax, 1 process x 1 worker, no re-delivery dedup", 1, 1, False),
        ("bytewax, 1 process x 2 workers (threads)", 1, 2, True),
        ("bytewax, 2 processes x 1 worker", 2, 1, True),
        ("bytewax, 2 processes x 1 worker, no re-delivery dedup", 2, 1, False),
    ]
    runs: dict[str, list[float]] = defaultdict(list)
    info: dict[str, dict] = {}
    for i in range(args.repeat):
        for name, processes, workers, redeliveries in configs:
            if processes == 0:
                secs, rows = run_plain(args.events, args.batch)
                info[name] = {"windows": rows}
            else:
                secs, info[name] = run_processes(
                    args.events, args.batch, processes, workers, redeliveries=redeliveries
                )
            runs[name].append(secs)
        print(f"run {i + 1}/{args.repeat} done", file=sys.stderr)

    plain = args.events / min(runs[configs[0][0]])
    one = args.events / min(runs[configs[1][0]])
    rows = []
    for name, processes, workers, _ in configs:
        rate, _ = median_rate(args.events, runs[name])
        best = args.events / min(runs[name])
        per_worker = best / max(1, processes * workers)
        crossing = info[name].get("keyed", 0) / args.events if processes else 0.0
        rows.append(
            [
                name,
                f"{rate:,.0f}",
                f"{best:,.0f}",
                f"{per_worker:,.0f}",
                f"{best / plain:.2f}x",
                f"{best / one:.2f}x",
                f"{crossing:.3f}" if processes else "-",
                f"{info[name]['windows']:,}",
            ]
        )
    print()
    print(
        table(
            f"cost path (decode -> price -> ledger -> 1 min windows -> 1 h/1 d rollups):"
            f" {args.events:,} events, {PARTITIONS} partitions, batches of {args.batch},"
            f" {args.repeat} runs, {os.cpu_count()} cores",
            [
                "configuration",
                "events/s (median)",
                "events/s (best)",
                "per worker (best)",
                "vs plain",
                "vs 1 worker",
                "keyed items/event",
                "window rows",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
