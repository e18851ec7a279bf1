"""Event time in one place (operators/event_time.py): wall time counts as event-time progress only while
the input is verifiably caught up, and the Kafka partitions a process reads are released in step."""

from __future__ import annotations

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.config import KafkaConfig
from flows.sources import kafka_source
from operators import event_time
from operators.event_time import INPUT, RECHECK_S, InputProgress, after_ms_of, wake_at
from simulators.kafka_mock import produce_all

MIN = 60_000


def test_a_window_is_idle_after_idle_s_live_and_at_once_in_a_backlog():
    INPUT.reset()
    try:
        assert event_time.idle(100.0, 130.0, 30.0) and not event_time.idle(100.0, 129.0, 30.0)
        check = event_time.idleness(130.0, 30.0)  # many windows at one instant: the same answers
        assert check(100.0) and not check(100.5)
        INPUT.opened("0-t")  # a partition read far behind the wall clock: a backlog
        INPUT.polled("0-t", frontier_ms=0, caught_up=False, now=1_800_000_000.0)
        assert INPUT.replaying()
        assert event_time.idle(129.0, 130.0, 30.0) and event_time.idleness(130.0, 30.0)(129.9)
        assert not check(100.5)  # read before: as the input was then
    finally:
        INPUT.reset()


def test_wall_time_counts_only_while_the_input_is_live():
    p = InputProgress()
    assert p.elapsed_s(100.0, 130.0) == 30.0  # no Kafka input here (tests, benches): wall time
    now = 1_800_000_000.0  # the wall clock (2027); the replayed traffic is from 2023
    old = 1_700_000_000_000
    p.opened("a")
    p.opened("b")
    p.polled("a", frontier_ms=old, caught_up=True, now=now + 10)
    p.polled("b", frontier_ms=old, caught_up=False, now=now + 10)  # b still has a backlog of old events
    assert p.replaying() and p.elapsed_s(now, now + 30) == 0.0
    p.polled("b", frontier_ms=old, caught_up=True, now=now + 20)  # caught up from +20 s
    p.polled("a", frontier_ms=old, caught_up=True, now=now + 25)  # ...seen by a poll at +25 s
    assert not p.replaying()
    assert p.elapsed_s(now, now + 100) == 5.0  # not 100: what the polls saw (a blocked worker polls nothing)
    p.polled("a", frontier_ms=old + 60_000, caught_up=False, now=now + 26)  # more old events: a replay
    assert p.elapsed_s(now, now + 100) == 0.0
    # live traffic: fresh timestamps, never caught up for long, and wall time counts
    p.polled("a", frontier_ms=int((now + 200) * 1000), caught_up=False, now=now + 201)
    p.polled("b", frontier_ms=int((now + 205) * 1000), caught_up=False, now=now + 210)
    assert not p.replaying() and p.elapsed_s(now + 190, now + 400) == 9.0


def test_a_partition_may_run_at_most_align_ahead_of_the_slowest_one_with_input():
    p = InputProgress()
    for name in ("a", "b", "c"):
        p.opened(name)
    assert p.limit_ms("a", 5_000) == -1  # the others have not polled yet: wait for them
    p.polled("b", frontier_ms=10 * MIN, caught_up=False, now=1.0)
    p.polled("c", frontier_ms=3 * MIN, caught_up=False, now=1.0)
    assert p.limit_ms("a", 5_000) == 3 * MIN + 5_000
    p.polled("c", frontier_ms=None, caught_up=True, now=2.0)  # nothing left to read: holds nobody back
    assert p.limit_ms("a", 5_000) == 10 * MIN + 5_000
    p.closed("b")
    assert p.limit_ms("a", 5_000) is None


def test_a_stage_never_spins_on_a_deadline_event_time_has_not_reached():
    assert wake_at(105.0, 100.0) == 105.0
    assert wake_at(99.0, 100.0) == 100.0 + RECHECK_S


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 60 * MIN)), min_size=1, max_size=40))
def test_the_slowest_partition_can_always_release_its_next_message(heads):
    """No deadlock: whatever the partitions' frontiers, the one furthest behind is never held back."""
    p = InputProgress()
    latest: dict[str, int] = {}
    for name, ts in heads:
        if name not in latest:
            p.opened(name)
        latest[name] = ts
        p.polled(name, frontier_ms=ts, caught_up=False, now=0.0)
    slowest = min(latest, key=lambda n: latest[n])
    limit = p.limit_ms(slowest, 0)
    assert limit is None or limit >= latest[slowest]


def test_a_skewed_topic_is_read_in_step(kafka):
    """Four partitions hold the same five hours of traffic. Unaligned, bytewax hands the flow whole
    batches of one partition (here 100 minutes of event time ahead of the others); aligned, no
    message is more than the alignment (plus one message's step) ahead of the slowest partition."""
    kafka.create_topic("skewed", 4)
    t0 = 1_700_000_000_000
    hours = [(b"k", b"x", t0 + i * 6_000) for i in range(3000)]
    for p in range(4):
        produce_all(kafka.bootstrap, "skewed", hours, partition=p)
    skew = {}
    for align_s in (-1, 30):
        got: list = []
        flow = Dataflow("aligned")
        cfg = KafkaConfig(topics=("skewed",), tail=False, batch_size=1000, align_partitions_s=align_s)
        stream = op.input("in", flow, kafka_source(cfg, [kafka.bootstrap]))
        op.output("out", op.map("ts", stream, lambda m: (m.partition, m.timestamp[1])), TestingSink(got))
        run_main(flow)
        assert len(got) == 12_000  # every message, once
        newest: dict[int, int] = {}
        skew[align_s] = 0
        for partition, ts in got:
            newest[partition] = max(newest.get(partition, 0), ts)
            if len(newest) == 4:
                skew[align_s] = max(skew[align_s], max(newest.values()) - min(newest.values()))
    assert skew[-1] > 3_600_000  # an hour and more apart without alignment
    assert skew[30] <= 30_000 + 6_000


class _Consumer:
    def __init__(self, low: int, high: int) -> None:
        self.marks = (low, high)

    def get_watermark_offsets(self, tp, cached: bool):
        return self.marks


class _Idle:
    """bytewax's Kafka partition as the aligned source sees it: nothing new to read."""

    def __init__(self, position: int, low: int, high: int) -> None:
        self._consumer = _Consumer(low, high)
        self._topic, self._part_idx = "t", 0
        self._position = position

    def next_batch(self) -> list:
        return []

    def snapshot(self) -> int:
        return self._position

    def next_awake(self):
        return None

    def close(self) -> None:
        pass


def test_a_partition_with_nothing_new_never_holds_the_others(monkeypatch):
    """Started at the end of a partition that already holds messages (`kafka.start = "end"`), or at the
    beginning of an empty one, a partition that gets nothing new must not stall the process."""
    from flows.sources import _AlignedPartition
    from operators import event_time

    progress = InputProgress()
    monkeypatch.setattr(event_time, "INPUT", progress)
    at_end = _AlignedPartition(_Idle(OFFSET_END, 0, 500), "at-end", 5_000)
    empty = _AlignedPartition(_Idle(OFFSET_BEGINNING, 0, 0), "empty", 5_000)
    behind = _AlignedPartition(_Idle(OFFSET_BEGINNING, 0, 500), "behind", 5_000)  # a fetch in flight
    progress.opened("busy")
    for p in (at_end, empty, behind):
        assert p.next_batch() == []
    assert progress.limit_ms("busy", 5_000) == -1  # only "behind" holds it: it has data to come
    behind.close()
    assert progress.limit_ms("busy", 5_000) is None


class _Msg:
    def __init__(self, offset: int, ts_ms: int) -> None:
        self.offset, self.timestamp = offset, (1, ts_ms)


class _Err:
    """bytewax's KafkaError: the broker's error and the message it came with."""

    def __init__(self, msg: _Msg) -> None:
        self.msg = msg


class _Backlog(_Idle):
    def __init__(self, batch: list) -> None:
        super().__init__(0, 0, 1000)
        self._batch = batch

    def next_batch(self) -> list:
        out, self._batch = self._batch, []
        return out


def test_messages_held_back_are_read_again_after_a_restore(monkeypatch):
    from flows.sources import _AlignedPartition
    from operators import event_time

    progress = InputProgress()
    monkeypatch.setattr(event_time, "INPUT", progress)
    progress.opened("slow")
    progress.polled("slow", frontier_ms=1_000, caught_up=False, now=1.0)
    ahead = _AlignedPartition(_Backlog([_Err(_Msg(7, 60_000)), _Msg(8, 61_000)]), "ahead", 5_000)
    assert ahead.next_batch() == []  # a minute ahead of "slow": held, an error included
    assert ahead.snapshot() == (7, None, None)  # the snapshot resumes at the first held message


def test_released_counts_as_processed_once_the_partition_reads_in_a_later_epoch():
    """What the windows wait for (`processed_ms`): where a partition stood counts once it reads in a
    later epoch (bytewax reads only after the flow processed every earlier one); a caught-up one holds
    at where it stands (its source moves it on); one read to its end holds until any partition of
    the cluster reads in a later epoch than the one it ended in."""
    p = InputProgress()
    assert p.processed_ms() is None  # no Kafka input: nothing to wait for
    for name in ("a", "b"):
        p.opened(name)
    p.processed("a", epoch=0, processed_ms=None)
    assert p.processed_ms() == -1  # "b" not heard of, "a" stands nowhere yet
    p.processed("a", epoch=1, processed_ms=5 * MIN)
    p.processed("b", epoch=1, processed_ms=3 * MIN)
    assert p.processed_ms() == 3 * MIN
    p.polled("b", frontier_ms=None, caught_up=True, now=1.0)
    assert p.processed_ms() == 3 * MIN  # caught up: a message it gets now is tagged at 3 min
    p.processed("b", epoch=2, processed_ms=7 * MIN)  # moved on, and the epoch of the move went through
    assert p.processed_ms() == 5 * MIN  # only "a" holds
    p.ended("a", epoch=2)
    assert p.processed_ms() == 5 * MIN  # read to its end in epoch 2: its last events may be on their way
    assert p.limit_ms("b", 5_000) is None  # (but it holds nobody's reading back)
    p.processed("b", epoch=3, processed_ms=7 * MIN)
    assert p.processed_ms() == 7 * MIN  # epoch 3 is read: epoch 2 went through the whole flow


def test_a_caught_up_partition_moves_on_from_the_end_of_the_epoch_and_tags_its_next_message_so(monkeypatch):
    """A quiet partition must not hold every window at its last message: while it has nothing to read
    it moves on — to the slowest partition still read, at most `CAUGHT_UP_LAG_S` behind the wall
    clock — but only from the end of the epoch the move was made in, as part of its snapshot, so a
    run resumed after a crash tags its next message the same."""
    import time

    from flows.sources import _AlignedPartition

    progress = InputProgress()
    monkeypatch.setattr(event_time, "INPUT", progress)
    now_ms = int(time.time() * 1000)
    old, busy = now_ms - 60 * MIN, now_ms - 20 * MIN
    batches = [[_message(0, old)], [], [_message(1, old + 1)], [], [_message(2, old + 2)]]
    part = _AlignedPartition(_Messages(batches), "quiet", -1)
    part._at_end = lambda: True  # type: ignore[method-assign]  # the broker has nothing more for it
    progress.opened("busy")
    progress.polled("busy", frontier_ms=busy, caught_up=False, now=now_ms / 1000)
    assert [after_ms_of(m) for m in part.next_batch()] == [None]
    assert part.next_batch() == []  # caught up: moved on to the slowest partition still read ...
    assert [after_ms_of(m) for m in part.next_batch()] == [old]  # ... from the end of this epoch only
    sealed = part.snapshot()
    assert sealed[1] == busy
    progress.processed("busy", epoch=1, processed_ms=busy)
    assert part.next_batch() == []
    assert progress.processed_ms() == busy  # the move went through the flow with its epoch
    assert [after_ms_of(m) for m in part.next_batch()] == [busy]  # late for any window it let go
    # a restore from that snapshot tags the message the same, whatever the wall clock says then
    again = _AlignedPartition(_Messages([[_message(2, old + 2)]]), "quiet", -1, released_ms=sealed[1])
    assert [after_ms_of(m) for m in again.next_batch()] == [busy]
    # with every partition caught up, it stands `CAUGHT_UP_LAG_S` behind the wall clock
    progress.polled("busy", frontier_ms=None, caught_up=True, now=now_ms / 1000)
    at = progress.caught_up_at("quiet", now_ms / 1000)
    assert at == now_ms - int(event_time.CAUGHT_UP_LAG_S * 1000)


def _message(offset: int, ts_ms: int):
    from bytewax.connectors.kafka import KafkaSourceMessage

    return KafkaSourceMessage(b"k", b"v", "t", [], None, offset, 0, (1, ts_ms))


class _Messages(_Idle):
    def __init__(self, batches: list[list]) -> None:
        super().__init__(0, 0, 1000)
        self._batches = batches

    def next_batch(self) -> list:
        if not self._batches:
            raise StopIteration
        return self._batches.pop(0)


def test_each_message_carries_its_partition_position_and_the_epochs_say_what_is_processed(monkeypatch):
    from flows.sources import _AlignedPartition
    from operators import event_time

    progress = InputProgress()
    monkeypatch.setattr(event_time, "INPUT", progress)
    batches = [[_message(0, 1_000), _message(1, 5_000), _message(2, 4_000)], [_message(3, 8_000)], []]
    part = _AlignedPartition(_Messages(batches), "p", -1)
    first = part.next_batch()
    # the newest time the partition released before each: an event's lateness is its partition's order
    assert [after_ms_of(m) for m in first] == [None, 1_000, 5_000]
    assert progress.processed_ms() == -1  # released, not processed: still on their way
    assert part.snapshot() == (0, 5_000, None)  # bytewax ends the epoch: (where to resume, newest released)
    assert [after_ms_of(m) for m in part.next_batch()] == [5_000]  # read in the next epoch...
    assert progress.processed_ms() == 5_000  # ...so the first epoch's releases went through the flow
    part.snapshot()
    assert part.next_batch() == []
    assert progress.processed_ms() == 8_000
    with pytest.raises(StopIteration):
        part.next_batch()  # read to its end in epoch 2
    part.close()  # bytewax closes it: it stays known until the flow processed that epoch
    assert progress.processed_ms() == 8_000
    progress.processed("other", epoch=3, processed_ms=20_000)  # a caught-up partition that moved on
    progress.polled("other", frontier_ms=None, caught_up=True, now=1.0)
    assert progress.processed_ms() == 20_000
    # a restore tags the messages after the snapshot as the first run did
    again = _AlignedPartition(_Messages([[_message(3, 2_000)]]), "p", -1, released_ms=5_000)
    assert [after_ms_of(m) for m in again.next_batch()] == [5_000]


def test_one_message_stamped_far_ahead_moves_its_partition_only_as_far_as_the_next_confirms(monkeypatch):
    """A message stamped a day (or decades) ahead of its partition — a producer's clock, a bug, hostile
    input — must not make everything after it late: it moves the partition, and counts against the
    alignment, only `JUMP_S` ahead until the next message confirms it (the earlier of the two). A real
    gap in the traffic is confirmed by the message after it, one message late; a restore in between
    tags the same."""
    from flows.sources import _AlignedPartition

    progress = InputProgress()
    monkeypatch.setattr(event_time, "INPUT", progress)
    day, year_2100 = 86_400_000, 4_102_444_800_000
    t = [_message(0, 1_000), _message(1, 2_000), _message(2, 2_000 + day), _message(3, 3_000)]
    t += [_message(4, year_2100), _message(5, 4_000), _message(6, 3_600_000), _message(7, 3_601_000)]
    t += [_message(8, 3_602_000)]
    part = _AlignedPartition(_Messages([t]), "p", -1)
    tags = [after_ms_of(m) for m in part.next_batch()]
    # the day-ahead and the 2100 messages never count: 3,000 and 4,000 after them do
    assert tags == [None, 1_000, 2_000, 2_000, 3_000, 3_000, 4_000, 4_000, 3_601_000]
    # held against the alignment the same way: the far message is let through at JUMP_S past the others
    progress.opened("other")
    progress.polled("other", frontier_ms=10_000, caught_up=False, now=1.0)
    aligned = _AlignedPartition(_Messages([t[:4]]), "q", 5_000)
    assert [m.offset for m in aligned.next_batch()] == [0, 1, 2, 3]
    # a snapshot between the far message and the next one keeps it pending
    first = _AlignedPartition(_Messages([t[:3]]), "r", -1)
    first.next_batch()
    state = first.snapshot()
    assert state == (0, 2_000, 2_000 + day)
    again = _AlignedPartition(_Messages([t[3:5]]), "r", -1, released_ms=state[1], pending_ms=state[2])
    assert [after_ms_of(m) for m in again.next_batch()] == [2_000, 3_000]


def test_bytewax_reads_an_epoch_only_after_the_flow_processed_the_ones_before():
    """The contract `processed_ms` rests on, checked on bytewax itself (two workers, an exchange, a slow
    stateful step): when a partition reads, everything it released before its last snapshot — bytewax
    snapshots a partition exactly when its epoch ends — has been processed downstream."""
    import threading
    import time
    from datetime import timedelta

    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
    from bytewax.operators import StatefulBatchLogic
    from bytewax.testing import cluster_main

    lock = threading.Lock()
    processed: set[tuple[str, int]] = set()
    unprocessed_at_read: list[int] = []
    in_flight_same_epoch = [0]

    class Part(StatefulSourcePartition):
        def __init__(self, name: str) -> None:
            self.name, self.next, self.sealed = name, 0, 0

        def next_batch(self) -> list:
            with lock:
                unprocessed_at_read.append(sum((self.name, i) not in processed for i in range(self.sealed)))
                in_flight_same_epoch[0] += sum(
                    (self.name, i) not in processed for i in range(self.sealed, self.next)
                )
            if self.next >= 600:
                raise StopIteration
            out = [(self.name, i) for i in range(self.next, self.next + 20)]
            self.next += 20
            return out

        def snapshot(self) -> int:
            self.sealed = self.next
            return self.next

    class Source(FixedPartitionedSource):
        def list_parts(self) -> list[str]:
            return ["a", "b", "c"]

        def build_part(self, step_id: str, for_part: str, resume_state: object) -> Part:
            return Part(for_part)

    class Slow(StatefulBatchLogic):
        def on_batch(self, values: list) -> tuple[list, bool]:
            time.sleep(0.0005 * len(values))
            with lock:
                processed.update(values)
            return [], StatefulBatchLogic.RETAIN

        def snapshot(self) -> None:
            return None

    flow = Dataflow("epochs")
    keyed = op.key_on("key", op.input("in", flow, Source()), lambda x: str(x[1] % 7))
    op.output("out", op.stateful_batch("slow", keyed, lambda _: Slow()), TestingSink([]))
    cluster_main(flow, [], 0, worker_count_per_proc=2, epoch_interval=timedelta(milliseconds=20))
    assert len(processed) == 1800
    assert unprocessed_at_read and max(unprocessed_at_read) == 0
    assert in_flight_same_epoch[0] > 0  # (the current epoch's releases were still on their way)


@pytest.mark.slow
def test_a_partition_whose_broker_is_down_does_not_move_on_and_what_was_produced_meanwhile_is_not_late(
    kafka, monkeypatch
):
    """While a partition's broker does not answer, the consumer's high watermark is stale and "caught
    up" is a guess: the partition must not move on with the wall clock (an outage is not event time),
    so a message produced during a 20-s outage and delivered after it is tagged where the partition
    stood when the broker went down, not 15 s later (late for every window that closed meanwhile)."""
    import time

    from confluent_kafka import Producer

    from flows.kafka_partition import ANSWER_S

    progress = InputProgress()
    monkeypatch.setattr(event_time, "INPUT", progress)
    kafka.create_topic("live", 1)
    config = {"bootstrap.servers": kafka.bootstrap, "log_level": 0, "reconnect.backoff.max.ms": 500}
    producer = Producer(config)

    def now_ms() -> int:
        return int(time.time() * 1000)

    def read_until(done, seconds: float) -> list:
        got: list = []
        deadline = time.monotonic() + seconds
        epoch_at = time.monotonic() + 1
        while time.monotonic() < deadline and not done(got):
            got += part.next_batch()
            if time.monotonic() > epoch_at:  # an epoch ends every second: moves count from there
                part.snapshot()
                epoch_at += 1
            time.sleep(0.1)
        return got

    producer.produce("live", b"before", timestamp=now_ms())
    producer.flush(10)
    cfg = KafkaConfig(topics=("live",), start="beginning", extra={"log_level": "0"})
    part = kafka_source(cfg, [kafka.bootstrap]).build_part("in", "0-live", None)
    first = read_until(lambda got: got and progress._parts["0-live"].caught_up, 20)
    assert [m.value for m in first] == [b"before"]
    read_until(lambda _: False, 3)  # caught up: it moves on with the live clock
    kafka.broker_down(1)
    down_at = now_ms()
    producer.produce("live", b"during", timestamp=down_at)  # the producer holds it until the broker is back
    assert read_until(lambda _: False, 20) == []
    assert not progress._parts["0-live"].caught_up
    kafka.broker_up(1)
    producer.flush(30)
    (during,) = read_until(lambda got: got, 30)
    assert during.value == b"during"
    # it stood at most the time the outage took to notice past the broker's going down
    assert after_ms_of(during) <= down_at + (ANSWER_S + 2) * 1000, after_ms_of(during) - down_at
    part.close()
