"""Alert-stage cost: the seven rules evaluated at every minute end of every
tenant, during a replay (all minutes arrive at once), against a plain-Python
trailing-hour burn rate (one rule, no lifecycle) in the same run.

    .venv/bin/python bench/alerts.py [--tenants 200] [--hours 6] [--repeat 3]

Rows are 1-minute cost windows: per tenant 3 agents x 2 variants, so 6 rows
per tenant-minute. "evaluations" = tenant-minutes evaluated (each runs every
enabled rule).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from datetime import UTC, datetime

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from core.records import CostWindow
from flows.config import load_settings
from flows.deps import build_alert_policy
from operators.alerts import _AlertLogic, alerts

MIN = 60_000
T0 = int(datetime(2024, 3, 10, tzinfo=UTC).timestamp() * 1000)


def rows(tenants: int, hours: int) -> list[CostWindow]:
    out = []
    for m in range(hours * 60):
        for t in range(tenants):
            for agent in ("chat", "search", "code"):
                for variant in ("baseline", "finetuned"):
                    # spend ramps for every 10th tenant, so levels do change
                    pico = (2_000_000_000 if t % 10 else 2_000_000_000 * (1 + m // 30)) * (
                        1 + (variant == "finetuned")
                    )
                    out.append(
                        CostWindow(
                            T0 + m * MIN, MIN, f"tenant-{t}", agent, "gpt-4o-mini", variant,
                            60, 30_000, 9_000, pico, 0, 0, 0, pico // 60, 1,
                        )
                    )  # fmt: skip
    return out


def plain_reference(data: list[CostWindow]) -> int:
    """Trailing-hour spend per tenant at every minute end: the old single rule."""
    per_min: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for w in data:
        per_min[w.tenant_id][w.window_start_ms] += w.cost_pusd
    evaluations = 0
    for minutes in per_min.values():
        window, total = [], 0
        for start in sorted(minutes):
            window.append(minutes[start])
            total += minutes[start]
            if len(window) > 60:
                total -= window.pop(0)
            evaluations += 1
    return evaluations


def logic_only(data: list[CostWindow], policy) -> int:
    by_tenant: dict[str, list[CostWindow]] = defaultdict(list)
    for w in data:
        by_tenant[w.tenant_id].append(w)
    alerts_out = 0
    for tenant_rows in by_tenant.values():
        logic = _AlertLogic(policy, lambda: 0.0, None)
        out, _ = logic.on_batch(tenant_rows)  # a replay: everything at once ...
        alerts_out += len(list(out))
        out, _ = logic.on_eof()  # ... evaluated minute by minute once it has settled
        alerts_out += len(list(out))
    return alerts_out


def in_dataflow(data: list[CostWindow], policy, batch: int) -> int:
    flow = Dataflow("alerts_bench")
    windows = op.input("in", flow, TestingSource(data, batch_size=batch))
    nothing = op.filter("none", windows, lambda _: False)
    out = alerts("alerts", windows, op.map("slot", nothing, lambda _: None), policy=policy)
    got: list = []
    op.output("out", out.alerts, TestingSink(got))
    run_main(flow)
    return len(got)


def timed(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", type=int, default=200)
    ap.add_argument("--hours", type=int, default=6)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    data = rows(args.tenants, args.hours)
    evaluations = args.tenants * args.hours * 60
    policy = build_alert_policy(load_settings(env={}))
    only_burn = build_alert_policy(
        load_settings(
            env={},
            **{
                f"alerts.{r}.enabled": False
                for r in (
                    "daily_spend",
                    "monthly_projection",
                    "variant_cost",
                    "expensive_requests",
                    "volume_spike",
                )
            },
        )
    )
    print(
        f"{len(data):,} window rows: {args.tenants} tenants x {args.hours} h = {evaluations:,} tenant-minutes"
    )
    runs = [
        ("plain Python: trailing-hour burn only", lambda: plain_reference(data)),
        ("alert logic: burn rate only", lambda: logic_only(data, only_burn)),
        ("alert logic: all rules", lambda: logic_only(data, policy)),
        ("bytewax operator, 1 worker: all rules", lambda: in_dataflow(data, policy, args.batch)),
    ]
    results = [(name, *timed(fn, args.repeat)) for name, fn in runs]
    base = results[0][1]
    print(f"{'what':<48} {'rows/s':>12} {'evaluations/s':>14} {'vs plain':>9} {'alerts':>7}")
    for name, secs, n in results:
        print(
            f"{name:<48} {len(data) / secs:>12,.0f} {evaluations / secs:>14,.0f} {base / secs:>8.2f}x {n:>7}"
        )


if __name__ == "__main__":
    main()
