"""cost_window: totals per window equal the per-event sums exactly — with
out-of-order, late and too-late entries, replayed (old) timestamps, and on
1 and 2 workers."""

from __future__ import annotations

from collections import defaultdict

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.records import CostWindow, LedgerEntry
from operators.windows import _WindowLogic, cost_window

MIN = 60_000
BASE = 1_700_000_000_000 - 1_700_000_000_000 % MIN  # an old (replayed) minute boundary


def entry(tenant: str, ts_ms: int, cost: int, *, eid: str = "", agent: str = "a") -> LedgerEntry:
    return LedgerEntry(tenant, agent, "m", "baseline", ts_ms, requests=1, cost_pusd=cost, entry_id=eid)


def final(rows: list[CostWindow]) -> dict[tuple, tuple[int, int]]:
    """What `SELECT ... FINAL` gives: newest version per window, plus corrections."""
    latest: dict[tuple, CostWindow] = {}
    corrections: dict[str, CostWindow] = {}
    for r in rows:
        if r.kind == "correction":
            corrections[r.correction_id] = r
            continue
        k = (r.tenant_id, r.agent, r.window_start_ms)
        if k not in latest or r.version >= latest[k].version:
            latest[k] = r
    out: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for r in [*latest.values(), *corrections.values()]:
        acc = out[(r.tenant_id, r.agent, r.window_start_ms)]
        acc[0] += r.requests
        acc[1] += r.cost_pusd
    return {k: tuple(v) for k, v in out.items()}


def expected(entries: list[LedgerEntry]) -> dict[tuple, tuple[int, int]]:
    out: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for e in entries:
        acc = out[(e.tenant_id, e.agent, e.ts_ms - e.ts_ms % MIN)]
        acc[0] += e.requests
        acc[1] += e.cost_pusd
    return {k: tuple(v) for k, v in out.items()}


def run_windows(
    batches: list[list[LedgerEntry]], workers: int = 1, lateness_s: int = 120
) -> list[CostWindow]:
    flow = Dataflow("windows_test")
    items = [e for b in batches for e in b]
    src = op.input("in", flow, TestingSource(items, batch_size=max(1, max(len(b) for b in batches))))
    rows = cost_window("cw", src, size_s=60, allowed_lateness_s=lateness_s)
    out: list[CostWindow] = []
    op.output("out", rows, TestingSink(out))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return out


def test_logic_emits_on_watermark_revises_late_and_corrects_too_late():
    now = [1000.0]
    logic = _WindowLogic(MIN, 2 * MIN, lambda: now[0], None)
    out, _ = logic.on_batch([entry("t", BASE + 1_000, 5)])
    assert list(out) == []
    # the watermark passes the first window's end: emitted once
    out, _ = logic.on_batch([entry("t", BASE + MIN + 10, 7)])
    rows = list(out)
    assert [(r.window_start_ms, r.cost_pusd, r.kind) for r in rows] == [(BASE, 5, "window")]
    # a late entry within the allowed lateness revises the window (newer version)
    now[0] += 1
    out, _ = logic.on_batch([entry("t", BASE + 2_000, 1)])
    revised = list(out)
    assert [(r.window_start_ms, r.cost_pusd) for r in revised] == [(BASE, 6)]
    assert revised[0].version > rows[0].version
    # far past the lateness: the window is forgotten; a later entry becomes a correction
    out, _ = logic.on_batch([entry("t", BASE + 10 * MIN, 1)])
    out, _ = logic.on_batch([entry("t", BASE + 3_000, 4, eid="ev-9")])
    corr = [r for r in out if r.kind == "correction"]
    assert [(r.window_start_ms, r.cost_pusd, r.correction_id) for r in corr] == [(BASE, 4, "ev-9")]


def test_quiet_key_closes_its_window_by_system_time():
    now = [1000.0]
    logic = _WindowLogic(MIN, 0, lambda: now[0], None)
    logic.on_batch([entry("t", BASE + 30_000, 5)])
    due = logic.notify_at()
    assert due is not None and due.timestamp() == 1030.0
    now[0] = 1031.0
    out, _ = logic.on_notify()
    assert [(r.window_start_ms, r.cost_pusd) for r in out] == [(BASE, 5)]


def test_flow_totals_match_on_one_and_two_workers():
    batches = [
        [entry("acme", BASE + i * 7_001, i, eid=f"a{i}") for i in range(50)],
        [entry("globex", BASE + i * 13_007, 2 * i, eid=f"g{i}", agent="b") for i in range(40)],
        [entry("acme", BASE + 5_000, 1_000, eid="late-1")],  # late, out of order
    ]
    want = expected([e for b in batches for e in b])
    assert final(run_windows(batches, workers=1)) == want
    assert final(run_windows(batches, workers=2)) == want


ENTRIES = st.lists(
    st.tuples(
        st.sampled_from(["acme", "globex", "initech"]),
        st.integers(min_value=0, max_value=30 * MIN),
        st.integers(min_value=0, max_value=10**12),
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ENTRIES, st.integers(min_value=1, max_value=40), st.sampled_from([0, 60, 600]), st.sampled_from([1, 2])
)
def test_property_window_totals_equal_event_sums(raw, batch, lateness_s, workers):
    items = [entry(t, BASE + off, c, eid=f"e{i}") for i, (t, off, c) in enumerate(raw)]
    batches = [items[i : i + batch] for i in range(0, len(items), batch)]
    assert final(run_windows(batches, workers=workers, lateness_s=lateness_s)) == expected(items)
