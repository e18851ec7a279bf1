"""Estimates from the sampler's design: the formulas on hand-checkable cases
(exact certainty strata, within-stratum variances with a small-sample
correction, prediction-powered estimates from the tier-0 flags), and the
statistics on labelled data — over many sampler versions at 10%, every
estimator's 95% interval covers the true rate at least 93% of the time per
window and per period, and the estimates are unbiased.

Populations: see bench/_coverage.py (XSTest refusals with human labels, Presidio
PII with forced tier-0 flags, HaluEval with long contexts always judged, XSTest
split into many small strata).
"""

from __future__ import annotations

import math
import pickle
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from bench._coverage import BASELINE, ESTIMATORS, RULES, SHAPES, Shape, halueval, sample_domains, xstest
from core.records import Event
from flows.report_quality import query_estimates
from judges.base import JudgeItem
from operators.dedup import Candidate
from operators.estimates import (
    DesignSums,
    EstimateSums,
    StratumJudged,
    estimate,
    ppi_estimate,
    stratified_estimate,
    stratum_variance,
    wilson,
)
from operators.sample import _SampleLogic, cheap_metrics
from operators.sample_design import Sampler, StratumCount
from operators.sample_tally import tally_batch
from tests.test_sampler import T0

CHEAP = cheap_metrics(RULES, ["refusal", "pii", "hallucination"])


# --- the formulas -------------------------------------------------------------------


def test_census_has_no_uncertainty():
    s = EstimateSums()
    for flagged in (True, False, False, False):
        s.add(1.0, flagged)
    assert estimate(s) == (0.25, 0.25, 0.25)


def test_weights_and_interval_by_hand():
    # stratum A: 2 of 10 events judged (pi = 0.2), one flagged; stratum B: all 4 judged, none flagged
    s = EstimateSums()
    s.add(0.2, True)
    s.add(0.2, False)
    for _ in range(4):
        s.add(1.0, False)
    rate, low, high = estimate(s)
    assert s.sum_w == pytest.approx(14.0)  # the 14 events
    assert rate == pytest.approx(5 / 14)
    # V = sum w(w-1)(y-R)^2 / N^2 over the two sampled units of A (w = 5)
    var = 20 * ((1 - 5 / 14) ** 2 + (5 / 14) ** 2) / 14**2
    n_eff = rate * (1 - rate) / var
    assert (low, high) == pytest.approx(wilson(rate, n_eff))
    assert 0 < low < rate < high < 1


def test_nothing_flagged_still_has_an_upper_bound():
    s = EstimateSums()
    for _ in range(30):
        s.add(0.1, False)
    rate, low, high = estimate(s)
    assert (rate, low) == (0.0, 0.0) and 0.05 < high < 0.2
    assert all(math.isnan(x) for x in estimate(EstimateSums()))


def test_windows_roll_up_exactly():
    a, b, whole = EstimateSums(), EstimateSums(), EstimateSums()
    for i in range(50):
        p, y = (0.1, i % 3 == 0) if i < 30 else (0.5, i % 2 == 0)
        (a if i < 20 else b).add(p, y)
        whole.add(p, y)
    a.merge(b)
    assert estimate(a) == pytest.approx(estimate(whole))


# --- the stratified design -----------------------------------------------------------


def judged(n: int, flagged: int, cheap: int = 0, agree: bool = True) -> StratumJudged:
    """n verdicts, `flagged` of them flagged; the tier-0 rules flagged `cheap` (the same ones
    first, when `agree`)."""
    j = StratumJudged()
    for i in range(n):
        y = i < flagged
        j.add(y, (i < cheap) if agree else (n - 1 - i < cheap))
    return j


def test_certainty_strata_are_exact_and_the_others_have_within_stratum_variance():
    d = DesignSums()
    d.add_stratum(10, judged(10, 4), None)  # judged in full: exact
    d.add_stratum(100, judged(20, 5), None)  # 20 of 100
    assert (d.exact_events, d.exact_flagged) == (10, 4)
    assert (d.sampled_events, d.sampled_flagged) == (100, pytest.approx(25.0))
    s2 = 5 * (1 - 0.25) ** 2 / 19 + 15 * 0.25**2 / 19  # the sample variance of the 20 judged
    assert d.sampled_var == pytest.approx(100**2 * (1 - 0.2) * s2 / 20)
    rate, low, high = stratified_estimate(d)
    assert rate == pytest.approx(29 / 110)
    lo, hi = wilson(0.25, 0.25 * 0.75 * 100**2 / d.sampled_var)  # the sampled part's rate
    assert (low, high) == pytest.approx(((4 + 100 * lo) / 110, (4 + 100 * hi) / 110))
    census = DesignSums()
    census.add_stratum(7, judged(7, 2), None)
    assert stratified_estimate(census) == (2 / 7, 2 / 7, 2 / 7)


def test_a_window_with_no_sampled_positive_keeps_an_honest_upper_bound():
    """The collapse the Poisson variance had: tier-0 flags force the obvious positives into the
    certainty stratum, the 30 sampled events of the rest hold none, and the interval sat below
    a truth with a few unflagged positives."""
    d, old = DesignSums(), EstimateSums()
    d.add_stratum(20, judged(20, 20), None)
    d.add_stratum(300, judged(30, 0), None)
    for _ in range(20):
        old.add(1.0, True)
    for _ in range(30):
        old.add(0.1, False)
    truth = (20 + 9) / 320  # 9 unflagged positives (3%) among the 300: none in a sample of 30 is likely
    assert estimate(old)[2] < truth  # before: the interval missed it
    rate, low, high = stratified_estimate(d)
    assert rate == low == 20 / 320 and high > truth
    # and one positive among the sampled is not taken as a near-certain 1/30
    d1 = DesignSums()
    d1.add_stratum(20, judged(20, 20), None)
    d1.add_stratum(300, judged(30, 1), None)
    assert stratified_estimate(d1)[2] > (20 + 300 * 0.1) / 320


def test_small_strata_are_not_certain_of_what_two_verdicts_say():
    assert stratum_variance(2, 0, 0) > 0.1  # 0 of 2 flagged: still unsure
    assert stratum_variance(2, 2, 2) > 0.1
    assert stratum_variance(30, 15, 15) == pytest.approx(0.25 * 30 / 29)  # enough verdicts: as measured


def test_prediction_powered_estimate_by_hand():
    d = DesignSums()
    # 200 events, the rules flagged 50 of them; 20 judged: 6 flagged by the judge, 5 by the rules,
    # differing on one (judged flagged, rules not)
    d.add_stratum(200, judged(20, 6, cheap=5), 50)
    ppi, low, high = ppi_estimate(d)
    assert ppi == pytest.approx((50 + 200 * 1 / 20) / 200)
    assert d.cheap_flagged == 50 and d.cheap_events == 200
    rate = stratified_estimate(d)[0]
    assert rate == pytest.approx(0.3)
    assert high - low < stratified_estimate(d)[2] - stratified_estimate(d)[1]  # the rules help
    # a cheap signal that disagrees everywhere it speaks: valid, only wider
    bad = DesignSums()
    bad.add_stratum(200, judged(20, 6, cheap=6, agree=False), 60)
    assert ppi_estimate(bad)[2] - ppi_estimate(bad)[1] > high - low
    no_rules = DesignSums()
    no_rules.add_stratum(200, judged(20, 6), None)
    assert all(math.isnan(x) for x in ppi_estimate(no_rules))


def test_design_sums_roll_up_exactly():
    a, b, whole = DesignSums(), DesignSums(), DesignSums()
    for k, (n, j, c) in enumerate([(100, judged(10, 2, 1), 12), (5, judged(5, 1), 0), (80, judged(8, 0), 3)]):
        (a if k == 0 else b).add_stratum(n, j, c)
        whole.add_stratum(n, j, c)
    a.merge(b)
    assert stratified_estimate(a) == pytest.approx(stratified_estimate(whole))
    assert ppi_estimate(a) == pytest.approx(ppi_estimate(whole))


# --- the statistics, on labelled data: coverage over sampler versions ----------------------


def coverage(shape: Shape, seeds: range) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Per estimator and per window / per period: (coverage, mean width, mean error / spread)."""
    hits: dict[str, dict[str, list[tuple[bool, float, float]]]] = defaultdict(lambda: defaultdict(list))
    for seed in seeds:
        sampler = Sampler(base_rate=0.1, version=f"seed-{seed}", **shape.sampler)
        windows, periods = sample_domains(shape, sampler)
        for kind, domains in (("window", windows), ("period", periods)):
            for d in domains:
                for name, est in ESTIMATORS.items():
                    rate, low, high = est(d)
                    if not math.isnan(rate):
                        hits[name][kind].append(
                            (low - 1e-9 <= d.truth <= high + 1e-9, high - low, rate - d.truth)
                        )
    out: dict[str, dict[str, tuple[float, float, float]]] = {}
    for name, kinds in hits.items():
        out[name] = {}
        for kind, xs in kinds.items():
            errs = [e for _, _, e in xs]
            mean = sum(errs) / len(errs)
            spread = math.sqrt(sum((e - mean) ** 2 for e in errs) / max(1, len(errs) - 1))
            bias_z = mean / (spread / math.sqrt(len(errs))) if spread > 0 else 0.0
            out[name][kind] = (sum(h for h, _, _ in xs) / len(xs), sum(w for _, w, _ in xs) / len(xs), bias_z)
    return out


def check_coverage(shape: Shape, seeds: range) -> None:
    got = coverage(shape, seeds)
    assert {"stratified", "PPI"} <= set(got) or shape.metric == "hallucination"
    for name, kinds in got.items():
        if name.startswith("HT-Wilson"):
            continue  # the interval before, for the bench's comparison
        for kind, (cov, _, bias_z) in kinds.items():
            assert cov >= 0.93, f"{shape.name}: {name} covered {cov:.1%} per {kind}"
            if kind == "period":
                assert abs(bias_z) < 4, f"{shape.name}: {name} biased ({bias_z:.1f} standard errors)"


@pytest.mark.parametrize("make", ["xstest", "presidio", "halueval", "many_strata"])
def test_every_estimator_covers_per_window_and_per_period(make):
    """60 sampler versions: forced judging by tier-0 flags (presidio), long contexts always
    judged (halueval), many strata with few events (xstest by prompt type), and a cheap
    signal that is good but not perfect (xstest refusals)."""
    check_coverage(SHAPES[make](), range(60))


@pytest.mark.slow
@pytest.mark.parametrize("make", ["xstest", "presidio", "halueval", "many_strata"])
def test_every_estimator_covers_over_300_sampler_versions(make):
    check_coverage(SHAPES[make](), range(100, 400))


def test_without_stratum_minimums_and_caps_it_is_post_stratified_bernoulli():
    pop = halueval().events
    per_stratum: dict[tuple[str, int], list[float]] = defaultdict(list)
    sampler = Sampler(base_rate=0.1, version="plain", min_per_stratum=0, always_on_flags=())
    logic = _SampleLogic(sampler, lambda: 0.0, None)
    cands = [Candidate(e, e.event_id, {}, ()) for e, _ in pop]
    logic.on_batch(tally_batch(cands, sampler=sampler, rules=RULES, baseline=BASELINE))
    out, _ = logic.on_eof()
    for c in out:
        if isinstance(c, Candidate):
            per_stratum[(c.stratum, c.event.ts_ms // 60_000)].append(c.inclusion_prob)
    for probs in per_stratum.values():
        assert len(set(probs)) == 1 and abs(probs[0] - 0.1) < 0.1  # m_h / N_h, close to the rate


def test_the_design_does_not_depend_on_batching_order_or_restarts():
    """The strata counts (events, chosen, tier-0 flags per metric) the estimates read are
    the same whatever the batching and order, and across a snapshot and resume."""
    pop = [e for e, _ in xstest().events[:1200]]
    sampler = Sampler(base_rate=0.1, version="v1", max_per_tenant=40)

    def design(batches: list[list[Event]], restart_at: int = -1) -> list[StratumCount]:
        logic = _SampleLogic(sampler, lambda: 0.0, None)
        out = []
        for i, batch in enumerate(batches):
            if i == restart_at:
                logic = _SampleLogic(sampler, lambda: 0.0, pickle.loads(pickle.dumps(logic.snapshot())))
            cands = [Candidate(e, e.event_id, {}, ()) for e in batch]
            parts = tally_batch(cands, sampler=sampler, rules=RULES, baseline=BASELINE, cheap=CHEAP)
            out.extend(logic.on_batch(parts)[0])
        out.extend(logic.on_eof()[0])
        return sorted(
            (x for x in out if isinstance(x, StratumCount)), key=lambda x: (x.window_start_ms, x.stratum)
        )

    whole = design([pop])
    assert sum(x.events for x in whole) == len(pop)
    assert sum(dict(x.cheap)["refusal"] for x in whole) == sum(
        RULES.verdict("refusal", RULES.flags(JudgeItem(e.input_text, e.output_text))).label == "flagged"
        for e in pop
    )
    rng = random.Random(3)
    shuffled = pop[:]
    rng.shuffle(shuffled)
    cuts = sorted(rng.sample(range(1, len(shuffled)), 30))
    batches = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]
    assert design(batches) == whole
    assert design(batches, restart_at=17) == whole


@pytest.mark.slow
def test_report_query_rolls_up_what_the_flow_wrote(chdb_dsn, database):
    from operators.estimates import estimate_row
    from sinks.clickhouse import connect, ensure_schema
    from sinks.clickhouse_sink import ClickHouseSink

    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    rows = []
    both = DesignSums()
    for minute in range(3):
        s, d = EstimateSums(), DesignSums()
        for i in range(40):
            prob, y = (0.25, i % 4 == 0) if i < 30 else (1.0, False)
            s.add(prob, y)
        d.add_stratum(120, judged(30, 8, cheap=6), 20)  # 30 of 120 judged, 8 flagged
        d.add_stratum(10, judged(10, 0), 0)  # judged in full
        if minute < 2:
            both.merge(d)
        rows.append(estimate_row(T0 + 60_000 * minute, 60_000, "acme", "bot", "toxicity", s, 1, d))
    sink = ClickHouseSink(chdb_dsn, database, "quality_estimates").build("t", 0, 1)
    sink.write_batch(rows)
    since = datetime.fromtimestamp(T0 / 1000, tz=UTC)
    (got,) = query_estimates(client, database, since=since, until=since + timedelta(minutes=2))
    assert (got.judged, got.flagged) == (80, 16)
    assert (got.rate, got.ci_low, got.ci_high) == pytest.approx(stratified_estimate(both))
    assert (got.ppi_rate, got.ppi_low, got.ppi_high) == pytest.approx(ppi_estimate(both))
    assert got.cheap_flagged == 40
    hour = since + timedelta(hours=1)
    per_minute = query_estimates(client, database, since=since, until=hour, bucket_s=60)
    assert [r.window_start for r in per_minute] == [since + timedelta(minutes=m) for m in range(3)]
    assert query_estimates(client, database, since=since, until=hour, tenant="nobody") == []


@pytest.mark.slow
def test_a_table_from_before_the_design_columns_is_migrated(chdb_dsn, database):
    """ensure_schema adds the new columns to a quality_estimates table created before them; its
    old rows roll up as one stratum each, next to new rows with their design."""
    from operators.estimates import estimate_row
    from sinks.clickhouse import connect, ensure_schema
    from sinks.clickhouse_sink import ClickHouseSink

    client = connect(chdb_dsn, database)
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}", use_database=False)
    client.command(
        f"""CREATE TABLE {database}.quality_estimates (tenant_id LowCardinality(String),
        agent LowCardinality(String), metric LowCardinality(String), window_s UInt32,
        window_start DateTime64(3, 'UTC'), judged UInt64, flagged UInt64, rate Float64, ci_low Float64,
        ci_high Float64, population Float64, sum_w Float64, sum_wy Float64, sum_ww1 Float64,
        sum_ww1y Float64, version UInt64, inserted_at DateTime64(3, 'UTC') DEFAULT now64(3))
        ENGINE = ReplacingMergeTree(version) ORDER BY (tenant_id, agent, metric, window_s, window_start)"""
    )
    client.command(
        f"INSERT INTO {database}.quality_estimates (tenant_id, agent, metric, window_s, window_start, judged,"
        " flagged, rate, ci_low, ci_high, population, sum_w, sum_wy, sum_ww1, sum_ww1y, version)"
        f" VALUES ('acme', 'bot', 'pii', 60, fromUnixTimestamp64Milli({T0}), 10, 5, 0.5, 0.2, 0.8,"
        " 10, 10, 5, 0, 0, 1)"
    )
    ensure_schema(client, database)
    s, d = EstimateSums(), DesignSums()
    for i in range(30):
        s.add(0.25, i < 3)
    d.add_stratum(120, judged(30, 3, cheap=3), 12)
    row = estimate_row(T0 + 60_000, 60_000, "acme", "bot", "pii", s, 1, d)
    ClickHouseSink(chdb_dsn, database, "quality_estimates").build("t", 0, 1).write_batch([row])
    since = datetime.fromtimestamp(T0 / 1000, tz=UTC)
    per_minute = query_estimates(client, database, since=since, until=since + timedelta(hours=1), bucket_s=60)
    assert [(r.judged, r.rate) for r in per_minute] == [(10, 0.5), (30, pytest.approx(0.1))]
    assert per_minute[0].ci_low == per_minute[0].ci_high == 0.5  # the old row: a census of 10
    assert math.isnan(per_minute[0].ppi_rate) and per_minute[1].ppi_rate == pytest.approx(0.1)


def test_windows_stay_open_while_a_replay_still_delivers_them():
    from prometheus_client import REGISTRY

    from operators.tumbling import _Spec, _TumblingLogic

    now = [1000.0]
    spec = _Spec(
        step_id="t_replay",
        key_of=lambda x: "k",
        size_ms=60_000,
        lateness_ms=0,
        idle_s=10.0,
        ts_of=lambda x: x,
        new=list,
        fold=lambda acc, x: acc.append(x),
        rows=lambda key, start, acc, version: [(start, len(acc))],
        clock=lambda: now[0],
    )
    logic = _TumblingLogic(spec, None)
    hour = 3_600_000
    out, _ = logic.on_batch([T0 + 1, T0 + hour])  # a replay: the judges' free verdicts run ahead
    assert list(out) == [(T0, 1)]
    now[0] += 5  # the LLM verdicts of minute 0 follow: it is still open, and revised
    assert list(logic.on_batch([T0 + 2])[0]) == [(T0, 2)]
    now[0] += 11  # nothing for minute 0 for longer than idle_s: final
    assert list(logic.on_notify()[0]) == []
    dropped = REGISTRY.get_sample_value("judgeflow_late_records_dropped_total", {"step": "t_replay"}) or 0
    assert list(logic.on_batch([T0 + 3, T0 + 120_000])[0]) == [(T0 + 120_000, 1)]  # a window seen late opens
    assert (
        REGISTRY.get_sample_value("judgeflow_late_records_dropped_total", {"step": "t_replay"}) == dropped + 1
    )
    assert list(logic.on_eof()[0]) == [(T0 + hour, 1)]  # the end of a bounded run reports the rest
