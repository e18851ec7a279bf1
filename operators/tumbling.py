"""tumbling: fold records into event-time tumbling windows per key, and emit each
window when it closes and again whenever it changes, until it is final.

The shape shared by the quality estimates and the savings ledger. Their inputs
(verdicts, judge spend) come after the sampler and the judges, so they are
out of event-time order by as much as the judges are behind: in a replay, the
judge stage emits the free tier-0 verdicts of many windows at once and their
LLM verdicts over the next minutes. So a window is

- first reported when the key's watermark (newest event time + wall time
  since) passes its end, and re-reported with a newer `version` whenever
  records arrive (the ClickHouse row is replaced);
- final, and forgotten, only when the watermark has also passed its end plus
  the allowed lateness, AND so has what the whole flow has processed of every
  Kafka partition (`event_time.INPUT.processed_ms`: no record that is not
  late by its partition's position can still be on its way; after the judges,
  `operators.owed.judged_ms`: nor owed by the sampler or a judge), AND no record
  arrived for it for `idle_s` seconds of wall time — in a live stream the
  first conditions decide, in a replay the last keeps windows open while the
  judges work through them.

With Kafka input, what the flow has processed (`processed`) counts as every key's watermark, and it
alone decides when a window is complete: a record not late by its position cannot come after it has
passed the window's end plus the lateness. In a replay a quiet key's own watermark does not move (wall
time is not event time there), so its last window would be reported only once the input went live,
and would stay open — the key woken every second (`event_time.RECHECK_S`) — until then. A window whose
row is out and that only waits to be final looks again every 30 s to 5 min of wall time
(`event_time.forget_wake`): finality frees memory, it decides no row. With `drop_finished` the
key's state is then dropped (`DISCARD`, counted in `judgeflow_window_keys_dropped_total{step}`) once
no window is open, so keys that come and go do not add up: a record for one of its windows is late by
its position, and dropped whatever state the key has (a key that returns starts afresh).

Records for a window already forgotten are counted
(`judgeflow_late_records_dropped_total{step}`) and dropped: these windows hold
statistics, and the exact judge spend is in the cost windows anyway. So is a
record whose events were read when their partition had already passed the
window's end plus the allowed lateness (`after_of`, `event_time.late`), even
if the window is still open: whether it still is depends on timing, the
record's position does not. A window
first seen after its end (a replay's first record for it) simply opens.

Memory: a key remembers which windows are final for a day of event time behind
its watermark, as one bit per window (`FinalWindows`: ~200 bytes for a day of
minutes, where a set of starts took ~60-70 bytes a window). A snapshot copies
the containers and each open window's accumulator with the spec's `copy` — only the windows changed
since the previous snapshot: the others are handed out as the copies made then (a replay keeps a
tenant's judge-side windows open for many minutes of event time, ~200 in the soak bench, and most of
them are unchanged from one epoch to the next).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, TypeVar

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from core import metrics
from operators import event_time
from operators.owed import arrived_ms
from operators.stage import stage_of
from operators.versions import next_version

X = TypeVar("X")
A = TypeVar("A")
R = TypeVar("R")

_FORGOTTEN_HORIZON_MS = 86_400_000  # how long a final window is remembered as final


class FinalWindows:
    """The starts of a key's final windows, as the bits of one int: bit i is the window
    `base + i * size_ms`, and `base` is the oldest one remembered. So memory is one bit per
    window between the oldest and the newest, not an entry per window."""

    __slots__ = ("base", "bits", "size_ms")

    def __init__(self, size_ms: int, base: int = 0, bits: int = 0) -> None:
        self.size_ms = size_ms
        self.base = base
        self.bits = bits

    def __contains__(self, start: int) -> bool:
        d = start - self.base
        return d >= 0 and not d % self.size_ms and (self.bits >> (d // self.size_ms)) & 1 == 1

    def add(self, start: int) -> None:
        """Remember the window starting at `start` (a multiple of `size_ms`) as final."""
        if not self.bits:
            self.base, self.bits = start, 1
            return
        d = start - self.base
        if d % self.size_ms:
            msg = f"tumbling: window start {start} is not on the {self.size_ms} ms grid of {self.base}"
            raise ValueError(msg)
        if d < 0:  # older than the oldest: rebase
            self.bits = (self.bits << (-d // self.size_ms)) | 1
            self.base = start
        else:
            self.bits |= 1 << (d // self.size_ms)

    def forget_before(self, ts_ms: int) -> None:
        """Forget the windows that start before `ts_ms`."""
        if not self.bits or ts_ms <= self.base:
            return
        gone = -((self.base - ts_ms) // self.size_ms)  # the windows base, base + size, ... < ts_ms
        bits = self.bits >> gone
        if not bits:
            self.bits = 0
            return
        skip = (bits & -bits).bit_length() - 1  # keep `base` at the oldest one remembered
        self.bits = bits >> skip
        self.base += (gone + skip) * self.size_ms

    def __iter__(self) -> Iterator[int]:
        bits, start = self.bits, self.base
        while bits:
            if bits & 1:
                yield start
            bits >>= 1
            start += self.size_ms

    def __len__(self) -> int:
        return self.bits.bit_count()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FinalWindows):
            return NotImplemented
        return (self.size_ms, self.bits, self.base if self.bits else 0) == (
            other.size_ms,
            other.bits,
            other.base if other.bits else 0,
        )

    def __repr__(self) -> str:
        return f"FinalWindows({self.size_ms}, {list(self)})"

    def copy(self) -> FinalWindows:
        return FinalWindows(self.size_ms, self.base, self.bits)


@dataclass
class _TumblingState(Generic[A]):
    final: FinalWindows
    key: str = ""
    max_ts_ms: int = -1
    seen_at_s: float = 0.0
    open: dict[int, A] = field(default_factory=dict)
    arrived_s: dict[int, float] = field(default_factory=dict)  # window -> wall time of its last record
    emitted: set[int] = field(default_factory=set)
    dirty: set[int] = field(default_factory=set)
    # the version of the key's last row: the next is newer, whatever the wall clock (`operators.versions`)
    version: int = 0


@dataclass(frozen=True)
class _Spec(Generic[X, A, R]):
    step_id: str
    key_of: Callable[[X], str]
    size_ms: int
    lateness_ms: int
    idle_s: float
    ts_of: Callable[[X], int]
    new: Callable[[], A]
    fold: Callable[[A, X], None]
    rows: Callable[[str, int, A, int], list[R]]
    clock: Callable[[], float]
    copy: Callable[[A], A] = deepcopy  # one accumulator, for snapshots: later folds must not reach it
    processed: Callable[[], int | None] = arrived_ms
    after_of: Callable[[X], int | None] | None = None  # where a record's events' partitions stood
    drop_finished: bool = False  # DISCARD a key with no open window, with Kafka input


class _TumblingLogic(StatefulBatchLogic[X, R, _TumblingState[A]]):
    def __init__(self, spec: _Spec[X, A, R], resume: _TumblingState[A] | None) -> None:
        self._spec = spec
        # the accumulator copies the last snapshot handed out, and the windows changed since: a
        # window unchanged since then is handed out again as it was, not copied again
        self._copies: dict[int, A] = {}
        self._changed: set[int] = set()
        # the input was Kafka when the key last looked (`processed` not None); a restored key takes it
        # for Kafka until it looks, so that it is woken to be dropped
        self._kafka = resume is not None
        if resume is None:
            self._s: _TumblingState[A] = _TumblingState(FinalWindows(spec.size_ms))
            return
        self._s = resume
        final = resume.final
        if not isinstance(final, FinalWindows) or final.size_ms != spec.size_ms:
            # a snapshot of the set of starts this used to be, or of another window size
            resume.final = FinalWindows(spec.size_ms)
            for start in sorted(final):
                if start % spec.size_ms == 0:
                    resume.final.add(start)
        # the downtime is not event-time progress: windows wait for their re-read records
        now = spec.clock()
        resume.seen_at_s = now
        resume.arrived_s = dict.fromkeys(resume.arrived_s, now)

    def on_batch(self, values: list[X]) -> tuple[Iterable[R], bool]:
        s, spec = self._s, self._spec
        if not s.key:
            s.key = spec.key_of(values[0])
        now = spec.clock()
        newest = max(spec.ts_of(x) for x in values)
        if newest > s.max_ts_ms:
            s.max_ts_ms, s.seen_at_s = newest, now
        dropped = 0
        closes_after = spec.size_ms + spec.lateness_ms
        for x in values:
            ts = spec.ts_of(x)
            start = ts - ts % spec.size_ms
            if spec.after_of is not None and event_time.late(spec.after_of(x), start + closes_after):
                dropped += 1  # late by position: dropped in every run, open window or not
                continue
            acc = s.open.get(start)
            if acc is None:
                if start in s.final:  # (an open window is never final)
                    dropped += 1
                    continue
                acc = s.open[start] = spec.new()
            spec.fold(acc, x)
            self._changed.add(start)
            s.arrived_s[start] = now
            if start in s.emitted:
                s.dirty.add(start)
        if dropped:
            metrics.LATE_DROPPED.labels(spec.step_id).inc(dropped)
        return self._retain(self._advance(now))

    def on_notify(self) -> tuple[Iterable[R], bool]:
        return self._retain(self._advance(self._spec.clock()))

    def _retain(self, out: list[R]) -> tuple[list[R], bool]:
        """`out`, and DISCARD once no window is open, when the key may be dropped (module docstring)."""
        if self._spec.drop_finished and self._kafka and not self._s.open:
            metrics.KEYS_DROPPED.labels(self._spec.step_id).inc()
            return out, StatefulBatchLogic.DISCARD
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[R], bool]:
        s = self._s
        out: list[R] = []
        for start in sorted(s.open):
            if start not in s.emitted or start in s.dirty:
                out.extend(self._rows(start))
        s.emitted.update(s.open)
        s.dirty.clear()
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        s, spec = self._s, self._spec
        if not s.open:  # (only a restored key, with Kafka input: it looks, and goes)
            return (
                datetime.fromtimestamp(spec.clock(), tz=UTC) if spec.drop_finished and self._kafka else None
            )
        # asked for every key after each of its batches, over every open window (a replay keeps ~200 open
        # per tenant): one pass; the watermark reaches t at wall time seen + max(t - newest, 0) / 1000
        seen, newest, emitted, dirty, arrived = s.seen_at_s, s.max_ts_ms, s.emitted, s.dirty, s.arrived_s
        size, final_after, idle_s = spec.size_ms, spec.size_ms + spec.lateness_ms, spec.idle_s
        report = final = math.inf
        for start in s.open:
            if start not in emitted or start in dirty:  # to report when the watermark passes its end
                at = seen + max(start + size - newest, 0) / 1000
                if at < report:
                    report = at
            else:  # to make final: past its lateness, and idle
                at = max(seen + max(start + final_after - newest, 0) / 1000, arrived[start] + idle_s)
                if at < final:
                    final = at
        now = spec.clock()
        due = event_time.wake_at(report, now) if report < math.inf else math.inf
        if final < math.inf:  # not urgent with Kafka input, and blocked there by what the flow processed
            wake = event_time.forget_wake if self._kafka else event_time.wake_at
            due = min(due, wake(final, now))
        return datetime.fromtimestamp(due, tz=UTC)

    def snapshot(self) -> _TumblingState[A]:
        s, copy, before, changed = self._s, self._spec.copy, self._copies, self._changed
        copies = {
            start: copy(acc) if start in changed or start not in before else before[start]
            for start, acc in s.open.items()
        }
        self._copies = copies
        changed.clear()
        return _TumblingState(
            final=s.final.copy(),
            key=s.key,
            max_ts_ms=s.max_ts_ms,
            seen_at_s=s.seen_at_s,
            open=dict(copies),
            arrived_s=dict(s.arrived_s),
            emitted=set(s.emitted),
            dirty=set(s.dirty),
            version=s.version,
        )

    def _advance(self, now: float) -> list[R]:
        s, spec = self._s, self._spec
        wm = s.max_ts_ms + int(event_time.elapsed_s(s.seen_at_s, now) * 1000)
        processed = spec.processed()
        self._kafka = processed is not None
        if processed is not None:  # lateness by position: what the flow processed is every key's progress
            wm = max(wm, processed)
        final_by = event_time.settled_ms(wm, processed)
        horizon = wm - _FORGOTTEN_HORIZON_MS
        out: list[R] = []
        idle = None  # (read once, when a window first needs it)
        for start in sorted(s.open):
            end = start + spec.size_ms
            if end > wm:
                break
            if start not in s.emitted or start in s.dirty:
                out.extend(self._rows(start))
                s.emitted.add(start)
                s.dirty.discard(start)
            if end + spec.lateness_ms > final_by:
                continue
            idle = idle or event_time.idleness(now, spec.idle_s)
            if idle(s.arrived_s[start]):
                del s.open[start], s.arrived_s[start]
                s.emitted.discard(start)
                if start >= horizon:  # an older one would be forgotten at once
                    s.final.add(start)
        s.final.forget_before(horizon)
        return out

    def _rows(self, start: int) -> list[R]:
        self._changed.add(start)  # `rows` may record what it reported in the accumulator
        s = self._s
        s.version = next_version(s.version)
        return self._spec.rows(s.key, start, s.open[start], s.version)


@operator
def tumbling(
    step_id: str,
    up: Stream[X],
    *,
    key_of: Callable[[X], str],
    size_s: int,
    allowed_lateness_s: int,
    ts_of: Callable[[X], int],
    new: Callable[[], A],
    fold: Callable[[A, X], None],
    rows: Callable[[str, int, A, int], list[R]],
    idle_s: float = 300.0,
    clock: Callable[[], float] = time.time,
    copy: Callable[[A], A] = deepcopy,
    processed: Callable[[], int | None] = arrived_ms,
    after_of: Callable[[X], int | None] | None = None,
    drop_finished: bool = False,
) -> Stream[R]:
    """Per `key_of(record)`: fold records into windows, emit `rows(key, window_start_ms,
    acc, version)` when a window closes or changes (see the module docstring).

    Args:
        copy: an independent copy of one accumulator, for snapshots (default `deepcopy`).
        after_of: where the partition of a record's event (of all of its events) stood when it
            was read (`Source.after_ms`; None: not late): a record late by that position for its
            window is dropped in every run, as the window may or may not be final when it comes.
        drop_finished: with Kafka input, drop a key's state once no window is open. Only where every
            record late by its position is dropped (here by `after_of`, or before this step): a record
            for a window the key no longer remembers as final must be one of them.
    """
    spec = _Spec(
        stage_of(step_id),
        key_of,
        size_s * 1000,
        allowed_lateness_s * 1000,
        idle_s,
        ts_of,
        new,
        fold,
        rows,
        clock,
        copy,
        processed,
        after_of,
        drop_finished,
    )
    keyed = op.key_on("key", up, key_of)
    out = op.stateful_batch("windows", keyed, lambda resume: _TumblingLogic(spec, resume))
    return op.map("unkey", out, lambda kv: kv[1])
