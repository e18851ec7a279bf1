"""estimates: unbiased rates of flagged responses, with 95% intervals, from the sampled verdicts.

Every evaluation carries its event's inclusion probability pi (see
`operators.sample`). For a domain D — one (tenant, agent, metric) in one
window, or any rollup of them — with weights w = 1/pi over the judged
events and y = 1 when the verdict is `flagged`:

    N^ = sum w            (Horvitz-Thompson estimate of the events in D)
    T^ = sum w*y          (... of the flagged ones)
    R^ = T^ / N^          (the rate)

With the sampler's pi = m_h / N_h, N^ is exactly the number of events as
long as every chosen event got a verdict, so R^ is the HT estimate T^ / N;
when verdicts are missing (judge errors) the ratio re-weights the others
(Hajek form), which assumes errors are unrelated to the label.

Variance: the linearised Hajek variance under Poisson sampling,

    V^ = sum w(w-1) (y - R^)^2 / N^^2
       = (D + R^^2 C - 2 R^ D) / N^^2,  C = sum w(w-1), D = sum w(w-1) y  (y^2 = y)

It ignores the gain from stratification (so it errs wide) and vanishes for
certainty units (pi = 1). The interval is Wilson's score interval at the
effective sample size n* = R^(1-R^)/V^ (at R^ in {0, 1}, Kish's
N^^2 / sum w^2), which behaves near 0 and 1 where the normal interval
collapses; a domain judged in full (every pi = 1) gets [R^, R^].

All of it is sums, so windows add up: `quality_estimates` rows keep
(judged, flagged, sum_w, sum_wy, sum_ww1, sum_ww1y), and `flows.report_quality.query_estimates`
rolls them up over any period. Each (event, metric) counts once, with the
verdict of its highest tier that did not fail.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import bytewax.operators as op
from bytewax.dataflow import Stream, operator

from core.records import Evaluation, QualityEstimate
from judges.base import FLAGGED
from operators.owed import arrived_ms
from operators.sample_design import StratumCount
from operators.tumbling import tumbling

Z95 = 1.959963984540054
_SEP = "\x1f"


@dataclass(slots=True)
class EstimateSums:
    """The sufficient statistics of one domain; `add` one judged event at a time."""

    judged: int = 0
    flagged: int = 0
    sum_w: float = 0.0
    sum_wy: float = 0.0
    sum_ww1: float = 0.0
    sum_ww1y: float = 0.0

    def add(self, prob: float, flagged: bool) -> None:
        w = 1.0 / prob
        ww1 = w * (w - 1.0)
        self.judged += 1
        self.sum_w += w
        self.sum_ww1 += ww1
        if flagged:
            self.flagged += 1
            self.sum_wy += w
            self.sum_ww1y += ww1

    def merge(self, other: EstimateSums) -> None:
        self.judged += other.judged
        self.flagged += other.flagged
        self.sum_w += other.sum_w
        self.sum_wy += other.sum_wy
        self.sum_ww1 += other.sum_ww1
        self.sum_ww1y += other.sum_ww1y


def estimate(s: EstimateSums, z: float = Z95) -> tuple[float, float, float]:
    """(rate, low, high); NaNs when nothing was judged."""
    if s.judged == 0 or s.sum_w <= 0:
        return math.nan, math.nan, math.nan
    r = s.sum_wy / s.sum_w
    if s.sum_ww1 <= 0:
        return r, r, r  # a census: every event of the domain was judged
    var = max(0.0, s.sum_ww1y * (1.0 - 2.0 * r) + r * r * s.sum_ww1) / (s.sum_w * s.sum_w)
    kish = s.sum_w * s.sum_w / (s.sum_ww1 + s.sum_w)  # the variance says nothing at 0 or 1
    n_eff = r * (1.0 - r) / var if var > 0 and 0.0 < r < 1.0 else kish
    low, high = wilson(r, n_eff, z)
    return r, low, high


def wilson(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion `p` at (effective) sample size `n`."""
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


# --- the stratified design ----------------------------------------------------------


@dataclass(slots=True)
class StratumJudged:
    """The verdicts of one stratum for one metric: judged, flagged, and against the
    cheap signal (the tier-0 verdict, or the local flag): judged with it flagged, judged where they differ."""

    judged: int = 0
    flagged: int = 0
    cheap: int = 0
    disagree: int = 0

    def add(self, flagged: bool, cheap: bool) -> None:
        self.judged += 1
        self.flagged += flagged
        self.cheap += cheap
        self.disagree += flagged != cheap


@dataclass(slots=True)
class DesignSums:
    """Additive sums of the stratified estimators over strata, windows and periods.

    Strata judged in full (inclusion probability 1) are exact; for the others,
    with N_h events, m_h judged and f_h = m_h / N_h, the flagged total is
    sum N_h ybar_h with variance sum N_h^2 (1 - f_h) s_h^2 / m_h (`sampled_var`),
    s_h^2 the within-stratum variance with a small-sample correction
    (`stratum_variance`). The prediction-powered total of a stratum is the
    tier-0 flags on all its events plus N_h times the mean residual (judge -
    tier-0) of the judged ones; its variance is the same formula on residuals.
    A stratum without the cheap signal's count gets residual = verdict (plain HT).
    """

    exact_events: float = 0.0
    exact_flagged: float = 0.0
    sampled_events: float = 0.0
    sampled_flagged: float = 0.0
    sampled_var: float = 0.0
    sampled_var_unit: float = 0.0
    cheap_events: float = 0.0
    cheap_flagged: float = 0.0
    ppi_sampled_flagged: float = 0.0
    ppi_sampled_var: float = 0.0

    def add_stratum(self, events: float, j: StratumJudged, cheap_all: int | None) -> None:
        """One stratum of `events` events, its verdicts `j`, and how many of all its
        events the tier-0 rules flagged (None: not counted)."""
        m = j.judged
        if m == 0 or events <= 0:
            return  # no verdict: the stratum is left out of the domain (as Hajek's ratio does)
        if cheap_all is not None:
            self.cheap_events += events
            self.cheap_flagged += cheap_all
        if m >= events:
            self.exact_events += events
            self.exact_flagged += j.flagged
            return
        fpc = 1.0 - m / events
        scale = events * events * fpc / m
        self.sampled_events += events
        self.sampled_flagged += events * j.flagged / m
        self.sampled_var += scale * stratum_variance(m, j.flagged, j.flagged)
        self.sampled_var_unit += scale
        if cheap_all is None:
            self.ppi_sampled_flagged += events * j.flagged / m
            self.ppi_sampled_var += scale * stratum_variance(m, j.flagged, j.flagged)
        else:
            resid = j.flagged - j.cheap
            self.ppi_sampled_flagged += cheap_all + events * resid / m
            self.ppi_sampled_var += scale * stratum_variance(m, resid, j.disagree)

    def merge(self, other: DesignSums) -> None:
        for name in DesignSums.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def stratum_variance(m: int, total: float, squares: float) -> float:
    """The within-stratum variance of a {-1, 0, 1} variable from m judged values
    (their sum and sum of squares), with a small-sample correction: at least the
    Bernoulli variance of the share of nonzero values smoothed by one half-success
    and one failure ((squares + 1/2) / (m + 1)), so a stratum whose few judged
    values are all alike still says how unsure it is."""
    mean = total / m
    s2 = (squares - m * mean * mean) / (m - 1) if m > 1 else 0.0
    q = (squares + 0.5) / (m + 1)
    return max(s2, q * (1.0 - q))


def design_interval(
    exact_events: float,
    exact_flagged: float,
    events: float,
    flagged: float,
    var: float,
    var_unit: float,
    z: float = Z95,
    *,
    shape: str = "wilson",
) -> tuple[float, float, float]:
    """(rate, low, high) over exact + sampled events: the exact part is known, the sampled
    part's rate p gets an interval. `wilson`: Wilson's score interval at the effective sample
    size p(1-p) N^2 / V (at p in {0, 1}, or V = 0, the design's own N^2 / var_unit), which
    stays honest near 0 and 1 where a sampled proportion has a skewed distribution;
    `normal`: p +- z sqrt(V) / N, for a difference estimate (prediction-powered) whose
    error is a mean of residuals, not a proportion."""
    total = exact_events + events
    if total <= 0:
        return math.nan, math.nan, math.nan
    p = min(1.0, max(0.0, flagged / events)) if events > 0 else 0.0
    rate = (exact_flagged + events * p) / total
    if events <= 0:
        return rate, rate, rate
    if shape == "normal":
        half = z * math.sqrt(max(var, 0.0)) / events
        low, high = max(0.0, p - half), min(1.0, p + half)
    else:
        n_design = events * events / var_unit if var_unit > 0 else math.inf
        n_eff = p * (1.0 - p) * events * events / var if var > 0 and 0.0 < p < 1.0 else n_design
        if not math.isfinite(n_eff):
            return rate, rate, rate
        low, high = wilson(p, n_eff, z)
    return rate, (exact_flagged + events * low) / total, (exact_flagged + events * high) / total


def stratified_estimate(d: DesignSums, z: float = Z95, shape: str = "wilson") -> tuple[float, float, float]:
    """(rate, low, high): the stratified estimate with its 95% interval."""
    return design_interval(
        d.exact_events,
        d.exact_flagged,
        d.sampled_events,
        d.sampled_flagged,
        d.sampled_var,
        d.sampled_var_unit,
        z,
        shape=shape,
    )


def ppi_estimate(d: DesignSums, z: float = Z95) -> tuple[float, float, float]:
    """(rate, low, high): prediction-powered (NaNs without a cheap signal)."""
    if d.cheap_events <= 0:
        return math.nan, math.nan, math.nan
    return design_interval(
        d.exact_events,
        d.exact_flagged,
        d.sampled_events,
        d.ppi_sampled_flagged,
        d.ppi_sampled_var,
        d.sampled_var_unit,
        z,
        shape="normal",
    )


# --- the operator ---------------------------------------------------------------

_VerdictKey = tuple[str, str]  # (event_id, metric)
_StratumKey = tuple[int, str, float]  # (the sampler's window start, stratum, inclusion probability)


@dataclass(slots=True)
class _Verdict:
    tier: int
    stratum: _StratumKey
    flagged: bool
    cheap: bool


@dataclass
class _Acc:
    """One (tenant, agent) window: each (event, metric)'s verdict, and the sampler's strata."""

    verdicts: dict[_VerdictKey, _Verdict] = field(default_factory=dict)
    strata: dict[_StratumKey, tuple[int, dict[str, int]]] = field(default_factory=dict)

    def copy(self) -> _Acc:
        """An independent copy, for snapshots: `_fold` replaces the values of both dicts and
        never changes one in place, so copying the dicts is enough."""
        return _Acc(dict(self.verdicts), dict(self.strata))


def _fold(acc: _Acc, v: Evaluation | StratumCount, sample_window_ms: int) -> None:
    # values are replaced, never changed in place: `_Acc.copy` relies on it
    if isinstance(v, StratumCount):
        k = (v.window_start_ms, v.stratum, v.inclusion_prob)
        events, cheap = acc.strata.get(k, (0, {}))
        merged = dict(cheap)
        for metric, n in v.cheap:
            merged[metric] = merged.get(metric, 0) + n
        acc.strata[k] = (events + v.events, merged)  # a late group with the same probability adds
        return
    if v.error or v.inclusion_prob <= 0:
        return
    key = (v.event_id, v.metric)
    have = acc.verdicts.get(key)
    if have is None or have.tier <= v.tier:
        stratum = (v.ts_ms - v.ts_ms % sample_window_ms, v.stratum, v.inclusion_prob)
        acc.verdicts[key] = _Verdict(v.tier, stratum, v.label == FLAGGED, v.cheap)


def sums_by_metric(acc: _Acc) -> dict[str, tuple[EstimateSums, DesignSums]]:
    """Per metric: the Horvitz-Thompson sums and the stratified design's."""
    judged: dict[str, dict[_StratumKey, StratumJudged]] = {}
    plain: dict[str, EstimateSums] = {}
    for (_, metric), v in acc.verdicts.items():
        plain.setdefault(metric, EstimateSums()).add(v.stratum[2], v.flagged)
        by_stratum = judged.setdefault(metric, {})
        j = by_stratum.get(v.stratum)
        if j is None:
            j = by_stratum[v.stratum] = StratumJudged()
        j.add(v.flagged, v.cheap)
    out = {}
    for metric, by_stratum in judged.items():
        d = DesignSums()
        for k, j in sorted(by_stratum.items()):
            counted = acc.strata.get(k)
            if counted is None:  # the sampler's count did not come (or another window size)
                d.add_stratum(j.judged / k[2], j, None)
            else:
                d.add_stratum(counted[0], j, counted[1].get(metric))
        out[metric] = (plain[metric], d)
    return out


def estimate_row(
    window_start_ms: int,
    window_ms: int,
    tenant: str,
    agent: str,
    metric: str,
    s: EstimateSums,
    version: int,
    d: DesignSums | None = None,
) -> QualityEstimate:
    d = d if d is not None else design_of(s)
    rate, low, high = stratified_estimate(d)
    ppi, ppi_low, ppi_high = ppi_estimate(d)
    return QualityEstimate(
        window_start_ms=window_start_ms,
        window_ms=window_ms,
        tenant_id=tenant,
        agent=agent,
        metric=metric,
        judged=s.judged,
        flagged=s.flagged,
        rate=rate,
        ci_low=low,
        ci_high=high,
        population=s.sum_w,
        sum_w=s.sum_w,
        sum_wy=s.sum_wy,
        sum_ww1=s.sum_ww1,
        sum_ww1y=s.sum_ww1y,
        version=version,
        exact_events=d.exact_events,
        exact_flagged=d.exact_flagged,
        sampled_events=d.sampled_events,
        sampled_flagged=d.sampled_flagged,
        sampled_var=d.sampled_var,
        sampled_var_unit=d.sampled_var_unit,
        cheap_events=d.cheap_events,
        cheap_flagged=d.cheap_flagged,
        ppi_sampled_flagged=d.ppi_sampled_flagged,
        ppi_sampled_var=d.ppi_sampled_var,
        ppi_rate=ppi,
        ppi_low=ppi_low,
        ppi_high=ppi_high,
    )


def design_of(s: EstimateSums) -> DesignSums:
    """The design of sums that know no strata (rows written before the design was kept): one
    stratum of the judged events with their mean weight; a census when every weight is 1."""
    d = DesignSums()
    if s.judged:
        d.add_stratum(s.sum_w, StratumJudged(s.judged, s.flagged), None)
    return d


@operator
def quality_estimates(
    step_id: str,
    up: Stream[Evaluation],
    *,
    size_s: int,
    allowed_lateness_s: int,
    design: Stream[StratumCount] | None = None,
    sample_window_s: int | None = None,
    clock: Callable[[], float] | None = None,
    processed: Callable[[], int | None] = arrived_ms,
    drop_finished: bool = False,
) -> Stream[QualityEstimate]:
    """Per (tenant, agent, metric) and window: the flagged rate with its 95% interval, and the
    prediction-powered rate beside it.

    Args:
        design: the sampler's strata (`SampleOut.design`): events per stratum and the tier-0
            flags on all of them; without it each stratum's size is estimated from its
            inclusion probability and there is no prediction-powered estimate.
        sample_window_s: the sampler's window (`sampling.window_s`), which its strata are per.
        processed: how far no record that is not late can still come (after the judges:
            `operators.owed.judged_ms`, which waits for what the sampler and the judges owe).
        drop_finished: with Kafka input, drop a key's state once none of its windows is open
            (`windows.drop_finished_keys`; `operators.tumbling`).
    """
    window_ms = size_s * 1000
    sample_window_ms = (sample_window_s or size_s) * 1000

    def rows(key: str, start: int, acc: _Acc, version: int) -> list[QualityEstimate]:
        tenant, agent = key.split(_SEP, 1)
        return [
            estimate_row(start, window_ms, tenant, agent, metric, s, version, d)
            for metric, (s, d) in sorted(sums_by_metric(acc).items())
        ]

    records: Stream[Evaluation | StratumCount] = up
    if design is not None:
        records = op.merge("with_design", up, design)
    return tumbling(
        "windows",
        records,
        key_of=lambda v: f"{v.tenant_id}{_SEP}{v.agent}",
        size_s=size_s,
        allowed_lateness_s=allowed_lateness_s,
        ts_of=lambda v: v.window_start_ms if isinstance(v, StratumCount) else v.ts_ms,
        new=_Acc,
        fold=lambda acc, v: _fold(acc, v, sample_window_ms),
        rows=rows,
        clock=clock or time.time,
        copy=_Acc.copy,
        processed=processed,
        after_of=lambda v: v.after_ms,  # (a design record's: set when its events are late)
        drop_finished=drop_finished,
    )
