"""Event time: one home for how far the input has got, and for when wall time may stand in for it.

Every stateful stage keeps, per key, the newest event time it has seen. Two things decide whether
that is a trustworthy clock for closing windows, and both live here:

1. **Aligned partitions.** The Kafka partitions a process reads are released in step: a partition
   hands a message to the flow only when its time (the Kafka message timestamp, the producer's time)
   is at most `align_s` ahead of the *frontier* of every other partition that still has input — the
   time of the next message it holds back, or of the last one it released. So in a replay, a
   backfill or a restart that re-reads a backlog, no partition runs minutes ahead of another and a
   key's newest event time never passes a window's end while another partition still holds that
   window's events (as long as `align_s` is below the stages' allowed lateness). A partition that
   has nothing more to read (caught up, or at the end of a bounded input) holds nobody back.
2. **Wall time only while the input is live.** A key that goes quiet must still close its windows, so
   wall time elapsed since its newest event counts as event-time progress — but only the wall time
   during which the input was *live*, as seen by the polls: every partition this process reads at its
   high watermark, or the newest message handed over less than `LIVE_LAG_S` behind the wall clock
   (`elapsed_s`). Replaying a backlog (a backfill, a restart, a consumer far behind) is not live, and
   a blocked worker (a ClickHouse outage holding a sink, a full judge queue) polls nothing, so neither
   counts as event time and nothing closes early. The "nothing arrived for a while" conditions some
   stages add for live traffic (`idle`) do not apply to a replay: there event time alone decides.

With several processes, each one's partitions are known to the others through a progress board
(`flows.progress_board`): the partitions another process reads take part here as *remote* entries, so
alignment and liveness are the cluster's, not the process's — a process never runs ahead of another's
partitions, and one whose own partitions are done or caught up does not count wall time while another
still reads a backlog. A remote partition not heard of yet (or not lately) holds everyone at its start.
With no Kafka input anywhere (tests and benchmarks on an in-memory source) wall time counts as before.

3. **Processed, not just released.** A partition's frontier says what it has *handed to the flow*; an
   event handed over may still be on its way to a stage (through other steps, across processes). What a
   window decision must wait for is what the whole flow has *processed*, and bytewax says it by
   construction: a source reads in epoch e only once every step of every worker has processed every
   epoch before e (its backpressure, which with recovery includes writing the snapshots of those
   epochs), and it snapshots each partition exactly when the partition's epoch ends. So where a
   partition stood when an epoch ended (`processed_ms`) is processed as soon as it reads in the next
   one. A partition read to its end in epoch r holds nothing once any partition of the cluster reads in
   an epoch after r. Epochs are counted from the run's start, which every partition of every process
   shares. `processed_ms()` is the gate of decisions that must see every event up to a time (the
   sampler's windows, the cost windows forgetting one); with the events' own position in their
   partition (`after_ms_of`), it makes what such a decision contains independent of timing.
4. **A partition with nothing to read moves on.** It would hold every such decision at its last
   message forever (a quiet partition, an empty one). So while it is caught up it is moved on to the
   slowest partition that still has input, or to the live clock less `CAUGHT_UP_LAG_S`
   (`caught_up_at`) — and the move counts only from the end of the epoch it was made in, as part of the
   partition's snapshot: its next message is tagged with it (late for a window the others let go), and
   a run resumed after a crash tags that message the same, whatever the wall clock says then. "Nothing
   to read" is judged against the broker's high watermark, so only while the partition's broker
   answers (`flows.kafka_partition`): a broker outage is not event time either.
5. **One message cannot move a partition far.** A message stamped more than `JUMP_S` past where its
   partition stands (a producer's clock a day ahead, a bug, hostile input) moves it, and counts for the
   alignment, only as far as the next message confirms: the earlier of the two. Otherwise one such
   message would make everything after it in the partition late, for as long as it was ahead (a
   timestamp in 2100: for good). A real gap in a partition's traffic costs one message of lag.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE

RECHECK_S = 1.0  # how soon a stage looks again when its deadline passed but event time did not
# how soon a key whose rows are all out looks again whether its windows can be dropped (`forget_at`)
FORGET_MIN_S = 30.0
FORGET_MAX_S = 300.0
LIVE_LAG_S = 30.0  # input whose newest message is this close to the wall clock is live traffic
CAUGHT_UP_LAG_S = 5.0  # a caught-up partition stands this far behind the wall clock (messages in flight)
# a message more than this past where its partition stands moves it only as far as the next one confirms
JUMP_S = 5.0
JUMP_MS = int(JUMP_S * 1000)


_AFTER_MS = "after_ms"


def tag_after(message: Any, after_ms: int | None) -> None:
    """Note on a Kafka message, as the source hands it to the flow, where its partition stood: the
    newest time the partition had released before it (None: nothing yet). An event is late for a
    window whose end plus lateness is at or before it, whatever the timing."""
    # an attribute beside bytewax's fields: a copy of the frozen message would cost 2 µs a message
    message.__dict__[_AFTER_MS] = after_ms


def after_ms_of(message: Any) -> int | None:
    """What `tag_after` noted on a message (None: not read by the flow's Kafka source)."""
    return getattr(message, _AFTER_MS, None)


def kafka_time_ms(message: Any) -> int | None:
    """A Kafka message's timestamp (the producer's time), None when the broker has none."""
    msg = getattr(message, "msg", message)  # a KafkaError wraps its message
    ts = getattr(msg, "timestamp", None)
    if not ts or ts[0] == TIMESTAMP_NOT_AVAILABLE:
        return None
    return int(ts[1])


def first_read_ms(message: Any) -> int | None:
    """The Kafka time of `message` if the source handed it over as the first it read from its
    partition since the job first started (`tag_after` with no position before it); None otherwise."""
    tagged = getattr(message, "__dict__", {})
    if _AFTER_MS not in tagged or tagged[_AFTER_MS] is not None:
        return None
    return kafka_time_ms(message)


def late(after_ms: int | None, closes_ms: int) -> bool:
    """Whether an event read where its partition stood at `after_ms` (`tag_after`) is late for a
    window that closes at `closes_ms` (its end plus the allowed lateness): its partition had already
    released something at or past that. A property of the partition's order, so a replay or a restore
    decides it the same way (None: not read from Kafka, never late by position)."""
    return after_ms is not None and closes_ms <= after_ms


@dataclass(frozen=True, slots=True)
class Reading:
    """One partition as its source, or its process's progress board entry, reports it.

    `frontier_ms`: the earliest time it may still release (None: not polled yet); `caught_up`: its
    last poll found nothing and it holds nothing back; `epoch`: the epoch it last read in, counted from
    the run's start; `processed_ms`: where it stood by the end of an epoch the whole flow has processed
    (None: nowhere yet); `ended`: it was read to its end in `epoch`."""

    frontier_ms: int | None
    caught_up: bool
    epoch: int = 0
    processed_ms: int | None = None
    ended: bool = False


@dataclass(slots=True)
class _Partition:
    frontier_ms: int | None = None  # the earliest time it may still release (None: not polled yet)
    caught_up: bool = False  # its last poll found nothing and it holds nothing back
    remote: bool = False  # read by another process (as its progress board entry says)
    processed_ms: int | None = None  # where it stood by the end of an epoch the flow has processed
    ended_in: int | None = None  # read to its end in this epoch (None: still read)

    def reading(self, epoch: int) -> Reading:
        ended = self.ended_in is not None
        at = self.ended_in if self.ended_in is not None else epoch
        return Reading(self.frontier_ms, self.caught_up, at, self.processed_ms, ended)


class InputProgress:
    """The partitions one process reads: their frontiers (alignment) and whether they are caught up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[str, _Partition] = {}
        self._live_from: float | None = None  # since when the polls have found the input live
        self._live_at = 0.0  # the last poll that found it live
        self._epoch = 0  # the newest epoch a partition of the cluster reads in: all before it are processed
        self._ended_epochs = 0  # epochs this process's partitions have ended (each at its snapshot)

    # --- the source side (flows.sources) -------------------------------------------

    def opened(self, part: str) -> None:
        with self._lock:
            self._parts[part] = _Partition()
            self._live_from = None

    def closed(self, part: str) -> None:
        """The process no longer reads `part` (shut down): forget it."""
        with self._lock:
            self._parts.pop(part, None)
            if not self._any_reading():
                self._live_from = None

    def ended(self, part: str, *, epoch: int) -> None:
        """`part` was read to its end in `epoch`: it holds nobody back, and the decisions that wait for
        what it released only until the flow has processed that epoch."""
        with self._lock:
            p = self._parts.setdefault(part, _Partition())
            p.ended_in = epoch
            if not self._any_reading():
                self._live_from = None

    def processed(self, part: str, *, epoch: int, processed_ms: int | None) -> None:
        """`part` reads in `epoch` (so the flow has processed every epoch before it): where it stood
        by the end of the last one."""
        with self._lock:
            p = self._parts.setdefault(part, _Partition())
            p.processed_ms = processed_ms
            self._epoch = max(self._epoch, epoch)

    def epoch_ended(self, epochs: int) -> None:
        """A partition's epoch ended (its snapshot): `epochs` have ended since the run started."""
        with self._lock:
            self._ended_epochs = max(self._ended_epochs, epochs)

    def local(self) -> dict[str, Reading]:
        """The partitions this process reads or has read to their end, as their sources last left them
        (for the progress board)."""
        with self._lock:
            return {n: q.reading(self._epoch) for n, q in self._parts.items() if not q.remote}

    def set_remote(self, states: dict[str, Reading | None], now: float) -> None:
        """The partitions other processes read, as the progress board last heard them (None: not heard
        — it holds everyone at its start). Remote partitions left out are done and processed."""
        with self._lock:
            for name in [n for n, q in self._parts.items() if q.remote and n not in states]:
                del self._parts[name]
            for name, state in states.items():
                mine = self._parts.get(name)
                if mine is not None and not mine.remote:
                    continue
                if state is None:
                    self._parts[name] = _Partition(remote=True)
                    continue
                ended = state.epoch if state.ended else None
                at = state.processed_ms
                self._parts[name] = _Partition(state.frontier_ms, state.caught_up, True, at, ended)
                if not state.ended:  # its process reads in that epoch: every epoch before it is processed
                    self._epoch = max(self._epoch, state.epoch)
            if self._any_reading():
                self._update_live(now)

    def _reading(self) -> list[_Partition]:
        return [q for q in self._parts.values() if q.ended_in is None]

    def _any_reading(self) -> bool:
        # asked once per window per stage per batch: stop at the first partition still read
        return any(q.ended_in is None for q in self._parts.values())

    def polled(self, part: str, *, frontier_ms: int | None, caught_up: bool, now: float) -> None:
        """A partition's state after a poll: the time of the next message it holds (or of the last
        it released), and whether it had nothing to read and holds nothing."""
        with self._lock:
            p = self._parts.setdefault(part, _Partition())
            if frontier_ms is not None:
                p.frontier_ms = frontier_ms
            p.caught_up = caught_up
            self._update_live(now)

    def _update_live(self, now: float) -> None:
        parts = self._reading()
        newest = max((q.frontier_ms for q in parts if q.frontier_ms is not None), default=None)
        live = all(q.caught_up for q in parts) or (
            newest is not None and now * 1000 - newest <= LIVE_LAG_S * 1000
        )
        if not live:
            self._live_from = None
        else:
            if self._live_from is None:
                self._live_from = now
            self._live_at = now

    def limit_ms(self, part: str, align_ms: int) -> int | None:
        """The newest time `part` may release now: `align_ms` past the slowest other partition that
        still has input (None: no limit; a partition not polled yet holds everyone at its start)."""
        with self._lock:
            slowest = self._slowest(part)
        return slowest if slowest is None or slowest < 0 else slowest + align_ms

    # --- the stages' side ------------------------------------------------------------

    def processed_ms(self) -> int | None:
        """How far the whole flow has processed what every partition (of the cluster) stood at: every
        event a partition handed over before it stood at this is processed everywhere, and any event
        it hands over from now on is tagged at or past it (-1: a partition stands nowhere yet, or was
        not heard of; None: every one is read to its end and processed, or no Kafka input at all)."""
        with self._lock:
            bounds = []
            for q in self._parts.values():
                if q.ended_in is not None and q.ended_in < self._epoch:
                    continue  # read to its end, and the flow has processed the epoch it ended in
                bounds.append(-1 if q.processed_ms is None else q.processed_ms)
            return min(bounds, default=None)

    def epoch(self) -> int:
        """The newest epoch a partition of the cluster reads in: the flow has processed every one before."""
        with self._lock:
            return self._epoch

    def epoch_bound(self) -> int:
        """At least the epoch the flow is in now: the newest this process's partitions ended, or the
        cluster reads in (a stage's snapshot of epoch e comes after every partition ended e)."""
        with self._lock:
            return max(self._epoch, self._ended_epochs)

    def has_input(self) -> bool:
        """Whether Kafka partitions are read (or were read to their end) anywhere in the cluster."""
        with self._lock:
            return bool(self._parts)

    def caught_up_at(self, part: str, now: float) -> int | None:
        """Where `part`, which has nothing to read, stands now: at the slowest other partition (of the
        cluster) that still has input, and at most `CAUGHT_UP_LAG_S` behind the wall clock (None:
        another was not polled or heard of yet)."""
        with self._lock:
            slowest = self._slowest(part)
        if slowest is not None and slowest < 0:
            return None
        at = int((now - CAUGHT_UP_LAG_S) * 1000)
        return at if slowest is None else min(at, slowest)

    def _slowest(self, but: str | None = None) -> int | None:
        """The earliest frontier of the partitions (but `but`) that still have input: -1 when one
        was not polled or heard of yet, None when none has input."""
        pending = [
            q for name, q in self._parts.items() if name != but and not q.caught_up and q.ended_in is None
        ]
        if not pending:
            return None
        if any(q.frontier_ms is None for q in pending):
            return -1
        return min(q.frontier_ms for q in pending if q.frontier_ms is not None)

    def elapsed_s(self, since: float, now: float) -> float:
        """Wall seconds since `since` that count as event-time progress: all of them with no Kafka
        input in this process; otherwise only those the polls found the input live."""
        with self._lock:
            if not self._any_reading():
                return max(0.0, now - since)
            if self._live_from is None:
                return 0.0
            return max(0.0, self._live_at - max(since, self._live_from))

    def replaying(self) -> bool:
        """Kafka input is read here and it is not live: a backlog is being read."""
        with self._lock:
            return self._any_reading() and self._live_from is None

    def reset(self) -> None:
        """Forget every partition (a test running flows one after another in one process)."""
        with self._lock:
            self._parts.clear()
            self._live_from = None
            self._epoch = 0
            self._ended_epochs = 0


INPUT = InputProgress()


def processed_ms() -> int | None:
    """How far the flow has processed where every Kafka partition stood (`InputProgress.processed_ms`)."""
    return INPUT.processed_ms()


def settled_ms(watermark_ms: int, processed: int | None) -> int:
    """How far a stage may take its windows as complete: its watermark, but reading Kafka no further
    than the flow has processed where every partition stood (`processed_ms`; None: no Kafka input) —
    an event that is not late by its position may still be on its way before that."""
    return watermark_ms if processed is None else min(watermark_ms, processed)


def elapsed_s(since: float, now: float) -> float:
    """Wall seconds since `since` that count as event-time progress (see the module docstring)."""
    return INPUT.elapsed_s(since, now)


def idle(since: float, now: float, idle_s: float) -> bool:
    """Whether a window that last received input at `since` may count as complete on that score:
    live, after `idle_s` of wall time; while a backlog is read in step (aligned partitions), at once —
    event time alone decides there (and an outage blocking the worker is not idleness)."""
    return idleness(now, idle_s)(since)


def idleness(now: float, idle_s: float) -> Callable[[float], bool]:
    """`idle` for many windows at one instant: the input's state is read once, not once a window."""
    if INPUT.replaying():
        return _always
    return lambda since: now - since >= idle_s


def _always(since: float) -> bool:
    return True


def wake_at(due_s: float, now: float) -> float:
    """When a stage should look again: at `due_s`, or — when that has passed without event time
    moving enough — a little later (never a wake-up storm)."""
    return due_s if due_s > now else now + RECHECK_S


def forget_at(closes_ms: int, progress_ms: int, now: float) -> float:
    """When a key whose rows are all out should look again whether its state can be dropped: when
    event time, going on at the wall clock's pace from `progress_ms`, reaches `closes_ms` (its first
    window's end plus the lateness), but no sooner than `FORGET_MIN_S` — dropping is not urgent, and
    a wake-up costs every scheduled key — and no later than `FORGET_MAX_S`, since a replay's event
    time runs ahead of the wall clock."""
    return forget_wake(now + (closes_ms - progress_ms) / 1000, now)


def forget_wake(due_s: float, now: float) -> float:
    """When a key should look again whether it can let state go that is due at wall time `due_s` (as
    far as it can tell): then, but no sooner than `FORGET_MIN_S` from now and no later than
    `FORGET_MAX_S` (`forget_at`)."""
    return now + min(max(due_s - now, FORGET_MIN_S), FORGET_MAX_S)
