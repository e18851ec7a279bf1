"""What stages still owe the stages after them: one home for the judge frontier and the OTLP join's.

Two ledgers of the same kind. `JOINED`: the OTLP join (`operators.otlp_join`) holds a span until its
log records have come, so every stage after it takes a window as complete only once the flow has
processed where every partition stood AND the join holds nothing earlier (`arrived_ms`). `OWED`: the
sampler and the judges, for the judge-side windows (`judged_ms`, which waits for both).

Judge spend is made long after its request: the sampler holds a tenant's events until their window is
decided, and the judge holds an event until its LLM calls are done (retries, a provider outage:
minutes or hours). A judge-spend entry is late only by its event's position in its partition
(`event_time.late`, as for requests), so a judge-spend window may be forgotten only once no entry that
is not late can still come: once the flow has processed where every partition stood
(`event_time.processed_ms`) AND no stage still owes an entry for the window. Then whether an entry
goes into its window or is a correction is the same in any replay, whatever the judges' latency. The
quality estimates and the savings ledger wait the same way before a window is final (`judged_ms`).

What a stage owes. Each key of such a stage *seals*, at every epoch's end (its `snapshot`), the
earliest event time it still owes downstream (`seal`; None: nothing): the sampler its oldest open
window's start, the judge the oldest event under way or finished and not yet emitted, the join the
oldest call it has not sent on.

When a seal counts. An event the key no longer owes may have left in that epoch and still be on its
way downstream. bytewax reads in epoch e+1 only once the whole flow has processed epoch e (its
backpressure), so a seal made at the end of epoch e counts once a partition of the cluster reads in a
later epoch (`InputProgress.epoch`). The stage does not know the epoch, so a seal is labelled with an
upper bound of it: one past the newest epoch this process's partitions ended or the cluster reads in.
A key's seals count from its newest one that counts on, all of them (the minimum): an event owed at
any of them is owed until its leaving is processed; the one it came from upstream owed it until then.

Several processes. Every process publishes, with its partitions on the progress board
(`flows.progress_board`: "o" for `OWED`, "j" for `JOINED`), what it owes and the epoch the cluster
read in when it said so (`local_ms`); a process's own seals count only up to the epoch every other
process has published from (`set_remote`), so an event that moved from one process's stage to
another's is owed by one of them all along. A process not heard of holds everything (as for
`processed_ms`).
"""

from __future__ import annotations

import itertools
import math
import threading
from typing import Protocol

from core import metrics
from operators import event_time


class _Epochs(Protocol):
    def epoch(self) -> int: ...

    def epoch_bound(self) -> int: ...

    def has_input(self) -> bool: ...

    def processed_ms(self) -> int | None: ...


_NOTHING = math.inf  # a seal that owes nothing


class OwedWork:
    """The seals of one process's stage keys, and the other processes' published totals."""

    def __init__(self, progress: _Epochs = event_time.INPUT) -> None:
        self._progress = progress
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._seals: dict[int, list[tuple[int, float]]] = {}  # key -> (label, owed) oldest first
        self._remote: dict[str, tuple[int, float] | None] = {}  # board entry -> (epoch, owed); None: unheard
        self._cached: tuple[int, float] | None = None  # (the epoch it counted up to, the local total)

    def key(self) -> int:
        """A handle for one stage key's seals."""
        return next(self._ids)

    def seal(self, key: int, owed_ms: int | None) -> None:
        """What `key` owes at the end of the epoch being closed (None: nothing)."""
        label = self._progress.epoch_bound() + 1
        owed = _owed(owed_ms)
        with self._lock:
            seals = self._seals.get(key)
            if seals is None:
                if owed == _NOTHING:
                    return  # never owed anything
                seals = self._seals[key] = []
            if seals and seals[-1][0] == label:
                seals[-1] = (label, min(seals[-1][1], owed))  # the same epoch: what it owed in it
            else:
                seals.append((label, owed))
            self._cached = None

    def local_ms(self) -> tuple[int, int | None]:
        """The epoch every partition of the cluster has read to, and the earliest event time this
        process's keys owe as far as that counts (None: nothing)."""
        epoch = self._progress.epoch()
        with self._lock:
            upto = self._counted_epoch(epoch)
            return epoch, _ms(self._local(upto))

    def owed_ms(self) -> int | None:
        """The earliest event time a stage of the cluster still owes (None: nothing; -1: a process
        not heard of)."""
        epoch = self._progress.epoch()
        with self._lock:
            upto = self._counted_epoch(epoch)
            owed = self._local(upto)
            for entry in self._remote.values():
                if entry is None:
                    return -1
                owed = min(owed, entry[1])
        return _ms(owed)

    def set_remote(self, entries: dict[str, tuple[int, int | None] | None]) -> None:
        """The other processes' published (epoch, owed) by board entry (None: not heard); entries
        left out are done."""
        with self._lock:
            self._remote = {k: None if v is None else (v[0], _owed(v[1])) for k, v in entries.items()}
            self._cached = None

    def reset(self) -> None:
        """Forget everything (a test running flows one after another in one process)."""
        with self._lock:
            self._seals.clear()
            self._remote.clear()
            self._cached = None

    def _counted_epoch(self, epoch: int) -> int:
        """How far this process's seals count: the cluster's epoch, no further than every other
        process has published from."""
        for entry in self._remote.values():
            epoch = min(epoch, -1 if entry is None else entry[0])
        return epoch

    def _local(self, upto: int) -> float:
        cached = self._cached
        if cached is not None and cached[0] == upto:
            return cached[1]
        owed = _NOTHING
        for key in list(self._seals):
            seals = self._seals[key]
            counted = 0  # the newest seal that counts (its label is below the epoch read in)
            for i, (label, _) in enumerate(seals):
                if label < upto:
                    counted = i
            if counted:
                del seals[:counted]
            if len(seals) == 1 and seals[0][1] == _NOTHING and seals[0][0] < upto:
                del self._seals[key]  # owes nothing, and that counts
                continue
            owed = min(owed, min(o for _, o in seals))
        self._cached = (upto, owed)
        return owed


def _owed(ms: int | None) -> float:
    return _NOTHING if ms is None else ms


def _ms(owed: float) -> int | None:
    return None if owed == _NOTHING else int(owed)


OWED = OwedWork()  # the sampler and the judges: what the judge-side windows wait for
JOINED = OwedWork()  # the OTLP join (`operators.otlp_join`): what every stage after it waits for


def arrived_ms() -> int | None:
    """How far the stages after the OTLP join may take their windows as complete: what the flow has
    processed of every partition (`event_time.processed_ms`), no further than the earliest event the
    join still holds (None: no Kafka input, the watermark decides — or every partition is read and
    processed and nothing is held)."""
    return _arrived_ms(event_time.INPUT, JOINED)


def judged_ms() -> int | None:
    """How far the judge-spend windows (and what follows them) may take their windows as complete:
    `arrived_ms`, no further than the earliest event the sampler or a judge still owes them (None: no
    Kafka input, the watermark decides — or every partition is read and processed and nothing is
    owed)."""
    return _judged_ms(event_time.INPUT, OWED, JOINED)


def _arrived_ms(progress: _Epochs, joined: OwedWork) -> int | None:
    if not progress.has_input():
        return None
    return _earliest(progress.processed_ms(), joined.owed_ms())


def _judged_ms(progress: _Epochs, owed: OwedWork, joined: OwedWork) -> int | None:
    if not progress.has_input():
        return None
    processed = _arrived_ms(progress, joined)
    owes = owed.owed_ms()
    behind = 0 if processed is None or owes is None or owes < 0 or processed < 0 else max(0, processed - owes)
    metrics.JUDGE_FRONTIER_BEHIND.set(behind / 1000)
    return _earliest(processed, owes)


def _earliest(*bounds: int | None) -> int | None:
    """The earliest of the bounds that are set (None: none is)."""
    return min((b for b in bounds if b is not None), default=None)
