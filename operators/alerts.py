"""alerts: the alert rules over a tenant's windows, with a level per (rule,
tenant[, agent]) announced once per change — never once per window — and
the control-store actions those levels call for.

Time. Every rule is evaluated in event time, at each base-window end `E` of
the tenant, in order — so a fast replay walks through the same levels as the
live run did. The tenant's clock is the newest end of its LLM windows; `E`
is evaluated once

- the clock is `eval_delay` past it (by then the windows of all the
  tenant's agents and models have closed) — or, when the tenant has gone
  quiet, that much wall time has passed while the input was live (so a
  tenant that stops resolves; `operators.event_time`);
- and no LLM window (or expensive request) for a time before `E` has arrived
  in the last `settle_s` of wall time — live, where a late window may still be
  on its way (judge spend trails its requests by design: it counts as it
  arrives and holds nothing back). While a backlog is read with its partitions
  aligned in event time (`operators.event_time`), event time alone decides;
- or the input has ended (a bounded run): everything pending is evaluated.

Rows that arrive after `E` was evaluated update the ledger (revisions
replace, corrections add) and count from the next evaluation on. What "now"
means for each rule: `operators.alert_rules`.

Lifecycle. Levels are ok < warn < critical < emergency. A level is entered
when the value reaches its threshold and left only when the value falls
below threshold x (1 - hysteresis): by default the alert stays at its peak
until it resolves; with `deescalate` it steps down. Each change is one
`Alert` (resolved = a change to ok) whose id hashes (rule, tenant, scope,
level, E): a replay writes the same ids again.

Actions. The tenant's acting level is the highest level (of the rules that
act) with an action configured; when it changes, an `OverrideAction` sets
the tenant's judge sampling rate until E + ttl (event time: a backfill of old
data writes overrides that have already expired), or clears the override
this stage set.
"""

from __future__ import annotations

import json
import pickle
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TypeGuard, cast

import bytewax.operators as op
import msgspec
import xxhash
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from core import metrics
from core.ports import OverrideAction
from core.records import LEVELS, RANK, AbuseWindow, Alert, CostWindow, alert_subject
from operators import event_time
from operators.alert_policy import AlertPolicy
from operators.alert_rule import Reading, Rule, dec
from operators.alert_state import DAY_MS, TenantLedger, month_bounds
from operators.expensive import ExpensiveSlot
from operators.ledger import KeyMark
from operators.owed import arrived_ms
from operators.settled_dict import SettledDict

# How often (event time) the ledger drops what no rule and no revision can need any more. Only memory
# depends on it: every horizon of `TenantLedger.forget` is behind anything a rule reads or a revision
# can still change. Forgetting at every evaluation scanned each window key's row once per minute per
# tenant: 9% of the CPU samples of the 100,000-key soak.
FORGET_EVERY_MS = 10 * 60_000


class AlertProgress(msgspec.Struct, gc=False, frozen=True, array_like=True):
    """A tenant's alerts are evaluated through `through_ms` (event time), and these are the
    actions of that evaluation: the sampler decides a window only once the alerts have been
    evaluated through its start, so an override applies in-band, in event time, the same way
    in a live run, a replay and a restart."""

    tenant_id: str
    through_ms: int
    actions: tuple[OverrideAction, ...] = ()


@dataclass(frozen=True)
class AlertsOut:
    """`alerts`: level changes; `actions`: control-store writes they call for; `progress`:
    per tenant, how far the alerts are evaluated and the actions so far (for the sampler;
    only when the policy has actions)."""

    alerts: Stream[Alert]
    actions: Stream[OverrideAction]
    progress: Stream[AlertProgress]


@dataclass
class _AlertState:
    tenant: str = ""
    ledger: TenantLedger = field(default_factory=TenantLedger)
    clock_ms: int = -1  # newest end of an LLM window
    seen_at_s: float = 0.0  # wall time when the clock last moved
    # (wall time, slot) of recent inputs, times and slots increasing: a sliding minimum, so the
    # earliest slot still arriving is at the front (an entry with a later time and a lower slot
    # makes the ones before it irrelevant)
    arrivals: deque[tuple[float, int]] = field(default_factory=deque)
    evaluated_ms: int = -1  # the last evaluated window end
    levels: dict[tuple[str, str], str] = field(default_factory=dict)  # only levels other than ok
    acting: str = "ok"
    acted_by: str = ""
    reported_ms: int = -1  # the `evaluated_ms` the last `AlertProgress` carried
    forgot_ms: int = -1  # the `evaluated_ms` the ledger last forgot at


@dataclass(frozen=True, slots=True)
class _Change:
    rule: Rule
    reading: Reading
    previous: str
    level: str


_Out = Alert | OverrideAction | AlertProgress
_NONE: frozenset[str] = frozenset()


_In = CostWindow | ExpensiveSlot | AbuseWindow | KeyMark


class _AlertLogic(StatefulBatchLogic[_In, _Out, bytes]):
    def __init__(
        self,
        policy: AlertPolicy,
        clock: Callable[[], float],
        snapshot: bytes | None,
        processed: Callable[[], int | None] = arrived_ms,
    ) -> None:
        # the state as `snapshot` pickled it (this step's own recovery state)
        resume: _AlertState | None = None if snapshot is None else pickle.loads(snapshot)  # noqa: S301
        self._policy = policy
        self._processed = processed
        self._slot = policy.slot_ms
        self._revisable = policy.revisable_ms
        self._clock = clock
        self._s = resume if resume is not None else _AlertState(ledger=TenantLedger(slot_ms=self._slot))
        if resume is not None:
            # the downtime is not a quiet tenant: evaluate on as the re-read windows arrive
            now = clock()
            resume.seen_at_s = now
            resume.arrivals = deque((now, slot) for _, slot in resume.arrivals)
            if not hasattr(resume.ledger, "abuse"):  # a snapshot from before the abuse rules
                resume.ledger.abuse = {}
            if isinstance(resume.ledger.rows, dict):  # a snapshot from before the settled rows
                resume.ledger.rows = SettledDict(resume.ledger.rows)
                resume.ledger.newest = SettledDict(resume.ledger.newest)
            if isinstance(resume.ledger.agents, dict):  # ... and from before the settled agent slots
                resume.ledger.agents = SettledDict(resume.ledger.agents)

    def on_batch(self, values: list[_In]) -> tuple[Iterable[_Out], bool]:
        s = self._s
        now = self._clock()
        earliest, newest = None, -1
        if not s.tenant:
            s.tenant = values[0].tenant_id
            rules = self._policy.for_tenant(s.tenant)
            s.ledger.agent_window_ms = rules.variant_cost.window_s * 1000
            for width in rules.llm_windows_ms() if self._policy.requests else ():
                s.ledger.llm_open[width] = [0, 0]
        for v in values:
            if isinstance(v, ExpensiveSlot):
                rule = self._policy.for_tenant(v.tenant_id).expensive_requests
                s.ledger.add_expensive(v.slot_ms, v.count, v.top, rule.top_n)
                _arrived(s.arrivals, now, v.slot_ms)
            elif isinstance(v, AbuseWindow):
                s.ledger.add_abuse(v)
                _arrived(s.arrivals, now, v.window_start_ms)
            elif isinstance(v, KeyMark):
                if not v.opened:  # its rows can no longer be revised: forgotten at the next `forget`
                    s.ledger.key_dropped((v.category, v.agent, v.model, v.variant))
            elif v.window_ms == self._slot:  # rollups (1 h, 1 day) repeat what the base windows hold
                if self._policy.requests or v.category == "judge":
                    s.ledger.add_window(v)
                else:  # rules over judge spend alone: the LLM windows only move the clock
                    s.ledger.mark_llm(v.window_start_ms)
                # judge spend trails its requests by design (judge latency, backlogs):
                # it counts when it arrives and never holds the evaluation back
                if v.category == "llm":
                    _arrived(s.arrivals, now, v.window_start_ms)
                    newest = max(newest, v.window_start_ms + self._slot)
                    earliest = v.window_start_ms if earliest is None else min(earliest, v.window_start_ms)
        if earliest is not None and newest > s.clock_ms:
            if s.clock_ms < 0:
                s.evaluated_ms = earliest  # the first evaluation is at the end of the first window
            s.clock_ms, s.seen_at_s = newest, now
        out = self._evaluate_until(s.clock_ms - self._policy.eval_delay_ms, now)
        return self._report(out), StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[_Out], bool]:
        s = self._s
        now = self._clock()
        quiet_ms = int(event_time.elapsed_s(s.seen_at_s, now) * 1000)
        horizon = s.clock_ms + quiet_ms - self._policy.eval_delay_ms
        return self._report(self._evaluate_until(horizon, now)), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[_Out], bool]:
        # the end of a bounded input: nothing else is coming, evaluate what is pending
        return self._report(self._evaluate_until(self._s.clock_ms, None)), StatefulBatchLogic.RETAIN

    def _report(self, out: list[Alert | OverrideAction]) -> list[_Out]:
        """`out` and, when the evaluation moved on, the progress the sampler waits for."""
        s = self._s
        if not self._policy.actions or s.evaluated_ms == s.reported_ms:
            return list(out)
        s.reported_ms = s.evaluated_ms
        actions = tuple(x for x in out if isinstance(x, OverrideAction))
        return [*out, AlertProgress(s.tenant, s.evaluated_ms, actions)]

    def notify_at(self) -> datetime | None:
        s = self._s
        if s.clock_ms < 0:
            return None
        following = s.evaluated_ms + self._slot
        at = s.seen_at_s + max(following + self._policy.eval_delay_ms - s.clock_ms, 0) / 1000
        latest = None  # the newest input for a slot before `following` (slots increase)
        for t, slot in s.arrivals:
            if slot >= following:
                break
            latest = t
        if latest is not None:
            at = max(at, latest + self._policy.settle_s)
        return datetime.fromtimestamp(event_time.wake_at(at, self._clock()), tz=UTC)

    def snapshot(self) -> bytes:
        # an independent copy (bytewax serializes it later): the state pickled, which no later batch
        # can change; ~4x faster than copy.deepcopy, and half a pickle round trip
        return pickle.dumps(self._s, protocol=pickle.HIGHEST_PROTOCOL)

    def _evaluate_until(self, horizon_ms: int, now: float | None) -> list[Alert | OverrideAction]:
        """Evaluate every window end up to `horizon_ms` that has settled by wall time `now`
        (None: the input has ended, everything has)."""
        s = self._s
        if s.clock_ms < 0:
            return []
        if now is None:
            s.arrivals.clear()
        else:
            settle = self._policy.settle_s
            if s.arrivals:
                settled = event_time.idleness(now, settle)
                while s.arrivals and settled(s.arrivals[0][0]):
                    s.arrivals.popleft()
            if s.arrivals:  # data from this slot on is still coming in: evaluate only up to it
                horizon_ms = min(horizon_ms, s.arrivals[0][1])
        rules = self._policy.for_tenant(s.tenant)
        lookback = max(rules.lookback_ms(), 3_600_000)
        out: list[Alert | OverrideAction] = []
        end = s.evaluated_ms + self._slot
        if end > horizon_ms:
            return out
        while end <= horizon_ms:
            out.extend(self._evaluate(end))
            s.evaluated_ms = end
            end = self._next_end(end + self._slot, lookback)
        self._forget(lookback)
        return out

    def _next_end(self, end: int, lookback: int) -> int:
        # a tenant silent for longer than every rule looks back, with every level
        # ok, has nothing to report until its next data: skip the empty minutes
        s = self._s
        if s.levels or s.ledger.has_llm(end - lookback, end):
            return end
        later = [slot for slot in s.ledger.llm if slot >= end]
        return max(end, min(later) + self._slot) if later else end

    def _evaluate(self, end: int) -> list[Alert | OverrideAction]:
        s = self._s
        policy = self._policy
        s.ledger.advance(end)
        changes: list[_Change] = []
        read: set[tuple[str, str]] = set()
        levelled: dict[str, set[str]] = {}
        for rule_name, scope in s.levels:
            levelled.setdefault(rule_name, set()).add(scope)
        for rule in policy.for_tenant(s.tenant):
            for r in rule.readings(s.ledger, end, levelled.get(rule.name, _NONE)):
                read.add((rule.name, r.scope))
                changes.extend(self._step(rule, r))
        for rule_name, scope in [k for k in s.levels if k not in read]:
            # a scope that has no data left (an agent that stopped) reads as zero
            rule = getattr(policy.for_tenant(s.tenant), rule_name)
            changes.extend(self._step(rule, Reading(scope, Decimal(0), end - rule.lookback_ms())))
        if not changes:
            return []
        alerts = [self._alert(c, end) for c in changes]
        acted = self._act(changes, alerts, end)
        if acted is None:
            return list(alerts)
        action, cause = acted
        out: list[Alert | OverrideAction] = [
            msgspec.structs.replace(a, message=f"{a.message}; {action.reason}") if a.alert_id == cause else a
            for a in alerts
        ]
        out.append(action)
        return out

    def _step(self, rule: Rule, r: Reading) -> list[_Change]:
        s = self._s
        key = (rule.name, r.scope)
        current = s.levels.get(key, "ok")
        level = rule.next_level(current, r.value, self._policy.hysteresis, self._policy.deescalate)
        if level == current:
            return []
        if level == "ok":
            del s.levels[key]
        else:
            s.levels[key] = level
        if not r.scope:
            metrics.ALERT_LEVEL.labels(rule.name, metrics.tenant_label(s.tenant)).set(RANK[level])
        return [_Change(rule, r, current, level)]

    def _act(
        self, changes: list[_Change], alerts: list[Alert], end: int
    ) -> tuple[OverrideAction, str] | None:
        """The override the tenant's new acting level calls for, and the id of the alert
        that caused it; None when the acting level did not change."""
        s = self._s
        policy = self._policy
        acting, by = "ok", ""
        for (rule_name, _), level in sorted(s.levels.items()):
            if policy.acts_on(rule_name):
                configured = [lv for lv in LEVELS[1 : RANK[level] + 1] if lv in policy.actions]
                if configured and RANK[configured[-1]] > RANK[acting]:
                    acting, by = configured[-1], f"{rule_name} {level}"
        if acting == s.acting:
            return None
        acted = [a for c, a in zip(changes, alerts, strict=True) if policy.acts_on(c.rule.name)]
        cause = next((a for a in acted if f"{a.rule} {a.level}" == by), acted[-1] if acted else alerts[-1])
        previous_by = s.acted_by
        s.acting = acting
        if acting == "ok":
            s.acted_by = ""
            if not policy.clear_on_resolve or not previous_by:
                return None
            reason = "judge sampling back to normal"
            return OverrideAction(s.tenant, "clear", 1.0, end, previous_by, reason, end), cause.alert_id
        act = policy.actions[acting]
        s.acted_by = f"alert:{cause.alert_id}"
        what = (
            "judging paused" if act.sampling_rate == 0 else f"judge sampling set to {act.sampling_rate:.2%}"
        )
        reason = f"{what} for {_duration(act.ttl_s)} ({by})"
        expires = end + act.ttl_s * 1000
        return OverrideAction(
            s.tenant, "set", act.sampling_rate, expires, s.acted_by, reason, end
        ), cause.alert_id

    def _alert(self, c: _Change, end: int) -> Alert:
        tenant = self._s.tenant
        rule, r = c.rule, c.reading
        value = r.value if r.value is not None else Decimal(0)
        where = alert_subject(tenant, r.scope)
        if c.level == "ok":
            threshold = rule.threshold(c.previous) or Decimal(0)
            message = f"resolved: {where}: {rule.describe()}: {rule.show(value)}, {c.previous} ended"
        else:
            threshold = rule.threshold(c.level) or Decimal(0)
            message = f"{where}: {rule.describe()}: {rule.show(value)}, {c.level} at {rule.show(threshold)}"
            if r.note:
                message = f"{message}; {r.note}"
        metrics.ALERTS.labels(rule.name, c.level).inc()
        details = {"value": dec(value), "threshold": dec(threshold), **r.details()}
        return Alert(
            alert_id=xxhash.xxh3_128_hexdigest(f"{rule.name}|{tenant}|{r.scope}|{c.level}|{end}".encode()),
            rule=rule.name,
            tenant_id=tenant,
            scope=r.scope,
            level=c.level,
            previous_level=c.previous,
            value=float(value),
            threshold=float(threshold),
            window_start_ms=r.start_ms,
            window_end_ms=end,
            ts_ms=end,
            message=message,
            runbook=rule.runbook_for(tenant, r.scope),
            details=json.dumps(details, separators=(",", ":"), sort_keys=True),
        )

    def _forget(self, lookback: int) -> None:
        s = self._s
        at = s.evaluated_ms
        if at < s.forgot_ms + FORGET_EVERY_MS:
            return
        s.forgot_ms = at
        rules = self._policy.for_tenant(s.tenant)
        s.ledger.forget(
            revisable_ms=self._revisable,
            keys=s.clock_ms - 2 * DAY_MS,
            llm=at - lookback - self._slot,
            agents=at - rules.variant_cost.window_s * 1000 - self._slot,
            expensive=at - rules.expensive_requests.window_s * 1000 - self._slot,
            abuse=at - self._slot,
            days=month_bounds(at - 1)[0] - DAY_MS,
            processed_ms=self._processed(),
        )


def _arrived(arrivals: deque[tuple[float, int]], now: float, slot: int) -> None:
    while arrivals and arrivals[-1][1] >= slot:
        arrivals.pop()
    arrivals.append((now, slot))


def _duration(seconds: int) -> str:
    for unit, n in (("d", 86_400), ("h", 3600), ("min", 60)):
        if seconds % n == 0:
            return f"{seconds // n} {unit}"
    return f"{seconds} s"


@operator
def alerts(
    step_id: str,
    windows: Stream[CostWindow] | Stream[CostWindow | KeyMark],
    expensive: Stream[ExpensiveSlot] | None = None,
    abuse: Stream[AbuseWindow] | None = None,
    *,
    policy: AlertPolicy,
    clock: Callable[[], float] = time.time,
    processed: Callable[[], int | None] = arrived_ms,
) -> AlertsOut:
    """Alert level changes per tenant, and the sampling overrides they call for.

    Args:
        windows: cost windows (rollups and provisional rows are ignored); the LLM ones move the
            tenant's clock. With the marks of the keys dropped upstream (`CostWindows.marked`), the
            ledger lets a dropped key's rows go at its next forgetting.
        expensive: requests above the single-request threshold (`operators.expensive`).
        abuse: repeated prompts and top users per tenant and window (`operators.abuse`).
        policy: rules, thresholds, actions, and the base window size.
        clock: wall time, for tenants that go quiet.
        processed: how far the windows can no longer be revised by an entry that is not late (a
            row is kept until then; judge spend: `operators.owed.judged_ms`).
    """
    # alerts read closed windows only: a provisional row would move a tenant's clock ahead of
    # what is final, and an alert must be the same in a replay as live
    closed = op.filter("closed", windows, lambda w: isinstance(w, KeyMark) or not w.provisional)
    extra = [s for s in (expensive, abuse) if s is not None]
    merged = cast(Stream[_In], op.merge("in", closed, *extra)) if extra else closed
    keyed = op.key_on("tenant", merged, lambda x: x.tenant_id)
    out = op.stateful_batch("rules", keyed, lambda resume: _AlertLogic(policy, clock, resume, processed))
    values = op.map("unkey", out, lambda kv: kv[1])
    split = op.branch("split", values, _is_alert)
    rest = op.branch("progress", split.falses, _is_progress)
    return AlertsOut(
        alerts=split.trues, actions=cast(Stream[OverrideAction], rest.falses), progress=rest.trues
    )


def _is_alert(x: _Out) -> TypeGuard[Alert]:
    return isinstance(x, Alert)


def _is_progress(x: _Out) -> TypeGuard[AlertProgress]:
    return isinstance(x, AlertProgress)
