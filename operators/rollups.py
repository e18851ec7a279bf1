"""rollup: 1-hour and 1-day rows (any multiple of the window size) derived from the minute rows of
`operators.windows`, per key: each level's row is the sum of the newest row of every minute in it,
re-emitted with a newer version whenever one of them changes — so the levels always agree with the
minutes, and a reader sums `kind = window` and `kind = correction` rows of one `window_s` to get exact
totals. A minute correction is a correction of each level too, with its id: whether a level is still
open when it arrives is timing, and a level row that held it in one run and a correction row in a
replay would count it twice.

A level (and the minutes it keeps) is forgotten once the key's newest final minute AND what the whole
flow has processed of every Kafka partition (`event_time.INPUT.processed_ms`) have passed its end plus
the lateness: the minute windows upstream hold a window until then too, so no revision of its
minutes can still come. A minute written again after a restore as it stood (`restated`) adds nothing,
and is skipped when its minute is no longer kept.

A minute-window key that may be dropped (`operators.windows`, Kafka input) says so in line with its
rows (`KeyMark`). After it was dropped, every row it wrote for the windows it held is here, and a row
still to come is a correction or comes from a window opened by an entry that was not late by its
partition's position — after the key's mark that it started afresh, which reaches this step before
the flow counts that entry as processed. So until such a mark, what the flow has processed alone is
the key's progress (its newest minute does not move while it is quiet), and once it holds no level
its state is dropped too (`DISCARD`); it looks again every 30 s to 5 min of wall time until then
(`event_time.forget_at`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import bytewax.operators as op
import msgspec
import xxhash
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic
from prometheus_client import Counter

from core import metrics
from core.records import CostWindow, LedgerEntry
from operators import event_time
from operators.ledger import SEP, KeyMark, key_of, window_row
from operators.owed import arrived_ms
from operators.stage import stage_of
from operators.versions import next_version, wall_us


@dataclass(slots=True)
class _RollupState:
    newest_end_ms: int = -1  # newest minute-window end seen: this key's event-time progress
    minutes: dict[int, CostWindow] = field(default_factory=dict)  # newest row of revisable minutes
    levels: dict[tuple[int, int], LedgerEntry] = field(default_factory=dict)  # (size, start) -> sums
    version: int = 0
    # levels and minutes whose end plus lateness is at or before this may have been forgotten (never back)
    forgot_ms: int = -1
    # the minute-window key was dropped (`KeyMark`): what the flow has processed is its progress
    upstream_dropped: bool = False


class _RollupLogic(StatefulBatchLogic[CostWindow | KeyMark, CostWindow, _RollupState]):
    def __init__(
        self,
        sizes_ms: Sequence[int],
        lateness_ms: int,
        clock_us: Callable[[], int],
        resume: _RollupState | None,
        processed: Callable[[], int | None] = arrived_ms,
        dropped: Counter | None = None,
    ) -> None:
        self._dropped = dropped if dropped is not None else metrics.KEYS_DROPPED.labels("rollup")
        self._sizes = tuple(sizes_ms)
        self._lateness = lateness_ms
        self._clock_us = clock_us
        self._processed = processed
        # the input was Kafka when the key last looked (`processed` not None); a restored key takes it
        # for Kafka until it looks, so that a quiet one is woken to be dropped
        self._kafka = resume is not None
        self._s = resume if resume is not None else _RollupState()
        if resume is not None and not hasattr(resume, "forgot_ms"):  # from before the field
            resume.forgot_ms = resume.newest_end_ms
        if resume is not None and not hasattr(resume, "upstream_dropped"):  # from before the field
            resume.upstream_dropped = False

    def on_batch(self, values: list[CostWindow | KeyMark]) -> tuple[Iterable[CostWindow], bool]:
        s = self._s
        out: list[CostWindow] = []
        changed: dict[tuple[int, int], CostWindow] = {}  # level -> a row of it (key, category)
        for r in values:
            if isinstance(r, KeyMark):
                s.upstream_dropped = not r.opened
                continue
            start = r.window_start_ms
            if r.kind == "correction":  # a correction of every level, whatever is open (see above)
                delta = _added(r, None)
                out.extend(self._correction(r, delta, (size, start - start % size)) for size in self._sizes)
                continue
            previous = s.minutes.get(start)
            if r.restated and previous is None:  # as it stood: already in its levels, which moved on
                continue
            s.minutes[start] = r
            delta = _added(r, previous)
            for size in self._sizes:
                level = (size, start - start % size)
                acc = s.levels.get(level)
                if acc is None:
                    if level[1] + size + self._lateness > s.forgot_ms:
                        pass  # open: start its sums below
                    elif r.provisional:  # (not seen: an open minute's level is open) its final row will do
                        continue
                    else:
                        # the level is closed for good: add to it with a correction row
                        out.append(self._correction(r, delta, level))
                        continue
                    acc = s.levels[level] = LedgerEntry(r.tenant_id, r.agent, r.model, r.variant, level[1])
                acc.add(delta)
                changed[level] = r
            if not r.provisional:  # progress is what is final: a provisional row closes nothing
                s.newest_end_ms = max(s.newest_end_ms, start + r.window_ms)
        for level in sorted(changed):
            out.append(
                self._row(s.levels[level], level[0], changed[level].category, self._open_minutes(level))
            )
        self._forget()
        return out, self._retain()

    def on_notify(self) -> tuple[Iterable[CostWindow], bool]:
        self._forget()
        return (), self._retain()

    def notify_at(self) -> datetime | None:
        s = self._s
        if not (s.upstream_dropped and self._kafka and (s.levels or s.minutes)):
            return None
        closes = min((start + size for size, start in s.levels), default=s.newest_end_ms) + self._lateness
        at = event_time.forget_at(closes, s.forgot_ms, self._clock_us() / 1e6)
        return datetime.fromtimestamp(at, tz=UTC)

    def _retain(self) -> bool:
        """DISCARD once the minute-window key was dropped and no level is held (module docstring)."""
        s = self._s
        if s.upstream_dropped and self._kafka and not s.levels and not s.minutes:
            self._dropped.inc()
            return StatefulBatchLogic.DISCARD
        return StatefulBatchLogic.RETAIN

    def snapshot(self) -> _RollupState:
        s = self._s
        return _RollupState(
            newest_end_ms=s.newest_end_ms,
            minutes=dict(s.minutes),
            levels={k: msgspec.structs.replace(v) for k, v in s.levels.items()},
            version=s.version,
            forgot_ms=s.forgot_ms,
            upstream_dropped=s.upstream_dropped,
        )

    def _forget(self) -> None:
        s = self._s
        processed = self._processed()
        self._kafka = processed is not None
        # a dropped minute-window key has nothing on its way that is not announced (module docstring)
        progress = processed if s.upstream_dropped and processed is not None else s.newest_end_ms
        s.forgot_ms = max(s.forgot_ms, event_time.settled_ms(progress, processed))
        horizon = s.forgot_ms - self._lateness
        for start in [m for m, r in s.minutes.items() if m + r.window_ms <= horizon]:
            del s.minutes[start]
        for level in [lv for lv in s.levels if lv[1] + lv[0] <= horizon]:
            del s.levels[level]

    def _open_minutes(self, level: tuple[int, int]) -> bool:
        """Whether a minute of the level is still provisional (so the level's row is too)."""
        size, start = level
        return any(m.provisional for at, m in self._s.minutes.items() if start <= at < start + size)

    def _next_version(self) -> int:
        s = self._s
        s.version = next_version(s.version, self._clock_us())
        return s.version

    def _row(
        self,
        w: LedgerEntry,
        size: int,
        category: str,
        provisional: bool = False,
        kind: str = "window",
        correction_id: str = "",
    ) -> CostWindow:
        return window_row(w, size, category, self._next_version(), kind, correction_id, provisional)

    def _correction(self, r: CostWindow, delta: LedgerEntry, level: tuple[int, int]) -> CostWindow:
        entry = LedgerEntry(r.tenant_id, r.agent, r.model, r.variant, level[1])
        entry.add(delta)
        # a minute correction keeps its id; a (rare) revision of a closed level gets one from its row
        cid = r.correction_id if r.kind == "correction" else _revision_id(r)
        return self._row(entry, level[0], r.category, kind="correction", correction_id=cid)


def _revision_id(r: CostWindow) -> str:
    """A stable id for a minute revision that reaches a closed level: from what the
    revision holds (never from its wall-clock version), so a re-run writes the same row."""
    content = (r.category, r.requests, r.input_tokens, r.output_tokens, r.cost_pusd, r.judge_calls)
    return f"{r.window_start_ms}@" + xxhash.xxh3_64_hexdigest(repr((*content, r.judge_cost_pusd)).encode())


_NOTHING = LedgerEntry("", "", "", "", 0)  # what a minute's first row is added to


def _added(new: CostWindow, previous: CostWindow | None) -> LedgerEntry:
    """What a minute row adds to its levels: all of it, or what a revision added to the minute's
    previous row (revisions only ever add entries)."""
    old: CostWindow | LedgerEntry = previous if previous is not None else _NOTHING
    return LedgerEntry(
        new.tenant_id,
        new.agent,
        new.model,
        new.variant,
        new.window_start_ms,
        requests=new.requests - old.requests,
        input_tokens=new.input_tokens - old.input_tokens,
        output_tokens=new.output_tokens - old.output_tokens,
        cost_pusd=new.cost_pusd - old.cost_pusd,
        unknown_cost_requests=new.unknown_cost_requests - old.unknown_cost_requests,
        judge_calls=new.judge_calls - old.judge_calls,
        judge_cost_pusd=new.judge_cost_pusd - old.judge_cost_pusd,
        max_request_cost_pusd=new.max_request_cost_pusd,
    )


@operator
def rollup(
    step_id: str,
    up: Stream[CostWindow] | Stream[CostWindow | KeyMark],
    *,
    sizes_s: Sequence[int],
    allowed_lateness_s: int,
    clock_us: Callable[[], int] = wall_us,
    processed: Callable[[], int | None] = arrived_ms,
) -> Stream[CostWindow]:
    """Roll window rows up to coarser windows (e.g. 1 h and 1 day) per key and category.

    Args:
        up: window rows, in line with the marks of keys that may be dropped
            (`operators.windows.CostWindows.marked`).
        sizes_s: the rollup sizes; each a multiple of the incoming window size.
        allowed_lateness_s: at least the lateness of the windows upstream: how
            long a level keeps absorbing revisions and corrections of its
            minutes (later ones become correction rows of the level).
        processed: how far the minutes upstream can no longer be revised by an entry that is not
            late (with judge spend among them: `operators.owed.judged_ms`).
    """
    if not sizes_s:
        msg = f"{step_id}: rollup needs at least one size"
        raise ValueError(msg)
    sizes_ms = sorted(size * 1000 for size in sizes_s)
    lateness_ms = allowed_lateness_s * 1000
    dropped = metrics.KEYS_DROPPED.labels(stage_of(step_id))
    keyed = op.key_on("key", up, lambda w: SEP.join((key_of(w), w.category)))
    rows = op.stateful_batch(
        "levels",
        keyed,
        lambda resume: _RollupLogic(sizes_ms, lateness_ms, clock_us, resume, processed, dropped),
    )
    return op.map("unkey", rows, lambda kv: kv[1])
