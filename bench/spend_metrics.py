"""What the spend metrics cost the price stage, per event: `operators.price._count` (cost and requests
by tenant, agent and model, tokens, latency histogram, grouped per batch) against the counting the stage
did before them (cost and requests per tenant only) and against the naive way (one update per event),
with pricing itself for scale; then the whole cost path (bench/cost_path.py's plain loop: decode ->
price -> ledger -> windows -> rollups) with either counting. Interleaved runs in one process, on the
sample traffic, so a busy machine slows every variant alike.

    .venv/bin/python bench/spend_metrics.py [--events 100000] [--batch 1000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _traffic
from _traffic import CostPathReference, batched, messages, table

from core import metrics
from core.records import PICO_PER_USD, Event
from flows.config import load_settings
from flows.deps import build_deps
from operators.decode import decode_message
from operators.price import _count


def per_tenant_only(events: list[Event]) -> None:
    """The baseline: the stage's counting before the spend metrics (per tenant, per batch)."""
    per_tenant: dict[str, list[int]] = {}
    for e in events:
        acc = per_tenant.get(e.tenant_id)
        if acc is None:
            acc = per_tenant[e.tenant_id] = [0, 0]
        acc[0] += 1
        acc[1] += e.cost_pusd
    for tenant, (n, pico) in per_tenant.items():
        label = metrics.tenant_label(tenant)
        metrics.REQUESTS.labels(label).inc(n)
        metrics.COST.labels(label, "llm").inc(pico / PICO_PER_USD)
    metrics.EVENTS_IN.inc(len(events))


def per_event(events: list[Event]) -> None:
    """The same metrics as `_count`, one update per event and series."""
    for e in events:
        t, a, m = metrics.llm_labels(e.tenant_id, e.agent, e.model)
        metrics.LLM_REQUESTS.labels(t, a, m).inc()
        metrics.LLM_COST.labels(t, a, m).inc(e.cost_pusd / PICO_PER_USD)
        metrics.REQUESTS.labels(t).inc()
        metrics.COST.labels(t, "llm").inc(e.cost_pusd / PICO_PER_USD)
        model = metrics.model_label(e.model)
        metrics.LLM_TOKENS.labels(t, model, "input").inc(e.input_tokens)
        metrics.LLM_TOKENS.labels(t, model, "output").inc(e.output_tokens)
        if e.cache_read_tokens:
            metrics.LLM_TOKENS.labels(t, model, "cached").inc(e.cache_read_tokens)
        if e.latency_ms is not None:
            metrics.LLM_LATENCY.labels(model).observe(e.latency_ms / 1000)
        metrics.EVENTS_IN.inc()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()

    deps = build_deps(load_settings(None, env={}, **{"judges.enabled": False}))
    msgs = [m for part in messages(args.events, partitions=1) for m in part]
    now_ms = max(m.timestamp[1] for m in msgs) + 60_000
    events = [x for x in (decode_message(m, deps.decode_limits, now_ms) for m in msgs) if type(x) is Event]
    events = [deps.pricer.price(e) for e in events]
    batches = [events[i : i + args.batch] for i in range(0, len(events), args.batch)]
    label_sets = statistics.mean(len({(e.tenant_id, e.agent, e.model) for e in b}) for b in batches)

    def price_all(batch: list[Event]) -> None:
        for e in batch:
            deps.pricer.price(e)

    variants: dict[str, Callable[[list[Event]], None]] = {
        "per tenant only (before the spend metrics; baseline)": per_tenant_only,
        "spend metrics, per batch and label set (the price stage)": _count,
        "spend metrics, one update per event": per_event,
        "pricing itself (for scale)": price_all,
    }
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeat):
        for name, fn in variants.items():
            start = time.perf_counter()
            for b in batches:
                fn(b)
            runs[name].append((time.perf_counter() - start) / len(events) * 1e6)
    settings = load_settings(None, env={}, **{"judges.enabled": False})
    w = settings.flow.windows
    path_batches = list(batched(msgs, args.batch))
    path: dict[str, list[float]] = {"per tenant only": [], "spend metrics": []}
    for _ in range(args.repeat):
        for name, count in (("per tenant only", per_tenant_only), ("spend metrics", _count)):
            _traffic._count = count  # what CostPathReference.batch calls after pricing
            ref = CostPathReference(
                deps.decode_limits,
                deps.pricer,
                size_s=w.size_s,
                lateness_s=w.allowed_lateness_s,
                rollups_s=w.rollups_s,
            )
            start = time.perf_counter()
            for b in path_batches:
                ref.batch(b, now_ms)
            ref.finish()
            path[name].append(len(msgs) / (time.perf_counter() - start))
    _traffic._count = _count
    base = min(runs[next(iter(variants))])
    rows = [
        [
            name,
            f"{min(xs):.2f}",
            f"{statistics.median(xs):.2f}",
            f"{min(xs) - base:+.2f}" if i else "-",
        ]
        for i, (name, xs) in enumerate(runs.items())
    ]
    title = (
        f"metric counting in the price stage: {len(events):,} events in batches of {args.batch}, "
        f"{label_sets:.1f} (tenant, agent, model) label sets per batch, {args.repeat} interleaved runs"
    )
    print(table(title, ["variant", "µs/event (best)", "µs/event (median)", "vs baseline (best)"], rows))
    best = {name: max(xs) for name, xs in path.items()}
    rows = [
        [
            name,
            f"{best[name]:,.0f}",
            f"{statistics.median(xs):,.0f}",
            f"{best[name] / best['per tenant only']:.3f}x",
        ]
        for name, xs in path.items()
    ]
    print()
    print(
        table(
            "the cost path (plain loop: decode -> price -> ledger -> windows -> rollups), same runs",
            ["counting", "events/s (best)", "events/s (median)", "vs per tenant only"],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
