"""WebhookSink: alert changes as JSON POSTs, Slack-compatible or Alertmanager-compatible.

- `slack`: one POST per alert to an incoming-webhook URL: `text` (shown in
  notifications) plus Block Kit `blocks` with the numbers and the runbook step.
- `alertmanager`: one POST per batch to Alertmanager's `/api/v2/alerts`, the
  way Prometheus sends them: a list of `{labels, annotations, startsAt, endsAt}`.
  Alertmanager identifies an alert by its labels (alertname, tenant, scope,
  severity), so a change of level resolves the old severity (endsAt = the
  change) and fires the new one; a firing alert's endsAt is `firing_ttl_s`
  ahead, since judgeflow sends once per change instead of re-sending.

Delivery never holds the flow for long: targets are served concurrently (at
most `max_in_flight` at once), each target's posts one after the other in
event-time order (a channel reads warn before critical; Slack also limits
webhooks to about one message a second), each attempt has `timeout_s`, 429 /
5xx / network errors are retried with exponential backoff and jitter up to
`max_attempts`, and the whole batch gives up after `budget_s` — what is left
is counted as `budget`. Other 4xx are not retried.
Failures are counted and logged (target name and status, never the URL or
the payload) and the flow goes on: an alert is also in ClickHouse and on
the Kafka alerts topic. Alerts older than `max_age_s` (a backfill replaying
old data) are not posted. Delivery is at least once: a restart from a
snapshot may post the alerts of the last epoch again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from prometheus_client import Counter

from core.errors import Backoff
from core.records import RANK, Alert, alert_subject, alert_summary

log = logging.getLogger(__name__)

POSTS = Counter(
    "judgeflow_webhook_posts_total",
    "Webhook POSTs by target and outcome (ok, failed: not retryable or out of attempts, budget: out of time)",
    ["target", "outcome"],
)
RETRIES = Counter("judgeflow_webhook_retries_total", "Webhook POST attempts that were retried", ["target"])


@dataclass(frozen=True)
class WebhookTarget:
    """Where to POST and which alerts: `min_level` applies to the level an alert
    enters, or for a resolved alert the level it leaves; empty `rules` /
    `tenants` mean all."""

    name: str
    format: str  # slack | alertmanager
    url: str
    min_level: str = "warn"
    rules: frozenset[str] = frozenset()
    tenants: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.format not in ("slack", "alertmanager"):
            msg = f"webhook {self.name!r}: format must be slack or alertmanager, got {self.format!r}"
            raise ValueError(msg)

    def wants(self, a: Alert) -> bool:
        level = a.previous_level if a.level == "ok" else a.level
        return (
            RANK[level] >= RANK[self.min_level]
            and (not self.rules or a.rule in self.rules)
            and (not self.tenants or a.tenant_id in self.tenants)
        )


@dataclass(frozen=True)
class Delivery:
    """Timeouts, retries and the time budget of one batch (see the module docstring)."""

    timeout_s: float = 5.0
    max_attempts: int = 3
    backoff_s: float = 0.5
    budget_s: float = 10.0
    max_in_flight: int = 8
    max_age_s: int = 3600
    firing_ttl_s: int = 86_400


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_SLACK_ICON = {
    "warn": ":warning:",
    "critical": ":rotating_light:",
    "emergency": ":fire:",
    "ok": ":white_check_mark:",
}


def slack_payload(a: Alert) -> dict[str, Any]:
    """A Slack incoming-webhook message for one alert change."""
    state = "RESOLVED" if a.level == "ok" else a.level.upper()
    # the subject once, in the title; the message's numbers already carry their units
    title = _slack_escape(f"[{state}] {alert_subject(a.tenant_id, a.scope)}: judgeflow {a.rule}")
    message = _slack_escape(alert_summary(a))
    fields = [
        ("Window (UTC)", f"{_iso(a.window_start_ms)} to {_iso(a.window_end_ms)}"),
        ("Alert id", f"`{a.alert_id}`"),
    ]
    return {
        "text": f"{_SLACK_ICON[a.level]} {title}: {message}",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{title}*\n{message}"}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in fields]},
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"Runbook: `{_slack_escape(a.runbook)}`"}],
            },
        ],
    }


def alertmanager_alerts(a: Alert, *, firing_ttl_s: int, min_level: str = "warn") -> list[dict[str, Any]]:
    """Alertmanager v2 postable alerts for one change: the level left ends, the level entered fires."""
    out = []
    labels = {"alertname": f"judgeflow_{a.rule}", "tenant": a.tenant_id, "source": "judgeflow"}
    if a.scope:
        labels["scope"] = a.scope
    annotations = {
        "summary": a.message,
        "runbook": a.runbook,
        "value": f"{a.value:g}",
        "threshold": f"{a.threshold:g}",
        "alert_id": a.alert_id,
    }
    if a.previous_level != "ok" and RANK[a.previous_level] >= RANK[min_level]:
        out.append(
            {
                "labels": {**labels, "severity": a.previous_level},
                "annotations": annotations,
                "startsAt": _iso(a.window_start_ms),
                "endsAt": _iso(a.ts_ms),
            }
        )
    if a.level != "ok" and RANK[a.level] >= RANK[min_level]:
        out.append(
            {
                "labels": {**labels, "severity": a.level},
                "annotations": annotations,
                "startsAt": _iso(a.ts_ms),
                "endsAt": _iso(a.ts_ms + firing_ttl_s * 1000),
            }
        )
    return out


def requests_for(
    targets: Iterable[WebhookTarget], alerts: list[Alert], d: Delivery
) -> list[tuple[WebhookTarget, Any]]:
    """(target, JSON body) of every POST a batch of alerts makes."""
    posts: list[tuple[WebhookTarget, Any]] = []
    for t in targets:
        wanted = [a for a in alerts if t.wants(a)]
        if not wanted:
            continue
        if t.format == "slack":
            posts.extend((t, slack_payload(a)) for a in wanted)
        else:
            body = [
                x
                for a in wanted
                for x in alertmanager_alerts(a, firing_ttl_s=d.firing_ttl_s, min_level=t.min_level)
            ]
            if body:
                posts.append((t, body))
    return posts


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


async def _post(
    session: aiohttp.ClientSession,
    target: WebhookTarget,
    body: Any,
    d: Delivery,
    deadline: float,
) -> str:
    loop = asyncio.get_running_loop()
    problem = ""
    for attempt in range(d.max_attempts):
        remaining = deadline - loop.time()
        if remaining <= 0:
            return "budget"
        if attempt:
            RETRIES.labels(target.name).inc()
            delay = Backoff(d.backoff_s, cap_s=d.budget_s).delay_s(attempt)
            if delay >= remaining:
                return "budget"
            await asyncio.sleep(delay)
            remaining = deadline - loop.time()
        try:
            timeout = aiohttp.ClientTimeout(total=min(d.timeout_s, remaining))
            async with session.post(target.url, json=body, timeout=timeout) as resp:
                await resp.read()
                if resp.status < 300:
                    return "ok"
                problem = f"HTTP {resp.status}"
                if not _retryable(resp.status):
                    break
        except (aiohttp.ClientError, TimeoutError) as exc:
            problem = type(exc).__name__
    log.warning("webhook %s: giving up after %s", target.name, problem)
    return "failed"


async def deliver(posts: list[tuple[WebhookTarget, Any]], d: Delivery) -> list[str]:
    """POST everything within the budget: targets concurrently, each target's posts
    in order. Returns the outcome of each post."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + d.budget_s
    sem = asyncio.Semaphore(d.max_in_flight)
    queues: dict[str, list[int]] = {}
    for i, (t, _) in enumerate(posts):
        queues.setdefault(t.name, []).append(i)
    outcomes = ["budget"] * len(posts)

    async def serve(indexes: list[int]) -> None:
        async with sem:
            for i in indexes:
                target, body = posts[i]
                outcomes[i] = await _post(session, target, body, d, deadline)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(serve(ix) for ix in queues.values()))
    for (t, _), outcome in zip(posts, outcomes, strict=True):
        POSTS.labels(t.name, outcome).inc()
    return outcomes


class _WebhookPartition(StatelessSinkPartition[Alert]):
    def __init__(self, targets: tuple[WebhookTarget, ...], d: Delivery, now_ms: Callable[[], int]) -> None:
        self._targets = targets
        self._d = d
        self._now_ms = now_ms

    def write_batch(self, items: list[Alert]) -> None:
        oldest = self._now_ms() - self._d.max_age_s * 1000
        fresh = sorted((a for a in items if a.ts_ms >= oldest), key=lambda a: a.ts_ms)
        posts = requests_for(self._targets, fresh, self._d)
        if posts:
            asyncio.run(deliver(posts, self._d))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class WebhookSink(DynamicSink[Alert]):
    """POST alert changes to webhook targets (see the module docstring)."""

    def __init__(
        self, targets: Iterable[WebhookTarget], delivery: Delivery, *, now_ms: Callable[[], int] = _now_ms
    ) -> None:
        self.targets = tuple(targets)
        self.delivery = delivery
        self.now_ms = now_ms

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _WebhookPartition:
        return _WebhookPartition(self.targets, self.delivery, self.now_ms)
