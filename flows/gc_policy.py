"""Python's cyclic garbage collector, tuned for a job whose state is millions of long-lived objects.

The flow's state (windows, rollups, ledgers, seen-sets per key) is millions of objects that live for
minutes to days, and each batch allocates tens of thousands of short-lived ones. Two costs follow:

- *Young collections* every 700 allocations (the default) took 14% of the CPU samples in the
  100,000-key soak (`bench/soak.py`): they now run every 20,000.
- *Full collections* scan every tracked object in the process: ~2.5 s each at 2-3 GB of state, 27 s
  of the first 500,000 events of that soak (60% of the collector's time, 10% of the CPU), and they found
  no garbage at all (cycles die young: the young collections take them). After a full collection the
  survivors are frozen (`gc.freeze`): the next ones scan only what arrived since.

A cycle among frozen objects that became garbage later is still reclaimed, by a full collection that
unfreezes first and scans everything. Those run once the objects frozen since the last one number as
many as it left frozen (`SCAN_ALL_RATIO`), so their cost per frozen object is bounded whatever the size
of the state — a fixed count of full collections between them would make them more frequent, in
allocations, as the state grows and each of them longer (10 M objects at a million events of the soak).
Garbage cycles among frozen objects then take at most about as much memory as the frozen state did.

`tune()` sets this once per process (idempotent; `build_deps` calls it); `reset()` undoes it. Note that
`gc.get_referrers` does not see frozen objects: a process that relies on it (Hypothesis does, to check
the PRNGs it is given) must not run with this policy, so the tests reset it after each test.
"""

from __future__ import annotations

import gc
from typing import Any

YOUNG_THRESHOLD = 20_000
SCAN_ALL_RATIO = 1.0

# objects left frozen by the last full scan of everything, and frozen since
_frozen = {"at_scan": 0, "since": 0}


def tune() -> None:
    """Young collections every `YOUNG_THRESHOLD` allocations; full ones over what arrived since the last."""
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_THRESHOLD), middle, old)
    if _around_full_collections not in gc.callbacks:
        gc.callbacks.append(_around_full_collections)


def scans_all_next() -> bool:
    """Whether the next full collection unfreezes and scans everything."""
    return _frozen["since"] >= _frozen["at_scan"] * SCAN_ALL_RATIO


def _around_full_collections(phase: str, info: dict[str, Any]) -> None:
    if info["generation"] != 2:
        return
    if phase == "start":
        if scans_all_next():
            gc.unfreeze()  # this one scans everything: frozen cycles that died since are reclaimed
            _frozen["at_scan"], _frozen["since"] = -1, 0
        return
    if _frozen["at_scan"] < 0:  # after a scan of everything: what it leaves frozen
        gc.freeze()
        _frozen["at_scan"] = gc.get_freeze_count()
    else:  # the survivors of what arrived since the last full collection
        _frozen["since"] += len(gc.get_objects(generation=2))
        gc.freeze()


def reset() -> None:
    """Undo `tune()`'s freezing: full collections scan everything again (the thresholds stay)."""
    while _around_full_collections in gc.callbacks:
        gc.callbacks.remove(_around_full_collections)
    gc.unfreeze()
    _frozen["at_scan"], _frozen["since"] = 0, 0
