"""The judged-share ceiling (`sampling.max_judged_share`): on long-context traffic and on
traffic full of tier-0 flags — where forced judging alone wanted half of all events — the
share judged stays at the ceiling, the thinned certainty strata are sampled at m/N like the
others (the design record says so), the estimates stay unbiased and keep their coverage,
the choices do not depend on batching, and `judgeflow report savings` shows the realised
share against the ceiling."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import bytewax.operators as op
import msgspec
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

from bench._coverage import BASELINE, RULES, SHAPES
from core.records import Event, SavingsEntry
from flows.deps import build_sampler
from flows.report_format import format_table
from flows.report_quality import savings
from flows.report_queries import Scope
from operators.dedup import Candidate
from operators.sample import _SampleLogic
from operators.sample_design import FLAGGED, LONG, SHARE, Sampler, StratumCount, unit_hash
from operators.sample_tally import tally_batch
from operators.savings import savings_row
from simulators.chdb_http import start_chdb_http
from simulators.kafka_mock import produce_all
from sinks.clickhouse import connect, ensure_schema
from sinks.clickhouse_sink import ClickHouseSink
from tests.conftest import flow_settings, rows, run_flow
from tests.test_estimates import check_coverage
from tests.test_sampler import (
    T0,
    TOPIC,
    _samples,
    decide,
    decide_stepwise,
    event,
    settings_for,
    traffic_events,
    wire,
)

CEILING = 0.15


def run(events: list[Event], sampler: Sampler, batch: int = 500) -> list[Candidate | StratumCount]:
    """The sampler's two stages in-process, one logic per tenant; the chosen and the design."""
    logics: dict[str, _SampleLogic] = {}
    out: list = []
    for i in range(0, len(events), batch):
        cands = [Candidate(e, e.event_id, {}, ()) for e in events[i : i + batch]]
        for part in tally_batch(cands, sampler=sampler, rules=RULES, baseline=BASELINE):
            logic = logics.setdefault(part.tenant, _SampleLogic(sampler, lambda: 0.0, None))
            out.extend(logic.on_batch([part])[0])
    for logic in logics.values():
        out.extend(logic.on_eof()[0])
    return [x for x in out if isinstance(x, Candidate | StratumCount)]


def long_and_flagged() -> dict[str, tuple[list[Event], dict]]:
    shapes = {name: SHAPES[name]() for name in ("halueval", "presidio")}
    out = {s.name: ([e for e, _ in s.events], s.sampler) for s in shapes.values()}
    demo = traffic_events(6000)  # the demo traffic, with its small tenant (a few events a minute)
    out["demo traffic"] = (demo, {})
    return out


@pytest.mark.parametrize("name", ["halueval, long contexts", "presidio pii (forced flags)", "demo traffic"])
def test_the_judged_share_stays_under_the_ceiling(name):
    events, kw = long_and_flagged()[name]
    before = run(events, Sampler(**kw))
    after = run(events, Sampler(max_judged_share=CEILING, **kw))
    judged = [c for c in after if isinstance(c, Candidate)]
    design = [x for x in after if isinstance(x, StratumCount)]

    # every (tenant, window): at most floor(s * N + v) <= s * N + 1, or K events when that is more
    n = Counter((e.tenant_id, e.ts_ms // 60_000) for e in events)
    chosen = Counter((c.event.tenant_id, c.event.ts_ms // 60_000) for c in judged)
    for key, count in chosen.items():
        assert count <= max(2, math.floor(CEILING * n[key] + 1)), (key, count, n[key])
    busy = [k for k in n if n[k] >= 2 / CEILING]  # windows where the minimum K does not decide
    share = sum(chosen[k] for k in busy) / sum(n[k] for k in busy)
    assert share <= CEILING + 0.005
    was = sum(isinstance(c, Candidate) for c in before) / len(events)
    assert was > CEILING + 0.04  # the rules alone asked for more: the ceiling is what held it

    # thinned certainty strata are sampled at m/N, and the design record says what was chosen
    certain = [x for x in design if x.stratum.endswith("\x1fcertain")]
    assert any(0 < x.chosen < x.events for x in certain)
    for x in design:
        assert x.inclusion_prob == pytest.approx(x.chosen / x.events)
    by_stratum = Counter(
        (c.event.tenant_id, c.event.ts_ms // 60_000, c.stratum, c.inclusion_prob) for c in judged
    )
    recorded = {
        (x.tenant_id, x.window_start_ms // 60_000, x.stratum, x.inclusion_prob): x.chosen for x in design
    }
    assert {k: v for k, v in recorded.items() if v} == dict(by_stratum)
    reasons = Counter(c.sample_reason for c in judged)
    assert reasons[FLAGGED] + reasons[LONG] > 0  # forced events still judged, fewer of them


@pytest.mark.parametrize("make", ["halueval", "presidio", "many_strata"])
def test_estimates_stay_unbiased_and_covering_under_the_ceiling(make):
    """40 sampler versions with the ceiling binding: every estimator still covers >= 93% per
    window and per period, and the period estimates are unbiased (tests/test_estimates.py)."""
    shape = SHAPES[make]()
    check_coverage(
        dataclasses.replace(shape, sampler={**shape.sampler, "max_judged_share": CEILING}), range(40)
    )


@pytest.mark.slow
@pytest.mark.parametrize("make", ["xstest", "presidio", "halueval", "many_strata"])
@pytest.mark.parametrize("share", [0.1, 0.2])
def test_estimates_stay_unbiased_and_covering_over_300_sampler_versions(make, share):
    shape = SHAPES[make]()
    check_coverage(
        dataclasses.replace(shape, sampler={**shape.sampler, "max_judged_share": share}), range(300)
    )


def test_choices_under_the_ceiling_do_not_depend_on_batching_or_order():
    events = traffic_events(1500)
    sampler = Sampler(max_judged_share=0.1, min_per_stratum=2, always_over_tokens=2000)
    one_batch = decide(sampler, [events])
    rng = random.Random(11)
    shuffled = events[:]
    rng.shuffle(shuffled)
    cuts = sorted(rng.sample(range(1, len(shuffled)), 40))
    batches = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]
    assert decide(sampler, batches) == one_batch
    assert len(one_batch) < len(decide(dataclasses.replace(sampler, max_judged_share=0.0), [events]))


def test_late_forced_events_are_taken_at_the_ceiling():
    """A late event of a certainty stratum is Bernoulli at the ceiling, not 1, so late traffic
    cannot go around it either; its probability is exact and the same in any batch."""
    events = sorted(traffic_events(1500), key=lambda e: e.ts_ms)
    second = events[0].ts_ms // 60_000 + 1
    minute = [e for e in events if e.ts_ms // 60_000 == second]
    on_time = [e for e in events if e not in minute[::2]]  # the window is decided without half its events
    late = [msgspec.structs.replace(e, input_tokens=20_000) for e in minute[::2]]  # long: forced
    sampler = Sampler(max_judged_share=0.25, always_over_tokens=8000)
    whole = decide_stepwise(sampler, [on_time, late])
    assert whole == decide_stepwise(sampler, [on_time, *([e] for e in late)])
    taken = {e.event_id: whole[e.event_id] for e in late if e.event_id in whole}
    assert taken and {p for p, _ in taken.values()} == {0.25}
    assert set(taken) == {e.event_id for e in late if unit_hash("v1", e.event_id) < 0.25}


def test_a_small_window_keeps_its_minimum_and_the_cut_is_counted():
    sampler = Sampler(max_judged_share=0.1, min_per_stratum=2)
    tiny = [event(f"tiny-{i}", T0 + i, "tiny") for i in range(3)]
    assert len(decide(sampler, [tiny])) == 2  # K events per window even above the share
    leaks = [
        event(f"leak-{i}", T0 + i, "acme", output_text=f"Sure, write to jane.doe{i}@example.com")
        for i in range(60)
    ]
    plain = [event(f"plain-{i}", T0 + i, "acme") for i in range(140)]
    before = _samples()
    out = run(leaks + plain, sampler)
    cut = _samples()[("skipped", SHARE)] - before[("skipped", SHARE)]
    judged = [c for c in out if isinstance(c, Candidate)]
    assert sampler.ceiling("acme", T0, 200) == 20 == len(judged)  # floor(0.1 * 200 + v)
    # max-min: the forced leaks (60 wanted) and the plain stratum (its 10%) meet at 10 each
    assert Counter(c.sample_reason for c in judged)[FLAGGED] == 10
    below = sum(unit_hash("v1", e.event_id) < 0.1 for e in plain)
    assert cut == 60 + max(2, below) - 20  # counted as cut by the ceiling


def test_the_config_sets_a_ceiling_per_tenant():
    settings = flow_settings(
        **{"sampling.max_judged_share": 0.2, "sampling.judged_share_by_tenant": {"initech": 0.5}}
    )
    sampler = build_sampler(settings)
    assert sampler.judged_share("acme") == 0.2 and sampler.judged_share("initech") == 0.5
    assert settings.flow.sampling.judged_share("initech") == 0.5


@pytest.mark.slow
def test_report_savings_shows_the_judged_share_against_the_ceiling(kafka, chdb_dsn, database, judge_endpoint):
    """Long conversations (all forced) for one tenant, short chats for another: in ClickHouse
    and in `judgeflow report savings`, each tenant's judged share is within its ceiling."""
    kafka.create_topic(TOPIC, 2)
    events = [event(f"long-{i}", T0 + 150 * i, "longctx", input_tokens=9000) for i in range(1200)]
    events += [event(f"chat-{i}", T0 + 150 * i, "chatty", input_tokens=100) for i in range(1200)]
    produce_all(kafka.bootstrap, TOPIC, [wire(e) for e in events])
    settings = settings_for(
        kafka,
        chdb_dsn,
        database,
        judge_endpoint,
        **{"sampling.max_judged_share": 0.2, "sampling.judged_share_by_tenant": {"chatty": 0.05}},
    )
    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    run_flow(settings)

    sql = "SELECT tenant_id, count(DISTINCT event_id) FROM evaluations FINAL GROUP BY 1"
    evaluated = {t: int(n) for t, n in rows(client, sql)}
    scope = Scope(T0 - 3_600_000, T0 + 3_600_000, T0 + 3_600_000, "flag")
    table = savings(client, scope, database, settings.flow.sampling.judged_share)
    got = {r["tenant"]: r for r in table.dicts()}
    for tenant, ceiling in (("longctx", 0.2), ("chatty", 0.05)):
        r = got[tenant]
        assert r["events"] == 1200
        assert r["judged_events"] == evaluated[tenant]  # every chosen event got its verdicts
        assert r["share_ceiling"] == ceiling
        assert r["judged_share"] <= ceiling + 3 / 1200  # three windows, each <= s * N + 1
        assert r["judged_share"] == pytest.approx(ceiling, abs=0.01)
    assert got["longctx"]["forced_share"] == 1.0 and got["chatty"]["forced_share"] == 0.0
    text = format_table(table)
    assert "judged_share" in text and "share_ceiling" in text and "20.0%" in text
    by_window = defaultdict(int)
    for t, n in rows(client, "SELECT tenant_id, sum(judged_events) FROM judge_savings FINAL GROUP BY 1"):
        by_window[t] += int(n)
    assert dict(by_window) == evaluated


def test_judgeflow_report_savings_prints_the_share_against_the_ceiling(tmp_path):
    """The CLI, as a user runs it: the sampler's savings rows for long-context traffic (half of
    it forced) in ClickHouse, `judgeflow report savings` with the config's ceiling."""
    shape = SHAPES["halueval"]()
    sampler = Sampler(max_judged_share=CEILING, **shape.sampler)
    logic = _SampleLogic(sampler, lambda: 0.0, None)
    cands = [Candidate(e, e.event_id, {}, ()) for e, _ in shape.events]
    out = [*logic.on_batch(tally_batch(cands, sampler=sampler, rules=RULES, baseline=BASELINE))[0]]
    out += logic.on_eof()[0]
    entries = [x for x in out if isinstance(x, SavingsEntry)]  # the sampler's per-window savings
    judged = sum(isinstance(c, Candidate) for c in out)
    assert sum(x.chosen for x in entries) == judged
    rows_ = [savings_row(x.ts_ms - x.ts_ms % 60_000, 60_000, x, "ref", 1) for x in entries]
    config = tmp_path / "judgeflow.toml"
    config.write_text(f"[sampling]\nmax_judged_share = {CEILING}\n")
    with start_chdb_http(tmp_path / "chdb") as url:
        flow = Dataflow("savings_rows")
        op.output(
            "out", op.input("in", flow, TestingSource(rows_)), ClickHouseSink(url, "share_t", "judge_savings")
        )
        run_main(flow)
        start = min(r.window_start_ms for r in rows_) // 1000
        since = datetime.fromtimestamp(start - 60, tz=UTC).isoformat()
        until = datetime.fromtimestamp(start + 3600, tz=UTC).isoformat()
        cmd = [sys.executable, "-m", "flows.cli", "report", "savings", "--dsn", url, "--database", "share_t"]
        cmd += ["--config", str(config), "--since", since, "--until", until]
        repo = Path(__file__).resolve().parents[1]
        text = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120, check=True).stdout
        got = subprocess.run(
            [*cmd, "--json"], cwd=repo, capture_output=True, text=True, timeout=120, check=True
        )
    assert "judged_share" in text and "share_ceiling" in text and "15.0%" in text
    (row,) = json.loads(got.stdout)["tables"]["savings"]["rows"]
    assert row["events"] == len(shape.events) and row["judged_events"] == judged
    assert row["share_ceiling"] == CEILING
    assert row["judged_share"] == pytest.approx(judged / len(shape.events))
    assert row["judged_share"] <= CEILING + 0.005 < row["forced_share"]
