"""judge: turn candidates into evaluations and judge spend, without stalling the stream.

Cached verdicts and tier-0 rules answer inline. LLM work goes to the
process's `JudgeRuntime`; finished verdicts are emitted on the next batch or
notification, written back to the verdict cache, and their cost becomes a
judge-spend ledger entry for the event's cost window. Work not yet finished is
part of the snapshot, so a restart resumes it; work finished before a snapshot
is carried in it, so it is never paid for twice.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import xxhash
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic

from judges.base import FLAGGED, JudgeItem, RuleJudge
from judges.runtime import JudgeRuntime, Outcome, Task
from operators.cache import CachedVerdict, VerdictCache
from operators.dedup import Candidate, ContentKeyer
from operators.records import Evaluation, Event, LedgerEntry, Verdict

SHARDS = 8
_POLL = timedelta(milliseconds=20)


@dataclass(frozen=True)
class JudgePlan:
    """Which tiers judge which metric; a tier-0 `flagged` answer settles a metric."""

    metrics: Mapping[str, tuple[int, ...]]

    @property
    def llm_metrics(self) -> tuple[str, ...]:
        return tuple(m for m, tiers in self.metrics.items() if any(t > 0 for t in tiers))

    def llm_tier(self, metric: str) -> int:
        return min(t for t in self.metrics[metric] if t > 0)


@dataclass(frozen=True)
class JudgeOut:
    evaluations: Stream[Evaluation]
    spend: Stream[LedgerEntry]


@dataclass
class _Waiting:
    cand: Candidate
    remaining: list[str]


@dataclass(frozen=True)
class _JudgeState:
    waiting: list[_Waiting]
    ready: list[Evaluation | LedgerEntry]


@dataclass
class _Deps:
    plan: JudgePlan
    rules: RuleJudge
    runtime: JudgeRuntime
    cache: VerdictCache
    keyer: ContentKeyer
    now_ms: Callable[[], int]
    eof_timeout_s: float


class _JudgeLogic(StatefulBatchLogic[Candidate, Evaluation | LedgerEntry, _JudgeState]):
    def __init__(self, deps: _Deps, resume: _JudgeState | None) -> None:
        self._d = deps
        self._waiting: dict[str, _Waiting] = {}
        self._done: collections.deque[tuple[str, Outcome]] = collections.deque()
        self._ready: list[Evaluation | LedgerEntry] = []
        if resume is not None:
            self._ready = list(resume.ready)
            for w in resume.waiting:
                self._waiting[w.cand.event.event_id] = w
            self._submit([(w.cand, m) for w in resume.waiting for m in w.remaining])

    def on_batch(self, values: list[Candidate]) -> tuple[Iterable[Evaluation | LedgerEntry], bool]:
        out = self._take_ready()
        work: list[tuple[Candidate, str]] = []
        for c in values:
            out.extend(self._start(c, work))
        self._submit(work)
        out.extend(self._harvest())
        return out, StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[Evaluation | LedgerEntry], bool]:
        out = self._take_ready()
        out.extend(self._harvest())
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Evaluation | LedgerEntry], bool]:
        out = self._take_ready()
        deadline = time.monotonic() + self._d.eof_timeout_s
        while self._waiting and time.monotonic() < deadline:
            out.extend(self._harvest())
            if self._waiting:
                time.sleep(0.005)
        out.extend(self._harvest())
        for w in list(self._waiting.values()):  # never silently drop: record the timeout
            for m in w.remaining:
                verdict = _error_verdict(m, self._d.plan.llm_tier(m))
                out.append(_evaluation(w.cand, verdict, error="judge timed out at shutdown"))
        self._waiting.clear()
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self._waiting or self._done:
            return datetime.now(tz=UTC) + _POLL
        return None

    def snapshot(self) -> _JudgeState:
        # finished work moves into the snapshot so a restore emits it instead of re-judging
        self._ready.extend(self._harvest())
        waiting = [_Waiting(w.cand, list(w.remaining)) for w in self._waiting.values()]
        return _JudgeState(waiting=waiting, ready=list(self._ready))

    # --- internals ---------------------------------------------------------

    def _take_ready(self) -> list[Evaluation | LedgerEntry]:
        out, self._ready = self._ready, []
        return out

    def _start(self, c: Candidate, work: list[tuple[Candidate, str]]) -> list[Evaluation | LedgerEntry]:
        out: list[Evaluation | LedgerEntry] = []
        for verdict in c.cached.values():
            out.append(_evaluation(c, verdict, cache_hit=True, prob=1.0))
        if c.inclusion_prob <= 0:
            return out
        e = c.event
        item = JudgeItem(e.input_text, e.output_text, e.context)
        llm_todo = set(c.todo)
        remaining = []
        for metric, tiers in self._d.plan.metrics.items():
            if metric in c.cached:
                continue
            if 0 in tiers:
                v = self._d.rules.judge(metric, item)
                if v is not None:
                    out.append(_evaluation(c, v))
                    if v.label == FLAGGED:
                        continue  # a free rule already settled it
            if metric in llm_todo:
                remaining.append(metric)
        if remaining:
            self._waiting[e.event_id] = _Waiting(c, remaining)
            work.extend((c, m) for m in remaining)
        return out

    def _submit(self, work: list[tuple[Candidate, str]]) -> None:
        if not work:
            return
        done = self._done
        tasks = []
        for c, metric in work:
            e = c.event
            event_id = e.event_id

            def on_done(o: Outcome, _id: str = event_id) -> None:
                done.append((_id, o))

            tasks.append(
                Task(
                    metric=metric,
                    tier=self._d.plan.llm_tier(metric),
                    item=JudgeItem(e.input_text, e.output_text, e.context),
                    key=self._d.keyer.metric_key(c.content_hash, metric),
                    on_done=on_done,
                )
            )
        self._d.runtime.submit_many(tasks)

    def _harvest(self) -> list[Evaluation | LedgerEntry]:
        out: list[Evaluation | LedgerEntry] = []
        to_cache: dict[str, CachedVerdict] = {}
        now = self._d.now_ms()
        while self._done:
            event_id, o = self._done.popleft()
            w = self._waiting.get(event_id)
            if w is None or o.metric not in w.remaining:
                continue  # restored twice: already emitted
            w.remaining.remove(o.metric)
            if not w.remaining:
                del self._waiting[event_id]
            c = w.cand
            cost = sum(call.cost_pusd for call in o.calls)
            latency = sum(call.latency_ms for call in o.calls)
            if o.verdict is not None:
                out.append(_evaluation(c, o.verdict, cache_hit=o.shared, cost=cost, latency=latency))
                if not o.shared:
                    key = self._d.keyer.metric_key(c.content_hash, o.metric)
                    to_cache[key] = CachedVerdict(o.verdict, now)
            else:
                verdict = _error_verdict(o.metric, self._d.plan.llm_tier(o.metric))
                out.append(_evaluation(c, verdict, cost=cost, latency=latency, error=o.error))
            if o.calls:
                out.append(_spend(c.event, o.metric, len(o.calls), cost))
        if to_cache:
            self._d.cache.put_many(to_cache)
        return out


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
) -> JudgeOut:
    """Judge candidates; emits evaluations and judge-spend ledger entries."""
    deps = _Deps(plan, rules, runtime, cache, keyer, now_ms, eof_timeout_s)
    keyed = op.key_on(f"{step_id}_shard", up, lambda c: _shard(c.event.event_id))
    results = op.stateful_batch(f"{step_id}_calls", keyed, lambda resume: _JudgeLogic(deps, resume))
    values = op.map(f"{step_id}_unkey", results, lambda kv: kv[1])
    split = op.branch(f"{step_id}_split", values, lambda x: type(x) is Evaluation)
    return JudgeOut(evaluations=split.trues, spend=split.falses)


def _shard(event_id: str) -> str:
    return str(xxhash.xxh3_64_intdigest(event_id.encode()) % SHARDS)


def _error_verdict(metric: str, tier: int) -> Verdict:
    return Verdict(metric=metric, score=0.0, label="error", explanation="", judge="", tier=tier)


def _evaluation(
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
    )


def _spend(e: Event, metric: str, calls: int, cost: int) -> LedgerEntry:
    return LedgerEntry(
        tenant_id=e.tenant_id,
        agent=e.agent,
        model=e.model,
        variant=e.variant,
        ts_ms=e.ts_ms,
        judge_calls=calls,
        judge_cost_pusd=cost,
        entry_id=f"{e.event_id}|judge|{metric}",
    )
