"""bytewax's Kafka partition, made to know whether its broker answers and to survive a lost position.

A partition with nothing to read moves on with the live clock (`operators.event_time`), and "nothing
to read" is judged against the high watermark the consumer last heard. While the partition's broker
is unreachable (down, restarting, a network partition) that watermark is stale: the partition looks
caught up, the outage would count as event time (windows close, the input is "live") and the
messages produced meanwhile would be tagged late when they arrive. So a partition is caught up only
while its leader broker answers.

Whether it answers comes from librdkafka's statistics (bytewax's partition asks for them every
second): the partition's leader is known, its connection is `UP`, and it received something within
`ANSWER_S` — a caught-up consumer long-polls, so an answering leader replies at least every
`fetch.wait.max.ms` (0.5 s by default). A refused connection shows within a second; a silent network
partition within `ANSWER_S`. Before the first statistics nothing is known, so a partition is not
caught up in its first second. With statistics turned off (`statistics.interval.ms = 0` in
`kafka.extra`) the broker is taken to answer, as before.

A position the broker no longer has — a snapshot's offset that retention deleted while the job was
down or far behind, or one past the end of a topic that was recreated — is out of range, and
librdkafka's default answer (`auto.offset.reset = latest`) jumps to the partition's end: everything
still in it would be skipped without a word. Here it is an error (`auto.offset.reset = error`,
unless `kafka.extra` sets it): the partition logs how many messages are gone, resumes at the
earliest offset the broker has, and hands the error on (a `kafka_error` dead letter that names the
offset it asked for).

This builds bytewax's partition itself (`bytewax.connectors.kafka._KafkaSourcePartition`, private) to
read the statistics bytewax already asks for; its consumer configuration is the one
`KafkaSource.build_part` makes.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from bytewax.connectors.kafka import KafkaError, KafkaSource, _KafkaSourcePartition
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from confluent_kafka import KafkaError as ConfluentKafkaError

from core.kafka_log import LIBRDKAFKA_LOG

log = logging.getLogger(__name__)

ANSWER_S = 5.0  # a leader that received nothing for this long is taken not to answer


def leader_idle_s(stats: dict[str, Any], topic: str, partition: int) -> float | None:
    """Seconds since the partition's leader broker last sent anything, from librdkafka statistics;
    None when the leader is unknown or its connection is not up."""
    part = stats.get("topics", {}).get(topic, {}).get("partitions", {}).get(str(partition))
    if part is None or part.get("leader", -1) < 0:
        return None
    for broker in stats.get("brokers", {}).values():
        if broker.get("nodeid") == part["leader"]:
            idle_us = broker.get("rxidle", -1)
            if broker.get("state") != "UP" or idle_us < 0:
                return None
            return idle_us / 1e6
    return None


class AnsweringPartition(_KafkaSourcePartition):
    """bytewax's Kafka partition, also noting when the partition's leader broker last answered."""

    def __init__(self, step_id: str, config: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        interval_s = int(config.get("statistics.interval.ms", 0)) / 1000
        self._watching = interval_s > 0
        self._answer_s = max(ANSWER_S, 3 * interval_s)  # statistics come once an interval
        self._answered_at: float | None = None  # monotonic time of the leader's last answer
        super().__init__(step_id, config, *args, **kwargs)

    def _process_stats(self, json_stats: str) -> None:
        super()._process_stats(json_stats)
        idle_s = leader_idle_s(json.loads(json_stats), self._topic, self._part_idx)
        if idle_s is not None:
            self._answered_at = time.monotonic() - idle_s

    def next_batch(self) -> list[Any]:
        batch = super().next_batch()
        for item in batch:
            if type(item) is KafkaError and item.err.code() == ConfluentKafkaError._AUTO_OFFSET_RESET:
                self._resume_at_earliest(item.msg.offset)
        return batch

    def _resume_at_earliest(self, asked: int | None) -> None:
        """The broker no longer has offset `asked`: read on from the earliest offset it has."""
        asked = -1 if asked is None else asked
        tp = TopicPartition(self._topic, self._part_idx)
        try:
            low, high = self._consumer.get_watermark_offsets(tp, timeout=5)
        except Exception:  # the numbers are for the log line only
            low, high = -1, -1
        if 0 <= asked < low:
            gone = f"{low - asked} messages ({asked} to {low - 1}) are gone: deleted by retention"
        elif asked > high >= 0:
            gone = f"the partition ends at {high}: the topic was recreated or truncated"
        else:
            gone = f"the broker has {low} to {high}"
        log.warning(
            "Kafka partition %d-%s: offset %d is out of range, %s; reading on from the earliest offset",
            self._part_idx,
            self._topic,
            asked,
            gone,
        )
        self._consumer.assign([TopicPartition(self._topic, self._part_idx, OFFSET_BEGINNING)])
        self._offset = OFFSET_BEGINNING  # a snapshot before the next message resumes there too

    def answers(self) -> bool:
        """Whether the leader answered within `ANSWER_S` (always, without statistics)."""
        if not self._watching:
            return True
        return self._answered_at is not None and time.monotonic() - self._answered_at < self._answer_s


def build_partition(
    source: KafkaSource, step_id: str, topic: str, partition: int, resume_state: int | None
) -> AnsweringPartition:
    """`source`'s partition, as `KafkaSource.build_part` builds it, watching its leader."""
    config = {
        "group.id": "BYTEWAX_IGNORED",  # offsets live in the recovery snapshots
        "enable.auto.commit": "false",
        "bootstrap.servers": ",".join(source._brokers),
        "enable.partition.eof": str(not source._tail),
        "statistics.interval.ms": 1000,
        "auto.offset.reset": "error",  # a lost position is reported and read on from the earliest
        "logger": LIBRDKAFKA_LOG,  # an outage is a line per kind and half minute, not ~20 a second
        **source._add_config,
    }
    return AnsweringPartition(
        step_id,
        config,
        topic,
        partition,
        source._starting_offset,
        resume_state,
        source._batch_size,
        source._raise_on_errors,
    )
