"""judge: turn candidates into evaluations and judge spend, without stalling the stream.

Cached verdicts, tier-0 rules and local models (`judges.local`: scored in one
batch per metric for the batch's chosen events) answer inline; a local verdict
in the plan's unsure band goes on to the tier-1 LLM instead. LLM work goes to the
process's `JudgeRuntime` at the tier the plan and the tenant's budget allow
(`judges.cascade`, `judges.budget`); finished verdicts are emitted on the
next batch or notification, unsure or flagged tier-1 verdicts go on to tier
2, final verdicts are written back to the verdict cache, and every billed
call becomes a judge-spend ledger entry (by judge model and tier) for the
event's cost window, as does (with no calls) every LLM verdict that cost the
event nothing. Identical work is sent once per shard (`operators.judge_calls`).

Work not yet finished is part of the snapshot, so a restart resumes it; work
finished before a snapshot is carried in it, so it is never paid for twice;
the budget book is in it too, estimates for work in flight included. Work
finished after the last snapshot is in the verdict cache with the event that
paid for it: when that event is read again, its cached verdict gives back the
rows its calls gave (evaluations, judge spend, budget), not a free hit.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeGuard, cast

import bytewax.operators as op
import xxhash
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from core import metrics
from core.dead_letters import guarded, item_error
from core.ports import CachedVerdict, PaidTier, VerdictCache
from core.records import (
    PICO_PER_USD,
    DeadLetter,
    Evaluation,
    LedgerEntry,
    Verdict,
)
from judges.base import JudgeItem, RuleJudge
from judges.budget import BudgetBook
from judges.cascade import JudgePlan
from judges.local import LocalJudge
from judges.runtime import JudgeRuntime, Outcome, Task
from operators import owed
from operators.dedup import Candidate, ContentKeyer, lookup
from operators.judge_calls import CallKey, SharedCalls, shared
from operators.judge_rows import evaluation, no_verdict, paid_rows, spend
from operators.routing import spread_keys

__all__ = ["JudgeOut", "JudgePlan", "judge"]

log = logging.getLogger(__name__)

SHARDS = 8
# dealt round robin over the workers (`"0"`…`"7"` fell 6 / 2 on two workers, 5 / 2 / 1 / 0 on four);
# the keys changed once, see the README's upgrade notes
_SHARD_KEYS = spread_keys(SHARDS)
STAGE = "judge"  # the stage named in dead letters and cache-hit metrics
_POLL = timedelta(milliseconds=20)

ERROR = "error"
SKIPPED = "skipped"
BUDGET_SPENT = "judge budget spent: no tier-0 rule covers this metric"


@dataclass(frozen=True)
class JudgeOut:
    evaluations: Stream[Evaluation]
    spend: Stream[LedgerEntry]
    errs: Stream[DeadLetter]  # events whose judging raised (a bug): stored, not judged


@dataclass
class _Pending:
    """One LLM judgement on its way: its tier and the budget reserved for it."""

    tier: int
    reserved_pusd: int
    paid: tuple[PaidTier, ...] = ()  # the tiers this event paid for before this one (escalation)


@dataclass
class _Waiting:
    cand: Candidate
    pending: dict[str, _Pending]  # metric -> what is on its way


@dataclass(frozen=True)
class _JudgeState:
    waiting: list[_Waiting]
    ready: list[Evaluation | LedgerEntry]
    budget: dict[tuple[str, int], int] = field(default_factory=dict)
    answered: dict[CallKey, Outcome] = field(default_factory=dict)  # `SharedCalls.snapshot`


@dataclass
class _Deps:
    plan: JudgePlan
    rules: RuleJudge
    runtime: JudgeRuntime
    cache: VerdictCache
    keyer: ContentKeyer
    now_ms: Callable[[], int]
    eof_timeout_s: float
    max_queued: int
    local: LocalJudge | None = None


_Work = tuple[Candidate, str, int]  # (candidate, metric, tier)
_Out = Evaluation | LedgerEntry | DeadLetter


class _JudgeLogic(StatefulBatchLogic[Candidate, _Out, _JudgeState]):
    def __init__(self, deps: _Deps, resume: _JudgeState | None) -> None:
        self._d = deps
        self._plan = deps.plan
        self._waiting: dict[str, _Waiting] = {}
        # (event id, call key, outcome): finished, not yet emitted
        self._done: collections.deque[tuple[str, CallKey, Outcome]] = collections.deque()
        # one call per (content, metric, tier) at a time (older snapshots have no `answered`)
        self._calls = SharedCalls(getattr(resume, "answered", None))
        self._judge_names: dict[int, str] = {}  # LLM tier -> judge name (the runtime's, on first use)
        # started, not yet admitted by the runtime (no free slot); their work is in `_waiting`
        self._queued: collections.deque[Task] = collections.deque()
        self._ready: list[Evaluation | LedgerEntry] = []
        policy = dataclasses.replace(deps.plan.budget, shards=SHARDS)
        self._budget = BudgetBook(policy, resume.budget if resume is not None else None)
        # what is under way or finished and not yet emitted: the judge-spend windows wait for it
        self._owed = owed.OWED.key()
        if resume is not None:
            owed.OWED.seal(self._owed, _owed_ms(resume))
            self._ready = list(resume.ready)
            self._resume(resume.waiting)

    def _resume(self, waiting: list[_Waiting]) -> None:
        """Work under way at the snapshot: what finished after it (its verdict is in the cache) is
        emitted from there (an event's own calls as they were paid), the rest is sent again."""
        try:
            self._look_again([w.cand for w in waiting])
        except Exception:  # a bug in the lookup: send everything again
            log.exception("looking up restored judge work failed")
        work: list[_Work] = []
        for w in waiting:
            e = w.cand.event
            for m, p in list(w.pending.items()):
                cached = w.cand.cached.get(m)
                if cached is None:
                    work.append((w.cand, m, p.tier))
                    continue
                del w.pending[m]
                self._calls.end_cascade(self._call_key(w.cand, m, p.tier))
                self._budget.charge(e.tenant_id, e.ts_ms, -p.reserved_pusd)
                self._ready.extend(self._from_cache(w.cand, cached, p.paid))
            if w.pending:
                self._waiting[e.event_id] = w
        self._submit(work)

    def on_batch(self, values: list[Candidate]) -> tuple[Iterable[_Out], bool]:
        out: list[_Out] = [*self._take_ready()]
        # the sampler chose these events a window after they arrived: look their open
        # metrics up again before paying for a call
        open_work = [c for c in values if c.todo and c.inclusion_prob > 0]
        if open_work:
            failed: list[Candidate] = []
            _, dead = guarded(STAGE, self._look_again, open_work, failed=failed)
            out.extend(dead)
            for c in failed:  # a bug in the lookup: the event is not judged
                c.todo, c.inclusion_prob = (), 0.0
        work: list[_Work] = []
        local = self._score_local(values)
        for c in values:
            started: list[_Work] = []
            try:
                out.extend(self._start(c, started, local.get(c.event.event_id, {})))
            except Exception as exc:  # a bug: this event's judging becomes a dead letter
                self._waiting.pop(c.event.event_id, None)
                out.append(item_error(STAGE, exc, c))
                continue
            work.extend(started)
        self._submit(work)
        out.extend(self._harvest())
        return out, StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[Evaluation | LedgerEntry], bool]:
        out = self._take_ready()
        self._admit()
        out.extend(self._harvest())
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Evaluation | LedgerEntry], bool]:
        out = self._take_ready()
        deadline = time.monotonic() + self._d.eof_timeout_s
        while self._waiting and time.monotonic() < deadline:
            self._admit()
            out.extend(self._harvest())
            if self._waiting:
                time.sleep(0.005)
        out.extend(self._harvest())
        for w in list(self._waiting.values()):  # never silently drop: record the timeout
            for m, p in w.pending.items():
                verdict = no_verdict(m, p.tier, ERROR)
                out.append(evaluation(w.cand, verdict, error="judge timed out at shutdown"))
        self._waiting.clear()
        self._calls.clear()
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self._waiting or self._done or self._queued or self._ready:
            return datetime.now(tz=UTC) + _POLL
        return None

    def snapshot(self) -> _JudgeState:
        # finished work moves into the snapshot so a restore emits it instead of re-judging
        self._ready.extend(self._harvest())
        waiting = [
            _Waiting(w.cand, {m: dataclasses.replace(p) for m, p in w.pending.items()})
            for w in self._waiting.values()
        ]
        state = _JudgeState(
            waiting=waiting,
            ready=list(self._ready),
            budget=dict(self._budget.spent),
            answered=self._calls.snapshot(),
        )
        owed.OWED.seal(self._owed, _owed_ms(state))
        return state

    def _look_again(self, cands: list[Candidate]) -> list[Candidate]:
        keyer, metrics_ = self._d.keyer, self._plan.llm_metrics
        lookup(cands, cache=self._d.cache, keyer=keyer, llm_metrics=metrics_, stage=STAGE)
        return cands

    def _take_ready(self) -> list[Evaluation | LedgerEntry]:
        out, self._ready = self._ready, []
        return out

    def _score_local(self, values: list[Candidate]) -> dict[str, dict[str, Verdict]]:
        """event_id -> metric -> the local model's verdict, for the chosen events of the batch: one
        model call per metric. A model that raises (a bug) leaves the batch to the LLM tiers."""
        local, plan = self._d.local, self._plan
        if local is None:
            return {}
        chosen = [c for c in values if c.inclusion_prob > 0 and c.event.event_id not in self._waiting]
        out: dict[str, dict[str, Verdict]] = {}
        for metric in sorted(local.metrics):
            if not chosen or not plan.uses_local(metric):
                continue
            items = [JudgeItem(c.event.input_text, c.event.output_text, c.event.context) for c in chosen]
            try:
                verdicts = local.judge_many(metric, items)
            except Exception:
                log.exception(
                    "local model for %s failed on a batch of %d; the LLM tiers judge it", metric, len(items)
                )
                continue
            for c, v in zip(chosen, verdicts, strict=True):
                out.setdefault(c.event.event_id, {})[metric] = v
        return out

    def _start(
        self, c: Candidate, work: list[_Work], local: dict[str, Verdict]
    ) -> list[Evaluation | LedgerEntry]:
        """Tier-0 and local verdicts now; LLM work at the first tier the budget allows. A verdict the cache
        holds saves that call and nothing else: the rows are those a call would give (the chosen
        event's, with the sampler's inclusion probability), so what the cache held when does not
        change the evaluations."""
        e = c.event
        if c.inclusion_prob <= 0 or e.event_id in self._waiting:  # not chosen, or a duplicate under way
            return []
        out: list[Evaluation | LedgerEntry] = []
        plan = self._plan
        item = JudgeItem(e.input_text, e.output_text, e.context)
        ceiling = self._budget.ceiling(e.tenant_id, e.ts_ms)
        llm = {*c.todo, *c.cached}
        pending: dict[str, _Pending] = {}
        for metric, tiers in plan.metrics.items():
            tier0 = None
            # with the budget spent, the rules answer every metric they cover
            if 0 in tiers or (ceiling == 0 and metric in llm):
                tier0 = self._d.rules.verdict(metric, e.flags)  # the sampler's pass found them
                if tier0 is not None:
                    out.append(evaluation(c, tier0))
            if plan.settles(tier0):
                continue
            lv = local.get(metric)
            if lv is not None:  # a local model answers first; unsure, it hands over to the tier-1 LLM
                if metric in llm and plan.asks_llm(lv) and plan.first_tier(metric, ceiling) is not None:
                    metrics.JUDGE_LOCAL.labels(metric, "asked_llm").inc()
                else:
                    metrics.JUDGE_LOCAL.labels(metric, "final").inc()
                    out.append(evaluation(c, lv))
                    reason = plan.escalation(lv, ceiling) if metric in llm else None
                    if reason is None:
                        continue
                    # tier 2 confirms a flagged local verdict as it would a tier-1 LLM's
                    metrics.JUDGE_ESCALATIONS.labels(metric, reason).inc()
                    cached = c.cached.get(metric)
                    if cached is not None:
                        out.extend(self._from_cache(c, cached))
                    else:
                        reserved = plan.estimate_pusd(2, metric, item)
                        self._budget.charge(e.tenant_id, e.ts_ms, reserved)
                        pending[metric] = _Pending(2, reserved)
                    continue
            if metric not in llm:
                continue
            cached = c.cached.get(metric)
            if cached is not None:
                out.extend(self._from_cache(c, cached))
                continue
            tier = plan.first_tier(metric, ceiling)
            if plan.degraded(metric, ceiling):
                metrics.JUDGE_DEGRADED.labels(metrics.tenant_label(e.tenant_id), str(ceiling)).inc()
            if tier is None:
                if tier0 is None:
                    verdict = no_verdict(metric, plan.default_tier(metric), SKIPPED)
                    out.append(evaluation(c, verdict, error=BUDGET_SPENT))
                continue
            reserved = plan.estimate_pusd(tier, metric, item)
            self._budget.charge(e.tenant_id, e.ts_ms, reserved)
            pending[metric] = _Pending(tier, reserved)
        if pending:
            self._waiting[e.event_id] = _Waiting(c, pending)
            work.extend((c, m, p.tier) for m, p in pending.items())
        return out

    def _from_cache(
        self, c: Candidate, v: Verdict, emitted: tuple[PaidTier, ...] = ()
    ) -> list[Evaluation | LedgerEntry]:
        """A cached verdict: a free hit — or, when this event paid for it (read again after a crash,
        a replay), the rows its calls gave, but those of the tiers `emitted` already, its spend
        charged to the budget as they charged it."""
        paid = c.paid.get(v.metric)
        if not paid or paid[: len(emitted)] != emitted:
            return [evaluation(c, v, cache_hit=True), *self._free(c, v.metric)]
        parts = paid[len(emitted) :]
        cost = sum(call.cost_pusd for part in parts for call in part.calls)
        self._budget.charge(c.event.tenant_id, c.event.ts_ms, cost)
        metrics.JUDGE_REPLAYED.labels(v.metric).inc()
        return paid_rows(c, v.metric, parts)

    def _free(self, c: Candidate, metric: str) -> list[LedgerEntry]:
        """An entry with no calls per LLM tier of the metric, for a verdict that cost the event nothing:
        every judged event is in the judge-spend windows its calls would be in, so after a restart
        (where another of identical events may pay) its minutes are written again."""
        names = self._judge_names or self._d.runtime.judge_names()
        self._judge_names = names
        tiers = [t for t in self._plan.metrics.get(metric, ()) if t in names]
        return [spend(c.event, metric, t, names[t], ()) for t in tiers]

    def _submit(self, work: list[_Work]) -> None:
        if not work:
            return
        done = self._done
        redactor = self._plan.redactor
        items: dict[str, JudgeItem] = {}
        tasks = []
        for c, metric, tier in work:
            e = c.event
            event_id = e.event_id
            key = self._call_key(c, metric, tier)
            if self._calls.follow(key, event_id):  # the same call is queued or under way
                continue
            answered = self._calls.answer(key)
            if answered is not None:
                done.append((event_id, key, answered))
                continue
            self._calls.lead(key)
            item = items.get(event_id)
            if item is None:
                item = JudgeItem(e.input_text, e.output_text, e.context)
                if redactor is not None:
                    item = redactor.item(item)
                items[event_id] = item

            def on_done(o: Outcome, _id: str = event_id, _key: CallKey = key) -> None:
                done.append((_id, _key, o))

            tasks.append(Task(metric=metric, tier=tier, item=item, on_done=on_done))
        self._queued.extend(tasks)
        self._admit()

    def _admit(self) -> None:
        """Hand queued work to the runtime as slots free up. While a judge is down its work
        holds the slots, so new work queues here and the stream goes on (cost windows, the
        sampler); past `max_queued` the worker waits for slots: backpressure, bounded memory."""
        runtime, queue = self._d.runtime, self._queued
        if queue:
            runtime.offer(queue)
        excess = len(queue) - self._d.max_queued
        if excess > 0:
            metrics.JUDGE_BACKPRESSURE.inc()
            runtime.submit_many([queue.popleft() for _ in range(excess)])

    def _harvest(self) -> list[Evaluation | LedgerEntry]:
        """Emit what finished; escalate what tier 1 was unsure about; cache final verdicts."""
        out: list[Evaluation | LedgerEntry] = []
        to_cache: dict[str, CachedVerdict] = {}
        escalate: list[_Work] = []
        plan = self._plan
        now = self._d.now_ms()
        spent: dict[str, int] = {}
        while self._done:
            event_id, key, o = self._done.popleft()
            if not o.shared:  # the call's outcome: every event that waited for it shares it
                self._done.extend((f, key, shared(o)) for f in self._calls.finished(key, o))
            w = self._waiting.get(event_id)
            p = w.pending.get(o.metric) if w is not None else None
            if w is None or p is None or p.tier != o.tier:
                continue  # restored twice: already emitted
            del w.pending[o.metric]
            c, e = w.cand, w.cand.event
            cost = sum(call.cost_pusd for call in o.calls)
            latency = sum((call.latency_ms for call in o.calls), 0.0)
            self._budget.charge(e.tenant_id, e.ts_ms, cost - p.reserved_pusd)
            if o.calls or o.verdict is not None:  # (a shared verdict: an entry with no calls, see `_free`)
                out.append(spend(e, o.metric, o.tier, o.judge, o.calls))
                spent[e.tenant_id] = spent.get(e.tenant_id, 0) + cost
            if o.verdict is None:
                verdict = no_verdict(o.metric, o.tier, ERROR, judge=o.judge)
                out.append(evaluation(c, verdict, cost=cost, latency=latency, error=o.error))
            else:
                out.append(evaluation(c, o.verdict, cache_hit=o.shared, cost=cost, latency=latency))
                # what this event paid for, up to this tier: the cached verdict keeps it
                paid = p.paid if o.shared else (*p.paid, PaidTier(o.verdict, o.tier, o.judge, tuple(o.calls)))
                reason = plan.escalation(o.verdict, self._budget.ceiling(e.tenant_id, e.ts_ms))
                if not o.shared:
                    self._calls.answers(key, o, final=reason is None)
                if reason is not None:
                    metrics.JUDGE_ESCALATIONS.labels(o.metric, reason).inc()
                    item = JudgeItem(e.input_text, e.output_text, e.context)
                    reserved = plan.estimate_pusd(2, o.metric, item)
                    self._budget.charge(e.tenant_id, e.ts_ms, reserved)
                    w.pending[o.metric] = _Pending(2, reserved, paid)
                    escalate.append((c, o.metric, 2))
                elif not o.shared:
                    to_cache[key[0]] = CachedVerdict(o.verdict, now, paid_by=e.event_id, paid=paid)
            if not w.pending:
                del self._waiting[event_id]
        if to_cache:
            self._d.cache.put_many(to_cache)
        for tenant, pusd in spent.items():
            metrics.COST.labels(metrics.tenant_label(tenant), "judge").inc(pusd / PICO_PER_USD)
        self._submit(escalate)  # (an escalation of a verdict shared just now shares the final)
        self._calls.harvested()
        return out

    def _call_key(self, c: Candidate, metric: str, tier: int) -> CallKey:
        return self._d.keyer.metric_key(c.content_hash, metric), tier


@operator
def judge(
    step_id: str,
    up: Stream[Candidate],
    *,
    plan: JudgePlan,
    rules: RuleJudge,
    runtime: JudgeRuntime,
    cache: VerdictCache,
    keyer: ContentKeyer,
    now_ms: Callable[[], int],
    eof_timeout_s: float = 120.0,
    max_queued: int = 10_000,
    local: LocalJudge | None = None,
) -> JudgeOut:
    """Judge candidates; emits evaluations and judge-spend ledger entries. `local`: the local
    models that answer the plan's `local_metrics` before the tier-1 LLM (None: no local tier)."""
    deps = _Deps(plan, rules, runtime, cache, keyer, now_ms, eof_timeout_s, max_queued, local)
    # by content: identical pairs meet on one worker, where one call judges them all
    keyed = op.key_on("shard", up, lambda c: shard_of(c.content_hash))
    results = op.stateful_batch("calls", keyed, lambda resume: _JudgeLogic(deps, resume))
    values = op.map("unkey", results, lambda kv: kv[1])
    split = op.branch("split", values, _is_evaluation)
    rest = op.branch("errs", split.falses, _is_dead)
    return JudgeOut(evaluations=split.trues, spend=cast(Stream[LedgerEntry], rest.falses), errs=rest.trues)


def _is_evaluation(x: _Out) -> TypeGuard[Evaluation]:
    return type(x) is Evaluation


def _is_dead(x: _Out) -> TypeGuard[DeadLetter]:
    return type(x) is DeadLetter


def shard_of(content_hash: str) -> str:
    """The judge shard of a content hash: one of `SHARDS` keys dealt round robin over the workers."""
    return _SHARD_KEYS[xxhash.xxh3_64_intdigest(content_hash.encode()) % SHARDS]


def _owed_ms(state: _JudgeState) -> int | None:
    """The earliest event time whose evaluations or spend are still to be emitted (None: none)."""
    waiting = (w.cand.event.ts_ms for w in state.waiting)
    return min((*waiting, *(x.ts_ms for x in state.ready)), default=None)
