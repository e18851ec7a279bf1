"""judge_rows: what a judgement writes — its evaluation rows and its judge-spend ledger entries."""

from __future__ import annotations

from collections.abc import Sequence

import xxhash

from core.ports import PaidTier
from core.records import Evaluation, Event, JudgeCall, LedgerEntry, Verdict, entry_hash
from operators.dedup import Candidate

__all__ = ["evaluation", "no_verdict", "paid_rows", "spend"]


def no_verdict(metric: str, tier: int, label: str, *, judge: str = "") -> Verdict:
    return Verdict(metric=metric, score=0.0, label=label, explanation="", judge=judge, tier=tier)


def evaluation(
    c: Candidate,
    v: Verdict,
    *,
    cache_hit: bool = False,
    prob: float | None = None,
    cost: int = 0,
    latency: float = 0.0,
    error: str = "",
) -> Evaluation:
    e = c.event
    return Evaluation(
        # one row per (event, metric, tier): a replay or a retry replaces it
        eval_id=xxhash.xxh3_128_hexdigest(f"{e.event_id}|{v.metric}|{v.tier}".encode()),
        event_id=e.event_id,
        ts_ms=e.ts_ms,
        tenant_id=e.tenant_id,
        agent=e.agent,
        model=e.model,
        variant=e.variant,
        metric=v.metric,
        score=v.score,
        label=v.label,
        explanation=v.explanation,
        judge=v.judge,
        tier=v.tier,
        cache_hit=cache_hit,
        inclusion_prob=c.inclusion_prob if prob is None else prob,
        content_hash=c.content_hash,
        judge_cost_pusd=cost,
        judge_latency_ms=latency,
        error=error,
        stratum=c.stratum,
        cheap=v.metric in c.cheap,
        after_ms=e.source.after_ms if e.source is not None else None,
    )


def spend(e: Event, metric: str, tier: int, judge: str, calls: Sequence[JudgeCall]) -> LedgerEntry:
    """Judge spend for the event's tenant and agent, by judge model (`model`) and tier (`variant`)."""
    return LedgerEntry(
        tenant_id=e.tenant_id,
        agent=e.agent,
        model=judge,
        variant=f"tier{tier}",
        ts_ms=e.ts_ms,
        input_tokens=sum(call.input_tokens for call in calls),
        output_tokens=sum(call.output_tokens for call in calls),
        judge_calls=len(calls),
        judge_cost_pusd=sum(call.cost_pusd for call in calls),
        entry_id=(entry_id := f"{e.event_id}|judge|{metric}|{tier}"),
        ids=entry_hash(entry_id),
        after_ms=e.source.after_ms if e.source is not None else None,
    )


def paid_rows(c: Candidate, metric: str, paid: Sequence[PaidTier]) -> list[Evaluation | LedgerEntry]:
    """The rows the calls of `paid` gave the event that paid for them: each tier's evaluation, and its
    judge spend when it took a billed call."""
    e = c.event
    out: list[Evaluation | LedgerEntry] = []
    for part in paid:
        if part.calls:
            out.append(spend(e, metric, part.tier, part.judge, part.calls))
        cost = sum(call.cost_pusd for call in part.calls)
        latency = sum((call.latency_ms for call in part.calls), 0.0)
        out.append(evaluation(c, part.verdict, cost=cost, latency=latency))
    return out
