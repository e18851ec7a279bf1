"""The Kafka input, including "replay from a time" for backfills.

`kafka.start` is `beginning`, `end`, or an RFC 3339 time: then each
partition starts at its first message at or after that time (looked up with
`flows.kafka_offsets.offsets_for_time`, which also works where the broker
cannot answer ListOffsets by timestamp). The time is first moved back to the
start of the longest window (the UTC day with the default rollups): a replay
rewrites whole windows, and a window rebuilt from half its events would
replace the complete row. A restart with a recovery directory resumes from
the snapshot instead, whatever `start` says.

A backfill (`flows.backfill`) gives explicit per-partition start and stop
offsets instead (`bounded_kafka_source`): each partition reads [start, stop)
and ends there. `POSITIONS` tells, per partition, how far the source has
handed messages to the flow — what a progress display reads; it only
observes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.connectors.kafka import KafkaSource, KafkaSourceMessage
from bytewax.inputs import StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

from flows.config import KafkaConfig
from flows.kafka_offsets import offsets_for_time
from flows.kafka_partition import ANSWER_S, build_partition
from operators import event_time

log = logging.getLogger(__name__)

TopicPartitionKey = tuple[str, int]  # (topic, partition)


class ReadPositions:
    """Per Kafka partition read in this process, the next offset its source hands to the flow (every
    message before it has been released to the flow or cut off by a stop offset), and where it was
    when the partition was opened (a restore: its snapshot)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: dict[TopicPartitionKey, int] = {}
        self._opened: dict[TopicPartitionKey, int] = {}

    def opened(self, tp: TopicPartitionKey, offset: int) -> None:
        with self._lock:
            self._opened.setdefault(tp, offset)
            self._next[tp] = offset

    def set(self, tp: TopicPartitionKey, offset: int) -> None:
        with self._lock:
            self._next[tp] = offset

    def snapshot(self) -> dict[TopicPartitionKey, int]:
        with self._lock:
            return dict(self._next)

    def opened_at(self) -> dict[TopicPartitionKey, int]:
        with self._lock:
            return dict(self._opened)

    def reset(self) -> None:
        """Forget every partition (a run after another in one process)."""
        with self._lock:
            self._next.clear()
            self._opened.clear()


POSITIONS = ReadPositions()


# a partition's snapshot: the offset to resume at, and where the partition stood (`_AlignedPartition`)
# (and the time of its last message while that is too far ahead to count, `_AlignedPartition._release`)
_PartState = tuple[int | None, int | None, int | None]


class _AlignedPartition(StatefulSourcePartition[Any, _PartState]):
    """One Kafka partition, released in step with the process's other partitions (see
    `operators.event_time`): messages more than `align_ms` ahead of the slowest partition that still
    has input are held back — not consumed: the snapshot resumes at the first one held. With
    `stop_at`, the partition ends before that offset (nothing at or after it reaches the flow).

    Each message is handed over tagged with where the partition stood before it
    (`event_time.tag_after`): the newest time it released, or — once an epoch has ended since — the
    time it was moved to while it had nothing to read (`event_time.InputProgress.caught_up_at`). Both
    are part of the snapshot, so a restore tags the same, and a move counts only from the end of the
    epoch it was made in: bytewax reads the next epoch only once that snapshot is written, so a run
    resumed after a crash has it too. bytewax snapshots the partition exactly when its epoch ends and
    reads it in the next epoch only once the whole flow has processed the last one, so the partition
    also tells `event_time.INPUT` how far the flow has processed what it stood at."""

    def __init__(
        self,
        inner: StatefulSourcePartition[Any, int | None],
        name: str,
        align_ms: int,
        *,
        tp: TopicPartitionKey | None = None,
        stop_at: int | None = None,
        released_ms: int | None = None,
        pending_ms: int | None = None,
    ) -> None:
        self._inner = inner
        self._name = name
        self._align_ms = align_ms
        self._tp = tp
        self._stop_at = stop_at
        self._held: deque[Any] = deque()
        self._released_ms = released_ms  # the newest time released (a restore: where the snapshot stood)
        self._stands_ms = released_ms  # where it stands: that, or a move an epoch end has sealed
        self._moved_ms: int | None = None  # moved to this epoch while caught up: counts from its end
        self._pending_ms = pending_ms  # the last message's time, too far ahead to count until the next
        self._waiting = False
        self._opened_at = time.monotonic()
        self._epoch = 0  # epochs ended since the run started (every partition starts at the same one)
        self._sealed_ms = released_ms  # where it stood when the last epoch ended
        self._ended = False
        self._silent = False  # its broker's silence was logged
        event_time.INPUT.opened(name)
        position = inner.snapshot()
        if tp is not None and position is not None and position >= 0:
            POSITIONS.opened(tp, position)

    def next_batch(self) -> list[Any]:
        now = time.time()
        fetched = 0
        if not self._held:
            try:
                if self._stopped():
                    raise StopIteration
                got = list(self._inner.next_batch())
            except StopIteration:
                self._ended = True
                event_time.INPUT.ended(self._name, epoch=self._epoch)
                if self._tp is not None and self._stop_at is not None:  # read to its stop (or its end)
                    POSITIONS.set(self._tp, self._stop_at)
                raise
            if self._stop_at is not None:
                got = [m for m in got if not _at_or_after(m, self._stop_at)]
            fetched = len(got)
            self._held.extend(got)
        out: list[Any] = []
        if self._held:
            limit = event_time.INPUT.limit_ms(self._name, self._align_ms) if self._align_ms >= 0 else None
            held = self._held
            while held:
                ts = event_time.kafka_time_ms(held[0])
                counted = self._counted_ms(ts)
                if counted is not None and limit is not None and counted > limit:
                    break
                m = held.popleft()
                if type(m) is KafkaSourceMessage:  # (a broker error becomes a dead letter, never an event)
                    event_time.tag_after(m, self._stands_ms)
                out.append(m)
                self._release(ts)
        head = self._counted_ms(event_time.kafka_time_ms(self._held[0])) if self._held else None
        frontier = head if head is not None else self._released_ms
        caught_up = fetched == 0 and not self._held and not out and self._at_end()
        event_time.INPUT.polled(self._name, frontier_ms=frontier, caught_up=caught_up, now=now)
        if caught_up:  # nothing to read: it stands on with the others or the live clock, from the epoch's end
            to = event_time.INPUT.caught_up_at(self._name, now)
            if to is not None and (self._moved_ms is None or to > self._moved_ms):
                self._moved_ms = to
        # bytewax reads in this epoch only once the flow has processed every earlier one, so what this
        # partition stood at when the last epoch ended is processed everywhere
        event_time.INPUT.processed(self._name, epoch=self._epoch, processed_ms=self._sealed_ms)
        self._waiting = bool(self._held) and not out
        if self._tp is not None:
            position = self._position()
            if position is not None and position >= 0:
                POSITIONS.set(self._tp, position)
        return out

    def _counted_ms(self, ts: int | None) -> int | None:
        """How far a message at `ts` may move the partition before the next one confirms it:
        `event_time.JUMP_S` past where it stands at most (the first message it reads: all the way)."""
        if ts is None or self._stands_ms is None:
            return ts
        return min(ts, self._stands_ms + event_time.JUMP_MS)

    def _release(self, ts: int | None) -> None:
        """A message at `ts` was handed over: the partition stands at its time, or — when that is more
        than `event_time.JUMP_S` past where it stood — at what the next message confirms of it (the
        earlier of the two). One message stamped a day ahead (a producer's clock, a bug, hostile
        input) would otherwise make everything after it in the partition late for that day."""
        if ts is None:
            return
        if self._pending_ms is not None:
            self._advance(min(self._pending_ms, ts))
            self._pending_ms = None
        if self._stands_ms is not None and ts > self._stands_ms + event_time.JUMP_MS:
            self._pending_ms = ts
        else:
            self._advance(ts)

    def _advance(self, ts: int) -> None:
        if self._released_ms is None or ts > self._released_ms:
            self._released_ms = ts
        if self._stands_ms is None or ts > self._stands_ms:
            self._stands_ms = ts

    def _stopped(self) -> bool:
        position = self._inner.snapshot()
        return self._stop_at is not None and position is not None and position >= self._stop_at

    def _at_end(self) -> bool:
        """Whether the partition has nothing left to read now: its position is at the broker's high
        watermark as the consumer last heard it (an empty poll alone can be a fetch in flight). A
        partition that has handed over nothing for `_SILENT_S` (a broker that does not answer for it)
        stops holding the others back."""
        if self._released_ms is None and time.monotonic() - self._opened_at > _SILENT_S:
            return True
        if self._stopped():
            return True
        inner = self._inner
        consumer = getattr(inner, "_consumer", None)  # bytewax's partition keeps its consumer here
        if consumer is None:
            return True
        if not self._answers():  # its high watermark may be stale: an outage is not event time
            return False
        tp = TopicPartition(getattr(inner, "_topic"), getattr(inner, "_part_idx"))  # noqa: B009 (private)
        low, high = consumer.get_watermark_offsets(tp, cached=True)
        if high < 0:
            return False  # not heard yet
        position = inner.snapshot()
        if position == OFFSET_END:  # started at the end: nothing to read until something new arrives
            return True
        if position is None or position < 0:  # from the beginning, not started: only an empty one is
            return low == high
        return position >= high

    def _answers(self) -> bool:
        """Whether the partition's leader broker answers (`flows.kafka_partition`); logs a silence
        (not the first second of a run, before librdkafka's first statistics) and its end."""
        answers = getattr(self._inner, "answers", None)
        now = answers is None or answers()
        if now and self._silent:
            self._silent = False
            log.info("Kafka partition %s: its broker answers again", self._name)
        elif not now and not self._silent and time.monotonic() - self._opened_at > ANSWER_S:
            self._silent = True
            log.warning(
                "Kafka partition %s: its broker has not answered for %.0f s; the partition holds event time"
                " where it stands until it does",
                self._name,
                ANSWER_S,
            )
        return now

    def next_awake(self) -> datetime | None:
        if self._waiting:  # held back: look again soon instead of spinning
            return datetime.now(tz=UTC) + _ALIGN_POLL
        return self._inner.next_awake()

    def snapshot(self) -> _PartState:
        """bytewax calls this exactly when the partition's epoch ends (and only then)."""
        self._epoch += 1
        event_time.INPUT.epoch_ended(self._epoch)
        if self._moved_ms is not None and (self._stands_ms is None or self._moved_ms > self._stands_ms):
            self._stands_ms = self._moved_ms  # sealed: the next messages are tagged with it
        self._moved_ms = None
        self._sealed_ms = self._stands_ms
        return (self._position(), self._stands_ms, self._pending_ms)

    def _position(self) -> int | None:
        """The offset a restore resumes at."""
        for m in self._held:  # not handed to the flow yet: read again after a restore
            offset = getattr(getattr(m, "msg", m), "offset", None)  # a KafkaError wraps its message
            if offset is not None and offset >= 0:
                return offset
        position = self._inner.snapshot()
        if self._stop_at is not None and position is not None and position > self._stop_at:
            return self._stop_at  # fetched past the stop: those were cut, never handed over
        return position

    def close(self) -> None:
        if not self._ended:  # one read to its end stays known as such until the flow processed it
            event_time.INPUT.closed(self._name)
        self._inner.close()


_ALIGN_POLL = timedelta(milliseconds=5)
_SILENT_S = 10.0


def _at_or_after(m: Any, offset: int) -> bool:
    found = getattr(getattr(m, "msg", m), "offset", None)  # a KafkaError wraps its message
    return found is not None and found >= offset


class _AlignedKafkaSource(KafkaSource):
    """A `KafkaSource` whose partitions are released in step (`align_ms` < 0: not aligned) and,
    with `start_ms`, start at per-partition offsets for that time; with `ranges`, each partition
    reads [start, stop) of its (topic, partition) entry (a partition without one reads nothing)."""

    def __init__(
        self,
        *args: Any,
        align_ms: int,
        start_ms: int | None = None,
        ranges: Mapping[TopicPartitionKey, tuple[int, int]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._align_ms = align_ms
        self._start_ms = start_ms
        self._ranges = ranges
        self._offsets: dict[str, dict[int, int]] = {}

    def build_part(self, step_id: str, for_part: str, resume_state: _PartState | int | None):
        idx, topic = for_part.split("-", 1)
        tp = (topic, int(idx))
        # a snapshot of an earlier version holds the offset alone, or no pending time
        state = resume_state if isinstance(resume_state, tuple) else (resume_state,)
        offset, released, pending = (*state, None, None)[:3]
        if self._ranges is not None:
            start, stop = self._ranges.get(tp, (0, 0))
            inner = build_partition(self, step_id, topic, int(idx), start if offset is None else offset)
            name = for_part  # "IDX-TOPIC": the name the progress board uses too
            return _AlignedPartition(
                inner, name, self._align_ms, tp=tp, stop_at=stop, released_ms=released, pending_ms=pending
            )
        if offset is None and self._start_ms is not None:
            if topic not in self._offsets:
                self._offsets[topic] = offsets_for_time(
                    ",".join(self._brokers), topic, self._start_ms, config=self._add_config
                )
            offset = self._offsets[topic][int(idx)]
        inner = build_partition(self, step_id, topic, int(idx), offset)
        return _AlignedPartition(
            inner, for_part, self._align_ms, tp=tp, released_ms=released, pending_ms=pending
        )


def _common(cfg: KafkaConfig, brokers: list[str]) -> dict[str, Any]:
    return {
        "align_ms": int(cfg.align_partitions_s * 1000) if cfg.align_partitions_s >= 0 else -1,
        "brokers": brokers,
        "topics": list(cfg.topics),
        "tail": cfg.tail,
        "batch_size": cfg.batch_size,
        "add_config": dict(cfg.extra),
        "raise_on_errors": False,  # broker errors become dead letters, not a crash loop
    }


def kafka_source(cfg: KafkaConfig, brokers: list[str], *, align_s: int = 86_400) -> KafkaSource:
    common = _common(cfg, brokers)
    if isinstance(cfg.start, datetime):
        start_ms = replay_start_ms(cfg.start, align_s)
        if start_ms != int(cfg.start.timestamp() * 1000):
            shown = datetime.fromtimestamp(start_ms / 1000, tz=UTC).isoformat()
            log.info("replaying from %s: the start of the window that holds %s", shown, cfg.start.isoformat())
        return _AlignedKafkaSource(**common, start_ms=start_ms)
    offset = OFFSET_BEGINNING if cfg.start == "beginning" else OFFSET_END
    return _AlignedKafkaSource(**common, starting_offset=offset)


def bounded_kafka_source(
    cfg: KafkaConfig, brokers: list[str], ranges: Mapping[TopicPartitionKey, tuple[int, int]]
) -> KafkaSource:
    """The Kafka input of a backfill: each (topic, partition) reads [start, stop) and then ends
    (a restart resumes from the snapshot and still ends at stop). `kafka.start` is not used."""
    common = _common(cfg, brokers)
    common["tail"] = False  # end at the partition's end even when only control records follow
    return _AlignedKafkaSource(**common, ranges=dict(ranges))


def replay_start_ms(start: datetime, align_s: int) -> int:
    """`start` moved back to the beginning of its `align_s` window (UTC)."""
    ms = int(start.timestamp() * 1000)
    return ms - ms % (align_s * 1000)


def check_topics(cfg: KafkaConfig, *, timeout_s: float = 5.0) -> None:
    """One metadata request: the brokers answer and every input topic exists with partitions.
    Raises RuntimeError saying what is missing."""
    from confluent_kafka.admin import AdminClient

    brokers = cfg.broker_list
    client = AdminClient({"bootstrap.servers": ",".join(brokers), **cfg.extra})
    meta = client.list_topics(timeout=timeout_s)
    missing = [t for t in cfg.topics if t not in meta.topics or not meta.topics[t].partitions]
    if missing:
        msg = f"Kafka topic(s) {', '.join(missing)} not found on {','.join(brokers)}"
        raise RuntimeError(msg)
