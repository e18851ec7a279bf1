"""librdkafka's log through the job's logging, a line per kind per interval (`core.kafka_log`)."""

from __future__ import annotations

import logging
import time

import pytest

from core.kafka_log import LibrdkafkaLog
from flows.config import KafkaConfig
from flows.sources import kafka_source
from simulators.kafka_mock import MockCluster

REFUSED = (
    "[thrd:10.0.0.7:9092/1]: 10.0.0.7:9092/1: Connect to ipv4#10.0.0.7:9092 failed: refused (after {}ms)"
)


def test_a_line_like_one_written_within_the_interval_is_held_back_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    log = LibrdkafkaLog(logging.getLogger("librdkafka.test"), every_s=30, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="librdkafka.test"):
        for i in range(70):  # two clients, the same broker, 35 s: one kind of line
            log.log(logging.ERROR, "%s [%s] %s", "FAIL", f"rdkafka#consumer-{i % 2}", REFUSED.format(i))
            now[0] += 0.5
        log.log(
            logging.INFO, "%s [%s] %s", "FAIL", "rdkafka#consumer-1", "[thrd:x]: Disconnected (after 3ms)"
        )
        log.log(logging.ERROR, "%s [%s] %s", "REQTMOUT", "rdkafka#consumer-1", "[thrd:x]: timed out")
        now[0] += 25  # 30 s after the last line of its kind
        log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#consumer-0", REFUSED.format(0))

    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert lines[0] == (logging.ERROR, "FAIL [rdkafka#consumer-0] " + REFUSED.format(0))
    held = " (59 more like it held back over the last 30 s)"
    assert lines[1] == (logging.ERROR, "FAIL [rdkafka#consumer-0] " + REFUSED.format(60) + held)
    assert lines[2] == (logging.INFO, "FAIL [rdkafka#consumer-1] [thrd:x]: Disconnected (after 3ms)")
    assert lines[3] == (logging.ERROR, "REQTMOUT [rdkafka#consumer-1] [thrd:x]: timed out")
    assert lines[4][1].endswith("(9 more like it held back over the last 30 s)"), lines[4]
    assert len(lines) == 5


def test_a_broker_outage_is_a_few_lines_in_the_jobs_log_not_twenty_a_second(
    kafka: MockCluster, caplog: pytest.LogCaptureFixture
) -> None:
    kafka.create_topic("live", 2)
    source = kafka_source(KafkaConfig(topics=("live",), start="beginning"), [kafka.bootstrap])
    parts = [source.build_part("in", f"{i}-live", None) for i in range(2)]

    def read_for(seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            for part in parts:
                part.next_batch()
            time.sleep(0.05)

    with caplog.at_level(logging.INFO):
        read_for(1)
        kafka.broker_down(1)
        read_for(6)
        kafka.broker_up(1)
        read_for(2)
    for part in parts:
        part.close()

    lines = [r for r in caplog.records if r.name == "librdkafka"]
    # before: ~20 connection attempts a second per partition, each a line on stderr, none in the log
    assert lines and all("Connect to" in r.getMessage() or "Disconnected" in r.getMessage() for r in lines)
    assert len(lines) <= 8, [r.getMessage() for r in lines]
