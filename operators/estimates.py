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
(judged, flagged, sum_w, sum_wy, sum_ww1, sum_ww1y), and `query_estimates`
rolls them up over any period. Each (event, metric) counts once, with the
verdict of its highest tier that did not fail.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bytewax.dataflow import Stream

from judges.base import FLAGGED
from operators.records import Evaluation, QualityEstimate
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


# --- the operator ---------------------------------------------------------------

_VerdictKey = tuple[str, str]  # (event_id, metric)
_Verdict = tuple[int, float, bool]  # (tier, inclusion probability, flagged)
_Verdicts = dict[_VerdictKey, _Verdict]


def _fold(acc: _Verdicts, v: Evaluation) -> None:
    if v.error or v.inclusion_prob <= 0:
        return
    k = (v.event_id, v.metric)
    have = acc.get(k)
    if have is None or have[0] <= v.tier:
        acc[k] = (v.tier, v.inclusion_prob, v.label == FLAGGED)


def sums_by_metric(verdicts: Iterable[tuple[_VerdictKey, _Verdict]]) -> dict[str, EstimateSums]:
    out: dict[str, EstimateSums] = {}
    for (_, metric), (_, prob, flagged) in verdicts:
        s = out.get(metric)
        if s is None:
            s = out[metric] = EstimateSums()
        s.add(prob, flagged)
    return out


def estimate_row(
    window_start_ms: int, window_ms: int, tenant: str, agent: str, metric: str, s: EstimateSums, version: int
) -> QualityEstimate:
    rate, low, high = estimate(s)
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
    )


def quality_estimates(
    step_id: str,
    up: Stream[Evaluation],
    *,
    size_s: int,
    allowed_lateness_s: int,
    clock: Callable[[], float] | None = None,
) -> Stream[QualityEstimate]:
    """Per (tenant, agent, metric) and window: the flagged rate with its 95% interval."""
    window_ms = size_s * 1000

    def rows(key: str, start: int, acc: _Verdicts, version: int) -> list[QualityEstimate]:
        tenant, agent = key.split(_SEP, 1)
        return [
            estimate_row(start, window_ms, tenant, agent, metric, s, version)
            for metric, s in sorted(sums_by_metric(acc.items()).items())
        ]

    return tumbling(
        step_id,
        up,
        key_of=lambda v: f"{v.tenant_id}{_SEP}{v.agent}",
        size_s=size_s,
        allowed_lateness_s=allowed_lateness_s,
        ts_of=lambda v: v.ts_ms,
        new=dict,
        fold=_fold,
        rows=rows,
        clock=clock or time.time,
    )


# --- reading them back (the report) -----------------------------------------------


@dataclass(frozen=True)
class EstimateRow:
    """One rolled-up estimate; `window_start` is None when rolled over the whole period."""

    tenant_id: str
    agent: str
    metric: str
    window_start: datetime | None
    judged: int
    flagged: int
    population: float
    rate: float
    ci_low: float
    ci_high: float


ESTIMATES_SQL = """
SELECT tenant_id, agent, metric, {bucket} AS bucket,
       sum(judged), sum(flagged), sum(sum_w), sum(sum_wy), sum(sum_ww1), sum(sum_ww1y)
FROM {database}.quality_estimates FINAL
WHERE window_start >= {{since:DateTime64(3)}} AND window_start < {{until:DateTime64(3)}}
  AND ({{tenant:String}} = '' OR tenant_id = {{tenant:String}})
GROUP BY tenant_id, agent, metric, bucket
ORDER BY tenant_id, agent, metric, bucket
"""


def query_estimates(
    client: Any,
    database: str,
    *,
    since: datetime,
    until: datetime,
    tenant: str = "",
    bucket_s: int | None = None,
) -> list[EstimateRow]:
    """Estimates per (tenant, agent, metric) over [since, until), rolled up from the
    1-window rows: over the whole period, or per `bucket_s` seconds (e.g. 3600).

    `client` is a clickhouse-connect client (e.g. `sinks.clickhouse.connect(dsn)`).
    """
    from sinks.clickhouse import check_identifier

    bucket = (
        "toDateTime64(0, 3, 'UTC')"
        if bucket_s is None
        else (f"toStartOfInterval(window_start, INTERVAL {int(bucket_s)} SECOND)")
    )
    sql = ESTIMATES_SQL.format(bucket=bucket, database=check_identifier(database))
    params = {"since": _utc(since), "until": _utc(until), "tenant": tenant}
    out = []
    for tenant_id, agent, metric, start, judged, flagged, sw, swy, sww1, sww1y in client.query(
        sql, parameters=params
    ).result_rows:
        s = EstimateSums(int(judged), int(flagged), sw, swy, sww1, sww1y)
        rate, low, high = estimate(s)
        out.append(
            EstimateRow(
                tenant_id,
                agent,
                metric,
                None if bucket_s is None else _aware(start),
                s.judged,
                s.flagged,
                sw,
                rate,
                low,
                high,
            )
        )
    return out


def _aware(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t  # the engine returns UTC, naive


def _utc(t: datetime) -> datetime:
    if t.tzinfo is None:
        msg = f"query_estimates: {t!r} needs a time zone (UTC)"
        raise ValueError(msg)
    return t.astimezone(UTC)
