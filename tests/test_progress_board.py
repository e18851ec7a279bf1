"""The progress board on the Kafka mock cluster: two processes' views of the cluster's partitions
(each its own `InputProgress`), as `operators.event_time` uses them to align partitions and to tell
live input from a backlog across processes."""

from __future__ import annotations

import json

from confluent_kafka import Consumer, TopicPartition

from flows.progress_board import ProgressBoard, board_group
from operators.event_time import InputProgress
from operators.owed import OwedWork

TOPIC = "t"


def boards(
    bootstrap: str, group: str, clock
) -> tuple[ProgressBoard, InputProgress, ProgressBoard, InputProgress]:
    one, two = InputProgress(), InputProgress()
    b1 = ProgressBoard(bootstrap, [TOPIC], group=group, progress=one, clock=clock)
    b2 = ProgressBoard(bootstrap, [TOPIC], group=group, progress=two, clock=clock)
    return b1, one, b2, two


def test_a_process_is_held_by_the_other_processes_partitions_and_freed_when_they_are_done(kafka):
    kafka.create_topic(TOPIC, 4)
    now = [1_000.0]
    b1, one, b2, two = boards(kafka.bootstrap, "g1", lambda: now[0])
    try:
        for b in (b1, b2):
            b.open()  # rounds by hand below, no background thread
        one.opened("0-t")
        one.opened("1-t")
        two.opened("2-t")
        two.opened("3-t")
        one.polled("0-t", frontier_ms=100, caught_up=False, now=now[0])
        one.polled("1-t", frontier_ms=200, caught_up=False, now=now[0])
        b1.step()
        # process 2 has not said anything yet: its partitions hold process 1 at their start
        assert one.limit_ms("0-t", 5) == -1
        two.polled("2-t", frontier_ms=150, caught_up=False, now=now[0])
        two.polled("3-t", frontier_ms=None, caught_up=True, now=now[0])
        now[0] += 0.2
        b2.step()
        b1.step()
        # aligned on the slowest partition of the cluster that still has input
        assert one.limit_ms("0-t", 5) == 155  # 2-t at 150 (3-t is caught up)
        assert one.limit_ms("1-t", 5) == 105  # 0-t at 100
        assert two.limit_ms("2-t", 5) == 105
        # process 1 caught up, process 2 still reading a backlog: the cluster is not live
        one.polled("0-t", frontier_ms=None, caught_up=True, now=now[0])
        one.polled("1-t", frontier_ms=None, caught_up=True, now=now[0])
        assert one.replaying()
        assert one.elapsed_s(now[0] - 10, now[0]) == 0.0
        # process 2 finishes its partitions: they are done and hold nobody back
        two.closed("2-t")
        two.closed("3-t")
        now[0] += 0.2
        b2.step()
        b1.step()
        assert one.limit_ms("0-t", 5) is None
        assert not one.replaying()
    finally:
        b1.close()
        b2.close()


def test_entries_of_an_earlier_run_or_a_silent_process_are_not_trusted(kafka):
    kafka.create_topic(TOPIC, 2)
    group = board_group([TOPIC], ["a:1", "b:2"], "db")
    assert group != board_group([TOPIC], ["a:1", "b:3"], "db")  # another cluster, another board
    # an earlier run said partition 1 was done
    old = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": group, "enable.auto.commit": False})
    old.commit(
        offsets=[TopicPartition(TOPIC, 1, 0, metadata=json.dumps({"t": 500_000, "d": 1}))], asynchronous=False
    )
    old.close()
    now = [1_000.0]
    mine = InputProgress()
    board = ProgressBoard(
        kafka.bootstrap, [TOPIC], group=group, progress=mine, clock=lambda: now[0], stale_s=10
    )
    try:
        board.open()  # rounds by hand below, no background thread
        mine.opened("0-t")
        mine.polled("0-t", frontier_ms=100, caught_up=False, now=now[0])
        board.step()
        assert mine.limit_ms("0-t", 5) == -1  # 1-t unheard: the old "done" does not count
        peer = Consumer(
            {"bootstrap.servers": kafka.bootstrap, "group.id": group, "enable.auto.commit": False}
        )
        entry = {"t": 1_000_100, "f": 90, "c": False}
        peer.commit(offsets=[TopicPartition(TOPIC, 1, 0, metadata=json.dumps(entry))], asynchronous=False)
        board.step()
        assert mine.limit_ms("0-t", 5) == 95
        now[0] += 11  # the peer goes silent for longer than stale_s: held again
        board.step()
        assert mine.limit_ms("0-t", 5) == -1
        peer.close()
    finally:
        board.close()


def test_what_the_flow_processed_and_where_partitions_ended_cross_the_board(kafka):
    """The sampler's gate across processes: a partition another process reads holds a window until
    that process says the flow processed what it released past the window; one it read to its end
    holds until a partition of the cluster reads in an epoch after the one it ended in."""
    kafka.create_topic(TOPIC, 2)
    now = [1_000.0]
    b1, one, b2, two = boards(kafka.bootstrap, "g2", lambda: now[0])
    try:
        for b in (b1, b2):
            b.open()
        one.opened("0-t")
        two.opened("1-t")
        one.processed("0-t", epoch=1, processed_ms=500)
        two.processed("1-t", epoch=1, processed_ms=300)
        b2.step()
        b1.step()
        assert one.processed_ms() == 300  # held by process 2's partition
        two.ended("1-t", epoch=2)
        now[0] += 0.2
        b2.step()
        b1.step()
        assert one.processed_ms() == 300  # ended in epoch 2, and epoch 2 may still be on its way
        one.processed("0-t", epoch=3, processed_ms=800)
        assert one.processed_ms() == 800  # process 1 reads in epoch 3: epoch 2 went through the flow
        now[0] += 0.2
        b1.step()
        b2.step()
        assert two.processed_ms() == 800  # and process 2 hears it
    finally:
        b1.close()
        b2.close()


def test_rounds_come_faster_while_a_backlog_is_read(kafka):
    """A replay across processes advances `align_partitions_s` of event time per round: the board
    goes round ten times as often while the input is a backlog, and back to its live pace after."""
    kafka.create_topic(TOPIC, 1)
    now = 1_000.0
    mine = InputProgress()
    board = ProgressBoard(
        kafka.bootstrap, [TOPIC], group="g", progress=mine, interval_s=0.2, replay_interval_s=0.02
    )
    try:
        mine.opened("0-t")
        mine.polled(
            "0-t", frontier_ms=int(now * 1000) - 3_600_000, caught_up=False, now=now
        )  # an hour behind
        assert mine.replaying()
        assert board.wait_s() == 0.02
        mine.polled("0-t", frontier_ms=int(now * 1000), caught_up=True, now=now + 1)  # caught up: live
        assert not mine.replaying()
        assert board.wait_s() == 0.2
    finally:
        board.close()


def test_what_a_process_owes_the_judge_spend_windows_crosses_the_board(kafka):
    """Process 2's judge owes an event: process 1's judge-spend windows wait for it, and process
    1's own seals count only up to the epoch process 2 published from. What process 2's OTLP join
    holds crosses the same way, apart from it."""
    kafka.create_topic(TOPIC, 2)
    now = [1_000.0]
    one, two = InputProgress(), InputProgress()
    owed_one, owed_two = OwedWork(one), OwedWork(two)
    joined_one, joined_two = OwedWork(one), OwedWork(two)
    b1, b2 = (
        ProgressBoard(
            kafka.bootstrap, [TOPIC], group="g4", progress=p, owed=o, joined=j, clock=lambda: now[0]
        )
        for p, o, j in ((one, owed_one, joined_one), (two, owed_two, joined_two))
    )
    try:
        for b in (b1, b2):
            b.open()
        one.opened("0-t")
        two.opened("1-t")
        assert owed_one.owed_ms() == -1  # process 2 not heard of yet
        one.processed("0-t", epoch=5, processed_ms=500)
        two.processed("1-t", epoch=5, processed_ms=500)
        mine = owed_one.key()
        owed_one.seal(mine, 100)  # labelled 6
        owed_two.seal(owed_two.key(), 200)
        b2.step()
        b1.step()
        assert owed_one.owed_ms() == 100
        one.processed("0-t", epoch=7, processed_ms=900)
        owed_one.seal(mine, None)  # labelled 8
        one.processed("0-t", epoch=9, processed_ms=900)
        # process 2 published from epoch 5: process 1's own seal of 8 does not count yet
        assert owed_one.owed_ms() == 100
        two.processed("1-t", epoch=9, processed_ms=900)
        now[0] += 0.2
        b2.step()
        b1.step()
        assert owed_one.owed_ms() == 200  # what process 2's judge owes
        assert b1._owed.local_ms() == (9, None)
        # what process 2's OTLP join holds crosses apart: the stages after the join wait for it
        assert joined_one.owed_ms() is None
        joined_two.seal(joined_two.key(), 300)
        now[0] += 0.2
        b2.step()
        b1.step()
        assert (joined_one.owed_ms(), owed_one.owed_ms()) == (300, 200)
    finally:
        b1.close()
        b2.close()
