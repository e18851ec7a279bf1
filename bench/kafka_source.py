"""What aligning Kafka partitions in event time costs at the source.

A topic on the librdkafka mock cluster (200-byte messages, one every 10 ms of event time, spread over
the partitions by key; the mock broker keeps ~5 MB per partition) is read to its end by a one-step
dataflow (source -> count) three ways: bytewax's own `KafkaSource`, judgeflow's source with alignment
off (`kafka.align_partitions_s = -1`), and with the default alignment (5 s). Prints messages/s per
variant (median of `--repeat` runs) and the ratio to bytewax's source.

    python bench/kafka_source.py --events 200000
"""

from __future__ import annotations

import argparse
import statistics
import time

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSource
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main

from flows.config import KafkaConfig
from flows.kafka_mock import MockCluster, produce_all
from flows.sources import kafka_source

TOPIC = "bench-source"


class _Count(StatelessSinkPartition):
    def __init__(self, seen: list[int]) -> None:
        self._seen = seen

    def write_batch(self, items: list) -> None:
        self._seen[0] += len(items)


class CountingSink(DynamicSink):
    def __init__(self, seen: list[int]) -> None:
        self._seen = seen

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Count:
        return _Count(self._seen)


def read_all(source, n: int) -> float:
    seen = [0]
    flow = Dataflow("bench_source")
    op.output("count", op.input("in", flow, source), CountingSink(seen))
    started = time.perf_counter()
    run_main(flow)
    elapsed = time.perf_counter() - started
    assert seen[0] == n, (seen[0], n)
    return n / elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--partitions", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    t0 = 1_700_000_000_000
    messages = [(f"k{i}".encode(), b"x" * 200, t0 + 10 * i) for i in range(args.events)]
    with MockCluster() as kafka:
        kafka.create_topic(TOPIC, args.partitions)
        n = produce_all(kafka.bootstrap, TOPIC, messages)
        brokers = [kafka.bootstrap]

        def ours(align_s: float):
            cfg = KafkaConfig(topics=(TOPIC,), tail=False, align_partitions_s=align_s)
            return kafka_source(cfg, brokers)

        variants = {
            "bytewax KafkaSource": lambda: KafkaSource(brokers, [TOPIC], tail=False, batch_size=1000),
            "judgeflow, not aligned": lambda: ours(-1),
            "judgeflow, aligned (5 s)": lambda: ours(5),
        }
        rates = {
            name: statistics.median(read_all(make(), n) for _ in range(args.repeat))
            for name, make in variants.items()
        }
    base = rates["bytewax KafkaSource"]
    print(f"{n:,} messages, {args.partitions} partitions, median of {args.repeat}")
    print(f"{'source':<28}{'messages/s':>14}{'vs bytewax':>12}")
    for name, rate in rates.items():
        print(f"{name:<28}{rate:>14,.0f}{rate / base:>11.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
