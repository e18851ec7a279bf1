"""Cache-stage throughput: the `dedup` operator with Redis vs the in-process cache, one worker.

Events from simulators/traffic.py (real texts, so duplicates occur as in the demo
traffic) go through a bytewax flow `source -> dedup -> count`, in batches as
the sampler hands them over; each batch makes one `get_many` of its distinct
keys (2 LLM metrics per event with the default judges). Measured in the same
process: the flow with an identity step instead of `dedup` (the baseline:
what the flow costs without the cache), then the in-process LRU and a real
redis-server on loopback, each cold (every lookup misses) and warm (every
lookup hits); and the write path (`put_many`: a Redis pipeline of SET PX).

    .venv/bin/python bench/cache_stage.py [--events 50000] [--batch 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _traffic import CountingSink, median_rate, payloads, table

from core.ports import CachedVerdict, VerdictCache
from core.records import Event, Verdict
from flows.config import CacheConfig
from operators.decode import decode_message
from operators.dedup import Candidate, ContentKeyer, dedup
from operators.validate import DecodeLimits
from simulators.ports import free_port
from sinks.memory_store import MemoryVerdictCache
from sinks.redis_store import RedisVerdictCache

LLM_METRICS = ("toxicity", "hallucination")
LIMITS = DecodeLimits(earliest_ts_ms=0, max_future_ms=10**13, max_tokens=10**8, max_cost_pico=10**18)


class KeysOnly:
    """A cache that knows nothing and costs nothing: what hashing the content alone costs."""

    def get_many(self, keys: list[str]) -> list[CachedVerdict | None]:
        return [None] * len(keys)

    def put_many(self, items: dict[str, CachedVerdict]) -> None:
        pass


def events(n: int) -> list[Event]:
    from bytewax.connectors.kafka import KafkaSourceMessage

    out = []
    for i, (value, _) in enumerate(payloads(n)):
        e = decode_message(
            KafkaSourceMessage(key=None, value=value, topic="t", partition=0, offset=i), LIMITS, 0
        )
        assert isinstance(e, Event), e
        out.append(e)
    return out


def run_flow(evs: list[Event], batch: int, cache: VerdictCache | None, keyer: ContentKeyer) -> float:
    seen: Counter[str] = Counter()
    flow = Dataflow("cache_stage")
    up = op.input("in", flow, TestingSource(evs, batch_size=batch))
    if cache is None:
        out = op.flat_map_batch("identity", up, lambda xs: [Candidate(e) for e in xs])
    else:
        out = dedup("dedup", up, cache=cache, keyer=keyer, llm_metrics=LLM_METRICS).cands
    op.output("count", out, CountingSink(seen, "candidates"))
    started = time.perf_counter()
    run_main(flow)
    elapsed = time.perf_counter() - started
    assert seen["candidates"] == len(evs)
    return elapsed


def warm(cache: VerdictCache, evs: list[Event], keyer: ContentKeyer) -> int:
    keys = {keyer.metric_key(keyer.content_hash(e), m) for e in evs for m in LLM_METRICS}
    v = CachedVerdict(Verdict("toxicity", 0.1, "ok", "fine", "openai/gpt-4o-mini", 1), stored_ms=0)
    items = dict.fromkeys(keys, v)
    started = time.perf_counter()
    for chunk in range(0, len(keys), 1000):
        cache.put_many(dict(list(items.items())[chunk : chunk + 1000]))
    return int(len(keys) / (time.perf_counter() - started))


class RedisServer:
    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            sys.exit("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
                return
            except OSError:
                time.sleep(0.02)
        sys.exit("redis-server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()

    evs = events(args.events)
    c = CacheConfig()  # the default normalization: whitespace, UUIDs and dates
    keyer = ContentKeyer(lowercase=c.lowercase, volatile_patterns=c.volatile_patterns, judge_version="bench")
    distinct = len({keyer.content_hash(e) for e in evs})
    server = RedisServer()
    url = f"redis://127.0.0.1:{server.port}/0"
    rows = []
    try:
        caches: list[tuple[str, VerdictCache | None]] = [("none (identity step)", None)]
        caches.append(("keys only (hashing, no store)", KeysOnly()))
        caches.append(("in-process LRU", MemoryVerdictCache(max_entries=1_000_000, ttl_s=3600)))
        caches.append(("Redis (loopback)", RedisVerdictCache(url, ttl_s=3600)))
        in_process: dict[str, float] = {}
        for name, cache in caches:
            states = ["cold", "warm"] if isinstance(cache, MemoryVerdictCache | RedisVerdictCache) else ["-"]
            for state in states:
                writes = ""
                if state == "warm":
                    assert cache is not None
                    writes = f"{warm(cache, evs, keyer):,}"
                run_flow(evs, args.batch, cache, keyer)  # warm-up: imports, connections
                rate, spread = median_rate(
                    len(evs), [run_flow(evs, args.batch, cache, keyer) for _ in range(args.repeat)]
                )
                if isinstance(cache, MemoryVerdictCache):
                    in_process[state] = rate
                ratio = f"{rate / in_process[state]:.2f}x" if state in in_process else ""
                rows.append(
                    [
                        name,
                        state,
                        f"{rate:,.0f}",
                        f"{1e6 / rate:.1f}",
                        ratio,
                        f"±{spread / 2:.0%}",
                        writes,
                    ]
                )
    finally:
        server.stop()
    print(
        table(
            f"cache stage, 1 worker: {len(evs):,} events ({distinct:,} distinct texts), "
            f"batches of {args.batch}, median of {args.repeat}",
            ["cache", "state", "events/s", "µs/event", "vs in-process", "spread", "put_many keys/s"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
