"""Health endpoints on the metrics port: `/metrics`, `/healthz` and `/readyz`.

- `/healthz` (liveness: would a restart help?) answers 200 while the process
  is up and its dataflow takes in messages. It answers 503 only when nothing
  was taken in for `stall_s` while input waits for this process and no open
  judge breaker explains the wait (the judge stage holds work while an
  endpoint is down, by design; a restart would not bring the endpoint back).
  A dependency being down is not a liveness failure.
- `/readyz` (readiness: is this process doing its job?) answers 200 when Kafka
  answers and gives this process partitions to read, ClickHouse answers its
  `/ping`, and no judge breaker is open.

The dataflow is not changed for this. Progress is read from the counters it
already moves when it takes in a message (events, dead letters,
re-deliveries, OTLP messages without calls), waiting input from bytewax's
Kafka lag gauge, the breakers from the judge gauge. A monitor thread samples
them every second; another checks Kafka and ClickHouse every few seconds, so
a probe never waits on a dependency.

Waiting input is a consumer lag above zero. The gauge is set while the
source polls, so it freezes when the worker is stuck — often at 0, since a
consumer that keeps up has no lag. So, where every message this process reads
is counted in this process (one process, or no re-delivery step before
pricing), messages added to the end of its partitions after its last progress
count as waiting too. On a cluster of several processes the re-delivery step
may count an event read here in another process, so there only the lag
counts: a sparse topic must not restart a healthy process.

Which partitions a process reads follows from the cluster's shape: bytewax
hands the partitions out one at a time to the worker with the fewest so far
(the lowest index on a tie), i.e. round robin over the cluster's workers.

`python -m flows.health URL...` exits 0 when every URL answers 200 (container
healthchecks: the image has no curl).
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric

from flows.config import ConfigError, Settings
from flows.health_probes import (
    Check,
    ClickHouseProbe,
    ClusterShape,
    KafkaProbe,
    Partition,
    Probe,
    failure_reason,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Vitals:
    """What the process's metrics say right now."""

    taken_in: float  # messages taken in so far (only ever grows)
    lags: Mapping[Partition, float]  # consumer lag of the partitions this process has read
    open_breakers: tuple[str, ...]  # judges whose circuit breaker is open or probing


# --- pure functions -------------------------------------------------------------------------------


def counter_total(families: Iterable[Metric]) -> float:
    """The sum of every `*_total` sample of counter families (their `*_created` ones left out)."""
    return sum(s.value for f in families for s in f.samples if s.name.endswith("_total"))


def partition_lags(families: Iterable[Metric]) -> dict[Partition, float]:
    """Consumer lag per (topic, partition) from bytewax's `bytewax_kafka_consumer_lag` gauge."""
    lags: dict[Partition, float] = {}
    for f in families:
        for s in f.samples:
            key = (s.labels["topic"], int(s.labels["partition"]))
            lags[key] = lags.get(key, 0.0) + s.value
    return lags


def open_breakers(families: Iterable[Metric]) -> tuple[str, ...]:
    """Judges whose `judgeflow_judge_breaker_open` gauge is 1."""
    return tuple(sorted(s.labels["judge"] for f in families for s in f.samples if s.value >= 1))


def new_input(ends: Mapping[Partition, int], baseline: Mapping[Partition, int]) -> bool:
    """Whether a partition's end offset moved past where it was after the last progress."""
    return any(end > baseline.get(p, end) for p, end in ends.items())


def liveness(
    *,
    stalled_s: float,
    stall_s: float,
    lags: Mapping[Partition, float],
    arrived: bool,
    breakers: Sequence[str],
) -> Check:
    """The progress check of `/healthz`: failing only when input waits and nothing moved for `stall_s`."""
    waiting = sum(v for v in lags.values() if v > 0)
    if breakers:
        return Check("progress", True, f"waiting for judge breaker(s) {', '.join(breakers)} to close")
    if not waiting and not arrived:
        return Check("progress", True, f"idle: no input waiting (last progress {stalled_s:.0f} s ago)")
    if stalled_s <= stall_s:
        return Check("progress", True, f"last progress {stalled_s:.0f} s ago")
    what = f"{waiting:.0f} messages" if waiting else "new messages"
    return Check(
        "progress", False, f"no message taken in for {stalled_s:.0f} s (> {stall_s:g} s) while {what} wait"
    )


def breaker_check(breakers: Sequence[str]) -> Check:
    if breakers:
        return Check("judges", False, f"circuit breaker open: {', '.join(breakers)}")
    return Check("judges", True, "no circuit breaker open")


def answer(checks: Sequence[Check]) -> tuple[int, bytes]:
    """HTTP status and JSON body for a list of checks: 200 when all pass, else 503."""
    ok = all(c.ok for c in checks)
    body = {
        "status": "ok" if ok else "unavailable",
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
    }
    return (200 if ok else 503), json.dumps(body).encode() + b"\n"


# --- the monitor ----------------------------------------------------------------------------------


def read_vitals() -> Vitals:
    """The process's own metrics: progress counters, bytewax's Kafka lag gauge, judge breakers."""
    from bytewax.connectors.kafka import BYTEWAX_CONSUMER_LAG_GAUGE

    from core import metrics

    counters = (metrics.EVENTS_IN, metrics.DEAD_LETTERS, metrics.REDELIVERIES, metrics.OTLP_EMPTY)
    return Vitals(
        taken_in=counter_total(f for c in counters for f in c.collect()),
        lags=partition_lags(BYTEWAX_CONSUMER_LAG_GAUGE.collect()),
        open_breakers=open_breakers(metrics.JUDGE_BREAKER_OPEN.collect()),
    )


@dataclass
class _State:
    taken_in: float = -1.0
    progress_at: float = 0.0
    progress_seen: int = 0  # times progress was seen: a refresh that overlaps one takes no baseline
    baseline: dict[Partition, int] | None = None  # end offsets first seen after the last progress
    ends: dict[Partition, int] = field(default_factory=dict)
    checks: tuple[Check, ...] = ()


class HealthMonitor:
    """Turns samples of the process's metrics and checks of its dependencies into the answers of
    `/healthz` and `/readyz`. `sample()` and `refresh()` run on the monitor's threads (or a
    test's), the answers on the server's."""

    def __init__(
        self,
        *,
        stall_s: float,
        probes: Sequence[Probe] = (),
        kafka: KafkaProbe | None = None,
        local_count: bool = True,
        read: Callable[[], Vitals] = read_vitals,
        clock: Callable[[], float] = time.monotonic,
        sample_every_s: float = 1.0,
        refresh_every_s: float = 5.0,
    ) -> None:
        self.stall_s = stall_s
        self._probes = [*probes] + ([kafka] if kafka is not None else [])
        self._kafka = kafka
        self._local_count = local_count
        self._read = read
        self._clock = clock
        self._every = (sample_every_s, refresh_every_s)
        self._lock = threading.Lock()
        self._state = _State(progress_at=clock())
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def sample(self) -> Vitals:
        vitals = self._read()
        with self._lock:
            s = self._state
            if vitals.taken_in != s.taken_in:
                s.taken_in, s.progress_at, s.baseline = vitals.taken_in, self._clock(), None
                s.progress_seen += 1
        return vitals

    def refresh(self) -> None:
        with self._lock:
            seen = self._state.progress_seen
        checks = tuple(p.check() for p in self._probes)
        ends: dict[Partition, int] = {}
        if self._kafka is not None and self._local_count:
            ends = self._kafka.end_offsets(sorted(self._read().lags))
        with self._lock:
            s = self._state
            s.checks, s.ends = checks, ends
            if s.progress_seen != seen:
                s.baseline = None  # these ends may hold messages that progress consumed
            elif s.baseline is None:
                s.baseline = dict(ends)
            else:
                s.baseline = {**ends, **s.baseline}  # a partition seen for the first time starts here

    def healthz(self) -> list[Check]:
        vitals = self.sample()
        with self._lock:
            s = self._state
            stalled_s = self._clock() - s.progress_at
            arrived = s.baseline is not None and new_input(s.ends, s.baseline)
        progress = liveness(
            stalled_s=stalled_s,
            stall_s=self.stall_s,
            lags=vitals.lags,
            arrived=arrived,
            breakers=vitals.open_breakers,
        )
        return [progress]

    def readyz(self) -> list[Check]:
        vitals = self._read()
        with self._lock:
            checks = list(self._state.checks)
        if len(checks) < len(self._probes):
            checks = [Check("dependencies", False, "not checked yet")]
        return [*checks, breaker_check(vitals.open_breakers)]

    def start(self) -> None:
        for fn, every in ((self.sample, self._every[0]), (self.refresh, self._every[1])):
            t = threading.Thread(
                target=self._loop, args=(fn, every), name=f"health-{fn.__name__}", daemon=True
            )
            t.start()
            self._threads.append(t)

    def _loop(self, fn: Callable[[], object], every_s: float) -> None:
        while True:
            try:
                fn()
            except Exception:
                log.exception("health monitor: %s failed", getattr(fn, "__name__", fn))
            if self._stop.wait(every_s):
                return

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        if any(t.is_alive() for t in self._threads):
            return  # a check still waits on a dependency: leave its client to the process's exit
        for p in self._probes:
            p.close()


# --- the HTTP server ------------------------------------------------------------------------------


class HealthServer(ThreadingHTTPServer):
    """`/metrics` (the Prometheus registry), `/healthz` and `/readyz`, on a thread of its own."""

    daemon_threads = True

    def __init__(self, host: str, port: int, monitor: HealthMonitor, registry: CollectorRegistry = REGISTRY):
        super().__init__((host, port), _Handler)
        self.monitor = monitor
        self.registry = registry
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> HealthServer:
        self.monitor.start()
        self._thread = threading.Thread(target=self.serve_forever, name="health-http", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.monitor.close()


class _Handler(BaseHTTPRequestHandler):
    server: HealthServer

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, encoder(self.server.registry), content_type)
        elif path in ("/healthz", "/readyz"):
            monitor = self.server.monitor
            status, body = answer(monitor.healthz() if path == "/healthz" else monitor.readyz())
            self._send(status, body, "application/json")
        else:
            self._send(404, b"not found: /metrics, /healthz, /readyz\n", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a probe every few seconds: no access log


def serve(settings: Settings, *, shape: ClusterShape) -> HealthServer:
    """Start the metrics and health server on `metrics.host:metrics.port` (port set) for this
    process of the cluster; `/healthz` allows `metrics.stall_s` without progress."""
    cfg = settings.flow
    if cfg.metrics.port is None:
        msg = "metrics.port is not set: there is no port to serve health on"
        raise ConfigError(msg)
    monitor = HealthMonitor(
        stall_s=cfg.metrics.stall_s,
        probes=[ClickHouseProbe(cfg.clickhouse.dsn)],
        kafka=KafkaProbe(cfg.kafka, cfg.kafka.broker_list, shape),
        # the re-delivery step routes events by id: with several processes, one read here may count elsewhere
        local_count=shape.processes == 1 or not cfg.windows.drop_redeliveries,
    )
    return HealthServer(cfg.metrics.host, cfg.metrics.port, monitor).start()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m flows.health",
        description="Exit 0 when every health URL answers 200, else 1 (container healthchecks).",
    )
    p.add_argument("urls", nargs="+", metavar="URL", help="e.g. http://127.0.0.1:9464/readyz")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per URL (default: %(default)s)")
    args = p.parse_args(argv)
    for url in args.urls:
        if urlsplit(url).scheme not in ("http", "https"):
            p.error(f"not an http(s) URL: {url}")
    return max(_get(url, args.timeout) for url in args.urls)


def _get(url: str, timeout_s: float) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (http(s), checked)
            print(resp.read().decode(errors="replace").strip())
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.read().decode(errors="replace").strip())
        return 1
    except OSError as exc:
        print(f"{url}: {failure_reason(exc)}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
