"""Horvitz-Thompson estimates from the sampler's inclusion probabilities: the
formulas on hand-checkable cases, and the statistics on labelled data — over
100 sampler versions at 10%, the 95% interval covers the true flagged rate at
least 90 times, and the estimates are unbiased.

Populations (see /work/shared/data/PROVENANCE.tsv): XSTest v2 completions
(paul-rottger/exaggerated-safety, CC-BY-4.0 prompts), judged for refusal by
the real tier-0 rules; HaluEval QA (RUCAIBox/HaluEval, MIT), judged by its
labels — every other answer is the hallucinated one, as in flows/traffic.py.
"""

from __future__ import annotations

import gzip
import json
import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from functools import cache

import pytest

from flows.traffic import shared_data_dir
from judges.base import JudgeItem
from judges.rules import Tier0Rules
from operators.dedup import Candidate
from operators.estimates import EstimateSums, estimate, query_estimates, wilson
from operators.records import Event
from operators.sample import Sampler, _SampleLogic, tally_batch
from tests.test_sampler import BASELINE, T0, event

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


# --- the statistics, on labelled data ------------------------------------------------------


class _MemoRules(Tier0Rules):
    """The real tier-0 rules, remembering each item's flags (the same texts, 100 times)."""

    @cache  # noqa: B019 - one instance per test module
    def flags(self, item: JudgeItem) -> frozenset[str]:
        return super().flags(item)


RULES = _MemoRules()


def xstest() -> list[tuple[Event, bool]]:
    path = shared_data_dir() / "labeled" / "xstest_completions_human_labeled.jsonl.gz"
    out = []
    with gzip.open(path, "rt") as f:
        for i, line in enumerate(f):
            r = json.loads(line)
            e = event(
                f"x{i}", T0 + 150 * i, "xs", r["model"], input_text=r["prompt"], output_text=r["completion"]
            )
            verdict = RULES.judge("refusal", JudgeItem(e.input_text, e.output_text))
            assert verdict is not None
            out.append((e, verdict.label == "flagged"))
    return out


def halueval() -> list[tuple[Event, bool]]:
    out = []
    with (shared_data_dir() / "labeled" / "halueval_qa_sample2000.jsonl").open() as f:
        for i, line in enumerate(f):
            r = json.loads(line)
            hallucinated = i % 2 == 1
            answer = r["hallucinated_answer"] if hallucinated else r["right_answer"]
            agent = ("qa-short", "qa-long")[len(r["knowledge"]) > 400]
            tokens = len(r["question"] + r["knowledge"]) // 4
            e = event(
                f"h{i}",
                T0 + 200 * i,
                "hq",
                agent,
                input_text=r["question"],
                output_text=answer,
                context=r["knowledge"],
                input_tokens=tokens,
            )
            out.append((e, hallucinated))
    return out


def sample_once(sampler: Sampler, population: list[tuple[Event, bool]]) -> list[tuple[float, bool]]:
    """The sampler's two stages on the whole population, in batches of 500."""
    label = {e.event_id: y for e, y in population}
    logic = _SampleLogic(sampler, lambda: 0.0, None)
    for i in range(0, len(population), 500):
        cands = [Candidate(e, e.event_id, {}, ()) for e, _ in population[i : i + 500]]
        logic.on_batch(tally_batch(cands, sampler=sampler, rules=RULES, baseline=BASELINE))
    out, _ = logic.on_eof()
    return [(c.inclusion_prob, label[c.event.event_id]) for c in out if isinstance(c, Candidate)]


@pytest.mark.parametrize("population", [xstest, halueval])
def test_intervals_cover_the_true_rate_over_100_sampler_versions(population):
    pop = population()
    true_rate = sum(y for _, y in pop) / len(pop)
    covered, estimates, judged = 0, [], []
    for seed in range(100):
        sampler = Sampler(base_rate=0.1, version=f"seed-{seed}", min_per_stratum=2, always_over_tokens=8000)
        s = EstimateSums()
        chosen = sample_once(sampler, pop)
        for prob, y in chosen:
            s.add(prob, y)
        rate, low, high = estimate(s)
        assert s.sum_w == pytest.approx(len(pop))  # every event counted once
        covered += low <= true_rate <= high
        estimates.append(rate)
        judged.append(len(chosen))
    assert covered >= 90, f"{covered}/100 intervals covered {true_rate:.3f}"
    mean = sum(estimates) / len(estimates)
    spread = math.sqrt(sum((r - mean) ** 2 for r in estimates) / 99)
    assert abs(mean - true_rate) < 3 * spread / 10  # unbiased: within 3 standard errors
    assert 0.1 <= sum(judged) / 100 / len(pop) < 0.2  # about 10%, plus the minimums and forced ones


def test_without_stratum_minimums_and_caps_it_is_post_stratified_bernoulli():
    pop = halueval()
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


@pytest.mark.slow
def test_report_query_rolls_up_what_the_flow_wrote(chdb_dsn, database):
    from operators.estimates import estimate_row
    from sinks.clickhouse import ClickHouseSink, connect, ensure_schema

    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    rows = []
    both = EstimateSums()
    for minute in range(3):
        s = EstimateSums()
        for i in range(40):
            prob, y = (0.25, i % 4 == 0) if i < 30 else (1.0, False)
            s.add(prob, y)
            if minute < 2:
                both.add(prob, y)
        rows.append(estimate_row(T0 + 60_000 * minute, 60_000, "acme", "bot", "toxicity", s, version=1))
    sink = ClickHouseSink(chdb_dsn, database, "quality_estimates").build("t", 0, 1)
    sink.write_batch(rows)
    since = datetime.fromtimestamp(T0 / 1000, tz=UTC)
    (got,) = query_estimates(client, database, since=since, until=since + timedelta(minutes=2))
    assert (got.judged, got.flagged) == (80, 16)
    assert (got.rate, got.ci_low, got.ci_high) == pytest.approx(estimate(both))
    hour = since + timedelta(hours=1)
    per_minute = query_estimates(client, database, since=since, until=hour, bucket_s=60)
    assert [r.window_start for r in per_minute] == [since + timedelta(minutes=m) for m in range(3)]
    assert query_estimates(client, database, since=since, until=hour, tenant="nobody") == []


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
