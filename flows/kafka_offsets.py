"""Where to start reading for "replay from a time": per-partition offsets by timestamp.

Works against any Kafka: it asks the broker (ListOffsets by timestamp) first,
and where there is no answer — librdkafka's mock cluster never has one, and
-1 is ambiguous — it binary searches each partition on message timestamps.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException, TopicPartition

from core.errors import RetryableError
from core.kafka_log import LIBRDKAFKA_LOG


class OffsetLookupError(RetryableError):
    """`offsets_for_time` could not read a partition in time (retryable)."""


# --- replay from a time -----------------------------------------------------------------


class _Deadline:
    def __init__(self, timeout_s: float, what: str) -> None:
        self._end = time.monotonic() + timeout_s
        self._timeout_s = timeout_s
        self._what = what

    def remaining(self) -> float:
        left = self._end - time.monotonic()
        if left <= 0:
            msg = f"{self._what}: no answer within {self._timeout_s}s"
            raise OffsetLookupError(msg)
        return left


def _lookup_consumer(bootstrap: str, config: Mapping[str, Any] | None) -> Consumer:
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": "judgeflow-offsets-for-time",  # required, never joined or committed
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        # an offset made of control records only ends in EOF instead of waiting forever
        "enable.partition.eof": True,
        # a probe below a freshly trimmed start lands on the earliest message
        "auto.offset.reset": "earliest",
        # Each probe re-assigns; a fetcher that is backing off on a full queue or idling
        # in a long-poll fetch delays the next probe by up to 1 s / 500 ms (the defaults).
        # Prefetch nothing beyond the probed batch and keep both waits short.
        "queued.min.messages": 1,
        "fetch.queue.backoff.ms": 1,
        "fetch.wait.max.ms": 10,
        "logger": LIBRDKAFKA_LOG,
    }
    conf.update(config or {})
    return Consumer(conf)


def _partitions(consumer: Consumer, topic: str, deadline: _Deadline) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=deadline.remaining())
    topic_md = metadata.topics.get(topic)
    if topic_md is None or topic_md.error is not None or not topic_md.partitions:
        error = None if topic_md is None else topic_md.error
        msg = f"offsets_for_time: topic {topic!r} not found ({error})"
        raise OffsetLookupError(msg)
    return sorted(topic_md.partitions)


def _broker_answers(
    consumer: Consumer, topic: str, partitions: list[int], ts_ms: int, deadline: _Deadline
) -> dict[int, int]:
    """ListOffsets by timestamp; only answers that are real offsets are kept.

    Kafka answers -1 when no message is that recent, the mock always answers -1: both
    go to the binary search, which settles either case.
    """
    query = [TopicPartition(topic, p, ts_ms) for p in partitions]
    try:
        answers = consumer.offsets_for_times(query, timeout=deadline.remaining())
    except KafkaException:
        return {}
    return {tp.partition: tp.offset for tp in answers if tp.error is None and tp.offset >= 0}


def _probe(
    consumer: Consumer, topic: str, partition: int, offset: int, deadline: _Deadline
) -> tuple[int, float]:
    """(offset, timestamp) of the first message at or after `offset`.

    (high watermark, +inf) when only control records or nothing follow.
    """
    consumer.assign([TopicPartition(topic, partition, offset)])
    while True:
        msg = consumer.poll(deadline.remaining())
        if msg is None or msg.topic() != topic or msg.partition() != partition:
            continue
        error, found = msg.error(), msg.offset()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF and found is not None:
                return found, float("inf")
            raise KafkaException(error)
        if found is None or found < offset:  # fetched for an earlier probe
            continue
        ts_type, ts = msg.timestamp()
        if ts_type == TIMESTAMP_NOT_AVAILABLE:
            err = f"offsets_for_time: {topic}[{partition}]@{found} has no timestamp"
            raise OffsetLookupError(err)
        return found, ts


def _search_partition(consumer: Consumer, topic: str, partition: int, ts_ms: int, deadline: _Deadline) -> int:
    low, high = consumer.get_watermark_offsets(
        TopicPartition(topic, partition), timeout=deadline.remaining(), cached=False
    )
    lo, hi = low, high  # the answer is in [lo, hi]; hi == high means "none that recent"
    while lo < hi:
        mid = (lo + hi) // 2
        found, ts = _probe(consumer, topic, partition, mid, deadline)
        if ts >= ts_ms:
            hi = mid
        else:
            lo = min(found + 1, hi)
    return lo


def offsets_for_time(
    bootstrap: str,
    topic: str,
    ts_ms: int,
    *,
    timeout_s: float = 10.0,
    config: Mapping[str, Any] | None = None,
) -> dict[int, int]:
    """For each partition of `topic`, the first offset whose timestamp is >= `ts_ms`.

    Partitions with no such message map to their high watermark, so consuming from the
    returned offsets replays exactly the messages from `ts_ms` on. Asks the broker first
    (ListOffsets by timestamp); where it has no answer (the mock never has) it binary
    searches between the watermarks, reading one message per probe. That search assumes
    timestamps never decrease within a partition, which holds for the CreateTime of one
    producer per partition and for LogAppendTime; with skewed producers the result is
    a boundary, not necessarily the first such offset.

    Args:
        bootstrap: `bootstrap.servers` of the cluster.
        topic: an existing topic.
        ts_ms: a Unix timestamp in milliseconds.
        timeout_s: budget for the whole lookup.
        config: extra consumer settings (security, ...).

    Returns:
        partition -> offset, for every partition of the topic.
    """
    deadline = _Deadline(timeout_s, f"offsets_for_time({topic!r}, {ts_ms})")
    consumer = _lookup_consumer(bootstrap, config)
    try:
        partitions = _partitions(consumer, topic, deadline)
        offsets = _broker_answers(consumer, topic, partitions, ts_ms, deadline)
        for partition in partitions:
            if partition not in offsets:
                offsets[partition] = _search_partition(consumer, topic, partition, ts_ms, deadline)
    finally:
        consumer.close()
    return dict(sorted(offsets.items()))


def watermarks(
    bootstrap: str, topic: str, *, timeout_s: float = 10.0, config: Mapping[str, Any] | None = None
) -> dict[int, tuple[int, int]]:
    """For each partition of `topic`, its (low, high) watermark offsets now: the first offset still
    stored and the offset the next message will get."""
    deadline = _Deadline(timeout_s, f"watermarks({topic!r})")
    consumer = _lookup_consumer(bootstrap, config)
    try:
        return {
            p: consumer.get_watermark_offsets(
                TopicPartition(topic, p), timeout=deadline.remaining(), cached=False
            )
            for p in _partitions(consumer, topic, deadline)
        }
    finally:
        consumer.close()


# --- producing --------------------------------------------------------------------------
