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
import sys
import time
from collections import Counter
from pathlib import Path

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSource
from bytewax.dataflow import Dataflow
from bytewax.testing import run_main

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _traffic import CountingSink, table

from flows.config import KafkaConfig
from flows.sources import kafka_source
from simulators.kafka_mock import MockCluster, produce_all

TOPIC = "bench-source"


def read_all(source, n: int) -> float:
    seen: Counter[str] = Counter()
    flow = Dataflow("bench_source")
    op.output("count", op.input("in", flow, source), CountingSink(seen, "messages"))
    started = time.perf_counter()
    run_main(flow)
    elapsed = time.perf_counter() - started
    assert seen["messages"] == n, (seen["messages"], n)
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
    title = f"{n:,} messages, {args.partitions} partitions, median of {args.repeat}"
    rows = [[name, f"{rate:,.0f}", f"{rate / base:.2f}x"] for name, rate in rates.items()]
    print(table(title, ["source", "messages/s", "vs bytewax"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
