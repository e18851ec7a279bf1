"""Row versions that only go up, per key.

ClickHouse keeps the newest row of a key (`ReplacingMergeTree(version)`: `cost_windows`,
`quality_estimates`, `judge_savings`, `abuse_windows`), and a window's row is written again, with a new
version, each time it changes. The versions were the wall clock in microseconds, which can go back: an
NTP step, a VM resumed from a pause, a key's next row written by a process whose host clock is behind
(a restart elsewhere, a rescale). A revision written then lost to the row it revised, and the table kept
the older sums. Now a key's next version is the wall clock or one past the key's last version, whichever
is larger, and the last version is part of the key's snapshot.

Not covered: rows a crashed run wrote after its last snapshot, when the resumed run's clock is behind
theirs by more than the restart took.
"""

from __future__ import annotations

import time


def wall_us() -> int:
    """The wall clock in microseconds."""
    return time.time_ns() // 1000


def next_version(last: int, now_us: int | None = None) -> int:
    """The version of a key's next row: `now_us` (the wall clock), or one past `last` if that is larger."""
    return max(wall_us() if now_us is None else now_us, last + 1)
