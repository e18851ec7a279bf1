"""Webhook delivery against a real local HTTP server that records every request
and fails on demand: Slack and Alertmanager JSON shapes, bounded retries on
500s, no retry on 4xx, filters, the age guard and the time budget."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from prometheus_client import REGISTRY

from core.records import Alert
from flows.config import ConfigError, load_settings
from flows.deps import build_webhooks
from sinks.webhooks import Delivery, WebhookSink, WebhookTarget
from tests.conftest import CONFIG, flow_settings

NOW = time.time_ns() // 1_000_000 // 60_000 * 60_000
HOUR = 3_600_000


class Recorder:
    """A local HTTP server: `plan[path]` is the list of statuses to answer in turn
    (the last one repeats); `delay_s[path]` stalls the answer."""

    def __init__(self) -> None:
        self.requests: dict[str, list] = defaultdict(list)
        self.plan: dict[str, list[int]] = {}
        self.delay_s: dict[str, float] = {}
        self.lock = threading.Lock()
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with rec.lock:
                    seen = rec.requests[self.path]
                    seen.append((self.headers["Content-Type"], json.loads(body)))
                    plan = rec.plan.get(self.path, [200])
                    status = plan[min(len(seen), len(plan)) - 1]
                time.sleep(rec.delay_s.get(self.path, 0))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def bodies(self, path: str) -> list:
        return [body for _, body in self.requests[path]]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    rec.thread.start()
    try:
        yield rec
    finally:
        rec.server.shutdown()
        rec.server.server_close()


def alert(level: str, previous: str, ts_ms: int, *, tenant: str = "acme", rule: str = "burn_rate") -> Alert:
    return Alert(
        alert_id=f"{rule}-{tenant}-{level}-{ts_ms}",
        rule=rule,
        tenant_id=tenant,
        scope="",
        level=level,
        previous_level=previous,
        value=25.5,
        threshold=20.0,
        window_start_ms=ts_ms - HOUR,
        window_end_ms=ts_ms,
        ts_ms=ts_ms,
        message=f"{tenant}: LLM spend over the last hour: $25.50/h, {level} at $20.00/h <&>",
        runbook=f"judgeflow report cost --tenant {tenant} --last 1h --by agent,model,variant",
        details='{"usd_last_hour":"25.5"}',
    )


FAST = Delivery(timeout_s=2, max_attempts=3, backoff_s=0.01, budget_s=5, max_in_flight=4)
STORY = [
    alert("warn", "ok", NOW - 20 * 60_000),
    alert("critical", "warn", NOW - 10 * 60_000),
    alert("ok", "critical", NOW),
]


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def post(targets: list[WebhookTarget], alerts: list[Alert], d: Delivery = FAST) -> None:
    WebhookSink(targets, d).build("webhooks", 0, 1).write_batch(alerts)


def test_slack_messages(recorder):
    post([WebhookTarget("slack", "slack", recorder.url("/slack"))], STORY)
    (ctype, warn), (_, crit), (_, ok) = recorder.requests["/slack"]
    assert ctype == "application/json"
    # the subject once (in the title), the message's numbers with their units, never a raw float
    assert warn["text"] == (
        ":warning: [WARN] acme: judgeflow burn_rate: LLM spend over the last hour: $25.50/h, warn at $20.00/h"
        " &lt;&amp;&gt;"
    )
    assert crit["text"].startswith(":rotating_light: [CRITICAL]") and ok["text"].startswith(
        ":white_check_mark: [RESOLVED]"
    )
    section, fields, context = crit["blocks"]
    assert section["text"]["text"] == (
        "*[CRITICAL] acme: judgeflow burn_rate*\nLLM spend over the last hour: $25.50/h, critical at $20.00/h"
        " &lt;&amp;&gt;"  # Slack's escaping
    )
    assert [f["text"].split("\n")[0] for f in fields["fields"]] == ["*Window (UTC)*", "*Alert id*"]
    assert not re.search(r"25\.5(?!0)|\b20\.0\b", json.dumps(crit))  # Alert.value, .threshold
    assert context["elements"][0]["text"] == (
        "Runbook: `judgeflow report cost --tenant acme --last 1h --by agent,model,variant`"
    )


def test_alertmanager_alerts(recorder):
    post([WebhookTarget("am", "alertmanager", recorder.url("/api/v2/alerts"))], STORY[:1])
    post([WebhookTarget("am", "alertmanager", recorder.url("/api/v2/alerts"))], STORY[1:])
    first, second = recorder.bodies("/api/v2/alerts")  # one POST per batch
    labels = {"alertname": "judgeflow_burn_rate", "tenant": "acme", "source": "judgeflow"}
    assert first == [
        {
            "labels": {**labels, "severity": "warn"},
            "annotations": {
                "summary": STORY[0].message,
                "runbook": STORY[0].runbook,
                "value": "25.5",
                "threshold": "20",
                "alert_id": STORY[0].alert_id,
            },
            "startsAt": iso(STORY[0].ts_ms),
            "endsAt": iso(STORY[0].ts_ms + 86_400_000),  # firing until resolved (or a day)
        }
    ]
    # escalation ends the warn alert and fires the critical one; resolution ends the critical one
    assert [(a["labels"]["severity"], a["startsAt"], a["endsAt"]) for a in second] == [
        ("warn", iso(STORY[1].window_start_ms), iso(STORY[1].ts_ms)),
        ("critical", iso(STORY[1].ts_ms), iso(STORY[1].ts_ms + 86_400_000)),
        ("critical", iso(STORY[2].window_start_ms), iso(STORY[2].ts_ms)),
    ]


def test_retries_are_bounded(recorder):
    recorder.plan = {"/down": [500], "/flaky": [503, 429, 200], "/bad": [400]}
    post(
        [
            WebhookTarget("down", "slack", recorder.url("/down")),
            WebhookTarget("flaky", "slack", recorder.url("/flaky")),
            WebhookTarget("bad", "slack", recorder.url("/bad")),
        ],
        STORY[:1],
    )
    assert len(recorder.requests["/down"]) == 3  # max_attempts, then it gives up
    assert len(recorder.requests["/flaky"]) == 3  # 503, 429, then delivered
    assert len(recorder.requests["/bad"]) == 1  # a 4xx other than 429 is not retried
    assert counter("down", "failed") >= 1 and counter("flaky", "ok") >= 1


def counter(target: str, outcome: str) -> float:
    return (
        REGISTRY.get_sample_value("judgeflow_webhook_posts_total", {"target": target, "outcome": outcome})
        or 0
    )


def test_the_time_budget_bounds_a_batch(recorder):
    recorder.delay_s["/slow"] = 1.0
    before = counter("slow", "budget") + counter("slow", "failed")
    d = Delivery(timeout_s=0.2, max_attempts=10, backoff_s=0.01, budget_s=0.5)
    post([WebhookTarget("slow", "slack", recorder.url("/slow"))], STORY[:1], d)
    assert 1 <= len(recorder.requests["/slow"]) < 10  # gave up before trying ten times
    assert counter("slow", "budget") + counter("slow", "failed") == before + 1


def test_filters_and_the_age_guard(recorder):
    old = alert("critical", "ok", NOW - 2 * HOUR, tenant="backfill")
    post(
        [
            WebhookTarget("crit", "slack", recorder.url("/crit"), min_level="critical"),
            WebhookTarget("globex", "slack", recorder.url("/globex"), tenants=frozenset({"globex"})),
            WebhookTarget("daily", "slack", recorder.url("/daily"), rules=frozenset({"daily_spend"})),
        ],
        [*STORY, old, alert("warn", "ok", NOW, tenant="globex")],
    )
    # critical and its resolution; not the warn, not the two-hour-old one (max_age_s = 1 h)
    assert [b["text"].split(" ")[1] for b in recorder.bodies("/crit")] == ["[CRITICAL]", "[RESOLVED]"]
    assert len(recorder.bodies("/globex")) == 1 and recorder.requests["/daily"] == []


def test_sink_in_a_dataflow_and_from_the_flow_config(recorder):
    settings = flow_settings(
        **{
            "alerts.webhooks.backoff_s": 0.01,
            "alerts.webhooks.targets": [
                {"name": "ops", "format": "slack", "url_env": "OPS_SLACK_URL"},
                {"name": "am", "format": "alertmanager", "url": recorder.url("/am"), "min_level": "critical"},
            ],
        }
    )
    with pytest.raises(ConfigError, match="OPS_SLACK_URL is not set"):
        build_webhooks(settings)
    settings = load_settings(
        CONFIG,
        env={"OPS_SLACK_URL": recorder.url("/ops")},
        **{"alerts.webhooks.targets": [{"name": "ops", "format": "slack", "url_env": "OPS_SLACK_URL"}]},
    )
    assert "OPS_SLACK_URL" not in repr(settings.secrets) and recorder.url("/ops") not in repr(settings)
    sink = build_webhooks(settings)
    flow = Dataflow("webhooks_test")
    op.output("out", op.input("in", flow, TestingSource(STORY)), sink)
    run_main(flow)
    assert len(recorder.bodies("/ops")) == 3


def test_bad_webhook_config():
    with pytest.raises(ConfigError, match="set exactly one of url and url_env"):
        flow_settings(**{"alerts.webhooks.targets": [{"name": "x", "format": "slack"}]})
    with pytest.raises(ConfigError, match="unknown rules"):
        flow_settings(
            **{
                "alerts.webhooks.targets": [
                    {"name": "x", "format": "slack", "url": "http://h", "rules": ["nope"]}
                ]
            }
        )


def test_a_target_gets_its_alerts_in_event_time_order(recorder):
    recorder.delay_s["/ordered"] = 0.02  # concurrent posts would overtake each other
    batch = [alert("warn", "ok", NOW - m * 60_000, tenant=f"t{m}") for m in (3, 5, 1, 4, 2, 6)]
    post([WebhookTarget("ordered", "slack", recorder.url("/ordered"))], batch)
    tenants = [b["text"].split("[WARN] ")[1].split(":")[0] for b in recorder.bodies("/ordered")]
    assert tenants == ["t6", "t5", "t4", "t3", "t2", "t1"]
