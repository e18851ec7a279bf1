"""Scale-out on the real input: `build_flow` (judges off, counting sinks) reading a topic on the
librdkafka mock cluster to its end, on one process and on a cluster of two, with and without the
re-delivery step (`windows.drop_redeliveries`).

Unlike `bench/clickhouse_sinks.py`, whose in-memory source lets each process run ahead on its own
partition, this reads through judgeflow's Kafka source: partitions aligned in event time, across
processes through the progress board, as `judgeflow run` does. Events/s is over the span from the
first event stored (`llm_events`) to the last, in any process; the whole run (consumer start-up, the
progress board's first exchange, the end of a bounded input) is shown beside it. "Cost-window rows" is
how many rows the `cost_windows` sink received (every size, provisional and correction rows included):
about the same on one and two processes when no window closes before all of its events are in.

    .venv/bin/python bench/scale_out.py [--events 100000] [--rate 500] [--partitions 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _traffic import TOPIC, WRITTEN, add_cluster_args, payloads, run_cluster, table, without_clickhouse

from flows.config import load_settings
from flows.deps import build_deps

# name, processes, the re-delivery step
CONFIGS = [
    ("1 process", 1, True),
    ("2 processes", 2, True),
    ("1 process, no re-delivery step", 1, False),
    ("2 processes, no re-delivery step", 2, False),
]


def child(args: argparse.Namespace) -> int:
    """One process of the cluster: run `build_flow` on the topic to its end, write what it measured."""
    from bytewax.run import cli_main

    from flows.cli import progress_board
    from flows.judgeflow import build_flow

    settings = load_settings(
        None,
        env={},
        **{
            "judges.enabled": False,
            "kafka.brokers": args.brokers,
            "kafka.tail": False,
            "clickhouse.database": args.database,  # names this run's progress-board group
            "windows.drop_redeliveries": args.redelivery_step,
        },
    )
    addresses = args.addresses.split(";") if args.addresses else None
    d = build_deps(settings)
    board = progress_board(settings, d.brokers, addresses)
    started, cpu = time.time(), time.process_time()
    with without_clickhouse() as rows:
        cli_main(
            build_flow(settings, deps=d, workers=len(addresses or [""])),
            workers_per_process=1,
            process_id=args.process_id if addresses else None,
            addresses=addresses,
            epoch_interval=timedelta(seconds=10),
        )
    result = {
        "started": started,
        "done": time.time(),
        "cpu": time.process_time() - cpu,
        "rows": dict(rows),
        "events": WRITTEN.get("llm_events", [started, started]),
    }
    if board is not None:
        board.close()
    d.close()
    Path(args.out).write_text(json.dumps(result), encoding="utf-8")
    return 0


def retimed(values: list[tuple[bytes, int]], rate: float) -> list[tuple[str, bytes, int]]:
    """The payloads keyed for the partitioner, at `rate` events per second of event time from the
    first one's time (the sample traffic's own times are ~1 a second: a replay of that would be
    held to its partitions' alignment, not to the flow's speed)."""
    t0 = values[0][1]
    out = []
    for i, (value, _) in enumerate(values):
        d = json.loads(value)
        d["ts"] = t0 + int(i * 1000 / rate)
        out.append((f"k{i}", json.dumps(d).encode(), d["ts"]))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--partitions", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--rate", type=float, default=500.0, help="events per second of event time")
    add_cluster_args(p)
    p.add_argument("--brokers", default="", help=argparse.SUPPRESS)
    p.add_argument("--database", default="bench", help=argparse.SUPPRESS)
    p.add_argument(
        "--no-redelivery-step", dest="redelivery_step", action="store_false", help=argparse.SUPPRESS
    )
    args = p.parse_args()
    if args.child:
        return child(args)

    from simulators.kafka_mock import MockCluster, produce_all

    walls: dict[str, list[float]] = defaultdict(list)
    cpus: dict[str, list[float]] = defaultdict(list)
    windows: dict[str, list[int]] = defaultdict(list)
    runs: dict[str, list[float]] = defaultdict(list)
    with MockCluster() as kafka:
        kafka.create_topic(TOPIC, args.partitions)
        keyed = retimed(payloads(args.events), args.rate)
        n = produce_all(kafka.bootstrap, TOPIC, keyed)
        for i in range(args.repeat):
            for name, processes, step in CONFIGS:
                child_args = [
                    f"--brokers={kafka.bootstrap}",
                    f"--database=scale_{i}_{processes}_{int(step)}",
                    *([] if step else ["--no-redelivery-step"]),
                ]
                results = run_cluster(__file__, processes, child_args, prefix="jf_scale_")
                stored = sum(r["rows"].get("llm_events", 0) for r in results)
                if stored != n:  # the mock broker keeps ~5 MB a partition: use more partitions
                    msg = f"{name}: {stored:,} of {n:,} events stored; more --partitions?"
                    raise RuntimeError(msg)
                # from the first event stored to the last, in any process (start-up and the end's
                # waits left out: they are seconds, whatever the input)
                span = max(r["events"][1] for r in results) - min(r["events"][0] for r in results)
                walls[name].append(span)
                runs[name].append(max(r["done"] for r in results) - min(r["started"] for r in results))
                cpus[name].append(sum(r["cpu"] for r in results))
                windows[name].append(sum(r["rows"].get("cost_windows", 0) for r in results))
            print(f"run {i + 1}/{args.repeat} done", file=sys.stderr)

    rows = []
    for name, processes, _ in CONFIGS:
        best = n / min(walls[name])
        single = name.replace("2 processes", "1 process")
        scale = f"{best / (n / min(walls[single])):.2f}x" if processes > 1 else "-"
        rows.append(
            [
                name,
                f"{n / statistics.median(walls[name]):,.0f}",
                f"{best:,.0f}",
                scale,
                f"{statistics.median(cpus[name]) / n * 1e6:.1f}",
                "/".join(f"{w:,}" for w in sorted(set(windows[name]))),
                f"{statistics.median(runs[name]):.1f}",
            ]
        )
    print()
    print(
        table(
            f"build_flow on Kafka (mock cluster), judges off, counting sinks: {n:,} events,"
            f" {args.rate:,.0f} a second of event time, {args.partitions} partitions, {args.repeat} runs,"
            f" {os.cpu_count()} cores",
            [
                "configuration",
                "events/s (median)",
                "events/s (best)",
                "vs 1 process (best)",
                "CPU µs/event, all processes (median)",
                "cost-window rows",
                "whole run, s (median)",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
