"""Hot-path throughput with judges off: decode -> price -> dedup -> sample -> windows, one worker.

Same traffic, same process, measured three ways:

- plain Python: a loop calling the same functions and state logic batch by
  batch (decode_message, Pricer, the content keyer and verdict cache, tier-0
  rules and the sampler's tally and choice, the window and rollup logic) —
  the baseline: what the work costs without a dataflow around it;
- bytewax: the operators wired as in `flows/judgeflow.py` (judge and sinks
  left out), fed by an in-memory source in Kafka-sized batches, `run_main`;
- bytewax + sinks (`--sinks`): `build_flow` itself, judges off, writing
  every table to the embedded ClickHouse (chdb) in a temp dir.

    .venv/bin/python bench/throughput.py [--events 100000] [--batch 1000] [--repeat 3] [--sinks]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _traffic import CostPathReference, CountingSink, batched, median_rate, messages, table

from core import metrics
from flows.config import Settings, load_settings
from flows.deps import Deps, build_deps
from operators.decode import decode
from operators.dedup import Candidate, dedup, lookup
from operators.price import price
from operators.sample import _SampleLogic, sample, tally_batch
from operators.windows import cost_window, rollup

REDELIVERIES = [True]  # --no-redeliveries: build_flow without the exactly-once step (its cost)


def settings_for(dsn: str = "", database: str = "bench") -> Settings:
    overrides = {"judges.enabled": False, "windows.drop_redeliveries": REDELIVERIES[0]}
    if dsn:
        overrides |= {"clickhouse.dsn": dsn, "clickhouse.database": database}
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
    )
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


def run_bytewax(settings: Settings, msgs: list, batch: int) -> tuple[float, dict[str, int]]:
    d = build_deps(settings)
    counts: dict[str, int] = defaultdict(int)
    try:
        flow = hot_path_flow(settings, d, msgs, batch, counts)
        started = time.perf_counter()
        run_main(flow)
        return time.perf_counter() - started, dict(counts)
    finally:
        d.close()


def run_plain(settings: Settings, batches: list[list]) -> tuple[float, dict[str, int]]:
    d = build_deps(settings)
    try:
        started = time.perf_counter()
        counts = plain_python(settings, d, batches)
        return time.perf_counter() - started, counts
    finally:
        d.close()


def run_with_sinks(msgs: list, batch: int, chdb_dir: str, run: int) -> float:
    """build_flow itself; chdb opens one directory per process: a fresh database per run."""
    from flows.judgeflow import build_flow

    settings = settings_for(f"chdb://{chdb_dir}", database=f"bench_{run}")
    d = build_deps(settings)
    try:
        flow = build_flow(settings, source=TestingSource(msgs, batch_size=batch), deps=d)
        started = time.perf_counter()
        run_main(flow)
        return time.perf_counter() - started
    finally:
        d.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=1000, help="source batch size (kafka.batch_size)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--sinks", action="store_true", help="also time build_flow with ClickHouse (chdb) sinks")
    p.add_argument("--no-redeliveries", action="store_true", help="build_flow without the re-delivery step")
    args = p.parse_args()
    REDELIVERIES[0] = not args.no_redeliveries

    print(f"generating {args.events:,} events ...", file=sys.stderr)
    msgs = messages(args.events)[0]
    batches = batched(msgs, args.batch)
    settings = settings_for()

    chdb_dir = tempfile.TemporaryDirectory(prefix="jf_bench_")
    results: dict[str, list[float]] = defaultdict(list)
    check: dict[str, dict[str, int]] = {}
    keyed_per_event = 0.0
    for i in range(args.repeat):
        secs, counts = run_plain(settings, batches)
        results["plain Python loop"].append(secs)
        check["plain"] = counts
        before = _keyed()
        secs, counts = run_bytewax(settings, msgs, args.batch)
        results["bytewax, 1 worker"].append(secs)
        check["bytewax"] = counts
        keyed_per_event = (_keyed() - before) / args.events
        if args.sinks:
            secs = run_with_sinks(msgs, args.batch, chdb_dir.name, i)
            results["bytewax + ClickHouse sinks (chdb)"].append(secs)
        print(f"run {i + 1}/{args.repeat} done", file=sys.stderr)

    base = args.events / min(results["plain Python loop"])
    rows = []
    for name, runs in results.items():
        rate, spread = median_rate(args.events, runs)
        best = args.events / min(runs)
        rows.append([name, f"{rate:,.0f}", f"{best:,.0f}", f"{best / base:.2f}x", f"±{spread * 50:.0f}%"])
    print()
    print(
        table(
            f"decode -> price -> dedup -> sample -> windows (+1 h/1 d rollups), judges off: "
            f"{args.events:,} events, batches of {args.batch}, {args.repeat} runs, Python "
            f"{sys.version.split()[0]}, {os.cpu_count()} cores",
            ["path", "events/s (median)", "events/s (best)", "vs plain (best)", "spread"],
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
