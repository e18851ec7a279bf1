"""`operators.routing` against bytewax itself: keys are grouped onto worker threads exactly as
`worker_of` says, and the steps keyed by a fixed set of shards (re-deliveries, the OTLP join, the
judge) deal them round robin, so each worker gets its share of the work."""

from __future__ import annotations

import collections
import threading
import uuid

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main

from operators import judge
from operators.otlp_join import join_otlp_content
from operators.routing import SEARCHED_UP_TO, spread_keys, worker_of
from tests.test_otlp_join import span


def threads_by_key(keys: list[str], workers: int) -> dict[str, int]:
    """The worker thread each key's state lives on, in a cluster of `workers` threads."""
    out: list[tuple[str, int]] = []
    flow = Dataflow("routing")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(keys)), lambda k: k)
    on = op.stateful_map("where", keyed, lambda state, _: (state, threading.get_ident()))
    op.output("out", on, TestingSink(out))
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return dict(out)


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_keys_land_where_worker_of_says(workers):
    keys = [*spread_keys(16), *(f"tenant-{i}" for i in range(40))]
    where = threads_by_key(keys, workers)
    by_thread: dict[int, set[int]] = {}
    for key, thread in where.items():
        by_thread.setdefault(thread, set()).add(worker_of(key, workers))
    # each thread holds the keys of one computed worker, and no two threads share one
    assert sorted(len(v) for v in by_thread.values()) == [1] * workers
    assert set().union(*by_thread.values()) == set(range(workers))


def test_shard_keys_are_dealt_round_robin_and_plain_ones_are_not():
    keys = spread_keys(16)
    for workers in range(1, 9):
        assert [worker_of(k, workers) for k in keys] == [i % workers for i in range(16)]
    plain = [worker_of(str(i), 2) for i in range(16)]
    assert plain.count(0) == 6  # why: "0".."15" fall 6 / 10 on two workers
    assert spread_keys(SEARCHED_UP_TO + 1) == tuple(str(i) for i in range(SEARCHED_UP_TO + 1))


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_the_otlp_join_spreads_its_spans_evenly_over_the_worker_threads(workers):
    # the stages after the join run where it emits: a 16-shard join on "0".."15" put 62.5% of the
    # calls on one of two workers and 50% on one of three
    n = 1_600
    spans = [span(f"span-{i}", content=True) for i in range(n)]  # with content: each goes on at once
    out: list[int] = []
    flow = Dataflow("otlp_spread")
    joined = join_otlp_content("join", op.input("in", flow, TestingSource(spans)), wait_s=1, call_max_s=1)
    op.output("out", op.map("where", joined, lambda _: threading.get_ident()), TestingSink(out))
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    by_thread = collections.Counter(out)
    assert len(out) == n and len(by_thread) == workers
    assert max(by_thread.values()) / n < 1 / workers + 0.04


def test_the_judge_deals_its_shards_round_robin_so_content_spreads_evenly():
    keys = {judge.shard_of(uuid.UUID(int=i).hex) for i in range(400)}
    assert keys == set(spread_keys(judge.SHARDS))  # key i on worker i mod W for every W to 8
    hashes = [uuid.UUID(int=i * 7919).hex for i in range(8_000)]
    for workers in range(2, 9):
        counts = collections.Counter(worker_of(judge.shard_of(h), workers) for h in hashes)
        # as even as 8 shards allow (8 over 3 workers: 3 / 3 / 2); "0".."7" gave 75% to one of two
        assert max(counts.values()) / len(hashes) < -(-judge.SHARDS // workers) / judge.SHARDS + 0.03
