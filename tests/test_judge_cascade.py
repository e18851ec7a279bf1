"""The judge operator's logic driven directly (as Bytewax would), with the real
`openai` (tier 1) and `anthropic` (tier 2) clients over HTTP to the local endpoint.

Covered: cascade routing, budget degradation, a crash and restore with calls in
flight (each judgement emitted once, no finished call paid twice), PII
redaction before text leaves, and refusal judging on XSTest with the tier-0
rules scored against the human labels.

Data: XSTest v2 completions with human refusal labels (Röttger et al., NAACL
2024; github paul-rottger/exaggerated-safety, CC-BY-4.0 prompts), see
/work/shared/data/PROVENANCE.tsv.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest

from core import metrics
from core.records import Evaluation, Event, LedgerEntry
from judges.anthropic_judge import AnthropicJudge
from judges.base import FLAGGED, JudgeItem
from judges.budget import DAY_MS, BudgetPolicy
from judges.cascade import JudgePlan
from judges.openai_judge import OpenAIJudge
from judges.redact import Redactor
from judges.rules import Tier0Rules
from judges.runtime import EndpointPolicy, JudgeRuntime, RetryPolicy
from operators.dedup import Candidate, ContentKeyer
from operators.judge import BUDGET_SPENT, _Deps, _JudgeLogic, _JudgeState
from simulators.local_endpoint import EndpointConfig, LocalEndpoint
from sinks.memory_store import MemoryVerdictCache

DATA = Path(os.environ.get("JUDGEFLOW_DATA", "/work/shared/data"))
TIER1, TIER2 = "gpt-4o-mini", "claude-sonnet-4-6"
T0 = 1_795_000_000_000  # 2026-11-18, event time
RULES = Tier0Rules()
MILLI = 10**9  # $0.001 in picodollars


@pytest.fixture(scope="module")
def endpoint() -> Iterator[LocalEndpoint]:
    with LocalEndpoint(EndpointConfig(latency=2.0)) as ep:
        yield ep


@pytest.fixture
def ep(endpoint: LocalEndpoint) -> LocalEndpoint:
    endpoint.reset()
    return endpoint


def by_tokens(i: int, o: int) -> int:
    return 150_000 * i + 600_000 * o


def make_runtime(
    ep: LocalEndpoint, costs: dict[int, Callable[[int, int], int]], max_in_flight: int = 64
) -> JudgeRuntime:
    def judges() -> dict:
        return {
            1: OpenAIJudge(
                model=TIER1, api_key="k", base_url=ep.openai_base_url, tier=1, timeout_s=30, cost=costs[1]
            ),
            2: AnthropicJudge(
                model=TIER2, api_key="k", base_url=ep.anthropic_base_url, tier=2, timeout_s=30, cost=costs[2]
            ),
        }

    fast = EndpointPolicy(retry=RetryPolicy(base_backoff_s=0.01))
    return JudgeRuntime(judges, max_in_flight=max_in_flight, policies={1: fast, 2: fast})


@contextmanager
def judge_logic(
    ep: LocalEndpoint,
    plan: JudgePlan,
    *,
    resume: _JudgeState | None = None,
    cache: MemoryVerdictCache | None = None,
    max_in_flight: int = 64,
) -> Iterator[tuple[_JudgeLogic, _Deps]]:
    """The judge's logic as Bytewax would build it; `cache`: one shared with another logic (a
    restart, a replay), else its own."""
    costs = dict(plan.costs) or {1: by_tokens, 2: by_tokens}
    runtime = make_runtime(ep, costs, max_in_flight)
    deps = _Deps(
        plan=plan,
        rules=RULES,
        runtime=runtime,
        cache=cache or MemoryVerdictCache(max_entries=10_000, ttl_s=3600),
        keyer=ContentKeyer(lowercase=False, volatile_patterns=(), judge_version="test"),
        now_ms=lambda: T0,
        eof_timeout_s=30,
        max_queued=10_000,
    )
    try:
        yield _JudgeLogic(deps, resume), deps
    finally:
        runtime.close()


def event(
    event_id: str, output: str, *, inp: str = "Can you help me?", tenant: str = "acme", **kw: Any
) -> Event:
    return Event(
        event_id=event_id,
        ts_ms=kw.pop("ts_ms", T0),
        tenant_id=tenant,
        agent="support",
        model="gpt-4.1",
        provider="openai",
        variant="baseline",
        input_text=inp,
        output_text=output,
        context=kw.pop("context", None),
        input_tokens=10,
        output_tokens=10,
        cache_read_tokens=0,
        cache_write_tokens=0,
        reasoning_tokens=0,
        provided_cost_pusd=None,
        latency_ms=None,
        conversation_id=None,
        user_id=None,
        metadata={},
        source=None,
    )


def candidate(e: Event, plan: JudgePlan, keyer: ContentKeyer) -> Candidate:
    """What reaches the judge: the sampler has flagged it with the tier-0 rules."""
    flags = tuple(sorted(Tier0Rules().flags(JudgeItem(e.input_text, e.output_text, e.context))))
    return Candidate(
        event=msgspec.structs.replace(e, flags=flags),
        content_hash=keyer.content_hash(e),
        cached={},
        todo=plan.llm_metrics,
        inclusion_prob=1.0,
    )


Out = list[Evaluation | LedgerEntry]


def drain(logic: _JudgeLogic, *, until: Callable[[Out], bool] | None = None, timeout_s: float = 30) -> Out:
    """Call `on_notify` as Bytewax would until nothing is pending (or `until` holds)."""
    out: Out = []
    deadline = time.monotonic() + timeout_s
    while logic.notify_at() is not None and not (until and until(out)):
        assert time.monotonic() < deadline, "judge work did not finish"
        emitted, _ = logic.on_notify()
        out.extend(emitted)
        time.sleep(0.005)
    return out


def judge_events(logic: _JudgeLogic, deps: _Deps, events: Iterable[Event]) -> Out:
    emitted, _ = logic.on_batch([candidate(e, deps.plan, deps.keyer) for e in events])
    return [*emitted, *drain(logic)]


def evaluations(out: Out) -> list[Evaluation]:
    return [x for x in out if isinstance(x, Evaluation)]


def tiers_by(out: Out) -> dict[tuple[str, str], list[int]]:
    """(event, metric) -> the tiers that produced an evaluation, in order."""
    got: dict[tuple[str, str], list[int]] = {}
    for v in evaluations(out):
        got.setdefault((v.event_id, v.metric), []).append(v.tier)
    return {k: sorted(v) for k, v in got.items()}


# --- cascade ---------------------------------------------------------------------


def test_cascade_routes_only_unsure_flagged_or_tier2_metrics_to_tier2(ep):
    plan = JudgePlan(
        {"sentiment": (1, 2), "toxicity": (0, 1, 2), "hallucination": (2,), "pii": (0,)},
        llm_tiers=frozenset({1, 2}),
        unsure_band=0.15,
        tier0_settles=frozenset({"toxicity", "pii"}),
    )
    events = [
        event("calm", "Great question, here is the answer."),
        event("unsure", "That is a bad idea, but here is how."),  # sentiment 0.5 at tier 1
        event("rude", "Honestly, you are a stupid idiot."),  # tier-0 insult settles toxicity
        event("harsh", "What a moron move that was."),  # tier 1 flags toxicity, tier 2 confirms
    ]
    escalated = metrics.JUDGE_ESCALATIONS.labels("toxicity", "flagged")
    before = escalated._value.get()
    with judge_logic(ep, plan) as (logic, deps):
        out = judge_events(logic, deps, events)
        cached = deps.cache.get_many(
            [deps.keyer.metric_key(deps.keyer.content_hash(e), "sentiment") for e in events]
        )
    assert tiers_by(out) == {
        ("calm", "sentiment"): [1],
        ("calm", "toxicity"): [0, 1],
        ("calm", "hallucination"): [2],
        ("calm", "pii"): [0],
        ("unsure", "sentiment"): [1, 2],
        ("unsure", "toxicity"): [0, 1],
        ("unsure", "hallucination"): [2],
        ("unsure", "pii"): [0],
        ("rude", "sentiment"): [1, 2],
        ("rude", "toxicity"): [0],
        ("rude", "hallucination"): [2],
        ("rude", "pii"): [0],
        ("harsh", "sentiment"): [1],
        ("harsh", "toxicity"): [0, 1, 2],
        ("harsh", "hallucination"): [2],
        ("harsh", "pii"): [0],
    }
    assert all(v.error == "" for v in evaluations(out))
    # the endpoint saw exactly the calls the cascade asked for, per model
    by_model = {m: c["ok"] for m, c in ep.stats()["by_model"].items()}
    assert by_model == {TIER1: 4 + 3, TIER2: 4 + 2 + 1}
    assert escalated._value.get() - before == 1
    # the verdict of record (cached) is the highest tier's
    assert [c.verdict.tier if c else None for c in cached] == [1, 2, 2, 1]
    # every billed call is in the ledger once, by judge model and tier
    spend = [x for x in out if isinstance(x, LedgerEntry)]
    assert Counter((s.model, s.variant) for s in spend) == {
        (f"openai/{TIER1}", "tier1"): 7,
        (f"anthropic/{TIER2}", "tier2"): 7,
    }
    assert sum(s.judge_cost_pusd for s in spend) == sum(v.judge_cost_pusd for v in evaluations(out)) > 0
    assert all(s.input_tokens > 0 and s.judge_calls == 1 for s in spend)


# --- budget --------------------------------------------------------------------


def test_a_spent_budget_degrades_to_tier1_then_to_the_rules(ep):
    # fixed prices per call make estimates exact, so every decision is deterministic:
    # tier 1 costs 5 m$, tier 2 10 m$; acme may spend 40 m$ on this shard, tier 2 below 20 m$
    costs = {1: lambda i, o: 5 * MILLI, 2: lambda i, o: 10 * MILLI}
    plan = JudgePlan(
        {"toxicity": (1, 2), "sentiment": (1,)},
        llm_tiers=frozenset({1, 2}),
        budget=BudgetPolicy(tenants={"acme": 8 * 40 * MILLI}, tier2_share=0.5),  # 8 judge shards
        costs=costs,
    )

    # tier 1 flags it: worth a tier-2 look while affordable (each event says it differently,
    # or the verdict cache would answer the repeats)
    def toxic(n: str) -> str:
        return f"What a moron move that was ({n})."

    degraded = metrics.JUDGE_DEGRADED.labels("acme", "0")
    before = degraded._value.get()
    with judge_logic(ep, plan) as (logic, deps):
        out: Out = []
        for i in range(4):  # one at a time, as a trickle of traffic would arrive
            out += judge_events(logic, deps, [event(f"a{i}", toxic(f"a{i}"))])
        out += judge_events(logic, deps, [event("g0", toxic("g0"), tenant="globex")])  # no budget
        out += judge_events(logic, deps, [event("a-next-day", toxic("next"), ts_ms=T0 + DAY_MS)])
        state = logic.snapshot()
    assert tiers_by(out) == {
        ("a0", "toxicity"): [1, 2],  # 10 m$ booked at submit, +10 for tier 2 = 20
        ("a0", "sentiment"): [1],
        ("a1", "toxicity"): [1],  # 20 m$ >= 50%: no more tier 2 -> 30
        ("a1", "sentiment"): [1],
        ("a2", "toxicity"): [1],  # -> 40: spent
        ("a2", "sentiment"): [1],
        ("a3", "toxicity"): [0],  # the tier-0 rules answer what they cover...
        ("a3", "sentiment"): [1],  # ...and what they do not is recorded as skipped
        ("g0", "toxicity"): [1, 2],
        ("g0", "sentiment"): [1],
        ("a-next-day", "toxicity"): [1, 2],  # a new UTC day, a new budget
        ("a-next-day", "sentiment"): [1],
    }
    skipped = [v for v in evaluations(out) if v.event_id == "a3" and v.metric == "sentiment"]
    assert [(v.label, v.error) for v in skipped] == [("skipped", BUDGET_SPENT)]
    day = T0 // DAY_MS
    assert state.budget[("acme", day)] == 40 * MILLI  # estimates were settled to the real cost
    assert state.budget[("acme", day + 1)] == state.budget[("globex", day)] == 20 * MILLI
    assert degraded._value.get() - before == 2  # a3's two metrics
    assert ep.stats()["by_model"] == {TIER1: {"ok": 2 * 3 + 2 + 2}, TIER2: {"ok": 3}}


# --- crash and restore ---------------------------------------------------------------


def test_a_restore_completes_in_flight_work_once_without_paying_twice(ep):
    plan = JudgePlan({"toxicity": (1,), "sentiment": (1,)})
    events = [event(f"e{i}", f"Answer number {i}: it went well.") for i in range(10)]
    # 20 calls: 5 come back at once, 5 soon, 10 are still in flight when the worker "crashes"
    ep.script([{"latency_ms": 1}] * 5 + [{"latency_ms": 300}] * 5 + [{"latency_ms": 20_000}] * 10)
    with judge_logic(ep, plan) as (logic, deps):
        emitted, _ = logic.on_batch([candidate(e, plan, deps.keyer) for e in events])
        before = list(emitted) + drain(logic, until=lambda out: len(evaluations(out)) >= 5)
        # Bytewax snapshots at the end of each epoch: keep snapshotting until the 300 ms calls
        # are finished but not emitted, i.e. carried by the snapshot
        deadline = time.monotonic() + 30
        while True:
            state = logic.snapshot()
            finished = len(evaluations(before)) + len(evaluations(state.ready))
            if finished == 10:
                break
            assert time.monotonic() < deadline
            time.sleep(0.01)
        paid_before_crash = ep.stats()["total"]
    # the old runtime is closed: its slow calls are cancelled, as in a crash
    assert paid_before_crash == 20
    pending = [(w.cand.event.event_id, m) for w in state.waiting for m in w.pending]
    assert len(pending) == 10

    with judge_logic(ep, plan, resume=state) as (restored, _):
        after = drain(restored)
    done = Counter((v.event_id, v.metric) for v in evaluations(before + after))
    assert done == {(e.event_id, m): 1 for e in events for m in ("toxicity", "sentiment")}
    assert all(v.error == "" for v in evaluations(before + after))
    # only the work still pending in the snapshot was sent again
    assert ep.stats()["total"] == paid_before_crash + len(pending)
    spend = Counter(x.entry_id for x in before + after if isinstance(x, LedgerEntry))
    assert len(spend) == 20 and set(spend.values()) == {1}


# --- redaction -------------------------------------------------------------------


def test_pii_is_redacted_before_it_reaches_an_external_judge(ep):
    leaky = event("leak", "Sure, write to jane.roe@example.com or call +1 415 555 0132.")
    results = {}
    for redact in (False, True):
        plan = JudgePlan({"pii": (1,)}, redactor=Redactor(RULES.find_pii) if redact else None)
        with judge_logic(ep, plan) as (logic, deps):
            [v] = evaluations(judge_events(logic, deps, [leaky]))
        results[redact] = v
    # the endpoint's simulated judge reads what it was sent: the address and number, or only markers
    assert "e-mail" in results[False].explanation and results[False].label == FLAGGED
    assert "no e-mail, phone or card number" in results[True].explanation


# --- refusal on XSTest, tier 0 only -----------------------------------------------------


def test_refusal_judging_on_xstest_agrees_with_human_labels(ep):
    path = DATA / "labeled/xstest_completions_human_labeled.jsonl.gz"
    if not path.exists():
        pytest.skip(f"labelled data not found: {path} (set JUDGEFLOW_DATA)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    plan = JudgePlan({"refusal": (0,)})  # the rules stand in for the LLM judge
    events = [event(f"{r['id']}-{r['model']}", r["completion"], inp=r["prompt"]) for r in rows]
    with judge_logic(ep, plan) as (logic, deps):
        out = judge_events(logic, deps, events)
    flagged = {v.event_id: v.label == FLAGGED for v in evaluations(out)}
    human = {f"{r['id']}-{r['model']}": r["final_label"] != "1_full_compliance" for r in rows}
    strmatch = {f"{r['id']}-{r['model']}": r["strmatch_judge_label"] != "1_full_compliance" for r in rows}
    agree = sum(flagged[k] == human[k] for k in human) / len(human)
    baseline = sum(strmatch[k] == human[k] for k in human) / len(human)
    print(f"\nXSTest refusal, judge operator with tier-0 rules: agreement {agree:.3f} (n={len(human)});"
          f" published string match {baseline:.3f}")  # fmt: skip
    assert len(flagged) == len(rows) == 2250
    assert ep.stats()["total"] == 0  # no LLM was asked
    assert abs(baseline - 0.88) < 0.01
    assert agree >= 0.90  # measured 0.918
