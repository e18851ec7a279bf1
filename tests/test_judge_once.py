"""Identical content is paid for once, and an event read again gets back what it paid for.

The judge operator's logic driven directly (as Bytewax would), with the real `openai` (tier 1) and
`anthropic` (tier 2) clients over HTTP to the local endpoint (`tests/test_judge_cascade.py`'s harness).

- One call per (content, metric, tier) at a time: events that need it while it is queued behind busy
  slots, under way, or escalated to tier 2 share its outcome instead of paying again.
- A verdict in the cache names the event that paid for it: that event, read again (a restart, a replay
  of the topic), gets back the rows and the judge spend its calls gave, and its tenant's budget is
  charged as they charged it — the tables and the budget are what they were, and no call is made.
"""

from __future__ import annotations

import time
from collections import Counter

import msgspec

from core import metrics
from core.records import Evaluation, LedgerEntry
from judges.budget import BudgetPolicy
from judges.cascade import JudgePlan
from sinks.memory_store import MemoryVerdictCache
from tests.test_judge_cascade import (
    MILLI,
    TIER1,
    TIER2,
    Out,
    by_tokens,
    candidate,
    drain,
    evaluations,
    event,
    judge_events,
    judge_logic,
    tiers_by,
)

HARSH = "What a moron move that was."  # tier 1 flags toxicity, tier 2 confirms it
CASCADE = JudgePlan(
    {"toxicity": (1, 2), "sentiment": (1,)},
    llm_tiers=frozenset({1, 2}),
    budget=BudgetPolicy(tenants={"acme": 8 * 1000 * MILLI}),  # booked, never reached
)


def calls_by_model(ep) -> dict[str, int]:
    return {m: c["ok"] for m, c in ep.stats()["by_model"].items()}


def table(out: Out) -> dict[str, bytes]:
    """What ClickHouse keeps of `out`: the newest row per evaluation and per spend entry."""
    rows: dict[str, bytes] = {}
    for x in out:
        key = x.eval_id if isinstance(x, Evaluation) else f"spend:{x.entry_id}"
        rows[key] = msgspec.json.encode(x)
    return rows


def test_identical_events_queued_behind_busy_slots_are_judged_once(judge_endpoint):
    ep = judge_endpoint
    plan = JudgePlan({"toxicity": (1,)})
    same = "Answer: it went well."
    ep.script([{"latency_ms": 400}])  # another content's call holds the only slot for a while
    with judge_logic(ep, plan, max_in_flight=1) as (logic, deps):
        out, _ = logic.on_batch([candidate(event("other", "Something else entirely."), plan, deps.keyer)])
        out = list(out)
        for i in range(12):  # the same content, batch after batch: queued, then in flight, then cached
            emitted, _ = logic.on_batch([candidate(event(f"s{i}", same), plan, deps.keyer)])
            out += emitted
            out += drain(logic, until=lambda _: True)  # one wake-up, as Bytewax would give
            time.sleep(0.06)
        out += drain(logic)
    assert ep.stats()["total"] == 2
    same_rows = [v for v in evaluations(out) if v.event_id.startswith("s")]
    assert Counter(v.event_id for v in same_rows) == {f"s{i}": 1 for i in range(12)}
    assert sum(not v.cache_hit for v in same_rows) == 1
    assert sum(v.judge_cost_pusd > 0 for v in same_rows) == 1
    # every LLM verdict writes a judge-spend entry, those that cost the event nothing with no calls
    spend = [x for x in out if isinstance(x, LedgerEntry)]
    assert sum(x.judge_calls for x in spend) == 2 and len(spend) == 13


def test_an_identical_event_arriving_while_tier_2_confirms_shares_both_tiers(judge_endpoint):
    ep = judge_endpoint
    plan = JudgePlan({"toxicity": (1, 2)}, llm_tiers=frozenset({1, 2}))
    ep.script([{"latency_ms": 1}, {"latency_ms": 1500}])  # tier 1 answers at once, tier 2 takes a while
    with judge_logic(ep, plan) as (logic, deps):
        first, _ = logic.on_batch([candidate(event("a", HARSH), plan, deps.keyer)])
        out = list(first) + drain(logic, until=lambda o: any(v.tier == 1 for v in evaluations(o)))
        assert not any(v.tier == 2 for v in evaluations(out))  # tier 2 is still under way
        second, _ = logic.on_batch([candidate(event("b", HARSH), plan, deps.keyer)])
        out += [*second, *drain(logic)]
        assert logic.snapshot().answered == {}  # the cascade is over: the cache answers from now on
    assert calls_by_model(ep) == {TIER1: 1, TIER2: 1}
    assert tiers_by(out) == {("a", "toxicity"): [1, 2], ("b", "toxicity"): [1, 2]}
    b = [v for v in evaluations(out) if v.event_id == "b"]
    assert all(v.cache_hit and v.judge_cost_pusd == 0 and v.error == "" for v in b)
    spend = [x for x in out if isinstance(x, LedgerEntry)]
    assert sorted((x.entry_id, x.judge_calls) for x in spend) == [
        ("a|judge|toxicity|1", 1),
        ("a|judge|toxicity|2", 1),
        ("b|judge|toxicity|1", 0),
        ("b|judge|toxicity|2", 0),
    ]


def test_an_event_read_again_gets_back_the_rows_and_the_spend_of_the_calls_it_paid_for(judge_endpoint):
    ep = judge_endpoint
    events = [event("a", HARSH), event("b", HARSH), event("c", "Great question, here is the answer.")]
    cache = MemoryVerdictCache(max_entries=10_000, ttl_s=3600)
    replayed = metrics.JUDGE_REPLAYED.labels("toxicity")
    before = replayed._value.get()
    with judge_logic(ep, CASCADE, cache=cache) as (logic, deps):
        first = judge_events(logic, deps, events)
        budget = logic.snapshot().budget
    calls = calls_by_model(ep)
    assert calls == {TIER1: 2 * 2, TIER2: 1}  # a pays for both contents' metrics; b shares a's
    paid = [v for v in evaluations(first) if v.judge_cost_pusd > 0]
    assert {v.event_id for v in paid} == {"a", "c"}

    with judge_logic(ep, CASCADE, cache=cache) as (logic, deps):  # a restart, or a replay of the topic
        again = judge_events(logic, deps, events)
        assert logic.snapshot().budget == budget  # charged as the calls charged it
    assert calls_by_model(ep) == calls  # not one call more
    # what is stored afterwards is what was stored before: a and c gave back every row they paid
    # for (tier 1 and 2, spend included), b's verdict is a free cache hit as before
    assert {**table(first), **table(again)} == table(first)
    assert len(table(again)) == len(table(first)) - 1  # (b's shared tier-1 row is not made again)
    assert replayed._value.get() - before == 2  # a's and c's toxicity

    # an event with the same content but another id did not pay: it gets a free hit
    with judge_logic(ep, CASCADE, cache=cache) as (logic, deps):
        other = judge_events(logic, deps, [event("a2", HARSH)])
    assert [(v.tier, v.cache_hit, v.judge_cost_pusd) for v in evaluations(other)] == [
        (2, True, 0),
        (1, True, 0),
    ]
    spend = [x for x in other if isinstance(x, LedgerEntry)]  # one with no calls per LLM tier of the metric
    assert sorted((x.entry_id, x.judge_calls, x.judge_cost_pusd) for x in spend) == [
        ("a2|judge|sentiment|1", 0, 0),
        ("a2|judge|toxicity|1", 0, 0),
        ("a2|judge|toxicity|2", 0, 0),
    ]


def test_a_restore_takes_work_that_finished_after_the_snapshot_from_the_cache(judge_endpoint):
    ep = judge_endpoint
    plan = JudgePlan(
        {"toxicity": (1, 2)},
        llm_tiers=frozenset({1, 2}),
        budget=CASCADE.budget,
        costs={1: by_tokens, 2: by_tokens},  # work under way books an estimate
    )
    cache = MemoryVerdictCache(max_entries=10_000, ttl_s=3600)
    with judge_logic(ep, plan, cache=cache) as (logic, deps):
        # e0's tier-1 verdict is out and its tier 2 under way; e1's tier 1 is under way
        ep.script([{"latency_ms": 1}, {"latency_ms": 800}])
        out, _ = logic.on_batch([candidate(event("e0", HARSH), plan, deps.keyer)])
        out = [*out, *drain(logic, until=lambda o: len(evaluations(o)) == 1)]
        ep.script([{"latency_ms": 800}], append=True)
        more, _ = logic.on_batch([candidate(event("e1", f"Truly, {HARSH}"), plan, deps.keyer)])
        assert not more
        state = logic.snapshot()
        after_snapshot = drain(logic)  # finished, written, cached ... then the worker dies
        budget = logic.snapshot().budget
    calls = ep.stats()["total"]
    assert calls == 4
    assert sorted(
        (w.cand.event.event_id, p.tier, len(p.paid)) for w in state.waiting for p in w.pending.values()
    ) == [
        ("e0", 2, 1),
        ("e1", 1, 0),
    ]
    assert tiers_by(after_snapshot) == {("e0", "toxicity"): [2], ("e1", "toxicity"): [1, 2]}

    with judge_logic(ep, plan, cache=cache, resume=state) as (restored, _):
        resumed = drain(restored)
        assert restored.snapshot().budget == budget
        assert len(state.answered) == 1 and restored.snapshot().answered == {}  # e0's tier 1 answers no more
    assert ep.stats()["total"] == calls  # nothing was sent again
    assert table(resumed) == table(after_snapshot)  # and e0's tier 1, out before the snapshot, not again
