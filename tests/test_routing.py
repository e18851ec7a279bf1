"""`operators.routing` against bytewax itself: keys are grouped onto worker threads exactly as
`worker_of` says, and the re-delivery step's shard keys are dealt round robin."""

from __future__ import annotations

import threading

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main

from operators.routing import SEARCHED_UP_TO, spread_keys, worker_of


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
