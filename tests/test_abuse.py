"""Abuse signals: per tenant and window, the share of requests repeating a prompt (normalized as
the verdict cache does) and the top user's share — counted exactly whatever the batching, order
or worker count; the `repeated_prompts` and `single_user_share` alerts over them (informational:
no override unless an action names them); and the whole flow on Kafka and ClickHouse, where a bot
repeating one prompt and a tenant dominated by one user get their rows and alerts and others don't."""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime

import bytewax.operators as op
import msgspec
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from prometheus_client import REGISTRY

from core.ports import OverrideAction
from core.records import AbuseWindow, Alert, Event, Source
from flows.cli import main
from flows.config import ConfigError
from operators.abuse import _Counts, abuse_row, abuse_window, combine, fold
from operators.dedup import ContentKeyer
from operators.tumbling import _Spec, _TumblingLogic
from simulators.kafka_mock import produce_all
from sinks.clickhouse import connect, ensure_schema
from tests.conftest import flow_settings, rows, run_flow, topic_flow_settings
from tests.test_alerts import ONLY, policy, run, win

MIN = 60_000
T0 = int(datetime(2024, 3, 10, 9, 0, tzinfo=UTC).timestamp() * 1000)
KEYER = ContentKeyer(
    lowercase=False,
    volatile_patterns=flow_settings().flow.cache.volatile_patterns,
    judge_version="test",
)
NORMALIZE = KEYER.normalize


def event(i: int, tenant: str, prompt: str, ts: int, user: str | None = None) -> Event:
    return Event(
        event_id=f"{tenant}-{i:05d}",
        ts_ms=ts,
        tenant_id=tenant,
        agent="chat",
        model="m",
        provider="p",
        variant="baseline",
        input_text=prompt,
        output_text="ok",
        context=None,
        input_tokens=10,
        output_tokens=2,
        cache_read_tokens=0,
        cache_write_tokens=0,
        reasoning_tokens=0,
        provided_cost_pusd=None,
        latency_ms=None,
        conversation_id=None,
        user_id=user,
        metadata={},
        source=None,
    )


def rows_of(events: list[Event]) -> dict[tuple[str, int], AbuseWindow]:
    """The logic without the operator: fold everything, one row per (tenant, window)."""
    acc: dict[tuple[str, int], _Counts] = defaultdict(_Counts)
    for p in combine(events, MIN, NORMALIZE):
        fold(acc[(p.tenant_id, p.ts_ms - p.ts_ms % MIN)], p)
    return {k: abuse_row(k[0], k[1], MIN, c, 0) for k, c in acc.items()}


# --- the counts ----------------------------------------------------------------


def test_a_prompt_repeats_within_its_tenant_and_window_after_normalization():
    bot = [
        # the same question, stamped with a fresh request id and time, spaced differently
        event(
            i, "bot", f"Summarize  order {uuid.UUID(int=i)} as of 2024-03-10T09:0{i % 10}:00Z", T0 + i * 100
        )
        for i in range(40)
    ]
    other = [event(100 + i, "bot", f"question number {i}", T0 + 5_000 + i) for i in range(10)]
    elsewhere = [event(200, "acme", bot[0].input_text, T0), event(201, "bot", bot[0].input_text, T0 + MIN)]
    got = rows_of(bot + other + elsewhere)
    w = got[("bot", T0)]
    assert (w.requests, w.distinct_prompts, w.repeated_requests, w.top_prompt_requests) == (50, 11, 39, 40)
    assert w.repeated_share == pytest.approx(39 / 50)
    # another tenant, or the next window, sees the prompt for the first time
    assert got[("acme", T0)].repeated_requests == 0
    assert got[("bot", T0 + MIN)].repeated_requests == 0


def test_the_top_user_is_the_one_with_most_requests_the_smallest_id_on_a_tie():
    es = [
        event(i, "t", f"p{i}", T0 + i, user) for i, user in enumerate(["b", "a", "b", "a", "c", None, None])
    ]
    w = rows_of(es)[("t", T0)]
    assert (w.top_user, w.top_user_requests, w.distinct_users, w.requests) == ("a", 2, 3, 7)
    assert w.top_user_share == pytest.approx(2 / 7)  # requests without a user id count in the share's base
    anonymous = rows_of([event(i, "t", "same", T0 + i) for i in range(5)])[("t", T0)]
    assert (anonymous.top_user, anonymous.top_user_requests, anonymous.top_user_share) == ("", 0, 0.0)


# --- the operator: the same events, the same rows --------------------------------


def traffic(seed: int = 7) -> list[Event]:
    """Eight minutes, three tenants: a bot, a whale user, and the rest; shuffled within 2 minutes."""
    rnd = random.Random(seed)
    out = []
    for i in range(1200):
        minute, tenant = i % 8, ("bot", "whale", "calm")[i % 3]
        prompt = "same prompt" if tenant == "bot" and i % 5 else f"prompt {i % 97}"
        user = "u-whale" if tenant == "whale" and i % 4 else f"u-{i % 13}"
        out.append(event(i, tenant, prompt, T0 + minute * MIN + i * 37 % MIN, user))
    out.sort(key=lambda e: e.ts_ms + rnd.randrange(0, 2 * MIN))
    return out


def run_abuse(events: list[Event], *, batch_size: int, workers: int = 1) -> dict[tuple[str, int], tuple]:
    flow = Dataflow("abuse_test")
    up = op.input("in", flow, TestingSource(events, batch_size=batch_size))
    got: list[AbuseWindow] = []
    out = abuse_window("abuse", up, size_s=60, allowed_lateness_s=300, normalize=NORMALIZE)
    op.output("out", out, TestingSink(got))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    newest: dict[tuple[str, int], AbuseWindow] = {}
    for w in got:
        k = (w.tenant_id, w.window_start_ms)
        if k not in newest or w.version >= newest[k].version:
            newest[k] = w
    return {k: msgspec_fields(w) for k, w in newest.items()}


def msgspec_fields(w: AbuseWindow) -> tuple:
    """Everything but the version (emission time)."""
    return tuple(getattr(w, f) for f in w.__struct_fields__ if f != "version")


def test_the_same_events_give_the_same_rows_whatever_the_batches_order_and_workers():
    events = traffic()
    want = {k: msgspec_fields(w) for k, w in rows_of(events).items()}
    assert len(want) == 24
    assert run_abuse(events, batch_size=1000) == want
    assert run_abuse(events, batch_size=7) == want
    by_id = sorted(events, key=lambda e: (e.ts_ms // (2 * MIN), e.event_id))  # another order within 2 min
    assert run_abuse(by_id, batch_size=50) == want
    assert run_abuse(events, batch_size=30, workers=2) == want
    bot = want[("bot", T0)]
    assert bot[4] > 0.7 * bot[3]  # repeated_requests: the bot's window is mostly one prompt


def test_a_window_is_revised_within_the_lateness_and_later_events_are_counted_and_dropped():
    now = [1000.0]
    spec = _Spec(
        step_id="abuse_late",
        key_of=lambda p: p.tenant_id,
        size_ms=MIN,
        lateness_ms=5 * MIN,
        idle_s=0.0,
        ts_of=lambda p: p.ts_ms,
        new=_Counts,
        fold=fold,
        rows=lambda key, start, acc, version: [abuse_row(key, start, MIN, acc, version)],
        clock=lambda: now[0],
    )
    logic = _TumblingLogic(spec, None)

    def feed(*events: Event) -> list[tuple[int, int, int]]:
        out = logic.on_batch(combine(events, MIN, NORMALIZE))[0]
        return [(w.window_start_ms, w.requests, w.repeated_requests) for w in out]

    assert feed(*(event(i, "t", "same", T0 + i) for i in range(5)), event(5, "t", "x", T0 + 2 * MIN)) == [
        (T0, 5, 4)
    ]
    assert feed(event(6, "t", "same", T0 + 9)) == [(T0, 6, 5)]  # within the lateness: revised
    dropped = REGISTRY.get_sample_value("judgeflow_late_records_dropped_total", {"step": "abuse_late"}) or 0
    assert feed(event(7, "t", "y", T0 + 10 * MIN)) == [(T0 + 2 * MIN, 1, 0)]  # minute 0 is final now
    assert feed(event(8, "t", "same", T0 + 11)) == []
    assert REGISTRY.get_sample_value("judgeflow_late_records_dropped_total", {"step": "abuse_late"}) == (
        dropped + 1
    )


# --- the alert rules ---------------------------------------------------------------


def abuse(minute: int, requests: int, repeated: int, top_user: str = "", top: int = 0, tenant: str = "t"):
    return AbuseWindow(
        T0 + minute * MIN,
        MIN,
        tenant,
        requests,
        repeated,
        requests - repeated,
        repeated + 1,
        5,
        top_user,
        top,
        1,
    )


def minutes(shape: list[tuple[int, int, str, int]], tenant: str = "t") -> list[list]:
    """One batch per minute: its cost window (the tenant's clock) and its abuse row."""
    return [
        [win(m, "0.01", tenant=tenant, requests=n, start=T0), abuse(m, n, rep, user, top, tenant)]
        for m, (n, rep, user, top) in enumerate(shape)
    ]


ABUSE_ONLY = {**ONLY, "alerts.repeated_prompts.enabled": True, "alerts.single_user_share.enabled": True}


def test_repeated_prompts_fire_with_the_numbers_and_resolve():
    shape = [(100, 10, "", 0)] * 3 + [(100, 75, "", 0)] * 2 + [(100, 95, "", 0)] * 2 + [(100, 5, "", 0)] * 2
    out = run(minutes(shape), policy(**ABUSE_ONLY))
    alerts = [a for a in out if isinstance(a, Alert)]
    assert [(a.rule, a.level, a.ts_ms) for a in alerts] == [
        ("repeated_prompts", "warn", T0 + 4 * MIN),
        ("repeated_prompts", "critical", T0 + 6 * MIN),
        ("repeated_prompts", "ok", T0 + 8 * MIN),
    ]
    critical = alerts[1]
    assert critical.value == pytest.approx(0.95) and critical.window_start_ms == T0 + 5 * MIN
    assert json.loads(critical.details) == {
        "value": "0.95",
        "threshold": "0.9",
        "requests": 100,
        "repeated_requests": 95,
        "distinct_prompts": 5,
        "top_prompt_requests": 96,
    }
    assert "95%" in critical.message
    assert critical.message.endswith("; the most repeated prompt was sent 96 times of 100")
    assert critical.runbook == "judgeflow report abuse --tenant t --last 1h"
    # informational: the default actions (critical -> judge 1%) do not act on it
    assert not [a for a in out if isinstance(a, OverrideAction)]


def test_single_user_share_names_the_user():
    shape = [(40, 0, "u-1", 5)] * 2 + [(40, 0, "bot-7", 36)] * 3
    out = run(minutes(shape, tenant="acme"), policy(**ABUSE_ONLY))
    (alert,) = [a for a in out if isinstance(a, Alert)]
    assert (alert.rule, alert.level, alert.tenant_id, alert.ts_ms) == (
        "single_user_share",
        "critical",
        "acme",
        T0 + 3 * MIN,
    )
    assert json.loads(alert.details)["top_user"] == "bot-7"
    assert "90%" in alert.message and alert.message.endswith("; user 'bot-7' sent 36 of 40")


def test_windows_below_min_requests_never_fire():
    shape = [(29, 28, "u", 29)] * 5  # every request the same prompt from one user, but 29 a minute
    assert not [a for a in run(minutes(shape), policy(**ABUSE_ONLY)) if isinstance(a, Alert)]
    lower = policy(**ABUSE_ONLY, **{"alerts.single_user_share.min_requests": 20})
    assert [a.rule for a in run(minutes(shape), lower) if isinstance(a, Alert)] == ["single_user_share"]


def test_an_action_applies_only_when_named():
    shape = [(100, 95, "", 0)] * 3
    named = policy(**ABUSE_ONLY, **{"alerts.actions.rules": ["repeated_prompts"]})
    (action,) = [a for a in run(minutes(shape), named) if isinstance(a, OverrideAction)]
    assert (action.op, action.rate) == ("set", 0.01)
    assert "(repeated_prompts critical)" in action.reason


def test_share_thresholds_above_one_are_config_errors():
    with pytest.raises(ConfigError, match=r"repeated_prompts\.warn"):
        flow_settings(**{"alerts.repeated_prompts.warn": 2})


# --- the whole flow ------------------------------------------------------------------

FLOW_MINUTES = 6
BOT_MINUTES = 4  # the bot stops after these


def flow_events(start: int) -> list[dict]:
    """Per minute, 40 requests of each tenant: `bot-co` sends one prompt (with a fresh request id
    and time in it) from 12 user ids for four minutes, then distinct prompts; `solo-co` has one
    user sending 34 of 40 distinct prompts; `calm-co` 40 distinct prompts from 20 users; `tiny-co`
    5 identical requests from one user a minute (below min_requests)."""
    out = []
    for m in range(FLOW_MINUTES):
        for i in range(40):
            ts = start + m * MIN + i * 1_400
            n = m * 40 + i
            if m < BOT_MINUTES and i < 38:
                sent = datetime.fromtimestamp(ts / 1000, tz=UTC).isoformat()
                bot = f"Where is my order? (request {uuid.UUID(int=n)}, sent {sent})"
            else:
                bot = f"bot-co question {n}"
            out.append(("bot-co", n, bot, f"visitor-{i % 12}", ts, "bot" if bot.startswith("Where") else ""))
            out.append(("solo-co", n, f"solo question {n}", "u-whale" if i < 34 else f"u-{i}", ts, ""))
            out.append(("calm-co", n, f"calm question {n}", f"u-{i % 20}", ts, ""))
            if i < 5:
                out.append(("tiny-co", n, "ping", "u-tiny", ts, "ping"))
    return [
        {
            "event_id": f"{tenant}-{n}",
            "ts": ts,
            "tenant_id": tenant,
            "agent": "chat",
            "model": "gpt-4o-mini",
            "provider": "openai",
            "input": prompt,
            "output": "ok",
            "usage": {"input_tokens": 20, "output_tokens": 5},
            "user_id": user,
            "metadata": {"prompt": same or prompt},  # which prompt it is, for the expected numbers
        }
        for tenant, n, prompt, user, ts, same in out
    ]


def expected_windows(events: list[dict]) -> dict[tuple[str, int], tuple]:
    """(requests, repeated, distinct prompts, top prompt, distinct users, top user, its requests)."""
    by: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for d in events:
        by[(d["tenant_id"], d["ts"] - d["ts"] % MIN)].append(d)
    out = {}
    for k, ds in by.items():
        prompts = Counter(d["metadata"]["prompt"] for d in ds)
        users = Counter(d["user_id"] for d in ds)
        top_user, top = min(users.items(), key=lambda kv: (-kv[1], kv[0]))
        out[k] = (
            len(ds),
            len(ds) - len(prompts),
            len(prompts),
            max(prompts.values()),
            len(users),
            top_user,
            top,
        )
    return out


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_bot_and_a_single_user_get_rows_and_alerts_and_others_do_not(
    kafka, chdb_dsn, database, capsys, workers
):
    start = T0 - T0 % MIN
    events = flow_events(start)
    kafka.create_topic("abuse-events", 2)
    messages = [(d["event_id"].encode(), json.dumps(d).encode(), d["ts"]) for d in events]
    produce_all(kafka.bootstrap, "abuse-events", messages)
    settings = topic_flow_settings(kafka, chdb_dsn, database, topic="abuse-events")
    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    from sinks.memory_store import MemoryControlStore

    store = MemoryControlStore()
    run_flow(settings, workers=workers, control=store)

    got = rows(
        client,
        "SELECT tenant_id, toUnixTimestamp64Milli(window_start), requests, repeated_requests,"
        " distinct_prompts, top_prompt_requests, distinct_users, top_user, top_user_requests, window_s,"
        " toUnixTimestamp64Milli(window_end), repeated_share, top_user_share FROM abuse_windows FINAL",
    )
    assert {(r[0], r[1]): r[2:9] for r in got} == expected_windows(events)
    for r in got:
        assert (r[9], r[10] - r[1]) == (60, MIN)
        assert r[11] == pytest.approx(r[3] / r[2]) and r[12] == pytest.approx(r[8] / r[2])

    alerts = rows(
        client,
        "SELECT tenant_id, rule, level, toUnixTimestamp64Milli(ts), details FROM alerts FINAL"
        " WHERE rule IN ('repeated_prompts', 'single_user_share') ORDER BY tenant_id, rule, ts",
    )
    assert [a[:4] for a in alerts] == [
        ("bot-co", "repeated_prompts", "critical", start + MIN),
        ("bot-co", "repeated_prompts", "ok", start + (BOT_MINUTES + 1) * MIN),
        ("solo-co", "single_user_share", "critical", start + MIN),
    ]
    assert json.loads(alerts[0][4])["repeated_requests"] == 37
    assert json.loads(alerts[2][4])["top_user"] == "u-whale"
    assert store.active() == {}  # informational: no judge sampling override

    # the runbook's report finds the bot's tenant and the whale
    assert main(["report", "abuse", "--dsn", chdb_dsn, "--database", database, "--last", "1h", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["tables"]
    tenants = {r["tenant"]: r for r in report["abuse"]["rows"]}
    assert [r["tenant"] for r in report["abuse"]["rows"]][:2] == ["bot-co", "solo-co"]
    assert tenants["bot-co"]["peak_repeated_share"] == pytest.approx(37 / 40)
    assert (tenants["solo-co"]["top_user"], tenants["solo-co"]["top_user_requests"]) == (
        "u-whale",
        34 * FLOW_MINUTES,
    )
    assert tenants["tiny-co"]["peak_repeated_share"] is None  # no window of 30 requests
    top = report["abuse_windows"]["rows"]
    assert {(r["tenant"], r["top_user"]) for r in top[: BOT_MINUTES + FLOW_MINUTES]} == {
        ("bot-co", "visitor-0"),
        ("solo-co", "u-whale"),
    }


def test_an_event_late_by_its_partitions_position_is_left_out_whatever_the_windows_state():
    """As the cost windows decide it: late when its partition had released something at or past the
    window's end plus the lateness — so a replay leaves out the same events."""

    def at(e: Event, after_ms: int | None) -> Event:
        return msgspec.structs.replace(e, source=Source("llm-events", 0, 0, after_ms))

    events = [
        at(event(0, "t", "hi", T0 + 1), None),
        at(event(1, "t", "hi", T0 + 2), T0 + MIN + 5 * MIN - 1),  # its partition not yet past: counted
        at(event(2, "t", "hi", T0 + 3), T0 + MIN + 5 * MIN),  # past the window's end plus lateness: late
    ]
    parts = combine(events, MIN, NORMALIZE, 5 * MIN)
    assert [(p.ts_ms, p.requests) for p in parts] == [(T0 + 2, 2)]
