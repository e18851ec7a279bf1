"""A key's rows carry versions that only go up, whatever the wall clock does (`operators.versions`):
ClickHouse keeps the newest version of a row, so a revision written after the clock stepped back (NTP,
a resumed VM, a restart on a host whose clock is behind) must still replace the row it revises."""

from __future__ import annotations

import pickle
import time

import pytest

from operators.rollups import _RollupLogic
from operators.tumbling import FinalWindows, _Spec, _TumblingLogic, _TumblingState
from operators.windows import _WindowLogic, _WindowState
from tests.test_windows import BASE, HOUR, LEVELS, MIN, entry, expected, final, row, run_windows

SECOND_NS = 1_000_000_000


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The wall clock (`time.time_ns`), set by the test."""
    now = [1_800_000_000 * SECOND_NS]
    monkeypatch.setattr(time, "time_ns", lambda: now[0])
    return now


def test_a_cost_window_revised_after_the_clock_stepped_back_replaces_its_row(wall: list[int]) -> None:
    now = [1000.0]
    logic = _WindowLogic(MIN, 2 * MIN, lambda: now[0], None)
    logic.on_batch([entry("t", BASE + 1_000, 5)])
    first = list(logic.on_batch([entry("t", BASE + MIN + 10, 7)])[0])  # the first minute's row is out
    wall[0] -= 5 * SECOND_NS  # NTP steps the clock back 5 s
    revised = list(logic.on_batch([entry("t", BASE + 2_000, 1)])[0])
    assert revised[0].version > first[0].version  # before: 5 s older than the row it revises

    # restored from a snapshot on a host whose clock is a minute behind
    restored = _WindowLogic(MIN, 2 * MIN, lambda: now[0], pickle.loads(pickle.dumps(logic.snapshot())))
    wall[0] -= 60 * SECOND_NS
    again = list(restored.on_batch([entry("t", BASE + 3_000, 2)])[0])
    assert again[0].version > revised[0].version
    # what ClickHouse's FINAL keeps: the newest row of the minute, with every entry
    assert final([*first, *revised, *again])[("t", "a", BASE)] == (3, 8, 5)


def test_a_tumbling_window_revised_after_the_clock_stepped_back_replaces_its_row(wall: list[int]) -> None:
    now = [1000.0]
    spec = _Spec(
        step_id="t_versions",
        key_of=lambda x: "k",
        size_ms=MIN,
        lateness_ms=10 * MIN,
        idle_s=3600.0,
        ts_of=lambda x: x,
        new=list,
        fold=lambda acc, x: acc.append(x),
        rows=lambda key, start, acc, version: [(start, len(acc), version)],
        clock=lambda: now[0],
    )
    logic = _TumblingLogic(spec, None)
    [(_, _, v1)] = logic.on_batch([BASE + 1, BASE + MIN + 1])[0]
    wall[0] -= 5 * SECOND_NS
    [(start, count, v2)] = logic.on_batch([BASE + 2])[0]
    assert (start, count) == (BASE, 2) and v2 > v1  # before: v2 < v1, the row with 1 record kept
    restored = _TumblingLogic(spec, pickle.loads(pickle.dumps(logic.snapshot())))
    wall[0] -= 60 * SECOND_NS
    [(_, count, v3)] = restored.on_batch([BASE + 3])[0]
    assert count == 3 and v3 > v2


def test_a_rollup_keeps_going_up_across_a_restore_on_a_clock_behind() -> None:
    clock_us = [1_800_000_000_000_000]
    logic = _RollupLogic((HOUR,), 2 * MIN, lambda: clock_us[0], None)
    v1 = max(r.version for r in logic.on_batch([row(BASE, 5, version=1)])[0])
    snap = pickle.loads(pickle.dumps(logic.snapshot()))
    restored = _RollupLogic((HOUR,), 2 * MIN, lambda: clock_us[0], snap)
    clock_us[0] -= 60_000_000
    [hour] = restored.on_batch([row(BASE, 9, version=2)])[0]
    assert hour.cost_pusd == 9 and hour.version > v1


@pytest.mark.parametrize("workers", [1, 2])
def test_the_minute_and_rollup_totals_hold_with_a_wall_clock_that_only_goes_back(
    wall: list[int], monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """The dataflow's rows, read as ClickHouse's FINAL reads them (the newest version of each window):
    with the wall clock a second behind at every read, every revision used to be older than the row
    it revised."""
    start = wall[0]
    reads = [0]

    def going_back() -> int:
        reads[0] += 1
        return start - reads[0] * SECOND_NS

    monkeypatch.setattr(time, "time_ns", going_back)
    batches = [
        [entry("acme", BASE + i * 7_001, i, eid=f"a{i}") for i in range(50)],
        [entry("acme", BASE + i * 3_001, 3 * i, eid=f"r{i}") for i in range(20)],  # revisions
        [entry("globex", BASE + i * 13_007, 2 * i, eid=f"g{i}", agent="b") for i in range(40)],
        [entry("acme", BASE + 5_000, 1_000, eid="late-1")],
    ]
    items = [e for b in batches for e in b]
    rows = run_windows(batches, workers=workers, provisional_s=1e-6)
    for size in LEVELS:
        assert final(rows, size) == expected(items, size), size


def test_snapshots_from_before_the_version_field_restore(wall: list[int]) -> None:
    old = _WindowState(("t", "a", "m", "baseline"), BASE, 1000.0, {}, BASE - MIN, 7)
    del old.version  # a snapshot of the slotted state from before the field has no such slot
    logic = _WindowLogic(MIN, 2 * MIN, lambda: 1000.0, pickle.loads(pickle.dumps(old)))
    logic.on_batch([entry("t", BASE + 1_000, 5)])
    [row_out] = logic.on_batch([entry("t", BASE + MIN + 10, 7)])[0]
    assert row_out.version == wall[0] // 1000

    tumbling = _TumblingState(FinalWindows(MIN))
    del tumbling.__dict__["version"]  # (a plain dataclass: the class default answers)
    assert pickle.loads(pickle.dumps(tumbling)).version == 0
