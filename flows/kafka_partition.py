"""A Kafka partition that knows whether its broker answers.

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

This builds bytewax's partition itself (`bytewax.connectors.kafka._KafkaSourcePartition`, private) to
read the statistics bytewax already asks for; its consumer configuration is the one
`KafkaSource.build_part` makes.
"""

from __future__ import annotations

import json
import time
from typing import Any

from bytewax.connectors.kafka import KafkaSource, _KafkaSourcePartition

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
