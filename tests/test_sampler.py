"""The stratified sampler: strata and forcing rules, max-min fair caps, decisions
that do not depend on batching or worker count (in-process and through the whole
flow into ClickHouse), a tiny tenant's minimum, a flood tenant's cap, and
control-store overrides (paused, aggressive) with their effect in the metrics."""

from __future__ import annotations

import dataclasses
import itertools
import json
import pickle
import random
from collections import Counter, defaultdict
from decimal import Decimal

import msgspec
import pytest
from prometheus_client import REGISTRY

from core.ports import Override, OverrideAction
from core.records import Event, Source
from judges.rules import Tier0Rules
from operators.alerts import AlertProgress
from operators.dedup import Candidate
from operators.price import override_rates
from operators.sample import _SampleLogic
from operators.sample_design import (
    CAP,
    FLAGGED,
    LONG,
    MINIMUM,
    OVERRIDE,
    PAUSED,
    RATE,
    Sampler,
    StratumCount,
    StratumRule,
    allocate,
    unit_hash,
)
from operators.sample_tally import tally_batch
from operators.savings import Baseline, ReferenceJudge
from simulators.kafka_mock import produce_all
from simulators.traffic import generate
from sinks.clickhouse import connect, ensure_schema
from sinks.memory_store import MemoryControlStore
from tests.conftest import rows, run_flow, topic_flow_settings

T0 = 1_763_300_000_000 - 1_763_300_000_000 % 60_000  # a minute boundary
METRICS = ("pii", "refusal", "jailbreak", "toxicity", "hallucination")
BASELINE = Baseline(METRICS, ReferenceJudge("ref", override_rates(Decimal("2.5"), Decimal("10"))))
RULES = Tier0Rules()


def event(event_id: str, ts_ms: int, tenant: str, agent: str = "bot", **kw: object) -> Event:
    fields: dict = {
        "event_id": event_id,
        "ts_ms": ts_ms,
        "tenant_id": tenant,
        "agent": agent,
        "model": "gpt-4o-mini",
        "provider": "openai",
        "variant": "baseline",
        "input_text": "How do I reset my password?",
        "output_text": "Open Settings, then Security, then Reset password.",
        "context": None,
        "input_tokens": 120,
        "output_tokens": 40,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "provided_cost_pusd": None,
        "latency_ms": None,
        "conversation_id": None,
        "user_id": None,
        "metadata": {},
        "source": None,
    }
    fields.update(kw)
    return Event(**fields)


def cand(e: Event) -> Candidate:
    return Candidate(event=e, content_hash=e.event_id, cached={}, todo=("toxicity", "hallucination"))


def decide(
    sampler: Sampler, batches: list[list[Event]], overrides: dict[str, Override] | None = None
) -> dict[str, tuple[float, str]]:
    """Run the sampler's two stages in-process: batches -> tallies -> one logic per tenant."""
    logics: dict[str, _SampleLogic] = {}
    for batch in batches:
        feed(logics, sampler, batch, overrides)
    return finish(logics)


def feed(
    logics: dict[str, _SampleLogic],
    sampler: Sampler,
    batch: list[Event],
    overrides: dict[str, Override] | None = None,
) -> None:
    cands = [cand(e) for e in batch]
    parts = tally_batch(cands, sampler=sampler, rules=RULES, baseline=BASELINE)
    by_tenant = defaultdict(list)
    for p in parts:
        by_tenant[p.tenant].append(p)
    for tenant, ps in by_tenant.items():
        stored = lambda: overrides or {}  # noqa: E731
        logic = logics.setdefault(tenant, _SampleLogic(sampler, lambda: 0.0, None, stored=stored))
        logic.on_batch(ps)


def finish(logics: dict[str, _SampleLogic]) -> dict[str, tuple[float, str]]:
    chosen: dict[str, tuple[float, str]] = {}
    for logic in logics.values():
        out, _ = logic.on_eof()
        for x in out:
            if isinstance(x, Candidate):
                chosen[x.event.event_id] = (x.inclusion_prob, x.sample_reason)
    return chosen


# --- pure pieces ------------------------------------------------------------------


def test_allocate_meets_small_wants_and_cuts_the_largest():
    assert allocate([3, 50, 7, 200], 1000) == [3, 50, 7, 200]
    shares = allocate([3, 50, 7, 200], 60)
    assert sum(shares) == 60 and shares[0] == 3 and shares[2] == 7
    assert shares[1] == 25 and shares[3] == 25  # the two big ones meet at a common level
    assert allocate([10, 10, 10], 4) == [2, 1, 1]  # leftovers to the earliest
    assert allocate([0, 5], 0) == [0, 0]


def test_strata_rules_forcing_and_overrides():
    s = Sampler(
        rules=(
            StratumRule(rate=0.5, tenant="small-*"),
            StratumRule(rate=0.02, flag="refusal."),
            StratumRule(rate=0.3, input_length=">=4000"),
        ),
        always_over_tokens=8000,
        always_on_flags=("pii.", "jailbreak."),
    )
    e = event("e1", T0, "acme")
    assert s.assign(e, ["pii.email"]).reason == FLAGGED
    assert s.assign(e, ["pii.email"]).rate == 1.0
    refusal = s.assign(e, ["refusal.opening"])  # fires on a large share of traffic: not forced
    assert (refusal.reason, refusal.rate) == (RATE, 0.02)
    assert s.assign(event("e2", T0, "acme", input_tokens=9000), []).reason == LONG
    assert s.assign(event("e3", T0, "acme", input_tokens=5000), []).rate == 0.3
    small = event("e4", T0, "small-co", input_tokens=5000)
    assert s.assign(small, ["refusal.inline"]).rate == 0.5  # the first match wins
    assert s.assign(e, []).rate == 0.1
    # strata: agent, model, variant and input length; different rates never share one
    assert s.assign(e, []).stratum != s.assign(event("e5", T0, "acme", variant="finetuned"), []).stratum
    assert s.assign(e, []).stratum != s.assign(e, ["refusal.inline"]).stratum
    with pytest.raises(ValueError, match="unknown strata"):
        Sampler(strata=("colour",))
    with pytest.raises(ValueError, match="increasing"):
        Sampler(length_buckets=(4000, 1000))


@pytest.mark.parametrize("by_tenant", [False, True])
def test_a_remembered_assignment_is_the_one_worked_out(by_tenant, monkeypatch):
    """`assign` remembers its answers by what decides them: on random events, flags and rules (with
    and without tenant patterns, and with the memory forgotten every 50 answers) it answers as
    working each one out does."""
    monkeypatch.setattr("operators.sample_design._ASSIGNED_MAX", 50)
    rng = random.Random(11)
    rules = (
        StratumRule(rate=0.5, tenant="small-*" if by_tenant else None, agent="code-*"),
        StratumRule(rate=0.02, flag="refusal."),
        StratumRule(rate=0.3, input_length=">=4000", model="m1"),
        StratumRule(rate=0.2, output_length="1000-4000", variant="v2"),
    )
    s = Sampler(
        rules=rules,
        strata=("model", "variant", "input_length", "output_length", "flags"),
        always_over_tokens=8000,
        always_on_flags=("pii.",),
    )
    flag_sets = [(), ("refusal.opening",), ("pii.email",), ("refusal.inline", "toxicity.slur")]
    for i in range(3000):
        e = event(
            f"e{i}",
            T0,
            rng.choice(["acme", "small-co", "small-x"]),
            agent=rng.choice(["bot", "code-a", "code-b"]),
            model=rng.choice(["m1", "m2"]),
            variant=rng.choice(["baseline", "v2"]),
            input_tokens=rng.choice([0, 999, 1000, 3999, 4000, 5000, 7999]),
            output_tokens=rng.choice([0, 1, 999, 1000, 4000]),
        )
        flags = rng.choice(flag_sets)
        assert s.assign(e, flags) == s._assign(e, flags), (e, flags)


# --- the two stages in-process ------------------------------------------------------


def traffic_events(n: int) -> list[Event]:
    out = []
    for i, (_, value, _) in enumerate(generate(limit=n, bad=False)):
        d = json.loads(value)
        out.append(
            event(
                d["event_id"],
                d["ts"],
                d["tenant_id"],
                d["agent"],
                model=d["model"],
                variant=d["variant"],
                input_text=d["input"][0]["content"],
                output_text=d["output"],
                context=d.get("context"),
                input_tokens=d["usage"]["input_tokens"],
                output_tokens=d["usage"]["output_tokens"],
            )
        )
        assert i < n
    return out


def test_decisions_do_not_depend_on_batching_or_order():
    events = traffic_events(1500)
    sampler = Sampler(max_per_tenant=30, min_per_stratum=2, always_over_tokens=8000)
    one_batch = decide(sampler, [events])
    rng = random.Random(7)  # a shuffled delivery in uneven batches, as from several partitions
    shuffled = events[:]
    rng.shuffle(shuffled)
    cuts = sorted(rng.sample(range(1, len(shuffled)), 40))
    batches = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]
    assert decide(sampler, batches) == one_batch
    assert decide(dataclasses.replace(sampler, version="v2"), [events]) != one_batch  # a new draw

    # and the design holds: per (tenant, window) at most the cap; pi = chosen / stratum size
    per_window = Counter((e.tenant_id, e.ts_ms // 60_000) for e in events if e.event_id in one_batch)
    assert max(per_window.values()) <= 30
    reasons = Counter(r for _, r in one_batch.values())
    assert reasons[FLAGGED] > 0 and reasons[RATE] > 0 and reasons[MINIMUM] > 0
    assert all(0 < p <= 1 for p, _ in one_batch.values())


def test_a_restart_from_any_epochs_snapshot_decides_the_same():
    """Every epoch snapshots every tenant (a window unchanged since the last snapshot is not copied
    again); a restart from any of them, fed the rest, chooses what the uninterrupted run chose."""
    events = traffic_events(1500)
    sampler = Sampler(max_per_tenant=30, min_per_stratum=2, always_over_tokens=8000)
    expected = decide(sampler, [events])
    batches = [events[i : i + 50] for i in range(0, len(events), 50)]
    for crash_after in (2, 11, 23):
        logics: dict[str, _SampleLogic] = {}
        saved: dict[str, bytes] = {}
        for i, batch in enumerate(batches):
            feed(logics, sampler, batch)
            epoch = {tenant: pickle.dumps(logic.snapshot()) for tenant, logic in logics.items()}
            if i == crash_after:
                saved = epoch
        restored = {
            tenant: _SampleLogic(sampler, lambda: 0.0, pickle.loads(state)) for tenant, state in saved.items()
        }
        for batch in batches[crash_after + 1 :]:
            feed(restored, sampler, batch)
        assert finish(restored) == expected
        assert finish(logics) == expected


def test_flagging_gives_the_candidate_a_new_event_and_leaves_the_shared_one_as_it_was():
    """Records are values: the cost branch holds the same decoded event as the sampler, so flagging
    must make a new event for the candidate instead of writing into the shared one."""
    shared = event(
        "x1", 1_700_000_000_000, "acme", output_text="Call me at 415-555-0132, my SSN is 078-05-1120."
    )
    c = cand(shared)
    tally_batch([c], sampler=Sampler(), rules=RULES, baseline=BASELINE)
    assert c.event.flags and all(f.startswith("pii") for f in c.event.flags)
    assert shared.flags == () and c.event is not shared
    assert msgspec.structs.replace(c.event, flags=()) == shared
    with pytest.raises(AttributeError):
        shared.flags = ("written",)  # type: ignore[misc]


def test_tiny_tenant_gets_its_minimum_and_flood_tenant_its_cap():
    sampler = Sampler(min_per_stratum=2, max_per_tenant=40, always_on_flags=("pii.",))
    tiny = [event(f"tiny-{i}", T0 + i, "tiny") for i in range(3)]
    flood = [event(f"flood-{i}", T0 + i, "flood") for i in range(3000)]
    leaks = [
        event(f"leak-{i}", T0 + i, "flood", output_text=f"Sure, write to jane.doe{i}@example.com")
        for i in range(15)
    ]
    chosen = decide(sampler, [tiny + flood[:1000], flood[1000:] + leaks])
    tiny_chosen = {k: v for k, v in chosen.items() if k.startswith("tiny")}
    below = sum(unit_hash("v1", e.event_id) < 0.1 for e in tiny)
    assert len(tiny_chosen) == max(2, below)
    assert {p for p, _ in tiny_chosen.values()} == {len(tiny_chosen) / 3}
    flood_chosen = {k: v for k, v in chosen.items() if not k.startswith("tiny")}
    assert len(flood_chosen) == 40  # the cap: max-min, the 15 leaks in full, the other stratum the rest
    assert all(chosen[e.event_id] == (1.0, FLAGGED) for e in leaks)
    assert {p for k, (p, _) in flood_chosen.items() if k.startswith("flood")} == {25 / 3000}


def test_overrides_pause_and_thin_a_tenant():
    events = [event(f"p-{i}", T0 + i, "paused") for i in range(200)]
    events += [event(f"a-{i}", T0 + i, "aggr") for i in range(2000)]
    overrides = {
        "paused": Override("paused", 0.0, "spike", "cli:ops", T0 + 3_600_000),
        "aggr": Override("aggr", 0.01, "spike", "alert:a1", T0 + 3_600_000),
    }
    before = _samples()
    chosen = decide(Sampler(), [events], overrides)
    after = _samples()
    assert not any(k.startswith("p-") for k in chosen)
    expected = sum(unit_hash("v1", f"a-{i}") < 0.01 for i in range(2000))
    assert 5 < expected == len(chosen) < 40
    assert {v for v in chosen.values()} == {(expected / 2000, OVERRIDE)}
    assert after[("skipped", PAUSED)] - before[("skipped", PAUSED)] == 200
    assert after[("sampled", OVERRIDE)] - before[("sampled", OVERRIDE)] == expected
    assert after[("skipped", OVERRIDE)] - before[("skipped", OVERRIDE)] == 2000 - expected
    assert after[("skipped", CAP)] == before[("skipped", CAP)]


def test_windows_wait_for_the_alerts_and_follow_their_overrides_in_event_time():
    """With alert actions configured, a window is decided once the tenant's alerts are evaluated
    through its start, under the override they set for it — however fast the events came."""
    sampler = Sampler(max_per_tenant=0)
    minute = 60_000
    events = [event(f"e-{m}-{i}", T0 + m * minute + i, "acme") for m in range(3) for i in range(1000)]
    stored = {"acme": Override("acme", 0.0, "an earlier run's", "alert:a1", T0 + 10 * minute, T0)}
    wall = [1000.0]
    logic = _SampleLogic(sampler, lambda: wall[0], None, gated=True, stored=lambda: stored)
    parts = tally_batch([cand(e) for e in events], sampler=sampler, rules=RULES, baseline=BASELINE)
    out, _ = logic.on_batch(parts)
    wall[0] += 600
    out.extend(logic.on_notify()[0])
    assert [x for x in out if isinstance(x, Candidate)] == []  # minutes 0 and 1 are due, but wait
    assert logic.notify_at() is None  # and wake with the alerts' progress, not the clock
    # the alerts: evaluated through minute 1, where a critical level set judging to 1% for an hour
    # (alert a1 of this run: the store's copy of it is not read again)
    action = OverrideAction("acme", "set", 0.01, T0 + 61 * minute, "alert:a1", "spike", T0 + minute)
    out, _ = logic.on_batch([AlertProgress("acme", T0 + minute, (action,))])
    chosen = [x for x in out if isinstance(x, Candidate)]
    assert {c.event.event_id.split("-")[1] for c in chosen} == {"0", "1"}  # minute 2 waits
    by_minute = Counter((c.event.event_id.split("-")[1], c.sample_reason) for c in chosen)
    below = sum(unit_hash("v1", f"e-1-{i}") < 0.01 for i in range(1000))
    assert by_minute[("1", OVERRIDE)] == below and by_minute[("1", RATE)] == 0
    assert by_minute[("0", RATE)] > 50  # before the alert: the normal 10%
    # the alert resolves at minute 2: the override ends there
    clear = OverrideAction("acme", "clear", 1.0, T0 + 2 * minute, "alert:a1", "back", T0 + 2 * minute)
    out, _ = logic.on_batch([AlertProgress("acme", T0 + 2 * minute, (clear,))])
    assert {x.sample_reason for x in out if isinstance(x, Candidate)} == {RATE}
    # restored from a snapshot, the state (progress and overrides) is the same
    restored = _SampleLogic(sampler, lambda: 1e9, pickle.loads(pickle.dumps(logic.snapshot())), gated=True)
    a, b = restored.snapshot(), logic.snapshot()
    assert (a.alerts_ms, a.overrides, a.open.keys()) == (b.alerts_ms, b.overrides, b.open.keys())


def test_a_hand_set_override_in_the_store_throttles_without_alerts():
    sampler = Sampler(max_per_tenant=0)
    events = [event(f"h-{i}", T0 + i, "acme") for i in range(2000)]
    paused = {"acme": Override("acme", 0.0, "ops", "cli:ops", T0 + 60_000, T0)}
    logic = _SampleLogic(sampler, lambda: 1e9, None, stored=lambda: paused)
    logic.on_batch(tally_batch([cand(e) for e in events], sampler=sampler, rules=RULES, baseline=BASELINE))
    out, _ = logic.on_eof()
    assert [x for x in out if isinstance(x, Candidate) and x.inclusion_prob > 0] == []


def _samples() -> Counter:
    out: Counter = Counter()
    for metric in REGISTRY.collect():
        if metric.name == "judgeflow_sampler_decisions":
            for s in metric.samples:
                if s.name.endswith("_total"):
                    out[(s.labels["decision"], s.labels["reason"])] = s.value
    return out


# --- the whole flow, into ClickHouse -----------------------------------------------------

TOPIC = "llm-events"


def wire(e: Event) -> tuple[bytes, bytes, int]:
    d = {
        "event_id": e.event_id,
        "ts": e.ts_ms,
        "tenant_id": e.tenant_id,
        "agent": e.agent,
        "model": e.model,
        "provider": e.provider,
        "input": e.input_text,
        "output": e.output_text,
        "usage": {"input_tokens": e.input_tokens, "output_tokens": e.output_tokens},
    }
    return e.event_id.encode(), json.dumps(d).encode(), e.ts_ms


def settings_for(kafka, chdb_dsn, database, judge_endpoint, **extra):
    return topic_flow_settings(kafka, chdb_dsn, database, judge_endpoint, topic=TOPIC, **extra)


@pytest.mark.slow
def test_replays_and_two_workers_sample_the_same_events(kafka, chdb_dsn, judge_endpoint):
    kafka.create_topic(TOPIC, 4)
    produce_all(kafka.bootstrap, TOPIC, generate(limit=2000))
    chosen = []
    for i, workers in enumerate((1, 1, 2)):
        database = f"t_det_{i}_{random.Random().getrandbits(40):x}"
        settings = settings_for(kafka, chdb_dsn, database, judge_endpoint)
        client = connect(chdb_dsn, database)
        ensure_schema(client, database)
        run_flow(settings, workers=workers)
        sql = "SELECT event_id, any(inclusion_prob) FROM evaluations FINAL GROUP BY event_id ORDER BY 1"
        chosen.append(rows(client, sql))
        judged_share = len(chosen[-1]) / rows(client, "SELECT count() FROM llm_events FINAL")[0][0]
        assert 0.1 < judged_share < 0.3
    assert chosen[0] == chosen[1] == chosen[2]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_minimum_cap_and_overrides_in_clickhouse(kafka, chdb_dsn, database, judge_endpoint, workers):
    kafka.create_topic(TOPIC, 4)
    events = [event(f"tiny-{i}", T0 + 20_000 * i, "tiny") for i in range(3)]
    events += [event(f"flood-{i}", T0 + 20 * i, "flood") for i in range(3000)]
    events += [event(f"flood2-{i}", T0 + 60_000 + 20 * i, "flood") for i in range(600)]
    events += [event(f"paused-{i}", T0 + 100 * i, "paused") for i in range(100)]
    produce_all(kafka.bootstrap, TOPIC, [wire(e) for e in events])
    settings = settings_for(
        kafka,
        chdb_dsn,
        database,
        judge_endpoint,
        **{"sampling.min_per_stratum": 2, "sampling.max_per_tenant_per_window": 40},
    )
    store = MemoryControlStore()
    store.set(Override("paused", 0.0, "cost spike", "cli:test", 2**62))
    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    run_flow(settings, workers=workers, control=store)

    judged = dict(
        rows(
            client,
            "SELECT concat(tenant_id, '/', toString(toUnixTimestamp(toStartOfMinute(ts)))),"
            " count(DISTINCT event_id) FROM evaluations FINAL GROUP BY 1",
        )
    )
    minute = T0 // 1000
    below = sum(unit_hash("v1", f"tiny-{i}") < 0.1 for i in range(3))
    assert judged[f"tiny/{minute}"] == max(2, below)  # small tenants are never invisible
    assert judged[f"flood/{minute}"] == 40  # the cost cap
    assert judged[f"flood/{minute + 60}"] == 40
    assert not any(k.startswith("paused/") for k in judged)

    # every judged event carries pi = chosen / stratum size: the estimates count every event once
    population = dict(
        rows(
            client,
            "SELECT tenant_id, round(sum(population)) FROM quality_estimates FINAL WHERE metric = 'refusal'"
            " GROUP BY tenant_id",
        )
    )
    assert population == {"tiny": 3, "flood": 3600}

    # the savings ledger: everything the paused tenant would have cost was avoided by sampling
    ledger = {
        t: (b, s, c, k, j)
        for t, b, s, c, k, j in rows(
            client,
            "SELECT tenant_id, sum(baseline_calls), sum(sampling_calls), sum(cache_calls),"
            " sum(cascade_calls), sum(judge_calls) FROM judge_savings FINAL GROUP BY tenant_id",
        )
    }
    assert ledger["paused"][:2] == (500, 500)
    assert ledger["flood"][0] - ledger["flood"][1] == 80 * 5  # only the capped 80 events could cost
    assert ledger["flood"][2] > 0  # identical texts: judged once, the others answered in flight
    sql = "SELECT tenant_id, sum(judge_calls) FROM cost_windows FINAL WHERE window_s = 60 GROUP BY 1"
    spend = dict(rows(client, sql))
    assert {t: v[4] for t, v in ledger.items() if v[4]} == {t: int(v) for t, v in spend.items() if v}


def test_late_events_are_decided_alone_whatever_batch_brought_them():
    """Events whose window was already decided: each alone, at its stratum's rate (Bernoulli), so the
    same late events give the same choices and probabilities in any batches."""
    events = sorted(traffic_events(1500), key=lambda e: e.ts_ms)
    second = events[0].ts_ms // 60_000 + 1  # a full minute, decided once the next ones come in
    rng = random.Random(3)
    late = rng.sample([e for e in events if e.ts_ms // 60_000 == second], 60)
    on_time = [e for e in events if e not in late]
    sampler = Sampler(max_per_tenant=30, min_per_stratum=2, always_over_tokens=8000)
    whole = decide_stepwise(sampler, [on_time, late])
    split = decide_stepwise(sampler, [on_time, *(late[i : i + 7] for i in range(0, len(late), 7))])
    one_by_one = decide_stepwise(sampler, [on_time, *([e] for e in late)])
    assert whole == split == one_by_one
    chosen_late = [whole[e.event_id] for e in late if e.event_id in whole]
    assert chosen_late and len(chosen_late) < len(late)
    # each at its stratum's rate: the base rate, or 1 where the rules force judging
    assert {p for p, _ in chosen_late} <= {sampler.base_rate, 1.0}


def decide_stepwise(sampler: Sampler, batches: list[list[Event]]) -> dict[str, tuple[float, str]]:
    """`decide`, with each tenant's windows closed as event time passes them (after every batch),
    so events of a window decided before they came are late."""
    logics: dict[str, _SampleLogic] = {}
    chosen: dict[str, tuple[float, str]] = {}
    ticks = itertools.count()

    def clock() -> float:  # a minute of wall time between looks: windows may go idle, none is open long
        return 60.0 * next(ticks)

    def keep(out) -> None:
        for x in out:
            if isinstance(x, Candidate):
                assert x.event.event_id not in chosen, "each event decided once"
                chosen[x.event.event_id] = (x.inclusion_prob, x.sample_reason)

    for batch in batches:
        parts = tally_batch([cand(e) for e in batch], sampler=sampler, rules=RULES, baseline=BASELINE)
        by_tenant = defaultdict(list)
        for p in parts:
            by_tenant[p.tenant].append(p)
        for tenant, ps in by_tenant.items():
            logic = logics.setdefault(tenant, _SampleLogic(sampler, clock, None, stored=dict))
            keep(logic.on_batch(ps)[0])
        for logic in logics.values():
            keep(logic.on_notify()[0])
    for logic in logics.values():
        keep(logic.on_eof()[0])
    return chosen


def test_an_event_its_partition_released_past_the_window_is_late_even_while_the_window_is_open():
    """Late by position (`Source.after_ms`: its partition had already released an event at or after the
    window's end plus lateness): decided alone whenever it arrives, so what the window decides does
    not depend on whether it came before the window closed — in one process or several."""
    sampler = Sampler(max_per_tenant=10, min_per_stratum=2)
    closes = T0 + 60_000 + int(sampler.allowed_lateness_s * 1000)
    window = [
        event(f"w{i}", T0 + i * 1_000, "acme", source=Source("t", 0, i, after_ms=T0 + i * 1_000))
        for i in range(40)
    ]
    just_in_time = event("in", T0 + 30_000, "acme", source=Source("t", 1, 7, after_ms=closes - 1))
    late = [
        event(f"late{i}", T0 + 5_000 + i, "acme", source=Source("t", 1, 8 + i, after_ms=closes))
        for i in range(60)
    ]

    def decide_all(batches: list[list[Event]]) -> dict[str, tuple[float, str]]:
        logic = _SampleLogic(sampler, lambda: 0.0, None, stored=dict)  # the window stays open to the end
        out = [x for b in batches for x in logic.on_batch(tally_batch([cand(e) for e in b], **kw))[0]]
        out += logic.on_eof()[0]
        return {
            x.event.event_id: (x.inclusion_prob, x.sample_reason) for x in out if isinstance(x, Candidate)
        }

    kw = {"sampler": sampler, "rules": RULES, "baseline": BASELINE}
    with_them = decide_all([[*window, just_in_time, *late]])  # they come before the window closes
    assert (
        with_them == decide_all([[*window, just_in_time], late]) == decide_all([late, window, [just_in_time]])
    )
    on_time = {k: v for k, v in with_them.items() if not k.startswith("late")}
    assert on_time == decide_all([[*window, just_in_time]])  # the window never counted the late ones
    assert {p for p, _ in on_time.values()} == {len(on_time) / 41}  # ...but the one just in time (m / N)
    chosen_late = [with_them[e.event_id] for e in late if e.event_id in with_them]
    assert chosen_late and len(chosen_late) < len(late)
    assert {p for p, _ in chosen_late} == {sampler.base_rate}  # each alone, at its stratum's rate


def test_events_late_for_the_estimates_window_too_carry_their_position_into_design_and_savings():
    """An event late for its sampler window is decided alone; if its partition had also passed the
    estimates' and savings' window (a 60-s window with 1,800 s of lateness here), its design record
    and savings entry say where (the latest position), so those stages drop them in every run, as
    they drop its verdicts (`Evaluation.after_ms`). Those merely late for the sampler carry none."""
    sampler = Sampler()
    judged = (60, 1_800)
    closes = T0 + 60_000 + int(sampler.allowed_lateness_s * 1000)
    stale_from = T0 + 60_000 + 1_800_000
    events = [
        event("on-time", T0 + 1_000, "acme", source=Source("t", 0, 1, after_ms=T0)),
        event("late", T0 + 2_000, "acme", source=Source("t", 0, 2, after_ms=closes)),
        event("stale-1", T0 + 3_000, "acme", source=Source("t", 1, 3, after_ms=stale_from)),
        event("stale-2", T0 + 4_000, "acme", source=Source("t", 2, 4, after_ms=stale_from + 5)),
    ]
    parts = tally_batch(
        [cand(e) for e in events], sampler=sampler, rules=RULES, baseline=BASELINE, judged_window_s=judged
    )
    got = {(p.late, p.savings.after_ms, p.savings.events, p.savings.after_ms) for p in parts}
    assert got == {(False, None, 1, None), (True, None, 1, None), (True, stale_from + 5, 2, stale_from + 5)}
    logic = _SampleLogic(sampler, lambda: 0.0, None, stored=dict)
    out, _ = logic.on_batch(parts)
    design = [x for x in out if isinstance(x, StratumCount)]
    assert {(d.events, d.after_ms) for d in design} == {(1, None), (2, stale_from + 5)}
    # without the estimates' window (an older caller) nothing is kept apart
    plain = tally_batch([cand(e) for e in events], sampler=sampler, rules=RULES, baseline=BASELINE)
    assert sorted((p.late, p.savings.after_ms, p.savings.events) for p in plain) == [
        (False, None, 1),
        (True, None, 3),
    ]
