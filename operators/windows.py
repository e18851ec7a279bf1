"""cost_window: event-time tumbling windows per (tenant, agent, model, variant).

Hand-written on `stateful_batch` rather than `fold_window` (INFRA.md: 3.9x
faster and no wake-up storm on replayed timestamps). Each worker first
combines a batch's events (or ledger entries) per key and window
(`operators.ledger`), so only small partial sums cross workers.

Time: a key's watermark is the newest event time it has seen plus the system
time elapsed since while the input was live (`operators.event_time`: so a
quiet key still closes its windows, and a backlog, an outage or a restore
never counts as event time). It never goes back — not for an entry newer
than any before it that arrives behind it, nor at a restore (a snapshot
holds how far it got) — so a window forgotten past its lateness is never
opened again by a delayed entry, whose fresh row would replace the full one.
A window is emitted when the watermark passes its end and re-emitted (a newer
`version`, which replaces the ClickHouse row) when entries arrive after that.
With Kafka input, what the flow has processed of every partition (below) counts
as the watermark of every key at its wake-ups: in a replay a quiet key's
watermark does not move (wall time is not event time there), and its last row
would wait, the key woken every second, until the input went live.

Lateness is decided by what a replay reproduces, not by timing. An event read
from Kafka is *late* when its partition had already released something at or
past its window's end plus the allowed lateness (`event_time.late`, from the
position the source tags it with): it becomes a `correction` row with its own
stable id, whatever the batches or the wall clock. Every other entry goes into
its window, so a window is forgotten only once the watermark AND what the whole
flow has processed of every Kafka partition (`event_time.INPUT.processed_ms`)
have passed its end plus the lateness — no entry that is not late can still be
on its way then (a partition with nothing to read moves on, and its next
message is tagged where it moved: `event_time`). Without Kafka input the
watermark alone decides, and an entry whose window was forgotten is a
correction too, so a window's row is never replaced by a fresh one. Judge
spend is made long after its event: its entry carries where the event's
partition stood (`LedgerEntry.after_ms`), and its windows also wait for what
the sampler and the judges still owe them (`operators.owed.judged_ms`). A window is
forgotten when the key next has an entry or a row due, not at a wake-up of its
own, so a quiet key is off bytewax's schedule (which every activation of the
step scans in full) once its rows are out. No entry is ever dropped.

With `drop_finished` and Kafka input a key's state is dropped (`DISCARD`) once
every window it holds is forgotten, so keys that come and go (agents, models,
variants, tenants) do not add up. It may be dropped then because lateness is
positional: once what the flow has processed of every partition is past a
window's end plus the lateness, every entry still to come for it is late by its
partition's position and becomes a correction whatever state its key has (a
key that returns starts afresh). The key stays on the schedule until its
windows are forgotten, looking again every 30 s to 5 min of wall time
(`event_time.forget_at`). Without Kafka input the key's own watermark decides
lateness, so nothing is dropped. Such a key tells the levels built from its
rows (`operators.rollups`) when it starts afresh and when it is dropped, in line
with its rows (`KeyMark`): they may then be dropped too.

After a restore, a window whose row was out is written again when it takes an
entry or before it is forgotten (`restated`: as it stood): any row the crashed
run wrote for it after the snapshot came from an entry that is read again, so it
is replaced by what the resumed run computes, and a key that stays quiet writes
nothing.

The 1-hour and 1-day rows are derived from these by `operators.rollups`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from core import metrics
from core.records import CostWindow, Event, LedgerEntry
from operators import event_time
from operators.ledger import KeyMark, combine, combine_events, key_of, window_row
from operators.owed import arrived_ms
from operators.stage import stage_of
from operators.versions import next_version

_NONE: frozenset[int] = frozenset()


@dataclass(slots=True)
class _Open:
    """An open window: its sums, and where its row stands."""

    sums: LedgerEntry
    emitted: bool = False  # its row is out
    dirty: bool = False  # changed since its row went out
    fresh: bool = False  # changed since its last provisional row

    def copy(self) -> _Open:
        """An independent copy, for snapshots."""
        return _Open(msgspec.structs.replace(self.sums), self.emitted, self.dirty, self.fresh)


@dataclass(slots=True)
class _WindowState:
    key: tuple[str, str, str, str] = ("", "", "", "")
    max_ts_ms: int = -1
    seen_at_s: float = 0.0
    open: dict[int, _Open] = field(default_factory=dict)
    # windows whose end plus lateness is at or before this may have been forgotten (it never goes back)
    forgot_ms: int = -1
    # the version of the key's last row: the next is newer, whatever the wall clock (`operators.versions`)
    version: int = 0


class _WindowLogic(StatefulBatchLogic[LedgerEntry, CostWindow | KeyMark, _WindowState]):
    # one per key ever seen: no instance dict
    __slots__ = (
        "_category",
        "_clock",
        "_drop_finished",
        "_kafka",
        "_lateness",
        "_processed",
        "_provisional_at",
        "_provisional_s",
        "_restored",
        "_s",
        "_size",
    )

    def __init__(
        self,
        size_ms: int,
        lateness_ms: int,
        clock: Callable[[], float],
        resume: _WindowState | None,
        category: str = "llm",
        provisional_s: float = 0.0,
        processed: Callable[[], int | None] = arrived_ms,
        drop_finished: bool = False,
    ) -> None:
        self._category = category
        self._drop_finished = drop_finished
        # the input was Kafka when the key last looked (`processed` not None); a restored key takes it
        # for Kafka until it looks, so that a quiet one is woken to be dropped
        self._kafka = resume is not None
        self._processed = processed
        self._size = size_ms
        self._lateness = lateness_ms
        self._clock = clock
        self._provisional_s = provisional_s
        self._provisional_at = clock() + provisional_s  # wall time of the next provisional rows
        self._s = resume if resume is not None else _WindowState()
        self._restored = _NONE
        if resume is not None:
            if not hasattr(resume, "forgot_ms"):  # a snapshot from before the field: it forgot by watermark
                resume.forgot_ms = resume.max_ts_ms
            if not hasattr(resume, "version"):  # from before the field
                resume.version = 0
            # a row the crashed run wrote after this snapshot came from an entry that is read again: a
            # window whose row was out is written again, as restored, when it takes an entry (it is
            # dirty then) or before it is forgotten (that entry may come later, as a correction); a
            # key that stays quiet costs nothing at a restore
            self._restored = frozenset(start for start, w in resume.open.items() if w.emitted and not w.dirty)
            # and the downtime is not event-time progress
            resume.seen_at_s = clock()

    def watermark_ms(self) -> int:
        s = self._s
        if s.max_ts_ms < 0:
            return -1
        return s.max_ts_ms + int(event_time.elapsed_s(s.seen_at_s, self._clock()) * 1000)

    def on_batch(self, values: list[LedgerEntry]) -> tuple[Iterable[CostWindow | KeyMark], bool]:
        s = self._s
        out: list[CostWindow | KeyMark] = []
        if s.max_ts_ms < 0:  # a new key (or one dropped before)
            x = values[0]
            s.key = (x.tenant_id, x.agent, x.model, x.variant)
            if self._drop_finished:  # its rows may come again: before any of them
                out.append(KeyMark(*s.key, self._category, opened=True))
        wm, processed = self.watermark_ms(), self._processed()
        self._kafka = processed is not None
        # first what the key would have done had it woken when its rows were past their lateness
        if s.open:
            out.extend(self._forget(self._forgettable(wm, processed)))
        newest = max(x.ts_ms for x in values)
        if newest > wm:  # never back: an entry newer than any before but behind the watermark is late
            s.max_ts_ms, s.seen_at_s = newest, self._clock()
            wm = newest  # not read again: no slice of wall time between makes the batch's own entries late
        forgot = self._forgettable(wm, processed)
        closes_after = self._size + self._lateness
        for x in values:
            start = x.ts_ms - x.ts_ms % self._size
            if x.late:  # by its partition's position: the same in any replay
                out.append(self._correction(x, start))
                continue
            window = s.open.get(start)
            if window is None:
                if start + closes_after <= forgot:  # it may have been forgotten: its row stands
                    out.append(self._correction(x, start))
                    continue
                window = s.open[start] = _Open(LedgerEntry(*s.key, start))
            window.sums.add(x)
            if window.emitted:
                window.dirty = True
            elif self._provisional_s:
                window.fresh = True
        out.extend(self._advance(wm))
        out.extend(self._provisional())
        return self._retain(out)

    def on_notify(self) -> tuple[Iterable[CostWindow | KeyMark], bool]:
        s = self._s
        wm, processed = self.watermark_ms(), self._processed()
        self._kafka = processed is not None
        self._forgettable(wm, processed)
        if processed is not None:  # lateness by position: what the flow processed is every key's progress
            wm = max(wm, processed)
            if self._drop_finished:
                s.forgot_ms = max(s.forgot_ms, processed)
        out: list[CostWindow | KeyMark] = []
        out.extend(self._advance(wm))
        out.extend(self._provisional())
        return self._retain(out)

    def _retain(self, out: list[CostWindow | KeyMark]) -> tuple[list[CostWindow | KeyMark], bool]:
        """`out`, and DISCARD once every window is forgotten, when the key may be dropped (module
        docstring): after its last rows, the mark that says so."""
        if self._drop_finished and self._kafka and not self._s.open:
            out.append(KeyMark(*self._s.key, self._category, opened=False))
            return out, StatefulBatchLogic.DISCARD
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[CostWindow], bool]:
        # end of a bounded run: report every window as it stands, keep the state
        s = self._s
        out = [self._row(w.sums) for _, w in sorted(s.open.items()) if not w.emitted or w.dirty]
        for w in s.open.values():
            w.emitted, w.dirty, w.fresh = True, False, False
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        # a wake-up only for a row that is due: a window whose row is out waits for the key's next
        # entry to be forgotten, so a quiet key leaves bytewax's schedule (which every activation of
        # the step scans, all of it) once its rows are out, instead of staying on it for the lateness
        s = self._s
        due = [start + self._size for start, w in s.open.items() if not w.emitted or w.dirty]
        at = math.inf
        if due:
            wait_s = (min(due) - s.max_ts_ms) / 1000
            at = event_time.wake_at(s.seen_at_s + max(wait_s, 0.0), self._clock())
        if self._provisional_s and any(w.fresh for w in s.open.values()):  # due on the wall clock
            at = min(at, self._provisional_at)
        if at == math.inf and s.open and self._drop_finished and self._kafka:  # to be dropped once forgotten
            closes = min(s.open) + self._size + self._lateness
            now = self._clock()
            at = event_time.forget_at(closes, s.max_ts_ms + int((now - s.seen_at_s) * 1000), now)
        return None if at == math.inf else datetime.fromtimestamp(at, tz=UTC)

    def snapshot(self) -> _WindowState:
        s = self._s
        return _WindowState(
            key=s.key,
            max_ts_ms=max(s.max_ts_ms, self.watermark_ms()),  # how far it got: a restore never goes back
            seen_at_s=s.seen_at_s,
            open={k: w.copy() for k, w in s.open.items()},
            forgot_ms=s.forgot_ms,
            version=s.version,
        )

    def _forgettable(self, wm: int, processed: int | None) -> int:
        """How far windows may be forgotten now (their end plus lateness at or before it):
        `event_time.settled_ms`, never back."""
        s = self._s
        s.forgot_ms = max(s.forgot_ms, event_time.settled_ms(wm, processed))
        return s.forgot_ms

    def _forget(self, forgot: int) -> list[CostWindow]:
        """Drop the windows past their lateness whose row is out."""
        out: list[CostWindow] = []
        for start, w in list(self._s.open.items()):
            if start + self._size + self._lateness <= forgot and w.emitted and not w.dirty:
                out.extend(self._drop(start))
        return out

    def _advance(self, wm: int) -> list[CostWindow]:
        """Write the rows due at `wm`; drop the windows past their lateness (`forgot_ms`)."""
        s = self._s
        out = []
        for start in sorted(s.open):
            end = start + self._size
            if end > wm:
                break
            w = s.open[start]
            if not w.emitted or w.dirty:
                out.append(self._row(w.sums))
                w.emitted, w.dirty, w.fresh = True, False, False
                self._written(start)
            if end + self._lateness <= s.forgot_ms:
                out.extend(self._drop(start))
        if not s.open:
            s.open = {}  # a dict keeps its table when emptied: ~100 bytes per key that went quiet
        return out

    def _drop(self, start: int) -> list[CostWindow]:
        """Forget a window past its lateness; one whose row was out at a restore and not written since
        is written again first (the crashed run may have written it with an entry read again later)."""
        w = self._s.open.pop(start)
        if start not in self._restored:
            return []
        self._written(start)
        return [self._row(w.sums, restated=True)]

    def _written(self, start: int) -> None:
        """The window's row is written again since the restore: nothing the crashed run wrote stands."""
        if start in self._restored:
            self._restored = self._restored - {start}

    def _provisional(self) -> list[CostWindow]:
        """Every `provisional_s` of wall time: the open windows that changed, as they stand
        (never a closed window: its final row, with a higher version, is already out)."""
        if not self._provisional_s:
            return []
        now = self._clock()
        if now < self._provisional_at:
            return []
        fresh = [w for _, w in sorted(self._s.open.items()) if w.fresh]
        if not fresh:
            return []
        self._provisional_at = now + self._provisional_s
        for w in fresh:
            w.fresh = False
        return [self._row(w.sums, provisional=True) for w in fresh]

    def _row(
        self,
        w: LedgerEntry,
        kind: str = "window",
        correction_id: str = "",
        provisional: bool = False,
        restated: bool = False,
    ) -> CostWindow:
        s = self._s
        s.version = next_version(s.version)
        return window_row(
            w, self._size, self._category, s.version, kind, correction_id, provisional, restated
        )

    def _correction(self, x: LedgerEntry, start: int) -> CostWindow:
        metrics.LATE.inc()
        entry = LedgerEntry(*self._s.key, start)
        entry.add(x)
        # the same late entries: the same row (entries built without ids — never by the flow — stay unique)
        cid = x.entry_id or (f"{start}:{x.ids:016x}" if x.ids else f"{start}:{time.time_ns()}")
        return self._row(entry, kind="correction", correction_id=cid)


@dataclass(frozen=True)
class CostWindows:
    """`rows`: the window rows; `marked`: the same in line with the key marks that the steps keeping
    them need (`KeyMark`: the levels, `operators.rollups`, and the alert ledgers)."""

    rows: Stream[CostWindow]
    marked: Stream[CostWindow | KeyMark]


@operator
def cost_window(
    step_id: str,
    up: Stream[Event] | Stream[LedgerEntry],
    *,
    size_s: int,
    allowed_lateness_s: int,
    category: str = "llm",
    provisional_s: float = 0.0,
    clock: Callable[[], float] = time.time,
    processed: Callable[[], int | None] = arrived_ms,
    drop_finished: bool = False,
) -> CostWindows:
    """Windowed spend per (tenant, agent, model, variant); see the module docstring.

    `up` carries priced events (each one request) or ledger entries (e.g. judge spend).
    With `provisional_s`, open windows that changed are also written every that many
    seconds of wall time as `provisional` rows, which their final row supersedes.
    `processed`: how far no entry that is not late can still come (judge spend:
    `operators.owed.judged_ms`). `drop_finished`: drop a key's state once its windows are
    forgotten (Kafka input only)."""
    size_ms, lateness_ms = size_s * 1000, allowed_lateness_s * 1000
    newest = [0]  # this worker's newest event time, to spot possible corrections early

    stage = stage_of(step_id)
    entries_in = metrics.WINDOW_ENTRIES.labels(stage, "in")
    entries_keyed = metrics.WINDOW_ENTRIES.labels(stage, "keyed")

    def combine_batch(entries: list) -> Iterable[LedgerEntry]:
        newest[0] = max(newest[0], max(x.ts_ms for x in entries))
        if type(entries[0]) is Event:
            combined = combine_events(entries, size_ms, newest[0] - lateness_ms, lateness_ms)
        else:
            combined = combine(entries, size_ms, newest[0] - lateness_ms, lateness_ms)
        entries_in.inc(len(entries))
        entries_keyed.inc(len(combined))
        return combined

    combined = op.flat_map_batch("combine", up, combine_batch)
    keyed = op.key_on("key", combined, key_of)
    out = op.stateful_batch(
        "windows",
        keyed,
        lambda resume: _WindowLogic(
            size_ms, lateness_ms, clock, resume, category, provisional_s, processed, drop_finished
        ),
    )
    marked = op.map("unkey", out, lambda kv: kv[1])
    if not drop_finished:  # no marks
        return CostWindows(cast(Stream[CostWindow], marked), marked)
    dropped = metrics.KEYS_DROPPED.labels(stage)

    def row_only(x: CostWindow | KeyMark) -> CostWindow | None:
        if isinstance(x, CostWindow):
            return x
        if not x.opened:  # the key was dropped
            dropped.inc()
        return None

    return CostWindows(op.filter_map("rows", marked, row_only), marked)
