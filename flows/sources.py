"""The Kafka input, including "replay from a time" for backfills.

`kafka.start` is `beginning`, `end`, or an RFC 3339 time: then each
partition starts at its first message at or after that time (looked up with
`flows.kafka_offsets.offsets_for_time`, which also works where the broker
cannot answer ListOffsets by timestamp). The time is first moved back to the
start of the longest window (the UTC day with the default rollups): a replay
rewrites whole windows, and a window rebuilt from half its events would
replace the complete row. A restart with a recovery directory resumes from
the snapshot instead, whatever `start` says.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from bytewax.connectors.kafka import KafkaSource
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

from flows.config import KafkaConfig
from flows.kafka_offsets import offsets_for_time

log = logging.getLogger(__name__)


class _FromTimeKafkaSource(KafkaSource):
    """A `KafkaSource` whose partitions start at per-partition offsets for a time."""

    def __init__(self, *args: Any, start_ms: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._start_ms = start_ms
        self._offsets: dict[str, dict[int, int]] = {}

    def build_part(self, step_id: str, for_part: str, resume_state: int | None):
        if resume_state is None:
            idx, topic = for_part.split("-", 1)
            if topic not in self._offsets:
                self._offsets[topic] = offsets_for_time(
                    ",".join(self._brokers), topic, self._start_ms, config=self._add_config
                )
            resume_state = self._offsets[topic][int(idx)]
        return super().build_part(step_id, for_part, resume_state)


def kafka_source(cfg: KafkaConfig, brokers: list[str], *, align_s: int = 86_400) -> KafkaSource:
    common: dict[str, Any] = {
        "brokers": brokers,
        "topics": list(cfg.topics),
        "tail": cfg.tail,
        "batch_size": cfg.batch_size,
        "add_config": dict(cfg.extra),
        "raise_on_errors": False,  # broker errors become dead letters, not a crash loop
    }
    if isinstance(cfg.start, datetime):
        start_ms = replay_start_ms(cfg.start, align_s)
        if start_ms != int(cfg.start.timestamp() * 1000):
            shown = datetime.fromtimestamp(start_ms / 1000, tz=UTC).isoformat()
            log.info("replaying from %s: the start of the window that holds %s", shown, cfg.start.isoformat())
        return _FromTimeKafkaSource(**common, start_ms=start_ms)
    offset = OFFSET_BEGINNING if cfg.start == "beginning" else OFFSET_END
    return KafkaSource(**common, starting_offset=offset)


def replay_start_ms(start: datetime, align_s: int) -> int:
    """`start` moved back to the beginning of its `align_s` window (UTC)."""
    ms = int(start.timestamp() * 1000)
    return ms - ms % (align_s * 1000)


def check_topics(cfg: KafkaConfig, brokers: list[str], *, timeout_s: float = 5.0) -> None:
    """One metadata request: the brokers answer and every input topic exists with partitions.
    Raises RuntimeError saying what is missing."""
    from confluent_kafka.admin import AdminClient

    client = AdminClient({"bootstrap.servers": ",".join(brokers), **cfg.extra})
    meta = client.list_topics(timeout=timeout_s)
    missing = [t for t in cfg.topics if t not in meta.topics or not meta.topics[t].partitions]
    if missing:
        msg = f"Kafka topic(s) {', '.join(missing)} not found on {','.join(brokers)}"
        raise RuntimeError(msg)
