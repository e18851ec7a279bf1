"""Interval width and coverage of the quality estimators, for the same judge spend.

Each labelled traffic shape of bench/_coverage.py (XSTest refusals, Presidio PII with forced
tier-0 flags, HaluEval with long contexts always judged, XSTest in many small strata) is
sampled by the real sampler under many versions (hash salts) at the default 10%; every
version judges the same events for all estimators (a perfect judge: the human labels), so
the judge spend is equal and only the estimator differs:

- HT-Wilson (before): Horvitz-Thompson with the Poisson variance and Wilson's interval at
  the effective sample size of the whole domain (what quality_estimates wrote before);
- stratified: certainty strata exact, within-stratum variances with a small-sample
  correction, Wilson at the effective sample size of the sampled part;
- PPI: prediction-powered — the tier-0 rules' verdict on every event plus the HT mean of the
  judged residuals (judge - rules), normal interval on the stratified variance of the
  residuals ('-' where no tier-0 rule covers the metric).

Per 60 s window and per whole period (per agent): mean 95% interval width, coverage of the
true rate, and the width against HT-Wilson's.

`--toxicity`: the cheap signal of toxicity with the local model scoring every event
(`[judges.local] score_every_event`, judged with `profanity-check`) against the tier-0 rules',
on labelled toxic texts among XSTest answers (bench/_coverage.py `toxicity`): stratified
and PPI widths under the default forcing of `toxicity.` flags (ceiling 20%, 5%) and without it.

    .venv/bin/python bench/estimates.py [--seeds 100] [--shapes xstest presidio ...] [--toxicity]
"""

from __future__ import annotations

import argparse
import math

from _coverage import ESTIMATORS, SHAPES, Shape, sample_domains, toxicity
from _traffic import table

from operators.local_flags import LocalFlags
from operators.sample_design import Sampler


def measure(name: str, seeds: int) -> tuple[list[list[str]], float]:
    shape = SHAPES[name]()
    acc: dict[str, dict[str, list[float]]] = {
        e: {"window": [0, 0, 0.0], "period": [0, 0, 0.0]} for e in ESTIMATORS
    }
    judged = 0
    for seed in range(seeds):
        sampler = Sampler(base_rate=0.1, version=f"seed-{seed}", **shape.sampler)
        windows, periods = sample_domains(shape, sampler)
        judged += sum(d.old.judged for d in periods)
        for kind, domains in (("window", windows), ("period", periods)):
            for d in domains:
                for est, f in ESTIMATORS.items():
                    rate, low, high = f(d)
                    if math.isnan(rate):
                        continue
                    a = acc[est][kind]
                    a[0] += 1
                    a[1] += low - 1e-9 <= d.truth <= high + 1e-9
                    a[2] += high - low
    base = {
        k: acc["HT-Wilson (before)"][k][2] / acc["HT-Wilson (before)"][k][0] for k in ("window", "period")
    }
    rows = []
    for est, kinds in acc.items():
        cells = [shape.name, est]
        for kind in ("window", "period"):
            n, hits, width = kinds[kind]
            if n == 0:
                cells += ["-", "-", "-"]
                continue
            w = width / n
            cells += [f"{w * 100:.1f} pp", f"{hits / n:.1%}", f"{(w / base[kind] - 1) * 100:+.0f}%"]
        rows.append(cells)
    return rows, judged / seeds / len(shape.events)


def measure_toxicity(seeds: int) -> list[list[str]]:
    """Stratified and PPI widths per period with the rules' signal, the local flag, and both."""
    from judges.local import LocalJudge, ProfanityCheck

    shape: Shape = toxicity()
    judge = LocalJudge({"toxicity": ProfanityCheck()})
    signals = {
        "tier-0 rules (switch off)": None,
        "local flag": LocalFlags(judge),
        "local flag OR rules": LocalFlags(judge, or_rules=True),
    }
    designs = {
        "forced, ceiling 20%": {"max_judged_share": 0.2},
        "forced, ceiling 5%": {"max_judged_share": 0.05},
        "not forced": {"always_on_flags": ("pii.", "jailbreak.")},
    }
    rows = []
    for design, kw in designs.items():
        for signal, local in signals.items():
            acc = {e: [0, 0, 0.0] for e in ("stratified", "PPI")}
            judged = 0
            for seed in range(seeds):
                sampler = Sampler(base_rate=0.1, version=f"seed-{seed}", **kw)
                _, periods = sample_domains(shape, sampler, local=local)
                judged += sum(d.old.judged for d in periods)
                for d in periods:
                    for est, a in acc.items():
                        rate, low, high = ESTIMATORS[est](d)
                        if not math.isnan(rate):
                            a[0] += 1
                            a[1] += low - 1e-9 <= d.truth <= high + 1e-9
                            a[2] += high - low
            cells = [design, signal, f"{judged / seeds / len(shape.events):.1%}"]
            for n, hits, width in acc.values():
                cells += [f"{width / n * 100:.2f} pp", f"{hits / n:.1%}"] if n else ["-", "-"]
            rows.append(cells)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=100, help="sampler versions per shape")
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--toxicity", action="store_true", help="only the toxicity cheap-signal comparison")
    args = ap.parse_args()
    if args.toxicity:
        header = ["design", "cheap signal", "judged", "stratified width", "cover", "PPI width", "cover"]
        title = f"toxicity, 95% interval per period over {args.seeds} sampler versions (base rate 10%)"
        print(table(title, header, measure_toxicity(args.seeds)))
        return
    rows, shares = [], []
    for name in args.shapes:
        r, share = measure(name, args.seeds)
        rows += r
        shares.append(f"{name} {share:.1%}")
    header = [
        "traffic",
        "estimator",
        "width/window",
        "cover/window",
        "vs before",
        "width/period",
        "cover/period",
    ]
    header.append("vs before")
    print(
        table(
            f"95% intervals over {args.seeds} sampler versions (same judged events for every estimator)",
            header,
            rows,
        )
    )
    print("judged share: " + ", ".join(shares))


if __name__ == "__main__":
    main()
