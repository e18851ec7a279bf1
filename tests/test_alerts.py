"""Alert rules and their lifecycle, on the alert stage's logic and as a
bytewax operator: every rule fires on crafted data and stays quiet on normal
data; levels change once per transition with hysteresis; ids do not depend
on how the windows were batched; state survives a snapshot; 1 and 2 workers
agree; the closed loop writes and clears sampling overrides."""

from __future__ import annotations

import json
import pickle
import random
import shlex
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import bytewax.operators as op
import msgspec
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.ports import Override, OverrideAction
from core.records import Alert, CostWindow, Event, usd_to_pico
from flows.cli import _parser
from flows.config import ConfigError
from flows.deps import build_alert_policy
from operators.alert_rules import RULE_TYPES, BurnRate, VariantCost, VolumeSpike
from operators.alert_state import DAY_MS, TenantLedger
from operators.alerts import AlertProgress, _AlertLogic, alerts
from operators.expensive import ExpensiveSlot, expensive_requests
from operators.ledger import KeyMark
from sinks.control import ControlSink
from sinks.memory_store import MemoryControlStore
from tests.conftest import flow_settings

MIN = 60_000
HOUR = 60 * MIN
T0 = int(datetime(2024, 3, 10, tzinfo=UTC).timestamp() * 1000)  # a UTC midnight
ONLY = {  # switch every rule off; a test turns on the one it checks
    f"alerts.{r}.enabled": False
    for r in (
        "burn_rate",
        "daily_spend",
        "monthly_projection",
        "variant_cost",
        "expensive_requests",
        "volume_spike",
        "judge_budget",
        "repeated_prompts",
        "single_user_share",
    )
}


def policy(*, only: str | None = None, **overrides: object):
    base = {**ONLY, f"alerts.{only}.enabled": True} if only else {}
    return build_alert_policy(flow_settings(**base, **overrides))


def win(
    minute: int,
    usd: str | Decimal,
    *,
    tenant: str = "t",
    agent: str = "a",
    variant: str = "baseline",
    requests: int = 1,
    category: str = "llm",
    kind: str = "window",
    version: int = 1,
    cid: str = "",
    start: int = T0,
) -> CostWindow:
    pico = usd_to_pico(usd)
    llm = category == "llm"
    return CostWindow(
        window_start_ms=start + minute * MIN,
        window_ms=MIN,
        tenant_id=tenant,
        agent=agent,
        model="m",
        variant=variant,
        requests=requests if llm else 0,
        input_tokens=0,
        output_tokens=0,
        cost_pusd=pico if llm else 0,
        unknown_cost_requests=0,
        judge_calls=0 if llm else requests,
        judge_cost_pusd=0 if llm else pico,
        max_request_cost_pusd=0,
        version=version,
        category=category,
        kind=kind,
        correction_id=cid,
    )


def run(batches, pol, progress: list[AlertProgress] | None = None) -> list[Alert | OverrideAction]:
    """Feed batches 10 s of wall time apart (each batch has settled by the next), then end;
    the progress reports for the sampler go to `progress`."""
    wall = [0.0]
    logic = _AlertLogic(pol, lambda: wall[0], None)
    out: list = []
    for b in batches:
        wall[0] += 10
        out.extend(logic.on_batch(list(b))[0])
    out.extend(logic.on_eof()[0])
    if progress is not None:
        progress.extend(x for x in out if isinstance(x, AlertProgress))
    return [x for x in out if not isinstance(x, AlertProgress)]


def alerts_in(result) -> list:
    """What a logic call emitted, without the progress reports for the sampler."""
    return [x for x in result[0] if not isinstance(x, AlertProgress)]


def levels(out) -> list[tuple[str, str, str]]:
    return [(a.rule, a.scope, a.level) for a in out if isinstance(a, Alert)]


# --- burn rate: a ramp walks up once per level, then resolves -----------------

# $ per minute: ok, then warn, critical, emergency, then next to nothing
RAMP = (
    [Decimal("0.05")] * 30
    + [Decimal("0.2")] * 30
    + [Decimal(1)] * 30
    + [Decimal(8)] * 15
    + [Decimal("0.01")] * 75
)


def burn_at(schedule: list[Decimal], end_minute: int) -> Decimal:
    return sum(schedule[max(0, end_minute - 60) : end_minute], Decimal(0))


def first_end(schedule, pred) -> int:
    return next(m for m in range(1, len(schedule) + 1) if pred(burn_at(schedule, m)))


def ramp_rows(tenant: str = "t") -> list[CostWindow]:
    return [win(m, usd, tenant=tenant) for m, usd in enumerate(RAMP) if usd]


def test_burn_rate_ramp_fires_each_level_once_then_resolves():
    out = run([[w] for w in ramp_rows()], policy(only="burn_rate"))
    alerts_ = [a for a in out if isinstance(a, Alert)]
    assert [(a.previous_level, a.level) for a in alerts_] == [
        ("ok", "warn"),
        ("warn", "critical"),
        ("critical", "emergency"),
        ("emergency", "ok"),
    ]
    # each at the first window end where the trailing hour crossed (resolve: below 5 x 0.9)
    want = [
        first_end(RAMP, lambda b: b >= 5),
        first_end(RAMP, lambda b: b >= 20),
        first_end(RAMP, lambda b: b >= 100),
    ]
    want.append(next(m for m in range(want[2], len(RAMP) + 1) if burn_at(RAMP, m) < Decimal("4.5")))
    assert [a.ts_ms for a in alerts_] == [T0 + m * MIN for m in want]
    crit = alerts_[1]
    assert Decimal(json.loads(crit.details)["usd_last_hour"]) == burn_at(RAMP, want[1])
    assert crit.threshold == 20.0 and crit.window_start_ms == crit.ts_ms - HOUR
    assert crit.runbook.startswith("judgeflow report cost --tenant t --last 1h --by agent,model,variant")
    assert "critical" in crit.message and "$/h" not in crit.message.replace("/h", "$/h", 0)


def test_alert_ids_do_not_depend_on_batching():
    rows = ramp_rows()
    pol = policy(only="burn_rate")
    one_by_one = run([[w] for w in rows], pol)
    at_once = run([list(reversed(rows))], pol)
    in_sevens = run([rows[i : i + 7] for i in range(0, len(rows), 7)], pol)
    ids = [a.alert_id for a in one_by_one if isinstance(a, Alert)]
    assert len(ids) == 4
    assert ids == [a.alert_id for a in at_once if isinstance(a, Alert)]
    assert ids == [a.alert_id for a in in_sevens if isinstance(a, Alert)]


def test_deescalate_steps_down_level_by_level():
    out = run([[w] for w in ramp_rows()], policy(only="burn_rate", **{"alerts.deescalate": True}))
    assert [lv for _, _, lv in levels(out)] == ["warn", "critical", "emergency", "critical", "warn", "ok"]


@pytest.mark.parametrize(
    ("values", "deescalate", "want"),
    [
        # hovering just under a threshold does not flap: out only below threshold x 0.9
        (["5.2", "4.8", "5.1", "4.6", "4.4"], False, ["warn", "warn", "warn", "warn", "ok"]),
        (["25", "19", "10", "4.6", "4.4"], False, ["critical"] * 4 + ["ok"]),
        (["25", "19", "17", "10", "4.4"], True, ["critical", "critical", "warn", "warn", "ok"]),
        (["150", "50", "4"], False, ["emergency", "emergency", "ok"]),
        (["3", "4.99"], False, ["ok", "ok"]),
    ],
)
def test_hysteresis(values, deescalate, want):
    rule, level, got = BurnRate(), "ok", []
    for v in values:
        level = rule.next_level(level, Decimal(v), Decimal("0.1"), deescalate)
        got.append(level)
    assert got == want


def test_revisions_replace_and_corrections_add():
    pol = policy(only="burn_rate", **{"alerts.burn_rate.warn": "3"})
    # $2 revised to $2.5 (newer version) is $2.5, not $4.5; a correction adds $1
    batches = [
        [win(0, "2")],
        [win(0, "2.5", version=2)],
        [win(1, "0.1")],
        [win(0, "1", kind="correction", cid="late-1")],
        [win(5, "0.1")],
    ]
    out = run(batches, pol)
    assert levels(out) == [("burn_rate", "", "warn")]
    assert json.loads(out[0].details)["usd_last_hour"] == "3.5"  # at minute 1's end: window 0 only
    # without the correction the revised window stays below $3
    assert run(batches[:3] + batches[4:], pol) == []


def test_a_window_that_arrives_after_its_minute_was_evaluated_counts_from_the_next():
    pol = policy(only="burn_rate", **{"alerts.eval_delay_s": 0})
    batches = [[win(0, "4")], [win(1, "0.5")], [win(2, "0.1")], [win(0, "1", agent="b")], [win(3, "0.1")]]
    (a,) = [a for a in run(batches, pol) if isinstance(a, Alert)]
    assert a.ts_ms == T0 + 3 * MIN  # not at minute 2: agent b's window for minute 0 came after that


def test_a_minute_waits_while_earlier_windows_are_still_arriving():
    pol = policy(only="burn_rate", **{"alerts.eval_delay_s": 0})
    wall = [100.0]
    logic = _AlertLogic(pol, lambda: wall[0], None)
    assert alerts_in(logic.on_batch([win(m, "0.5", agent="fast") for m in range(10)])) == []
    wall[0] += 1  # a lagging partition delivers the same minutes for another agent a second later
    assert alerts_in(logic.on_batch([win(m, "0.5", agent="slow") for m in range(10)])) == []
    assert logic.notify_at().timestamp() == wall[0] + 5  # settle_s after the last of them
    wall[0] += 5
    (a,) = alerts_in(logic.on_notify())
    assert (a.level, a.ts_ms) == ("warn", T0 + 5 * MIN)  # $1/min from both agents: $5 after 5 minutes


def test_per_tenant_thresholds():
    pol = policy(
        only="burn_rate",
        **{"alerts.tenants": {"big": {"burn_rate": {"warn": 500, "critical": 2000, "emergency": 10000}}}},
    )
    assert levels(run([ramp_rows("big")], pol)) == []
    assert len(levels(run([ramp_rows("t")], pol))) == 4


def test_bad_tenant_overrides_are_config_errors():
    with pytest.raises(ConfigError, match=r"alerts.tenants.acme.burn_rate: .*warn <= critical"):
        flow_settings(**{"alerts.tenants": {"acme": {"burn_rate": {"warn": 500}}}})
    with pytest.raises(ConfigError, match="unknown rule 'burn'"):
        flow_settings(**{"alerts.tenants": {"acme": {"burn": {"warn": 5}}}})


def test_a_tenant_that_goes_quiet_still_resolves():
    wall = [1000.0]
    logic = _AlertLogic(policy(only="burn_rate"), lambda: wall[0], None)
    out = []
    for m in range(30):  # $12/h for 30 min, then silence
        out.extend(alerts_in(logic.on_batch([win(m, "0.2")])))
        wall[0] += 1
    for _ in range(200):  # bytewax wakes the logic at notify_at
        due = logic.notify_at()
        wall[0] = due.timestamp()
        out.extend(alerts_in(logic.on_notify()))
        if any(isinstance(a, Alert) and a.level == "ok" for a in out):
            break
    assert [lv for _, _, lv in levels(out)] == ["warn", "ok"]
    assert out[-1].ts_ms == T0 + 68 * MIN  # 22 minutes x $0.20 left in the hour: $4.40 < $4.50


def test_state_survives_a_snapshot():
    rows = ramp_rows()
    pol = policy(only="burn_rate")
    whole = run([[w] for w in rows], pol)
    first = _AlertLogic(pol, lambda: 0.0, None)
    out = []
    for w in rows[:70]:
        out.extend(alerts_in(first.on_batch([w])))
    resumed = _AlertLogic(pol, lambda: 0.0, pickle.loads(pickle.dumps(first.snapshot())))
    for w in rows[70:]:
        out.extend(alerts_in(resumed.on_batch([w])))
    out.extend(alerts_in(resumed.on_eof()))
    assert out == whole


def test_a_revision_of_a_settled_slot_reaches_the_next_snapshot():
    """The per-agent slots are pickled once settled; a revision that changes one in place afterwards
    must still be in the next snapshot (and in what the ledger reads after a restore)."""
    led = TenantLedger(slot_ms=MIN, agent_window_ms=30 * MIN)
    for m in range(20):
        for agent in ("a", "b"):
            led.add_window(win(m, "0.01", agent=agent))
        led.advance(T0 + (m + 1) * MIN)
    led.forget(revisable_ms={"llm": 60 * MIN}, keys=0, llm=0, agents=0, expensive=0, days=0)
    assert pickle.loads(pickle.dumps(led)) == led  # the settled slots' bytes are made here
    led.add_window(win(3, "0.05", agent="b", requests=4, version=2))  # an old slot revised in place
    led.add_window(win(20, "0.01", agent="c"))
    led.advance(T0 + 21 * MIN)
    restored = pickle.loads(pickle.dumps(led))
    assert restored == led
    assert restored.agents[T0 + 3 * MIN][("b", "baseline")] == [4, usd_to_pico("0.05")]
    assert restored.agent_sums() == led.agent_sums()
    for end, b in [
        (21, [19 + 4, usd_to_pico("0.24")]),  # slots 0-19, slot 3 as revised
        (33, [16 + 4, usd_to_pico("0.21")]),  # slots 3-19
        (34, [16, usd_to_pico("0.16")]),  # slot 3 leaves the half-hour window with its revised sums
    ]:
        for ledger in (led, restored):
            ledger.advance(T0 + end * MIN)
        assert restored.agent_sums({"b"}) == led.agent_sums({"b"}) == {"b": {"baseline": b}}


def test_the_ledger_keeps_a_row_the_flow_may_still_revise_and_skips_a_restated_one_it_forgot():
    """The cost windows hold a window until the flow has processed its Kafka input past it, so a
    revision can come later than the lateness: the ledger keeps the row until then too. A restored
    window's row written again as it stood (`restated`) is in the totals already."""
    led = TenantLedger(slot_ms=MIN, agent_window_ms=30 * MIN)
    for m in range(20):
        led.add_window(win(m, "0.01"))
    led.advance(T0 + 20 * MIN)
    # slot 3 is far behind the key's newest row, but not behind what the flow has processed
    led.forget(
        revisable_ms={"llm": 2 * MIN}, keys=0, llm=0, agents=0, expensive=0, days=0, processed_ms=T0 + 4 * MIN
    )
    led.add_window(win(3, "0.05", requests=4, version=2))  # a revision: replaces the slot's row
    assert led.days[T0 - T0 % DAY_MS][0] == usd_to_pico("0.24")
    led.forget(revisable_ms={"llm": 2 * MIN}, keys=0, llm=0, agents=0, expensive=0, days=0, processed_ms=None)
    assert (T0 + 3 * MIN) not in {r[4] for r in led.rows}
    led.add_window(msgspec.structs.replace(win(3, "0.05", requests=4, version=3), restated=True))
    assert led.days[T0 - T0 % DAY_MS][0] == usd_to_pico("0.24")  # not counted again


def test_the_rows_of_a_key_dropped_upstream_go_at_the_next_forget():
    """A quiet key's last rows stay as long as a revision could come — for a key kept upstream, until
    it has been quiet for the `keys` horizon. A key dropped upstream (`KeyMark`) writes no revision
    any more: its rows go at the next forget, and the totals do not change — a correction for one of
    its windows still adds, a restated row is skipped, and the key's fresh start counts afresh."""
    pol = policy(only="burn_rate")
    wall = [1000.0]
    logic = _AlertLogic(pol, lambda: wall[0], None, processed=lambda: T0 + 60 * MIN)
    for m in range(10):
        logic.on_batch([win(m, "0.01", agent="a"), win(m, "0.01", agent="b")])
    led = logic._s.ledger
    day = T0 - T0 % DAY_MS

    def forget() -> None:
        led.forget(revisable_ms=pol.revisable_ms, keys=0, llm=0, agents=0, expensive=0, days=0)

    forget()
    kept = {r[1] for r in led.rows}
    assert kept == {"a", "b"}  # each quiet key's last rows
    logic.on_batch([KeyMark("t", "a", "m", "baseline", "llm", opened=False)])
    forget()
    assert {r[1] for r in led.rows} == {"b"}
    totals = led.llm[T0 + 9 * MIN], led.days.get(day)
    logic.on_batch([msgspec.structs.replace(win(9, "0.01", agent="a", version=2), restated=True)])
    assert (led.llm[T0 + 9 * MIN], led.days.get(day)) == totals  # in the totals already
    logic.on_batch([win(9, "0.5", agent="a", kind="correction", cid="late-a")])
    assert led.llm[T0 + 9 * MIN] == [3, usd_to_pico("0.52")]  # (its request too)
    logic.on_batch([KeyMark("t", "a", "m", "baseline", "llm", opened=True), win(30, "0.01", agent="a")])
    assert led.newest[("llm", "a", "m", "baseline")] == T0 + 30 * MIN
    assert led.llm[T0 + 30 * MIN] == [1, usd_to_pico("0.01")]


# --- the other rules: fire on crafted data, quiet on normal data --------------


def test_daily_spend_fires_and_resolves_at_utc_midnight():
    pol = policy(only="daily_spend", **{"alerts.daily_spend.critical": "10"})
    before = T0 - 100 * MIN
    rows = [win(m, "0.2", start=before) for m in range(130)]  # $0.20/min from 22:20 to 00:30
    out = run([[w] for w in rows], pol)
    assert [(a.level, a.ts_ms) for a in out if isinstance(a, Alert)] == [
        ("critical", before + 50 * MIN),  # $10 reached at 23:10
        ("ok", T0 + MIN),  # the first window end of the new day
    ]
    assert json.loads(out[0].details)["day"] == "2024-03-09"
    assert run([[w] for w in rows[:40]], pol) == []


def test_monthly_projection_against_the_budget():
    month = int(datetime(2024, 3, 1, tzinfo=UTC).timestamp() * 1000)
    pol = policy(
        only="monthly_projection",
        **{"alerts.monthly_projection.budget_usd": "1000", "alerts.monthly_projection.min_elapsed_s": 3600},
    )
    # $0.05/min projects to $2,232 over March (2.2x the budget), but only from the first hour on
    rows = [win(m, "0.05", start=month) for m in range(90)]
    out = run([[w] for w in rows], pol)
    (a,) = [a for a in out if isinstance(a, Alert)]
    assert (a.level, a.ts_ms) == ("critical", month + 60 * MIN)
    d = json.loads(a.details)
    assert (d["mtd_usd"], d["projected_usd"], d["projection"]) == ("3", "2232.00", True)
    assert run([[win(m, "0.01", start=month)] for m in range(90)], pol) == []  # projects to $446


def test_variant_cost_ratio_per_agent():
    pol = policy(only="variant_cost", **{"alerts.variant_cost.min_requests": 50})

    def rows(ft_cost: str, ft_requests: int = 60):
        out = []
        for m in range(20):
            out.append(win(m, "0.06", agent="bot", requests=60))  # $0.001 per request
            out.append(win(m, ft_cost, agent="bot", variant="finetuned", requests=ft_requests))
            out.append(win(m, "0.06", agent="other", requests=60))
        return out

    out = run([rows("0.12")], pol)  # the fine-tuned variant costs 2x per request
    (a,) = [a for a in out if isinstance(a, Alert)]
    assert (a.rule, a.scope, a.level, a.value) == ("variant_cost", "bot", "warn", 2.0)
    d = json.loads(a.details)
    assert (d["variant"], d["variant_requests"], d["baseline_requests"]) == ("finetuned", 60, 60)
    assert a.runbook == "judgeflow report variants --tenant t --agent bot"
    assert run([rows("0.06")], pol) == []  # same cost per request
    assert run([rows("0.5", ft_requests=2)], pol) == []  # 40 requests: too few to judge


@settings(max_examples=200, deadline=None)
@given(
    sums=st.dictionaries(
        st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(["baseline", "ft", "v3"])),
        st.tuples(st.sampled_from([0, 1, 49, 50, 51, 120]), st.integers(0, 10**9)),
    ),
    levelled=st.sets(st.sampled_from(["a", "b", "c", "d", "gone"])),
)
def test_variant_cost_reads_only_what_can_change_a_level(sums, levelled):
    """The readings an evaluation uses are `evaluate`'s, less agents with no level whose reading
    (not enough data, or zero) leaves ok as it is."""
    rule = VariantCost(min_requests=50)
    led = TenantLedger(agents_open={k: [n, c] for k, (n, c) in sums.items()})
    every = {r.scope: r for r in rule.evaluate(led, T0)}
    used = {r.scope: r for r in rule.readings(led, T0, levelled)}
    for scope, r in used.items():
        assert (r.value, r.start_ms, r.note, r.details()) == (
            every[scope].value,
            every[scope].start_ms,
            every[scope].note,
            every[scope].details(),
        )
    for scope, r in every.items():
        if scope not in used:
            assert scope not in levelled
            assert r.value is None or r.value == 0
            assert rule.next_level("ok", r.value, Decimal("0.1"), False) == "ok"


def test_expensive_requests_list_the_top_n():
    pol = policy(only="expensive_requests", **{"alerts.expensive_requests.window_s": 600})
    top = [(usd_to_pico("0.05"), "e1", "a", "m", "baseline", T0 + 5 * MIN + 1)]
    top.append((usd_to_pico("0.02"), "e2", "a", "m", "baseline", T0 + 5 * MIN + 2))
    batches = [[win(m, "0.01")] for m in range(5)]
    batches.append([ExpensiveSlot("t", T0 + 5 * MIN, 3, top), win(5, "0.08")])
    batches += [[win(m, "0.01")] for m in range(6, 20)]
    out = run(batches, pol)
    assert [(a.level, a.ts_ms) for a in out if isinstance(a, Alert)] == [
        ("warn", T0 + 6 * MIN),
        ("ok", T0 + 16 * MIN),  # ten minutes later the window holds none
    ]
    d = json.loads(out[0].details)
    assert d["count"] == 3 and [x["event_id"] for x in d["top"]] == ["e1", "e2"]
    assert d["top"][0]["cost_usd"] == "0.05"
    assert out[0].runbook == "judgeflow report top --tenant t --last 10m --min-cost 0.01"
    assert run([[win(m, "0.01")] for m in range(20)], pol) == []


def event(i: int, tenant: str, cost_usd: str, minute: int = 0) -> Event:
    return Event(
        f"ev-{i}", T0 + minute * MIN + i, tenant, "a", "m", "p", "baseline", "", "", None, 1, 1, 0, 0, 0,
        None, None, None, None, {}, None, cost_pusd=usd_to_pico(cost_usd),
    )  # fmt: skip


def test_expensive_requests_operator_combines_per_tenant_and_window():
    pol = policy(
        **{
            "alerts.expensive_requests.top_n": 2,
            "alerts.tenants": {"rich": {"expensive_requests": {"threshold_usd": "1"}}},
        }
    )
    events = [event(i, "t", c) for i, c in enumerate(["0.005", "0.01", "0.011", "0.3", "0.02"])]
    events += [event(9, "t", "0.5", minute=1), event(10, "rich", "0.5"), event(11, "rich", "2")]
    flow = Dataflow("expensive_test")
    got: list[ExpensiveSlot] = []
    op.output(
        "out",
        expensive_requests("x", op.input("in", flow, TestingSource(events, 100)), policy=pol),
        TestingSink(got),
    )
    run_main(flow)
    by_key = {(s.tenant_id, s.slot_ms): s for s in got}
    assert by_key[("t", T0)].count == 3  # above $0.01, not at it
    assert [x[1] for x in by_key[("t", T0)].top] == ["ev-3", "ev-4"]
    assert by_key[("t", T0 + MIN)].count == 1
    assert by_key[("rich", T0)].count == 1 and by_key[("rich", T0)].top[0][1] == "ev-11"


def test_volume_spike_against_the_trailing_baseline():
    pol = policy(
        only="volume_spike",
        **{"alerts.volume_spike.baseline_s": 3600, "alerts.volume_spike.min_history_s": 3600},
    )
    steady = [win(m, "0.01", requests=20) for m in range(120)]
    spike = [win(120 + m, "0.01", requests=100) for m in range(10)]
    after = [win(130 + m, "0.01", requests=20) for m in range(20)]
    out = run([[w] for w in steady + spike + after], pol)
    assert [(a.level, a.ts_ms) for a in out if isinstance(a, Alert)] == [
        ("warn", T0 + 123 * MIN),  # (2 x 20 + 3 x 100) / 5 = 68/min, 3.4x the 20/min baseline
        # 68/min again at 132, but the baseline now holds 7 spike minutes: 29.3/min, 2.3x
        ("ok", T0 + 132 * MIN),
    ]
    d = json.loads(out[0].details)
    assert (d["rpm"], d["baseline_rpm"]) == ("68.00", "20.00")
    assert run([[w] for w in steady + after], pol) == []
    # a new tenant starting at 100/min has no baseline yet: nothing to compare with
    assert run([[win(m, "0.01", requests=100)] for m in range(30)], pol) == []


def test_volume_spike_floor_for_silent_tenants():
    rule = VolumeSpike(baseline_s=3600, min_history_s=0)
    led = TenantLedger()
    led.add_window(win(0, "0.01", requests=1))
    led.add_window(win(65, "0.01", requests=60))
    (r,) = rule.evaluate(led, T0 + 66 * MIN)
    assert r.value == Decimal(12)  # 12/min over 5 min against the 1/min floor, not a division by ~0


@pytest.mark.parametrize(
    "budget", [{"alerts.judge_budget.budget_usd": "1"}, {"judges.budget.tenants": {"t": "1"}}]
)
def test_judge_budget_from_judge_windows(budget):
    pol = policy(only="judge_budget", **budget)
    batches = [[win(m, "0.1", category="judge"), win(m, "0.01")] for m in range(12)]
    out = run(batches, pol)
    assert [(a.level, a.ts_ms) for a in out if isinstance(a, Alert)] == [
        ("warn", T0 + 8 * MIN),
        ("critical", T0 + 10 * MIN),
    ]
    assert json.loads([a for a in out if isinstance(a, Alert)][-1].details)["judge_usd_today"] == "1"
    assert run([[win(m, "0.01", category="judge"), win(m, "0.01")] for m in range(12)], pol) == []


def test_the_judge_spend_stage_alerts_the_same_without_keeping_request_sums():
    """The judge-spend rules read judge spend alone: a ledger that keeps only the slots of the LLM
    windows (the evaluation clock) alerts exactly as one that keeps all of them, through revisions,
    corrections, judge spend trailing its requests and a UTC midnight."""
    rng = random.Random(7)
    pol = policy(**{"alerts.judge_budget.budget_usd": "2"}).judge_spend()
    assert not pol.requests and pol.default.judge_budget.enabled
    start = T0 - 90 * MIN
    batches = []
    for m in range(240):
        agents = ["a", *rng.sample(["b", "c"], rng.randint(0, 2))]
        batch = [
            win(m, f"0.0{rng.randint(1, 9)}", agent=x, requests=rng.randint(1, 5), start=start)
            for x in agents
        ]
        if rng.random() < 0.6:  # judge spend trails its requests
            usd = f"0.0{rng.randint(1, 9)}"
            batch.append(
                win(m - rng.randint(0, 20), usd, category="judge", agent=rng.choice("abc"), start=start)
            )
        if rng.random() < 0.1:  # a revision of an earlier window, and a correction
            batch.append(win(m - rng.randint(1, 5), "0.05", category="judge", version=2, start=start))
            batch.append(win(m - 30, "0.02", category="judge", kind="correction", cid=f"c{m}", start=start))
        batches.append(batch)
    got_progress: list[AlertProgress] = []
    want_progress: list[AlertProgress] = []
    got = run(batches, pol, got_progress)
    want = run(batches, replace(pol, requests=True), want_progress)
    assert got == want and got_progress == want_progress
    levels_ = [(a.level, a.ts_ms >= T0) for a in got if isinstance(a, Alert)]
    assert ("warn", False) in levels_ and ("ok", True) in levels_  # spent before midnight, reset after


def test_judge_budget_is_off_without_a_budget():
    pol = policy(only="judge_budget")
    assert not pol.default.judge_budget.enabled
    assert run([[win(m, "5", category="judge"), win(m, "0.01")] for m in range(12)], pol) == []


# --- actions: the closed loop -----------------------------------------------


def test_actions_throttle_on_critical_pause_on_emergency_and_clear_on_resolve():
    out = run([[w] for w in ramp_rows()], policy(only="burn_rate"))
    alerts_ = {a.level: a for a in out if isinstance(a, Alert)}
    actions = [a for a in out if isinstance(a, OverrideAction)]
    crit, emer = alerts_["critical"], alerts_["emergency"]
    assert [(a.op, a.rate, a.expires_ms, a.set_by) for a in actions] == [
        ("set", 0.01, crit.ts_ms + HOUR, f"alert:{crit.alert_id}"),
        ("set", 0.0, emer.ts_ms + HOUR, f"alert:{emer.alert_id}"),
        ("clear", 1.0, alerts_["ok"].ts_ms, f"alert:{emer.alert_id}"),
    ]
    assert crit.message.endswith("judge sampling set to 1.00% for 1 h (burn_rate critical)")
    assert emer.message.endswith("judging paused for 1 h (burn_rate emergency)")
    assert alerts_["ok"].message.endswith("emergency ended; judge sampling back to normal")


def test_the_acting_level_is_the_highest_across_rules():
    pol = policy(
        **{**ONLY, "alerts.burn_rate.enabled": True, "alerts.daily_spend.enabled": True},
        **{"alerts.daily_spend.critical": "50"},
    )
    out = run([[w] for w in ramp_rows()], pol)
    assert [(a.rule, a.level) for a in out if isinstance(a, Alert)] == [
        ("burn_rate", "warn"),
        ("burn_rate", "critical"),
        ("daily_spend", "critical"),
        ("burn_rate", "emergency"),
        ("burn_rate", "ok"),
    ]
    # the burn rate resolves, the day's spend is still critical: back to 1%, not cleared
    acts = [(a.op, a.rate, a.reason) for a in out if isinstance(a, OverrideAction)]
    assert acts == [
        ("set", 0.01, "judge sampling set to 1.00% for 1 h (burn_rate critical)"),
        ("set", 0.0, "judging paused for 1 h (burn_rate emergency)"),
        ("set", 0.01, "judge sampling set to 1.00% for 1 h (daily_spend critical)"),
    ]
    resolved = next(a for a in out if isinstance(a, Alert) and a.level == "ok")
    assert resolved.message.endswith("; judge sampling set to 1.00% for 1 h (daily_spend critical)")


def test_actions_follow_the_configured_rules_only():
    out = run(
        [[w] for w in ramp_rows()], policy(only="burn_rate", **{"alerts.actions.rules": ["daily_spend"]})
    )
    assert len(levels(out)) == 4 and not [a for a in out if isinstance(a, OverrideAction)]
    kept = run(
        [[w] for w in ramp_rows()], policy(only="burn_rate", **{"alerts.actions.clear_on_resolve": False})
    )
    assert [a.op for a in kept if isinstance(a, OverrideAction)] == ["set", "set"]


def test_control_sink_sets_and_clears_only_its_own_override():
    store = MemoryControlStore(clock_ms=lambda: T0)
    part = ControlSink(store).build("overrides", 0, 1)
    part.write_batch([OverrideAction("t", "set", 0.01, T0 + HOUR, "alert:a1", "why", T0)])
    assert store.active()["t"] == Override("t", 0.01, "why", "alert:a1", T0 + HOUR, starts_ms=T0)
    part.write_batch([OverrideAction("t", "clear", 1.0, T0, "alert:a1", "done", T0)])
    assert store.active() == {}
    part.write_batch([OverrideAction("t", "set", 0.0, T0 + HOUR, "alert:a2", "why", T0)])
    store.set(Override("t", 0.5, "by hand", "cli:ops", T0 + HOUR))  # someone took over
    part.write_batch([OverrideAction("t", "clear", 1.0, T0, "alert:a2", "done", T0)])
    assert store.active()["t"].set_by == "cli:ops"


# --- as an operator, on 1 and 2 workers --------------------------------------


def run_operator(rows: list[CostWindow], workers: int) -> list:
    flow = Dataflow("alerts_test")
    windows = op.input("in", flow, TestingSource(rows, batch_size=25))
    empty = op.filter("none", windows, lambda _: False)
    out = alerts("alerts", windows, op.map("as_slot", empty, lambda _: None), policy=policy(only="burn_rate"))
    got: list = []
    op.output("alerts_out", out.alerts, TestingSink(got))
    op.output("actions_out", out.actions, TestingSink(got))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return got


def test_operator_agrees_on_one_and_two_workers():
    tenants = ("t1", "t2", "t3", "t4")
    rows = sorted((w for t in tenants for w in ramp_rows(t)), key=lambda w: w.window_start_ms)
    one = run_operator(rows, 1)
    two = run_operator(rows, 2)
    assert sorted(a.alert_id for a in one if isinstance(a, Alert)) == sorted(
        a.alert_id for a in two if isinstance(a, Alert)
    )
    assert len([a for a in one if isinstance(a, Alert)]) == 16
    assert sorted(one, key=repr) == sorted(two, key=repr)


# --- the ledger's running sums equal sums from scratch -----------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.integers(0, 150),  # minute
            st.integers(0, 40),  # minutes late: how far behind the cursor it may land
            st.sampled_from(["a", "b"]),
            st.sampled_from(["baseline", "finetuned"]),
            st.integers(0, 5),  # requests
            st.sampled_from(["window", "correction"]),
            st.sampled_from(["llm", "judge"]),
        ),
        max_size=120,
    )
)
def test_running_sums_match_sums_from_scratch(ops):
    led = TenantLedger(agent_window_ms=30 * MIN)
    for width in (HOUR, 5 * MIN, 45 * MIN):
        led.llm_open[width] = [0, 0]
    truth: dict[tuple, tuple[int, int, int]] = {}  # newest window row per key
    extra: list[tuple] = []  # corrections
    cursor_min = 0
    for i, (minute, late, agent, variant, n, kind, category) in enumerate(ops):
        m = max(0, min(minute, cursor_min + 2) - late)
        w = win(m, str(n), agent=agent, variant=variant, requests=n, kind=kind, category=category, version=i)
        led.add_window(w)
        if kind == "correction":
            extra.append((category, agent, variant, m, n))
        else:
            truth[(category, agent, variant, m)] = (n, n)
        if i % 3 == 2:
            cursor_min += 1 + i % 4
            led.advance(T0 + cursor_min * MIN)
            rows = [(*k, v[0]) for k, v in truth.items()] + extra
            end = T0 + cursor_min * MIN

            def scratch(start_min, cat="llm", by=None, rows=rows, upto=cursor_min):
                out: dict = {}
                for c, a, v, mm, nn in rows:
                    if c == cat and start_min <= mm < upto:
                        k = by(a, v) if by else ""
                        out[k] = out.get(k, 0) + nn
                return out

            for width in (60, 5, 45):
                req, cost = led.llm_sum(end - width * MIN, end)
                want = scratch(cursor_min - width).get("", 0)
                assert (req, cost) == (want, usd_to_pico(want))
            agents = {(a, v): rc for a, vs in led.agent_sums().items() for v, rc in vs.items()}
            want_agents = scratch(cursor_min - 30, by=lambda a, v: (a, v))
            assert agents == {k: [n, usd_to_pico(n)] for k, n in want_agents.items() if n}
            llm_today, judge_today = led.day_costs(end)
            assert llm_today == usd_to_pico(scratch(0).get("", 0))
            assert judge_today == usd_to_pico(scratch(0, cat="judge").get("", 0))


@pytest.mark.parametrize("rule", RULE_TYPES, ids=lambda r: r.name)
def test_runbook_steps_are_commands_the_cli_accepts(rule):
    """Every step an alert points to parses as a `judgeflow` command line."""
    steps = [
        x.strip().removeprefix("then ") for x in rule().runbook_for("acme corp", "support bot").split(";")
    ]
    assert steps
    for step in steps:
        argv = shlex.split(step)
        assert argv[0] == "judgeflow"
        _parser().parse_args(argv[1:])  # exits (fails the test) on an unknown command or option
