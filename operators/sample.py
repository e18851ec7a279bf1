"""sample: decide, deterministically, which events the LLM judges see, and with what probability.

Every event gets a stratum within its tenant: its agent, the configured
dimensions (model, variant, input/output length bucket, tier-0 flag families)
and the first configured rule that matches it, which sets the stratum's rate
(`base_rate` when none does). Two kinds of strata are special: a *certainty*
stratum per agent holds the events that must be judged (a tier-0 rule with a
configured prefix fired — e.g. `pii.`, `jailbreak.` — or the conversation is
longer than `always_over_tokens`).

Within a stratum h of one event-time window (N_h events) every event has
u = xxh3_64(version|event_id) / 2^64, uniform in [0, 1) and unrelated to the
content. When the window closes the sampler takes the m_h events with the
smallest u, where

    m_h = N_h                                  certainty strata
    m_h = max(min(K, N_h), #{i : u_i < r_h})   other strata ("at least K")

and, when a tenant's total exceeds its cap — M, or its judged-share ceiling
(below) if that is lower — reduces the m_h by max-min fair water-filling over
all its strata: the strata that want little keep it all, the largest wants
(certainty strata included) are cut to a common level, and the units left
over go to strata in an order drawn per window from the hash. Replays and any
number of workers therefore choose exactly the same events, provided each
window is complete when it closes (see "lateness").

Judged-share ceiling. With `max_judged_share` = s set (per tenant, or for
all), a tenant's window of N events has at most

    C = max(min(K, N), floor(s * N + v)),   v = xxh3_64(version|tenant|window) / 2^64

events chosen — forced judging (tier-0 flags, long conversations) and the
per-stratum minimum K included. E[floor(s * N + v)] = s * N, and a window
never goes more than one event over s * N, so over any period the judged
share is at most s (up to that rounding, which averages out), whatever the
traffic; unlike flooring, a window too small for one event at s still has a
chance to be judged, so every event keeps a positive inclusion probability.
The floor of K events per window keeps a tiny tenant visible: a tenant with
fewer than K / s events per window (10 at the defaults) can go above s, by
at most K events per window (K = 0 makes the ceiling strict). A certainty
stratum cut by C is then sampled at m_h / N_h like any other (`StratumCount` says so, and
`operators.estimates` treats it as a sampled stratum). C is decided on the
window's event count alone, which the window knows exactly when it closes; a
judge-dollar ceiling is not, because what a chosen event costs (cascade,
cache hits, retries) is only known after it is judged — `[judges.budget]`
bounds that — and a per-day ceiling would make a window's choice depend on
the order in which earlier windows closed, which wall time decides live.

Inclusion probabilities. m_h depends on the hashes only through their sorted
values (how many fall below r_h, how many events there are) and on C and the
order of the leftover units (the window's event count and hashes of the
tenant, window and stratum names), never on which event holds which value;
the hashes being exchangeable, the m_h chosen events are — given m_h — a
simple random sample without replacement of the N_h.
So pi_i = m_h / N_h is each chosen event's inclusion probability given the
realised sample sizes, and the Horvitz-Thompson estimator with these pi is
the textbook stratified estimator: unbiased given the sizes, hence unbiased.
(A cap smaller than the number of strata leaves some strata of that window
unjudged; which ones is drawn per window, and the estimates leave them out
of that window's domain, as a Hajek ratio does.)
With neither K nor M binding this is Bernoulli(r_h) sampling, post-stratified
(m_h / N_h instead of r_h removes the noise of a random sample size). Every
chosen event carries its pi (`Candidate.inclusion_prob`) into its
evaluations; `operators.estimates` turns them into rates with intervals.

Lateness. A Kafka event is *late* when its partition had already released
an event at or past its window's end plus `allowed_lateness_s` before it
(`Source.after_ms`, set by the source): a property of the partition's
order, not of timing. A window closes once the tenant's watermark (newest
event time, plus wall time since while the input is live:
`operators.event_time`) passes its end by `allowed_lateness_s`, the whole
flow has *processed* what every Kafka partition still being read — of
every process, with several (the progress board) — stood at up to that
point (`event_time.INPUT.processed_ms`: bytewax's epochs say it by
construction, so no event of the window is still on its way; a partition
with nothing to read moves on, and tags its next message where it moved
to), AND, live,
no event arrived for it in the last `idle_s` seconds of wall time (while a
backlog is read, partitions are aligned in event time and event time alone
decides). At the end of a bounded input every window closes. So a window
holds exactly its events that are not late, whatever the batches, the
timing, the number of workers and processes, or a restart (the position is
in the source's snapshot). A late event, or one whose window was already
closed (no Kafka input, where wall time counts), is decided alone: taken when
u < r_h (K and the cap do not apply; the judged-share ceiling s caps r_h,
certainty strata included), with pi = r_h — Bernoulli sampling, exact for
Horvitz-Thompson and the same whatever batch or process brought it, but
outside the per-window guarantees;
`judgeflow_sampler_decisions_total{reason="late"}` counts them.

Overrides. A window is decided under the override that covers its start, in
event time: the one the alert stage set (carried in-band by `AlertProgress`,
so with alert actions configured a window waits until the tenant's alerts
are evaluated through its start), else the control store's (set by hand with
`judgeflow overrides set`, or by an earlier run). An override caps every
stratum's rate at its own (0 = paused: nothing is judged), certainty strata
included, and drops K: m_h = #{i : u_i < min(r_h, r_override)}. Every event
it can choose is held already (it is below the stratum's rate). A replay or a
restart therefore sees the same alert-driven overrides at the same windows;
a hand-set override applies from when it was set.

Memory per open (tenant, window): for each stratum the events below its rate
(at most M when capped) plus the K smallest others — each worker pre-selects
per batch the same way (`operators.sample_tally`), so only these, and
per-stratum counts, cross workers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeGuard, cast

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

from core import metrics
from core.dead_letters import guarded
from core.ports import ControlStore, Override
from core.records import DeadLetter, Event, SavingsEntry
from judges.base import RuleJudge
from judges.local import LocalJudge
from operators import event_time, owed
from operators.alerts import AlertProgress
from operators.dedup import Candidate
from operators.local_flags import LocalFlags, cheap_metrics
from operators.sample_design import (
    CAP,
    FLAGGED,
    LATE,
    LONG,
    SEP,
    SHARE,
    Sampler,
    StratumCount,
    StratumTally,
    choose,
    choose_late,
    late_rate,
    throttle,
)
from operators.sample_tally import Part, tally_batch
from operators.stage import stage_of

# --- the operator ---------------------------------------------------------------


@dataclass
class _Window:
    strata: dict[str, StratumTally]
    savings: SavingsEntry
    last_arrival_s: float


@dataclass
class _SampleState:
    max_ts_ms: int = -1
    seen_at_s: float = 0.0
    open: dict[int, _Window] = field(default_factory=dict)
    closed: set[int] = field(default_factory=set)
    alerts_ms: int = -1  # the tenant's alerts are evaluated through here (event time)
    overrides: list[Override] = field(default_factory=list)  # set by the alerts, in event-time order


_CLOSED_HORIZON_MS = 86_400_000  # how long a decided window is remembered


_In = Part | AlertProgress
_Decided = Candidate | SavingsEntry | StratumCount


class _SampleLogic(StatefulBatchLogic[_In, _Decided, _SampleState]):
    """One tenant's windows. `gated`: alert actions are configured, so a window waits for the
    tenant's alerts to be evaluated through its start; `stored`: the control store's overrides."""

    def __init__(
        self,
        sampler: Sampler,
        clock: Callable[[], float],
        resume: _SampleState | None,
        *,
        gated: bool = False,
        stored: Callable[[], Mapping[str, Override]] = dict,
    ) -> None:
        self._sampler = sampler
        self._clock = clock
        self._gated = gated
        self._stored = stored
        self._size_ms = sampler.window_s * 1000
        self._grace_ms = int(sampler.allowed_lateness_s * 1000)
        self._cap = sampler.max_per_tenant
        self._s = resume if resume is not None else _SampleState()
        # the copies of the open windows the last snapshot took: a window that has not changed
        # since is not copied again (a tenant's older windows wait out the lateness unchanged)
        self._copies: dict[int, _Window] = {}
        # what its open windows may still send the judges: the judge-spend windows wait for it
        self._owed = owed.OWED.key()
        if resume is not None:
            owed.OWED.seal(self._owed, min(resume.open, default=None))
            # the downtime is not event-time progress, and the re-read events of every
            # open window are still to come: no window closes before they had their time
            now = clock()
            resume.seen_at_s = now
            for w in resume.open.values():
                w.last_arrival_s = now

    def on_batch(self, values: list[_In]) -> tuple[Iterable[_Decided], bool]:
        s, now = self._s, self._clock()
        out: list[_Decided] = []
        parts: list[Part] = []
        for v in values:
            if isinstance(v, AlertProgress):
                self._follow(v)
            else:
                parts.append(v)
        for part in parts:
            if part.savings.ts_ms > s.max_ts_ms:
                s.max_ts_ms, s.seen_at_s = part.savings.ts_ms, now
            if part.late or part.window in s.closed:
                out.extend(self._decide(part.tenant, part.window, part.strata, part.savings, late=True))
                continue
            w = s.open.get(part.window)
            self._copies.pop(part.window, None)
            if w is None:
                s.open[part.window] = _Window(part.strata, part.savings, now)
                continue
            w.last_arrival_s = now
            w.savings.add(part.savings)
            for name, tally in part.strata.items():
                mine = w.strata.get(name)
                if mine is None:
                    w.strata[name] = tally
                    continue
                for h in mine.add(tally, self._cap):
                    w.savings.sampling_calls += h.calls
                    w.savings.sampling_pusd += h.cost_pusd
        out.extend(self._advance(now))
        return out, StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[_Decided], bool]:
        return self._advance(self._clock()), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[_Decided], bool]:
        out: list[_Decided] = []
        for start in sorted(self._s.open):
            out.extend(self._close(start))
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        s = self._s
        if not s.open:
            return None
        due = [
            max(
                s.seen_at_s + (start + self._size_ms + self._grace_ms - s.max_ts_ms) / 1000,
                w.last_arrival_s + self._sampler.idle_s,
            )
            for start, w in s.open.items()
            if not self._waits_for_alerts(start)  # those wake up with the alerts' progress
        ]
        if not due:
            return None
        return datetime.fromtimestamp(event_time.wake_at(min(due), self._clock()), tz=UTC)

    def snapshot(self) -> _SampleState:
        s = self._s
        copies = self._copies
        self._copies = {start: copies.get(start) or _copy_window(w) for start, w in s.open.items()}
        owed.OWED.seal(self._owed, min(s.open, default=None))
        return _SampleState(
            max_ts_ms=s.max_ts_ms,
            seen_at_s=s.seen_at_s,
            open=dict(self._copies),
            closed=set(s.closed),
            alerts_ms=s.alerts_ms,
            overrides=list(s.overrides),
        )

    def _advance(self, now: float) -> list[_Decided]:
        s = self._s
        wm = s.max_ts_ms + int(event_time.elapsed_s(s.seen_at_s, now) * 1000)
        out: list[_Decided] = []
        idle_s = self._sampler.idle_s
        # and the flow has processed what every partition of the input (every process's, with
        # several) released up to there: none of the window's events is still on its way
        frontier = owed.arrived_ms()
        idle = None  # (read once, when a window first needs it)
        for start in sorted(s.open):
            if self._waits_for_alerts(start):
                break  # later windows wait too
            end = start + self._size_ms + self._grace_ms
            due = end <= wm and (frontier is None or end <= frontier)
            if not due:
                continue
            idle = idle or event_time.idleness(now, idle_s)
            if idle(s.open[start].last_arrival_s):
                out.extend(self._close(start))
        if len(s.closed) > 2 * 1440:
            s.closed = {c for c in s.closed if c >= wm - _CLOSED_HORIZON_MS}
        edge = s.max_ts_ms - _CLOSED_HORIZON_MS
        if s.overrides and s.overrides[0].expires_ms < edge:
            s.overrides = [o for o in s.overrides if o.expires_ms >= edge]
        return out

    def _waits_for_alerts(self, start: int) -> bool:
        return self._gated and self._s.alerts_ms < start

    def _follow(self, p: AlertProgress) -> None:
        """The alerts' progress and actions, in event-time order."""
        s = self._s
        for a in p.actions:
            if a.op == "set":
                s.overrides.append(a.override())
            else:  # clear: the override that alert set ends here
                ended = [o for o in s.overrides if o.set_by == a.set_by]
                for o in ended:
                    ends = msgspec.structs.replace(o, expires_ms=min(o.expires_ms, a.ts_ms))
                    s.overrides[s.overrides.index(o)] = ends
        s.alerts_ms = max(s.alerts_ms, p.through_ms)

    def _override(self, tenant: str, start: int) -> Override | None:
        """The override covering a window's start: the alerts' latest, else the control store's
        (one the alerts of this run set is already known, with its end)."""
        s = self._s
        covering = [o for o in s.overrides if o.covers(start)]
        if covering:
            return covering[-1]
        stored = self._stored().get(tenant)
        if stored is None or not stored.covers(start) or any(o.set_by == stored.set_by for o in s.overrides):
            return None
        return stored

    def _close(self, start: int) -> list[_Decided]:
        w = self._s.open.pop(start)
        self._s.closed.add(start)
        tenant = w.savings.tenant_id
        return self._decide(tenant, start, w.strata, w.savings, late=False)

    def _decide(
        self, tenant: str, start: int, strata: dict[str, StratumTally], savings: SavingsEntry, *, late: bool
    ) -> list[_Decided]:
        events = sum(t.n for t in strata.values())
        savings.forced += sum(t.n for t in strata.values() if t.reason in (FLAGGED, LONG))
        override = self._override(tenant, start)
        if override is not None:
            strata = throttle(strata, override)
        share = self._sampler.judged_share(tenant)
        if late:
            c = choose_late(strata, share)
            allowed = min(events, math.ceil(share * events)) if 0 < share < 1 else events
        else:
            cap, cut = self._cap or None, CAP
            ceiling = self._sampler.ceiling(tenant, start, events)
            if ceiling is not None and (cap is None or ceiling < cap):
                cap, cut = ceiling, SHARE
            c = choose(strata, cap, salt=f"{self._sampler.version}{SEP}{tenant}{SEP}{start}", cut=cut)
            allowed = events if cap is None else min(events, cap)
        savings.chosen += len(c.chosen)
        savings.allowed += allowed
        savings.sampling_calls += c.avoided_calls
        savings.sampling_pusd += c.avoided_pusd
        for reason, n in c.sampled.items():
            metrics.SAMPLED.labels("sampled", LATE if late else reason).inc(n)
        for reason, n in c.skipped.items():
            metrics.SAMPLED.labels("skipped", reason).inc(n)
        out: list[_Decided] = [*c.chosen]
        out.append(savings)
        for name in sorted(strata):
            t = strata[name]
            m = c.taken.get(name, 0)
            cheap = tuple(sorted(t.cheap.items()))
            prob = late_rate(t, share) if late else (m / t.n if t.n else 0.0)  # late: each event alone
            # (events late for the estimates' window too carry where they were read: dropped there)
            out.append(StratumCount(tenant, t.agent, start, name, t.n, m, prob, cheap, savings.after_ms))
        return out


def _is_candidate(x: Candidate | Part | DeadLetter) -> TypeGuard[Candidate]:
    return type(x) is Candidate


def _is_dead(x: Candidate | Part | DeadLetter) -> TypeGuard[DeadLetter]:
    return type(x) is DeadLetter


def _is_decided_candidate(x: _Decided) -> TypeGuard[Candidate]:
    return type(x) is Candidate


def _is_design(x: _Decided) -> TypeGuard[StratumCount]:
    return type(x) is StratumCount


def _copy_window(w: _Window) -> _Window:
    """An independent copy of an open window, for snapshots."""
    return _Window(
        {n: _copy_tally(t) for n, t in w.strata.items()}, msgspec.structs.replace(w.savings), w.last_arrival_s
    )


def _copy_tally(t: StratumTally) -> StratumTally:
    return StratumTally(t.rate, t.reason, t.min_k, t.n, t.below, list(t.held), t.agent, dict(t.cheap))


@dataclass(frozen=True)
class SampleOut:
    """`events`: every event, with its tier-0 flags; `judge`: the chosen
    candidates with their inclusion probabilities; `savings`: per tenant and
    window, the baseline judge cost and what sampling avoided; `design`: per tenant,
    window and stratum, the events, the chosen and the tier-0 flags per metric
    (for `operators.estimates`); `errs`: dead letters."""

    events: Stream[Candidate]
    judge: Stream[Candidate]
    savings: Stream[SavingsEntry]
    design: Stream[StratumCount]
    errs: Stream[DeadLetter]  # events whose tally raised (a bug): stored, never judged


@operator
def sample(
    step_id: str,
    up: Stream[Candidate],
    *,
    sampler: Sampler,
    rules: RuleJudge,
    control: ControlStore,
    baseline: Callable[[Event], tuple[int, int]],
    alerts: Stream[AlertProgress] | None = None,
    metrics_: Sequence[str] = (),
    local: LocalJudge | None = None,
    judged_window_s: tuple[int, int] | None = None,
    clock: Callable[[], float] = time.time,
) -> SampleOut:
    """Flag, stratify and choose events to judge (see the module docstring).

    Args:
        control: the control store, for overrides set by hand (or by an earlier run).
        baseline: (judge calls, picodollars) to judge one event on every metric
            with the reference judge — what the savings ledger compares against.
        alerts: the alert stage's progress and actions (`AlertsOut.progress`): a window is
            decided once the tenant's alerts are evaluated through its start, under the
            override they set for it.
        metrics_: the judged metrics; those a tier-0 rule covers (or `local` scores) get their
            cheap signal counted on every event (`StratumCount.cheap`) and marked on each candidate.
        local: the local model tier, to score every event with (`operators.local_flags`: the
            `<metric>.local` flags, and the cheap signal of the metrics it scores); None: off.
        judged_window_s: the window and allowed lateness of the estimates and the savings ledger:
            the design and savings of events late by their position for it carry that position, so
            those stages drop them in every run (as they drop those events' verdicts).
    """
    scoring = LocalFlags(local) if local is not None else None
    cheap = cheap_metrics(rules, metrics_, scoring)
    stage = stage_of(step_id)  # what its dead letters name

    def assign_batch(cands: list[Candidate]) -> Iterable[Candidate | Part | DeadLetter]:
        def tally(cs: list[Candidate]) -> list[Part]:
            return tally_batch(
                cs,
                sampler=sampler,
                rules=rules,
                baseline=baseline,
                cheap=cheap,
                local=scoring,
                judged_window_s=judged_window_s,
            )

        # an event that makes the tally raise (a bug) is stored, never judged, and a dead letter
        tallied, dead = guarded(stage, tally, cands)
        return [*cands, *tallied, *dead]

    assigned = op.flat_map_batch("assign", up, assign_batch)
    split = op.branch("split", assigned, _is_candidate)
    errs = op.branch("errs", split.falses, _is_dead)
    parts = cast(Stream[Part], errs.falses)
    keyed = cast(KeyedStream[_In], op.key_on("key", parts, lambda p: p.tenant))
    if alerts is not None:  # each tenant's windows wait for its alerts, and follow their overrides
        progress = cast(KeyedStream[_In], op.key_on("alerts", alerts, lambda p: p.tenant_id))
        keyed = cast(KeyedStream[_In], op.merge("with_alerts", keyed, progress))

    def logic(resume: _SampleState | None) -> _SampleLogic:
        return _SampleLogic(sampler, clock, resume, gated=alerts is not None, stored=control.active)

    decided = op.stateful_batch("choose", keyed, logic)
    values = op.map("unkey", decided, lambda kv: kv[1])
    outcome = op.branch("outcome", values, _is_decided_candidate)
    chosen = op.filter("chosen", outcome.trues, lambda c: c.inclusion_prob > 0)
    rest = op.branch("design", outcome.falses, _is_design)
    return SampleOut(
        events=split.trues,
        judge=chosen,
        savings=cast(Stream[SavingsEntry], rest.falses),
        design=rest.trues,
        errs=errs.trues,
    )
