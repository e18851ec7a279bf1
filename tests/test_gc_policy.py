"""The collector policy: full collections leave the survivors of the last one out, and every
`FULL_SCAN_EVERY`-th scans everything, so a frozen cycle that became garbage is reclaimed then."""

from __future__ import annotations

import gc
import weakref

from flows import gc_policy


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector can free it


def test_a_frozen_cycle_that_dies_waits_for_the_next_full_scan():
    gc_policy.tune()
    assert gc.get_threshold()[0] >= gc_policy.YOUNG_THRESHOLD
    while (gc_policy._full[0] + 2) % gc_policy.FULL_SCAN_EVERY == 0:
        gc.collect()  # so that the collection after the next one does not scan everything
    node = _Node()
    gc.collect()  # a full collection: `node` survives it and is frozen
    assert gc.get_freeze_count() > 0
    gone = weakref.ref(node)
    del node  # garbage now, but frozen
    while True:
        scans_all = (gc_policy._full[0] + 1) % gc_policy.FULL_SCAN_EVERY == 0
        gc.collect()
        if scans_all:
            assert gone() is None
            break
        assert gone() is not None  # left out of a full collection that does not scan everything
    gc_policy.tune()  # idempotent: one callback
    assert gc.callbacks.count(gc_policy._around_full_collections) == 1


def test_a_cycle_that_dies_before_a_full_collection_goes_at_once():
    gc_policy.tune()
    gone = weakref.ref(_Node())
    gc.collect()
    assert gone() is None


def test_reset_leaves_nothing_frozen_and_no_callback():
    gc_policy.tune()
    gc.collect()
    assert gc.get_freeze_count() > 0
    gc_policy.reset()
    assert gc.get_freeze_count() == 0 and gc_policy._around_full_collections not in gc.callbacks
