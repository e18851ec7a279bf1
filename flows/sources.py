"""The Kafka input, including "replay from a time" for backfills.

`kafka.start` is `beginning`, `end`, or an RFC 3339 time: then each
partition starts at its first message at or after that time (looked up with
`flows.kafka_offsets.offsets_for_time`, which also works where the broker
cannot answer ListOffsets by timestamp). A restart with a recovery directory
resumes from the snapshot instead, whatever `start` says.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bytewax.connectors.kafka import KafkaSource
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

from flows.config import KafkaConfig
from flows.kafka_offsets import offsets_for_time


class _FromTimeKafkaSource(KafkaSource):
    """A `KafkaSource` whose partitions start at per-partition offsets for a time."""

    def __init__(self, *args: Any, start_ms: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._start_ms = start_ms
        self._offsets: dict[str, dict[int, int]] = {}

    def build_part(self, step_id: str, for_part: str, resume_state: int | None):  # noqa: ANN201
        if resume_state is None:
            idx, topic = for_part.split("-", 1)
            if topic not in self._offsets:
                self._offsets[topic] = offsets_for_time(
                    ",".join(self._brokers), topic, self._start_ms, config=self._add_config
                )
            resume_state = self._offsets[topic][int(idx)]
        return super().build_part(step_id, for_part, resume_state)


def kafka_source(cfg: KafkaConfig, brokers: list[str]) -> KafkaSource:
    common: dict[str, Any] = {
        "brokers": brokers,
        "topics": list(cfg.topics),
        "tail": cfg.tail,
        "batch_size": cfg.batch_size,
        "add_config": dict(cfg.extra),
        "raise_on_errors": False,  # broker errors become dead letters, not a crash loop
    }
    if isinstance(cfg.start, datetime):
        return _FromTimeKafkaSource(**common, start_ms=int(cfg.start.timestamp() * 1000))
    offset = OFFSET_BEGINNING if cfg.start == "beginning" else OFFSET_END
    return KafkaSource(**common, starting_offset=offset)
