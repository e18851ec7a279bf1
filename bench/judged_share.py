"""The share of events judged per traffic shape, without and with a judged-share ceiling.

The real sampler at its defaults (10% base rate, K = 2 per stratum, tier-0 flags and
conversations over `always_over_tokens` judged in full) on:

- the labelled shapes of bench/_coverage.py (XSTest refusals, Presidio PII with forced tier-0
  flags, HaluEval whose longer half is always judged, XSTest in many small strata), with the
  95% interval width and coverage of the stratified estimate (a perfect judge: the labels);
- the demo traffic (simulators/traffic.py, the packaged sample) per tenant, from a flood of short
  chats to a tenant with a handful of events per minute.

Per shape and `sampling.max_judged_share` (none, the default 0.2, 0.1): the share of events
judged and of events forced (tier-0 flags, length), the largest share in any one (tenant,
60 s window) of at least 20 events, and on the labelled shapes the stratified interval's mean
width and coverage per window and per period over `--seeds` sampler versions.

    .venv/bin/python bench/judged_share.py [--seeds 20] [--demo-events 30000] [--shapes ...]
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter

from _coverage import BASELINE, RULES, SHAPES, event, sample_domains
from _traffic import table

from core.records import Event
from operators.dedup import Candidate
from operators.estimates import stratified_estimate
from operators.sample import _SampleLogic
from operators.sample_design import Sampler, StratumCount
from operators.sample_tally import tally_batch
from simulators.traffic import generate

CEILINGS = (0.0, 0.2, 0.1)
BUSY = 20  # events in a (tenant, window) for its share to count in the peak (K / s at the defaults: 10)


def shares(events: list[Event], sampler: Sampler) -> tuple[float, float, float]:
    """(judged share, forced share, largest share in one (tenant, window) of at least BUSY events)."""
    logics: dict[str, _SampleLogic] = {}
    out = []
    for i in range(0, len(events), 500):
        cands = [Candidate(e, e.event_id, {}, ()) for e in events[i : i + 500]]
        for part in tally_batch(cands, sampler=sampler, rules=RULES, baseline=BASELINE):
            logic = logics.setdefault(part.tenant, _SampleLogic(sampler, lambda: 0.0, None))
            out.extend(logic.on_batch([part])[0])
    for logic in logics.values():
        out.extend(logic.on_eof()[0])
    size = sampler.window_s * 1000
    chosen = Counter((c.event.tenant_id, c.event.ts_ms // size) for c in out if isinstance(c, Candidate))
    n = Counter((e.tenant_id, e.ts_ms // size) for e in events)
    forced = sum(x.events for x in out if isinstance(x, StratumCount) and _certain(x))
    busy = [chosen[k] / n[k] for k in n if n[k] >= BUSY]
    return sum(chosen.values()) / len(events), forced / len(events), max(busy, default=math.nan)


def _certain(x: StratumCount) -> bool:
    return x.stratum.endswith("\x1fcertain")


def width(name: str, share: float, seeds: int) -> list[str]:
    """The stratified estimate's mean 95% width and coverage, per window and per period."""
    shape = SHAPES[name]()
    acc = {"window": [0, 0, 0.0], "period": [0, 0, 0.0]}
    for seed in range(seeds):
        sampler = Sampler(version=f"seed-{seed}", max_judged_share=share, **shape.sampler)
        windows, periods = sample_domains(shape, sampler)
        for kind, domains in (("window", windows), ("period", periods)):
            for d in domains:
                rate, low, high = stratified_estimate(d.design)
                if math.isnan(rate):
                    continue
                a = acc[kind]
                a[0] += 1
                a[1] += low - 1e-9 <= d.truth <= high + 1e-9
                a[2] += high - low
    cells = []
    for kind in ("window", "period"):
        n, hits, w = acc[kind]
        cells += [f"{w / n * 100:.1f} pp", f"{hits / n:.0%}"] if n else ["-", "-"]
    return cells


def demo_tenants(limit: int) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = {}
    for _, value, _ in generate(limit=limit, bad=False):
        d = json.loads(value)
        e = event(
            d["event_id"],
            d["ts"],
            d["agent"],
            d["model"],
            tenant_id=d["tenant_id"],
            variant=d["variant"],
            input_text=d["input"][0]["content"],
            output_text=d["output"],
            context=d.get("context"),
            input_tokens=d["usage"]["input_tokens"],
            output_tokens=d["usage"]["output_tokens"],
        )
        out.setdefault(e.tenant_id, []).append(e)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=20, help="sampler versions per labelled shape (widths)")
    ap.add_argument("--demo-events", type=int, default=30000, help="events of the demo traffic (0: none)")
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    args = ap.parse_args()
    populations: list[tuple[str, str | None, list[Event], dict]] = []
    for name in args.shapes:
        shape = SHAPES[name]()
        populations.append((shape.name, name, [e for e, _ in shape.events], shape.sampler))
    if args.demo_events:
        for tenant, events in sorted(demo_tenants(args.demo_events).items()):
            populations.append((f"demo: {tenant}", None, events, {}))
    rows = []
    for label, name, events, kw in populations:
        for share in CEILINGS:
            judged, forced, peak = shares(events, Sampler(max_judged_share=share, **kw))
            cells = [label, f"{len(events):,}", f"{forced:.1%}", f"{share:.0%}" if share else "none"]
            cells += [f"{judged:.1%}", "-" if math.isnan(peak) else f"{peak:.1%}"]
            cells += width(name, share, args.seeds) if name and args.seeds else ["-"] * 4
            rows.append(cells)
    header = ["traffic", "events", "forced", "ceiling", "judged", f"peak window (>= {BUSY} events)"]
    header += ["width/window", "cover/window", "width/period", "cover/period"]
    print(
        table(
            "judged share by sampling.max_judged_share (stratified estimate: 95% width, coverage)",
            header,
            rows,
        )
    )


if __name__ == "__main__":
    main()
