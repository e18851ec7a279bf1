"""Python's cyclic garbage collector, tuned for a job whose state is millions of long-lived objects.

The flow's state (windows, rollups, ledgers, seen-sets per key) is millions of objects that live for
minutes to days, and each batch allocates tens of thousands of short-lived ones. Two costs follow:

- *Young collections* every 700 allocations (the default) took 14% of the CPU samples in the
  100,000-key soak (`bench/soak.py`): they now run every 20,000.
- *Full collections* scan every tracked object in the process: ~2.5 s each at 2-3 GB of state, 27 s
  of the first 500,000 events of that soak (60% of the collector's time, 10% of the CPU), and they found
  no garbage at all (cycles die young: the young collections take them). After a full collection the
  survivors are frozen (`gc.freeze`): the next ones scan only what arrived since. Every
  `FULL_SCAN_EVERY`-th full collection unfreezes first and scans everything, so a cycle among frozen
  objects that became garbage later is still reclaimed, just later.

`tune()` sets this once per process (idempotent; `build_deps` calls it); `reset()` undoes it. Note that
`gc.get_referrers` does not see frozen objects: a process that relies on it (Hypothesis does, to check
the PRNGs it is given) must not run with this policy, so the tests reset it after each test.
"""

from __future__ import annotations

import gc
from typing import Any

YOUNG_THRESHOLD = 20_000
FULL_SCAN_EVERY = 10

_full = [0]  # full collections since the process started


def tune() -> None:
    """Young collections every `YOUNG_THRESHOLD` allocations; full ones over what arrived since the last."""
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_THRESHOLD), middle, old)
    if _around_full_collections not in gc.callbacks:
        gc.callbacks.append(_around_full_collections)


def _around_full_collections(phase: str, info: dict[str, Any]) -> None:
    if info["generation"] != 2:
        return
    if phase == "start":
        _full[0] += 1
        if _full[0] % FULL_SCAN_EVERY == 0:
            gc.unfreeze()  # this one scans everything: frozen cycles that died since are reclaimed
    else:
        gc.freeze()  # the survivors: left out of the next full collections


def reset() -> None:
    """Undo `tune()`'s freezing: full collections scan everything again (the thresholds stay)."""
    while _around_full_collections in gc.callbacks:
        gc.callbacks.remove(_around_full_collections)
    gc.unfreeze()
