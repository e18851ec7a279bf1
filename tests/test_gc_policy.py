"""The collector policy: full collections leave the survivors of the last one out, and one that
follows as many new survivors as the last scan of everything left frozen scans everything again, so a
frozen cycle that became garbage is reclaimed then."""

from __future__ import annotations

import gc
import weakref

from flows import gc_policy


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector can free it


def test_a_frozen_cycle_that_dies_waits_for_the_next_scan_of_everything():
    gc_policy.tune()
    gc.collect()
    gc.collect()  # after a scan of everything, full collections scan only what arrived since
    assert gc.get_freeze_count() > 0 and not gc_policy.scans_all_next()
    node = _Node()
    gc.collect()  # `node` survives it and is frozen
    gone = weakref.ref(node)
    del node  # garbage now, but frozen
    for _ in range(3):
        gc.collect()
        assert gone() is not None  # left out of full collections that do not scan everything
    assert not gc_policy.scans_all_next()
    # as many new survivors as the last scan of everything left frozen: the next one scans everything
    survivors = [[] for _ in range(gc.get_freeze_count())]
    gc.collect()
    assert gone() is not None and gc_policy.scans_all_next()
    gc.collect()
    assert gone() is None and not gc_policy.scans_all_next()
    assert len(survivors) > 0
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
