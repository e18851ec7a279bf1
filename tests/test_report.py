"""`judgeflow report`: the CLI, run as a subprocess beside ClickHouse (the chdb
HTTP front), answers from known data: a small flow writes minute windows
and their rollups (with late events and corrections), events, evaluations,
alerts and a pricing issue; the numbers printed must equal sums computed
here straight from the inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

from core.records import AbuseWindow, Alert, Evaluation, Event, LedgerEntry, pico_to_usd
from operators.estimates import quality_estimates
from operators.ledger import ledger_entry
from operators.price import pricing_issue
from operators.rollups import rollup
from operators.windows import cost_window
from simulators.chdb_http import start_chdb_http
from sinks.clickhouse import connect
from sinks.clickhouse_sink import ClickHouseSink

REPO = Path(__file__).resolve().parents[1]
MIN = 60_000
HOUR = 60 * MIN
T0 = int(datetime(2023, 11, 16, 10, 0, tzinfo=UTC).timestamp() * 1000)
DB = "report_t"


def event(i: int, tenant: str, agent: str, variant: str, ts: int, pico: int, *, model: str = "m1") -> Event:
    return Event(
        event_id=f"e{i:04d}",
        ts_ms=ts,
        tenant_id=tenant,
        agent=agent,
        model=model,
        provider="p",
        variant=variant,
        input_text="",
        output_text="",
        context=None,
        input_tokens=100 + i % 50,
        output_tokens=20 + i % 7,
        cache_read_tokens=0,
        cache_write_tokens=0,
        reasoning_tokens=0,
        provided_cost_pusd=pico,
        latency_ms=None,
        conversation_id=None,
        user_id=None,
        metadata={},
        source=None,
        cost_pusd=pico,
        cost_source="unknown" if model == "mystery" else "provided",
    )


def known_events() -> list[Event]:
    """3.5 hours of traffic for two tenants; the last 40 arrive late and out of order."""
    out = []
    for i in range(400):
        ts = T0 + i * 31_500  # 10:00 .. 13:30
        if i % 3 == 0:
            out.append(event(i, "globex", "coder", "baseline", ts, 7_000_000_000 + 1_000 * i))
        else:
            variant = "finetuned" if i % 2 else "baseline"
            pico = (3_000_000_000 if variant == "finetuned" else 2_000_000_000) + 7 * i
            out.append(event(i, "acme", "support-bot", variant, ts, pico))
    out.append(event(900, "acme", "support-bot", "baseline", T0 + 5 * MIN, 25 * 10**9))  # $0.025
    out.append(event(901, "globex", "coder", "baseline", T0 + 65 * MIN, 12 * 10**9))  # $0.012
    out.append(event(902, "acme", "helpdesk", "baseline", T0 + 70 * MIN, 0, model="mystery"))
    # another tenant's agent of the same name: never merged with acme's
    out.extend(
        event(2000 + j, "globex", "support-bot", "baseline", T0 + j * 9 * MIN, 4 * 10**9) for j in range(20)
    )
    late = [
        event(1000 + j, "acme", "support-bot", "baseline", T0 + j * 4 * MIN + 7, 10**9) for j in range(40)
    ]
    return out + late[::-1]


def evaluations(events: list[Event]) -> list[Evaluation]:
    """Refusal verdicts on the support-bot: baseline events sampled at 0.5, finetuned at 1.0;
    every 4th flagged; a tier-1 verdict overrides tier 0 on every 10th event."""
    out = []
    for e in events:
        if e.tenant_id != "acme" or e.agent != "support-bot" or e.event_id >= "e1000":
            continue
        n = int(e.event_id[1:])
        prob = 0.5 if e.variant == "baseline" else 1.0
        tiers = [(0, "flagged" if n % 4 == 0 else "ok")]
        if n % 10 == 0:
            tiers.append((1, "ok"))
        for tier, label in tiers:
            out.append(
                Evaluation(
                    eval_id=f"{e.event_id}|refusal|{tier}",
                    event_id=e.event_id,
                    ts_ms=e.ts_ms,
                    tenant_id=e.tenant_id,
                    agent=e.agent,
                    model=e.model,
                    variant=e.variant,
                    metric="refusal",
                    score=1.0 if label == "flagged" else 0.0,
                    label=label,
                    explanation="",
                    judge=f"t{tier}",
                    tier=tier,
                    cache_hit=False,
                    inclusion_prob=prob,
                    content_hash="h",
                    judge_cost_pusd=90_000 + n if tier else 0,  # a tier-1 call costs; tier 0 is free
                    judge_latency_ms=1.0,
                )
            )
    return out


def judge_spend(events: list[Event]) -> list[LedgerEntry]:
    return [
        LedgerEntry(
            e.tenant_id,
            e.agent,
            e.model,
            e.variant,
            e.ts_ms,
            judge_calls=1,
            judge_cost_pusd=150_000,
            entry_id=f"{e.event_id}|j",
        )
        for e in events
        if int(e.event_id[1:]) % 5 == 0
    ]


ALERTS = [
    Alert(
        "a1", "burn_rate", "globex", "", "warn", "ok", 6.0, 5.0, T0, T0 + HOUR, T0 + HOUR, "globex warn", ""
    ),
    Alert(
        "a2",
        "burn_rate",
        "globex",
        "",
        "ok",
        "warn",
        1.0,
        5.0,
        T0 + HOUR,
        T0 + 2 * HOUR,
        T0 + 2 * HOUR,
        "ok",
        "",
    ),
]


def abuse_row(minute: int, tenant: str, requests: int, repeated: int, user: str, top: int) -> AbuseWindow:
    distinct = requests - repeated
    return AbuseWindow(
        T0 + minute * MIN, MIN, tenant, requests, repeated, distinct, repeated + 1, 3, user, top, 1
    )


ABUSE = [
    abuse_row(5, "acme", 100, 90, "bot-1", 20),
    abuse_row(6, "acme", 100, 95, "bot-1", 25),
    abuse_row(5, "globex", 50, 0, "whale", 45),
    abuse_row(6, "globex", 50, 1, "whale", 40),
    abuse_row(7, "globex", 10, 9, "x", 10),  # too few requests for a peak
    abuse_row(5, "initech", 40, 2, "u1", 5),
]


@pytest.fixture(scope="module")
def ch_url(tmp_path_factory: pytest.TempPathFactory):
    with start_chdb_http(tmp_path_factory.mktemp("report_chdb")) as url:
        yield url


@pytest.fixture(scope="module")
def loaded(ch_url: str) -> list[Event]:
    """Write the known data through the flow's own operators and sinks."""
    events = known_events()
    flow = Dataflow("report_data")

    def to(step: str, items: list, table: str, batch: int = 50):
        stream = op.input(f"{step}_in", flow, TestingSource(items, batch_size=batch))
        op.output(f"{step}_out", stream, ClickHouseSink(ch_url, DB, table))
        return stream

    ledger = op.input("ledger_in", flow, TestingSource([ledger_entry(e) for e in events], batch_size=50))
    spend = op.input("spend_in", flow, TestingSource(judge_spend(events), batch_size=50))
    minutes = op.merge(
        "minutes",
        cost_window("cw", ledger, size_s=60, allowed_lateness_s=60).rows,
        cost_window("jw", spend, size_s=60, allowed_lateness_s=60, category="judge").rows,
    )
    windows = op.merge("all", minutes, rollup("ru", minutes, sizes_s=(3600, 86400), allowed_lateness_s=60))
    op.output("windows_out", windows, ClickHouseSink(ch_url, DB, "cost_windows"))
    to("events", events, "llm_events")
    evals = to("evals", evaluations(events), "evaluations")
    estimates = quality_estimates("est", evals, size_s=60, allowed_lateness_s=60)
    op.output("estimates_out", estimates, ClickHouseSink(ch_url, DB, "quality_estimates"))
    to("alerts", ALERTS, "alerts")
    to("issues", [pricing_issue("mystery", "p", T0 + 70 * MIN)], "pricing_issues")
    to("abuse", ABUSE, "abuse_windows")
    run_main(flow)
    return events


def report(ch_url: str, *args: str) -> dict:
    out = run_cli(ch_url, *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def run_cli(ch_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "flows.cli", "report", *args, "--dsn", ch_url, "--database", DB]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


def usd(pico: int) -> Decimal:
    return pico_to_usd(pico)


def in_range(events: list[Event], since: int, until: int) -> list[Event]:
    """Events whose minute window starts in [since, until): the report's resolution."""
    return [e for e in events if since <= e.ts_ms - e.ts_ms % MIN < until]


def per_tenant(events: list[Event]) -> dict[str, tuple[int, Decimal]]:
    acc: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for e in events:
        acc[e.tenant_id][0] += 1
        acc[e.tenant_id][1] += e.cost_pusd
    return {t: (n, usd(p)) for t, (n, p) in acc.items()}


def rows_by(table: dict, *keys: str) -> dict:
    return {tuple(r[k] for k in keys) if len(keys) > 1 else r[keys[0]]: r for r in table["rows"]}


def test_all_reports_match_the_known_data(ch_url: str, loaded: list[Event]) -> None:
    # 10:17 .. 13:00: read from minutes (10:17-11:00), then whole hours (11:00-13:00) of the rollups
    since, until = T0 + 17 * MIN, T0 + 3 * HOUR
    r = report(
        ch_url, "all", "--since", "2023-11-16T10:17:00Z", "--until", "2023-11-16 13:00", "--budget", "50"
    )
    assert r["range"]["since"] == "2023-11-16T10:17:00.000Z"
    assert r["range"]["now_from"] == "data"
    t = r["tables"]
    scoped = in_range(loaded, since, until)
    money = [
        (name, k, v)
        for name, table in t.items()
        for row in [*table["rows"], table["total"] or {}]
        for k, v in row.items()
        if k.endswith("_usd") or (name == "alerts" and k in ("value", "threshold"))
    ]
    assert money and all(isinstance(v, str | None) for _, _, v in money)  # exact decimals, never floats

    cost = rows_by(t["cost"], "tenant")
    assert {k: (v["requests"], Decimal(v["cost_usd"])) for k, v in cost.items()} == per_tenant(scoped)
    assert all(isinstance(v["cost_usd"], str) for v in cost.values())  # money is never a float
    judge = defaultdict(int)
    for j in judge_spend(loaded):
        if since <= j.ts_ms - j.ts_ms % MIN < until:
            judge[j.tenant_id] += j.judge_cost_pusd
    assert {k: Decimal(v["judge_cost_usd"]) for k, v in cost.items()} == {k: usd(v) for k, v in judge.items()}
    total = t["cost"]["total"]
    assert Decimal(total["cost_usd"]) == sum(usd(e.cost_pusd) for e in scoped)
    assert total["unpriced_requests"] == 1  # the mystery model

    # variants: per tenant and agent, cost per request and its ratio to the baseline, and the
    # judges' spend on each variant's events
    v = rows_by(t["variants"], "tenant", "agent", "variant")
    sb = [e for e in scoped if e.tenant_id == "acme" and e.agent == "support-bot"]
    judge_cost = {e.event_id: sum(j.judge_cost_pusd for j in evaluations([e])) for e in sb}
    cpr = {}
    for variant in ("baseline", "finetuned"):
        mine = [e for e in sb if e.variant == variant]
        row = v[("acme", "support-bot", variant)]
        cpr[variant] = (usd(sum(e.cost_pusd for e in mine)) / len(mine)).quantize(Decimal("1e-12"))
        assert row["requests"] == len(mine)
        assert Decimal(row["cost_per_request_usd"]) == cpr[variant]
        assert Decimal(row["judge_cost_usd"]) == usd(sum(judge_cost[e.event_id] for e in mine))
    assert Decimal(v[("acme", "support-bot", "baseline")]["judge_cost_usd"]) > 0  # tier-1 calls
    assert v[("acme", "support-bot", "finetuned")]["vs_baseline"] == pytest.approx(
        float(cpr["finetuned"]) / float(cpr["baseline"])
    )
    other = [e for e in scoped if e.tenant_id == "globex" and e.agent == "support-bot"]
    assert v[("globex", "support-bot", "baseline")]["requests"] == len(other) > 0
    assert Decimal(v[("globex", "support-bot", "baseline")]["judge_cost_usd"]) == 0
    # quality: one verdict per event (the highest tier), weighted by 1 / inclusion probability
    q = rows_by(t["quality"], "tenant", "agent", "variant", "metric")
    judged = {e.event_id: e for e in sb if e.event_id < "e1000"}
    for variant in ("baseline", "finetuned"):
        ids = [int(i[1:]) for i, e in judged.items() if e.variant == variant]
        flagged = [n for n in ids if n % 4 == 0 and n % 10 != 0]
        row = q[("acme", "support-bot", variant, "refusal")]
        assert (row["judged"], row["flagged"]) == (len(ids), len(flagged))
        assert row["flagged_rate"] == pytest.approx(len(flagged) / len(ids))

    top = t["top"]["rows"]
    assert [x["event_id"] for x in top] == ["e0901"]  # e0900 ($0.025) is before 10:17
    assert Decimal(top[0]["cost_usd"]) == Decimal("0.012")

    hourly = rows_by(t["hourly"], "start", "tenant")  # whole hours around the range: 10:00 .. 13:00
    for hour in range(3):
        start = T0 + hour * HOUR
        want = per_tenant(in_range(loaded, start, start + HOUR))
        iso = datetime.fromtimestamp(start / 1000, tz=UTC).isoformat(timespec="milliseconds")
        got = {k[1]: Decimal(r["cost_usd"]) for k, r in hourly.items() if k[0] == iso.replace("+00:00", "Z")}
        assert got == {tenant: c for tenant, (_, c) in want.items()}

    # month to date: 2023-11-01 .. the newest minute window; projected over 30 days
    newest = max(e.ts_ms for e in loaded) // MIN * MIN + MIN
    budget = rows_by(t["budget"], "tenant")
    elapsed = Decimal(newest - int(datetime(2023, 11, 1, tzinfo=UTC).timestamp() * 1000))
    for tenant, (_, spent) in per_tenant(loaded).items():
        row = budget[tenant]
        assert Decimal(row["mtd_cost_usd"]) == spent
        assert Decimal(row["projected_usd"]) == (spent * 30 * 86_400_000 / elapsed).quantize(Decimal("1e-12"))
        assert row["used"] == pytest.approx(float(spent / 50))

    tokens = rows_by(t["tokens"], "agent", "model")
    coder = [e for e in scoped if e.agent == "coder"]
    assert tokens[("coder", "m1")]["requests"] == len(coder)
    assert tokens[("coder", "m1")]["input_max"] == max(e.input_tokens for e in coder)

    assert [a["to"] for a in t["alerts"]["rows"]] == ["warn", "ok"]
    assert [(p["model"], p["requests"], p["tenants"]) for p in t["pricing"]["rows"]] == [
        ("mystery", 1, "acme")
    ]


def test_last_counts_back_from_the_newest_event_and_filters_apply(ch_url: str, loaded: list[Event]) -> None:
    r = report(ch_url, "cost", "--last", "1h", "--by", "agent,variant", "--tenant", "acme")
    newest = max(e.ts_ms for e in loaded) // MIN * MIN + MIN
    assert r["range"]["until"] == datetime.fromtimestamp(newest / 1000, tz=UTC).isoformat(
        timespec="milliseconds"
    ).replace("+00:00", "Z")
    scoped = [e for e in in_range(loaded, newest - HOUR, newest) if e.tenant_id == "acme"]
    want: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for e in scoped:
        want[(e.agent, e.variant)] += usd(e.cost_pusd)
    got = {k: Decimal(row["cost_usd"]) for k, row in rows_by(r["tables"]["cost"], "agent", "variant").items()}
    assert got == dict(want)


def test_text_and_html_reports(ch_url: str, loaded: list[Event], tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    out = run_cli(
        ch_url, "cost", "--since", "2023-11-16T10:00Z", "--until", "2023-11-16T14:00Z", "--html", str(page)
    )
    assert out.returncode == 0, out.stderr
    total = sum(usd(e.cost_pusd) for e in loaded)
    assert f"${total:,.4f}" in out.stdout  # the total line of the text table
    assert "newest event time in the data" in out.stdout

    html = page.read_text()
    for chart in ("cost over time per tenant", "alerts timeline", "cost per request by variant"):
        assert '<svg width="1000"' in html and f'aria-label="{chart}"' in html
    assert html.count("<polyline") == 2  # one cost line per tenant
    assert "globex" in html and "support-bot / finetuned" in html
    # self-contained: nothing to fetch, nothing to run
    for outside in ("http://", "https://", "<script", "<link", "url("):
        assert outside not in html


def test_bad_arguments_say_what_is_wrong(ch_url: str, loaded: list[Event]) -> None:
    out = run_cli(ch_url, "cost", "--last", "yesterday")
    assert out.returncode == 2 and "cannot read the duration 'yesterday'" in out.stderr
    out = run_cli(ch_url, "cost", "--by", "planet")
    assert out.returncode == 2 and "--by: unknown planet" in out.stderr


def test_quality_report_gives_the_horvitz_thompson_rate(ch_url: str, loaded: list[Event]) -> None:
    # by hand: each event's verdict of record is its highest tier; weight 1 / inclusion probability
    weights = flagged = 0.0
    judged = hits = 0
    for v in evaluations(loaded):
        if v.tier == 1 or int(v.event_id[1:]) % 10:  # tier 1 overrides tier 0 on every 10th event
            if v.tier == 0 and int(v.event_id[1:]) % 10 == 0:
                continue
            judged += 1
            hits += v.label == "flagged"
            weights += 1 / v.inclusion_prob
            flagged += (v.label == "flagged") / v.inclusion_prob
    out = report(ch_url, "quality", "--since", "2023-11-16T09:00:00Z", "--until", "2023-11-16T15:00:00Z")
    (row,) = [r for r in out["tables"]["quality_estimates"]["rows"] if r["metric"] == "refusal"]
    assert (row["tenant"], row["agent"]) == ("acme", "support-bot")
    assert (row["judged"], row["flagged"]) == (judged, hits)
    assert abs(row["population_est"] - weights) < 1e-6
    assert abs(row["flagged_rate"] - flagged / weights) < 1e-9
    assert row["ci95_low"] < row["flagged_rate"] < row["ci95_high"]


def test_abuse_report_ranks_tenants_and_windows_by_their_peak_share(ch_url: str, loaded: list[Event]) -> None:
    r = report(
        ch_url, "abuse", "--since", "2023-11-16T10:00Z", "--until", "2023-11-16T11:00Z", "--limit", "3"
    )
    t = r["tables"]
    tenants = [
        (x["tenant"], x["requests"], x["repeated_requests"], x["peak_repeated_share"], x["top_user"])
        for x in t["abuse"]["rows"]
    ]
    assert tenants == [
        ("acme", 200, 185, pytest.approx(0.95), "bot-1"),
        ("globex", 110, 10, pytest.approx(0.02), "whale"),  # its peak: the whale's 90%
        ("initech", 40, 2, pytest.approx(0.05), "u1"),
    ]
    globex = t["abuse"]["rows"][1]
    assert (globex["top_user_requests"], globex["peak_user_share"]) == (85, pytest.approx(0.9))
    windows = [(x["window_start"], x["tenant"], x["top_user"]) for x in t["abuse_windows"]["rows"]]
    assert windows == [
        ("2023-11-16T10:06:00.000Z", "acme", "bot-1"),
        ("2023-11-16T10:05:00.000Z", "acme", "bot-1"),
        ("2023-11-16T10:05:00.000Z", "globex", "whale"),
    ]
    # a lower minimum lets the tiny window count: 100% from one user
    low = report(ch_url, "abuse", "--since", "2023-11-16T10:00Z", "--min-requests", "5", "--tenant", "globex")
    assert low["tables"]["abuse"]["rows"][0]["peak_user_share"] == pytest.approx(1.0)


def test_a_locked_chdb_directory_gets_a_way_out_that_works(tmp_path: Path) -> None:
    """While another process holds a chdb directory, the report says so and prints commands that
    work: the server refuses the held directory just as clearly, and once the holder is gone it
    serves the directory and the report reads it through it."""
    data = tmp_path / "chdb"
    hold = (
        "import sys, time; from sinks.clickhouse import connect, ensure_schema;"
        f"c = connect('chdb:{data}'); ensure_schema(c, 'judgeflow'); print('held', flush=True);"
        "sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        cmd = [sys.executable, "-m", "flows.cli", "report", "alerts", "--dsn", f"chdb:{data}"]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert f"python -m simulators.chdb_http --path {data} --port 8123 &" in out.stderr
        assert "judgeflow report alerts --dsn http://127.0.0.1:8123" in out.stderr
        serve = [sys.executable, "-m", "simulators.chdb_http", "--path", str(data)]
        refused = subprocess.run(serve, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert "Another process is using this directory" in refused.stderr
    finally:
        holder.communicate("", timeout=60)
    with start_chdb_http(data) as url:  # the way out, once the directory is free
        out = subprocess.run(
            [*cmd[:5], "--dsn", url], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
        )
    assert out.returncode == 0, out.stderr
    assert "(no rows)" in out.stdout


def test_full_prints_long_texts_whole(ch_url: str, loaded: list[Event]) -> None:
    long = "globex: " + "x" * 100
    at = datetime.fromtimestamp((T0 + 10 * MIN) / 1000, tz=UTC)
    connect(ch_url, DB).insert(
        "alerts",
        [["a9", "burn_rate", "globex", "", "warn", "ok", 1.0, 1.0, at, at, at, long, "", ""]],
        column_names=[
            "alert_id", "rule", "tenant_id", "scope", "level", "previous_level", "value", "threshold",
            "window_start", "window_end", "ts", "message", "runbook", "details",
        ],
    )  # fmt: skip
    args = ("alerts", "--since", "2023-11-16T10:00Z", "--until", "2023-11-16T14:00Z")
    cut, full = run_cli(ch_url, *args), run_cli(ch_url, *args, "--full")
    assert cut.returncode == full.returncode == 0, cut.stderr + full.stderr
    assert long not in cut.stdout and long[:57] + "..." in cut.stdout
    assert long in full.stdout
