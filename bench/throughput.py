"""Hot-path throughput with judges off: decode -> price -> dedup -> sample -> windows, one worker.

Same traffic, same process, measured three ways:

- plain Python: a loop calling the same functions and state logic batch by
  batch (decode_message, Pricer, the content keyer and verdict cache, tier-0
  rules and the sampler's tally and choice, the window and rollup logic) —
  the baseline: what the work costs without a dataflow around it;
- bytewax: the operators wired as in `flows/judgeflow.py` (judge and sinks
  left out), fed by an in-memory source in Kafka-sized batches, `run_main`;
- bytewax + sinks (`--sinks`): `build_flow` itself, judges off: first with
  counting sinks in place of ClickHouse (every stage of the flow, no
  ClickHouse client: the baseline the sinks' cost is read against), then
  writing every table to ClickHouse twice over: over HTTP to a server in another
  process (the chdb HTTP front, `sinks.chdb_http`, in a subprocess: the
  deployment shape, where the worker pays only the client's side), and to
  the embedded engine (chdb) inside the worker's own process, which also
  pays for executing the inserts. Each both ways: write-behind (the default:
  inserts on the sinks' writer threads, flushed at the epoch's end) and in
  line (`clickhouse.write_behind = false`: the worker waits for each insert).

"CPU" is this process's CPU time per event, all its threads: with chdb in this process that
includes the engine's inserts; over HTTP it leaves out the server's work, so it is what a worker
pays per event, while events/s also counts the time the worker waits for each insert's answer.
Over HTTP the table also shows the server's side: its CPU per event (the front's process, engine
included) and the INSERTs it received per run.

    .venv/bin/python bench/throughput.py [--events 100000] [--batch 1000] [--repeat 3] [--sinks]
                                         [--server-wait-ms 20]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _traffic import (
    CostPathReference,
    CountingSink,
    batched,
    median_rate,
    messages,
    table,
    without_clickhouse,
)

from core import metrics
from flows.config import Settings, load_settings
from flows.deps import Deps, build_deps
from operators.decode import decode
from operators.dedup import Candidate, dedup, lookup
from operators.price import price
from operators.rollups import rollup
from operators.sample import _SampleLogic, sample
from operators.sample_tally import tally_batch
from operators.windows import cost_window
from simulators.chdb_http import front_stats

NO_CLICKHOUSE = "build_flow, counting sinks instead of ClickHouse"
OVER_HTTP = "build_flow + ClickHouse sinks over HTTP (server in another process)"
EMBEDDED = "build_flow + ClickHouse sinks (chdb engine in this process)"
IN_LINE = ", inserts in line"  # clickhouse.write_behind = false: the worker waits for each insert
REDELIVERIES = [True]  # --no-redeliveries: build_flow without the exactly-once step (its cost)


def settings_for(dsn: str = "", database: str = "bench", *, write_behind: bool = True) -> Settings:
    overrides = {"judges.enabled": False, "windows.drop_redeliveries": REDELIVERIES[0]}
    if dsn:
        overrides |= {"clickhouse.dsn": dsn, "clickhouse.database": database}
        overrides |= {"clickhouse.write_behind": write_behind}
    return load_settings(None, env={}, **overrides)


def hot_path_flow(settings: Settings, d: Deps, msgs: list, batch: int, counts: dict[str, int]) -> Dataflow:
    """flows/judgeflow.py from kafka_in to the windows, without the judge and the sinks."""
    cfg = settings.flow
    flow = Dataflow("bench_hot_path")
    raw = op.input("kafka_in", flow, TestingSource(msgs, batch_size=batch))
    decoded = decode("decode", raw, limits=d.decode_limits, now_ms=d.now_ms, otlp=d.otlp)
    priced = price("price", decoded.oks, pricer=d.pricer)
    looked_up = dedup("dedup", priced.events, cache=d.cache, keyer=d.keyer, llm_metrics=d.plan.llm_metrics)
    sampled = sample(
        "sample", looked_up.cands, sampler=d.sampler, rules=d.rules, control=d.control, baseline=d.baseline
    )
    windows = cost_window(
        "cost_window",
        priced.events,
        size_s=cfg.windows.size_s,
        allowed_lateness_s=cfg.windows.allowed_lateness_s,
    ).rows
    rollups = rollup(
        "rollup", windows, sizes_s=cfg.windows.rollups_s, allowed_lateness_s=cfg.windows.allowed_lateness_s
    )
    for name, stream in (
        ("events", sampled.events),
        ("judge", sampled.judge),
        ("windows", op.merge("all_windows", windows, rollups)),
        ("issues", priced.issues),
        ("dead", decoded.errs),
    ):
        op.output(f"count_{name}", stream, CountingSink(counts, name))
    return flow


def plain_python(settings: Settings, d: Deps, batches: list[list]) -> dict[str, int]:
    """The same work in a loop: the functions and state logic the operators call."""
    cfg = settings.flow
    ref = CostPathReference(
        d.decode_limits,
        d.pricer,
        size_s=cfg.windows.size_s,
        lateness_s=cfg.windows.allowed_lateness_s,
        rollups_s=cfg.windows.rollups_s,
    )
    samplers: dict[str, _SampleLogic] = {}
    chosen = 0

    for msgs in batches:
        events = ref.batch(msgs, d.now_ms())  # decode, price, windows and rollups
        # dedup: one cache lookup per batch; sample: flag, stratify, tally; choose per tenant
        cands = [Candidate(e) for e in events]
        lookup(cands, cache=d.cache, keyer=d.keyer, llm_metrics=d.plan.llm_metrics)
        parts = tally_batch(cands, sampler=d.sampler, rules=d.rules, baseline=d.baseline)
        per_tenant: dict[str, list] = defaultdict(list)
        for p in parts:
            per_tenant[p.tenant].append(p)
        for tenant, ps in per_tenant.items():
            logic = samplers.get(tenant)
            if logic is None:
                logic = samplers[tenant] = _SampleLogic(d.sampler, time.time, None)
            out, _ = logic.on_batch(ps)
            chosen += sum(1 for x in out if type(x) is Candidate and x.inclusion_prob > 0)
    ref.finish()
    for logic in samplers.values():
        out, _ = logic.on_eof()
        chosen += sum(1 for x in out if type(x) is Candidate and x.inclusion_prob > 0)
    return {"windows": ref.rows, "judge": chosen}


@contextlib.contextmanager
def measured() -> Iterator[Took]:
    """Wall clock and this process's CPU time (every thread's) of the block."""
    took = Took()
    wall, cpu = time.perf_counter(), time.process_time()
    yield took
    took.wall, took.cpu = time.perf_counter() - wall, time.process_time() - cpu


@dataclass
class Took:
    wall: float = 0.0
    cpu: float = 0.0
    server_cpu: float | None = None  # the HTTP server's CPU time over the block
    inserts: int | None = None  # INSERTs the HTTP server received in it


def run_bytewax(settings: Settings, msgs: list, batch: int) -> tuple[Took, dict[str, int]]:
    d = build_deps(settings)
    counts: dict[str, int] = defaultdict(int)
    try:
        flow = hot_path_flow(settings, d, msgs, batch, counts)
        with measured() as took:
            run_main(flow)
        return took, dict(counts)
    finally:
        d.close()


def run_plain(settings: Settings, batches: list[list]) -> tuple[Took, dict[str, int]]:
    d = build_deps(settings)
    try:
        with measured() as took:
            counts = plain_python(settings, d, batches)
        return took, counts
    finally:
        d.close()


def run_with_sinks(msgs: list, batch: int, dsn: str, run: int, *, write_behind: bool = True) -> Took:
    """build_flow itself into ClickHouse at `dsn` (none: counting sinks instead); a fresh database
    per run (chdb opens one directory per process), its tables made before the clock starts, as a
    restart finds them. `write_behind=False`: the sinks wait for each insert in line."""
    from flows.judgeflow import build_flow
    from sinks.clickhouse import connect, ensure_schema

    database = f"bench_{run}" if write_behind else f"bench_{run}_in_line"
    settings = settings_for(dsn, database=database, write_behind=write_behind)
    if dsn:
        ensure_schema(connect(dsn, database), database)
    d = build_deps(settings)
    try:
        flow = build_flow(settings, source=TestingSource(msgs, batch_size=batch), deps=d)
        over_http = dsn.startswith("http")
        before = front_stats(dsn) if over_http else {}
        with measured() as took:
            run_main(flow)
        if over_http:
            after = front_stats(dsn)
            took.server_cpu = after["cpu_s"] - before["cpu_s"]
            took.inserts = int(after["inserts"] - before["inserts"])
        return took
    finally:
        d.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=1000, help="source batch size (kafka.batch_size)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--sinks",
        action="store_true",
        help="also time build_flow with ClickHouse sinks (over HTTP; chdb in-process)",
    )
    p.add_argument("--no-redeliveries", action="store_true", help="build_flow without the re-delivery step")
    p.add_argument(
        "--server-wait-ms",
        type=float,
        default=0.0,
        help="the HTTP server answers each insert this much later, without using CPU (a remote ClickHouse)",
    )
    args = p.parse_args()
    REDELIVERIES[0] = not args.no_redeliveries

    print(f"generating {args.events:,} events ...", file=sys.stderr)
    msgs = messages(args.events)[0]
    batches = batched(msgs, args.batch)
    settings = settings_for()

    chdb_dir = tempfile.TemporaryDirectory(prefix="jf_bench_")
    server = contextlib.ExitStack()
    http_dsn = ""
    if args.sinks:
        from simulators.chdb_http import start_chdb_http

        front = start_chdb_http(Path(chdb_dir.name) / "server", insert_delay_s=args.server_wait_ms / 1000)
        http_dsn = server.enter_context(front)
    results: dict[str, list[Took]] = defaultdict(list)
    check: dict[str, dict[str, int]] = {}
    keyed_per_event = 0.0
    for i in range(args.repeat):
        took, counts = run_plain(settings, batches)
        results["plain Python loop"].append(took)
        check["plain"] = counts
        before = _keyed()
        took, counts = run_bytewax(settings, msgs, args.batch)
        results["bytewax, 1 worker"].append(took)
        check["bytewax"] = counts
        keyed_per_event = (_keyed() - before) / args.events
        if args.sinks:
            with without_clickhouse():
                results[NO_CLICKHOUSE].append(run_with_sinks(msgs, args.batch, "", i))
            embedded = f"chdb://{chdb_dir.name}/embedded"
            for name, dsn in ((OVER_HTTP, http_dsn), (EMBEDDED, embedded)):
                results[name].append(run_with_sinks(msgs, args.batch, dsn, i))
                results[name + IN_LINE].append(run_with_sinks(msgs, args.batch, dsn, i, write_behind=False))
        print(f"run {i + 1}/{args.repeat} done", file=sys.stderr)
    server.close()

    n = args.events
    base = n / min(t.wall for t in results["plain Python loop"])
    flow_base = n / min(t.wall for t in results[NO_CLICKHOUSE]) if args.sinks else 0.0
    rows = []
    for name, runs in results.items():
        walls = [t.wall for t in runs]
        rate, spread = median_rate(n, walls)
        best = n / min(walls)
        vs_flow = f"{best / flow_base:.2f}x" if name.startswith((OVER_HTTP, EMBEDDED)) else ""
        cpu = statistics.median(t.cpu for t in runs) / n * 1e6
        server_cpu = [t.server_cpu for t in runs if t.server_cpu is not None]
        inserts = [t.inserts for t in runs if t.inserts is not None]
        rows.append(
            [
                name,
                f"{rate:,.0f}",
                f"{best:,.0f}",
                f"{best / base:.2f}x",
                vs_flow,
                f"{cpu:.1f}",
                f"{statistics.median(server_cpu) / n * 1e6:.1f}" if server_cpu else "",
                f"{statistics.median(inserts):,.0f}" if inserts else "",
                f"±{spread * 50:.0f}%",
            ]
        )
    print()
    print(
        table(
            f"decode -> price -> dedup -> sample -> windows (+1 h/1 d rollups), judges off: "
            f"{args.events:,} events, batches of {args.batch}, {args.repeat} runs, Python "
            f"{sys.version.split()[0]}, {os.cpu_count()} cores",
            [
                "path",
                "events/s (median)",
                "events/s (best)",
                "vs plain (best)",
                "vs no ClickHouse (best)",
                "CPU µs/event (median)",
                "server CPU µs/event (median)",
                "inserts (median)",
                "spread",
            ],
            rows,
        )
    )
    print(
        f"\nsame work: window rows plain {check['plain']['windows']:,} / bytewax"
        f" {check['bytewax']['windows']:,}, chosen for judging plain {check['plain']['judge']:,} / bytewax"
        f" {check['bytewax']['judge']:,};"
        f" ledger partial sums crossing the keyed window step: {keyed_per_event:.3f} per event"
    )
    return 0


def _keyed() -> float:
    sample_value = metrics.WINDOW_ENTRIES.labels("cost_window", "keyed")._value.get()
    return float(sample_value)


if __name__ == "__main__":
    raise SystemExit(main())
