"""A local HTTP endpoint that speaks the OpenAI Chat Completions and Anthropic Messages APIs.

Tests, benchmarks and the demo (when no API key is set) point the official
`openai` / `anthropic` clients at it, so the production client path — HTTP,
error mapping, retries, timeouts — is what runs, without a real LLM. Verdicts
are simulated (`simulators.simulated_verdicts`) by small deterministic heuristics over the delimited data
sections of the judge prompt (`judges.rubrics`); faults (latency, 429/5xx,
timeouts, broken bodies, invalid verdicts, bad keys, unknown models) are
injected from an `EndpointConfig` or scripted per request.

Run it in-process (a background thread with its own event loop)::

    with LocalEndpoint(EndpointConfig(latency=200)) as ep:
        client = openai.AsyncOpenAI(api_key="test", base_url=ep.openai_base_url)
        ep.script([{"status": 429, "retry_after": 1}, {"kind": "non_json"}])

or as a process (prints its OpenAI base URL as the first stdout line, stops on SIGTERM)::

    python -m simulators.local_endpoint --port 0 --latency-ms 200 --ready-file /tmp/ep.url

It listens on 127.0.0.1 only and keeps the request path cheap (no access log,
no per-request logging, cached verdicts) so benchmarks measure the client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import select
import signal
import subprocess
import sys
import threading
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from statistics import NormalDist
from typing import Any, Literal, Self, TypeVar

import msgspec
from aiohttp import web

from simulators.judge_dialects import (
    ANTHROPIC,
    ANTHROPIC_MESSAGES_ROUTE,
    HTML_PAGE,
    OPENAI,
    OPENAI_CHAT_ROUTE,
    PROSE,
    Answer,
    BadRequest,
    Dialect,
    JudgeRequest,
    anthropic_models,
    ceil4,
    error_message,
    openai_models,
)
from simulators.simulated_verdicts import simulate_verdict

HOST = "127.0.0.1"

_T = TypeVar("_T")

MODELS_ROUTE = "/v1/models"

KINDS = (
    "ok",  # a verdict (the default)
    "error",  # an HTTP error in the API's own error shape (`status`, default 500)
    "timeout",  # sleep `timeout_s` before answering normally
    "truncated",  # a normal JSON body cut in half
    "non_json",  # an HTML page instead of JSON (status 200 unless `status` is set)
    "prose",  # a valid completion whose content is prose, not a verdict
    "missing_field",  # verdict JSON without `label`
    "out_of_range",  # verdict JSON with score 1.7
    "invalid_verdict",  # one of prose / missing_field / out_of_range, by request number
    "disconnect",  # close the connection without answering
)

DEFAULT_MODELS = (
    "gpt-4o-mini",
    "gpt-4.1-mini",
    "gpt-4.1",
    "claude-3-5-haiku-latest",
    "claude-haiku-4-5",
    "claude-sonnet-4-5",
)


# --- configuration -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Latency:
    """Simulated model latency: fixed, uniform(lo, hi) or lognormal(median, sigma), in ms."""

    kind: Literal["fixed", "uniform", "lognormal"] = "fixed"
    ms: float = 0.0
    lo_ms: float = 0.0
    hi_ms: float = 0.0
    median_ms: float = 0.0
    sigma: float = 0.0

    @classmethod
    def fixed(cls, ms: float) -> Latency:
        return cls(kind="fixed", ms=ms)

    @classmethod
    def uniform(cls, lo_ms: float, hi_ms: float) -> Latency:
        return cls(kind="uniform", lo_ms=lo_ms, hi_ms=hi_ms)

    @classmethod
    def lognormal(cls, median_ms: float, sigma: float) -> Latency:
        return cls(kind="lognormal", median_ms=median_ms, sigma=sigma)

    def sample_ms(self, u: float) -> float:
        """The latency for a uniform draw `u` in (0, 1): same `u`, same latency."""
        if self.kind == "uniform":
            return self.lo_ms + (self.hi_ms - self.lo_ms) * u
        if self.kind == "lognormal":
            return self.median_ms * math.exp(self.sigma * _STD_NORMAL.inv_cdf(u))
        return self.ms


_STD_NORMAL = NormalDist()


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """What the endpoint does when no script says otherwise.

    Rates are fractions of judge requests, drawn per request number from
    `seed` (so a run with the same seed and arrival order sees the same faults,
    and a retry of a failed request can succeed). Their sum must be <= 1.
    `latency` is a `Latency` or a number of milliseconds.
    """

    port: int = 0
    latency: Latency | float = 0.0
    seed: int = 0
    rate_429: float = 0.0
    retry_after_s: float = 1.0
    rate_500: float = 0.0
    rate_503: float = 0.0
    rate_timeout: float = 0.0
    timeout_s: float = 30.0
    rate_truncated: float = 0.0
    rate_non_json: float = 0.0
    rate_invalid_verdict: float = 0.0
    bad_keys: frozenset[str] = frozenset()
    unknown_models: frozenset[str] = frozenset()
    models: tuple[str, ...] = DEFAULT_MODELS
    backlog: int = 4096

    def __post_init__(self) -> None:
        if isinstance(self.latency, int | float):
            object.__setattr__(self, "latency", Latency.fixed(float(self.latency)))
        object.__setattr__(self, "bad_keys", frozenset(self.bad_keys))
        object.__setattr__(self, "unknown_models", frozenset(self.unknown_models))
        rates = self.fault_rates()
        bad = {name: r for name, r in rates if not 0.0 <= r <= 1.0}
        if bad or sum(r for _, r in rates) > 1.0 + 1e-9:
            msg = f"EndpointConfig: fault rates must be in [0, 1] and sum to <= 1, got {rates}"
            raise ValueError(msg)

    def fault_rates(self) -> tuple[tuple[str, float], ...]:
        """(behaviour, rate) pairs in the order they are drawn."""
        return (
            ("429", self.rate_429),
            ("500", self.rate_500),
            ("503", self.rate_503),
            ("timeout", self.rate_timeout),
            ("truncated", self.rate_truncated),
            ("non_json", self.rate_non_json),
            ("invalid_verdict", self.rate_invalid_verdict),
        )

    def latency_spec(self) -> Latency:
        lat = self.latency
        return lat if isinstance(lat, Latency) else Latency.fixed(float(lat))


@dataclass(frozen=True, slots=True)
class Behaviour:
    """What one judge request gets, overriding the config (see `KINDS`).

    `status` alone means kind "error"; `latency_ms` alone means a normal
    verdict after that latency. `usage` overrides the token counts
    (input, output); `content` replaces the message content verbatim;
    `should_retry` sets the `x-should-retry` header the official clients obey.
    """

    kind: str = "ok"
    status: int | None = None
    retry_after: float | None = None
    latency_ms: float | None = None
    timeout_s: float | None = None
    usage: tuple[int, int] | None = None
    content: str | None = None
    should_retry: bool | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            msg = f"Behaviour: unknown kind {self.kind!r}, expected one of {KINDS}"
            raise ValueError(msg)
        if self.status is not None and not 200 <= self.status <= 599:
            msg = f"Behaviour: status {self.status!r} is not an HTTP status"
            raise ValueError(msg)
        if self.kind == "error" and self.status is not None and self.status < 400:
            msg = f"Behaviour: kind 'error' needs a status >= 400, got {self.status}"
            raise ValueError(msg)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Behaviour:
        """Build from the script JSON, e.g. `{"status": 429, "retry_after": 1}`."""
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            msg = f"Behaviour: unknown keys {sorted(unknown)}, expected some of {sorted(known)}"
            raise ValueError(msg)
        values = dict(raw)
        status = values.get("status")
        if "kind" not in values and status is not None and status >= 400:
            values["kind"] = "error"
        if values.get("usage") is not None:
            values["usage"] = _usage_pair(values["usage"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v for k, v in out.items() if v is not None}


def _usage_pair(raw: Any) -> tuple[int, int]:
    if isinstance(raw, Mapping):
        inp = raw.get("input_tokens", raw.get("prompt_tokens", 0))
        out = raw.get("output_tokens", raw.get("completion_tokens", 0))
        return int(inp), int(out)
    inp, out = raw
    return int(inp), int(out)


def _as_behaviour(item: Behaviour | Mapping[str, Any]) -> Behaviour:
    return item if isinstance(item, Behaviour) else Behaviour.from_dict(item)


# --- deterministic draws -----------------------------------------------------

_MASK64 = (1 << 64) - 1


def _unit(seed: int, n: int, salt: int) -> float:
    """A uniform float in (0, 1) from (seed, request number, salt): splitmix64."""
    x = (seed * 0x9E3779B97F4A7C15 + n * 0xBF58476D1CE4E5B9 + salt * 0x94D049BB133111EB) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    x ^= x >> 31
    return ((x >> 11) + 0.5) / 2**53


# --- the server --------------------------------------------------------------

_encode = msgspec.json.encode
_decode = msgspec.json.decode


@dataclass(slots=True)
class _Decision:
    outcome: str  # the stats bucket: ok, http_429, timeout, ...
    behaviour: Behaviour
    delay_s: float


@dataclass(slots=True)
class _State:
    seq: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    script: deque[Behaviour] = field(default_factory=deque)
    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)


class _Server:
    """Request handlers and the mutable state they share (touched only on the loop)."""

    def __init__(self, config: EndpointConfig) -> None:
        self.config = config
        self.latency = config.latency_spec()
        self.state = _State()

    # -- control ------------------------------------------------------------

    def set_script(self, behaviours: Iterable[Behaviour | Mapping[str, Any]], *, append: bool = False) -> int:
        items = [_as_behaviour(b) for b in behaviours]
        if not append:
            self.state.script.clear()
        self.state.script.extend(items)
        return len(self.state.script)

    def reset(self) -> None:
        self.state = _State()

    def stats(self) -> dict[str, Any]:
        st = self.state
        by_route: dict[str, Counter[str]] = {}
        by_model: dict[str, Counter[str]] = {}
        by_outcome: Counter[str] = Counter()
        for (route, model, outcome), n in st.counts.items():
            by_route.setdefault(route, Counter())[outcome] += n
            if model:
                by_model.setdefault(model, Counter())[outcome] += n
            by_outcome[outcome] += n
        return {
            "total": sum(by_outcome.values()),
            "by_route": {k: dict(v) for k, v in by_route.items()},
            "by_model": {k: dict(v) for k, v in by_model.items()},
            "by_outcome": dict(by_outcome),
            "in_flight": st.in_flight,
            "max_in_flight": st.max_in_flight,
            "script_pending": len(st.script),
        }

    # -- routing ------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post(OPENAI_CHAT_ROUTE, self._openai)
        app.router.add_post("/chat/completions", self._openai)
        app.router.add_post(ANTHROPIC_MESSAGES_ROUTE, self._anthropic)
        app.router.add_get(MODELS_ROUTE, self._models)
        app.router.add_get("/_control/stats", self._control_stats)
        app.router.add_post("/_control/script", self._control_script)
        app.router.add_post("/_control/reset", self._control_reset)
        app.router.add_get("/health", self._health)
        return app

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        return await self._judge(request, OPENAI)

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._judge(request, ANTHROPIC)

    async def _health(self, request: web.Request) -> web.Response:
        return _json_response({"status": "ok"})

    async def _control_stats(self, request: web.Request) -> web.Response:
        return _json_response(self.stats())

    async def _control_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return _json_response({"status": "reset"})

    async def _control_script(self, request: web.Request) -> web.Response:
        try:
            raw = _decode(await request.read())
            if not isinstance(raw, list):
                msg = "the script must be a JSON array of behaviours"
                raise ValueError(msg)
            append = request.query.get("append", "") in ("1", "true")
            pending = self.set_script(raw, append=append)
        except (msgspec.DecodeError, ValueError, TypeError) as exc:
            return _json_response({"error": str(exc)}, status=400)
        return _json_response({"pending": pending})

    async def _models(self, request: web.Request) -> web.Response:
        dialect = ANTHROPIC if "anthropic-version" in request.headers else OPENAI
        key = dialect.api_key(request.headers)
        self.state.seq += 1
        if key is not None and key in self.config.bad_keys:
            self._count(MODELS_ROUTE, "", "http_401")
            return self._error(dialect, 401, self.state.seq, "", key, Behaviour())
        self._count(MODELS_ROUTE, "", "ok")
        if dialect is ANTHROPIC:
            return _json_response(anthropic_models(self.config.models))
        return _json_response(openai_models(self.config.models))

    # -- the judge path -----------------------------------------------------

    async def _judge(self, request: web.Request, dialect: Dialect) -> web.StreamResponse:
        st = self.state
        st.seq += 1
        seq = st.seq
        st.in_flight += 1
        st.max_in_flight = max(st.max_in_flight, st.in_flight)
        try:
            return await self._judge_one(request, dialect, seq)
        finally:
            st.in_flight -= 1

    async def _judge_one(self, request: web.Request, dialect: Dialect, seq: int) -> web.StreamResponse:
        key = dialect.api_key(request.headers)
        try:
            body = _decode(await request.read())
            if not isinstance(body, dict):
                msg = "the request body must be a JSON object"
                raise BadRequest(msg)
            req = dialect.parse(body)
        except (msgspec.DecodeError, BadRequest) as exc:
            model = exc.model if isinstance(exc, BadRequest) else ""
            self._count(dialect.route, model, "http_400")
            return self._error(dialect, 400, seq, model, key, Behaviour(), message=str(exc))
        decision = self._decide(req, key, seq)
        self._count(dialect.route, req.model, decision.outcome)
        if decision.delay_s > 0:
            await asyncio.sleep(decision.delay_s)
        return self._respond(request, dialect, req, body, decision.behaviour, seq, key)

    def _decide(self, req: JudgeRequest, key: str | None, seq: int) -> _Decision:
        cfg = self.config
        # hard rejections come first and do not consume the script
        if key is not None and key in cfg.bad_keys:
            b = Behaviour(kind="error", status=401)
        elif req.model in cfg.unknown_models:
            b = Behaviour(kind="error", status=404)
        elif self.state.script:
            b = self.state.script.popleft()
        else:
            b = self._drawn_behaviour(seq)
        return _Decision(_outcome(b), b, self._delay_s(b, seq))

    def _drawn_behaviour(self, seq: int) -> Behaviour:
        cfg = self.config
        u = _unit(cfg.seed, seq, 0)
        for name, rate in cfg.fault_rates():
            if u < rate:
                return _RATE_BEHAVIOURS[name](cfg)
            u -= rate
        return _OK

    def _delay_s(self, b: Behaviour, seq: int) -> float:
        if b.kind == "timeout":
            return b.timeout_s if b.timeout_s is not None else self.config.timeout_s
        if b.latency_ms is not None:
            return b.latency_ms / 1000.0
        return self.latency.sample_ms(_unit(self.config.seed, seq, 1)) / 1000.0

    def _count(self, route: str, model: str, outcome: str) -> None:
        self.state.counts[(route, model, outcome)] += 1

    def _respond(
        self,
        request: web.Request,
        dialect: Dialect,
        req: JudgeRequest,
        body: Mapping[str, Any],
        b: Behaviour,
        seq: int,
        key: str | None,
    ) -> web.StreamResponse:
        kind = b.kind
        if kind == "error":
            return self._error(dialect, b.status or 500, seq, req.model, key, b)
        if kind == "disconnect":
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=200)
        if kind == "non_json":
            return web.Response(
                body=HTML_PAGE,
                status=b.status or 200,
                content_type="text/html",
                headers=_headers(dialect, seq, b),
            )
        answer = _answer_for(req, b, seq)
        usage = b.usage or (ceil4(req.chars), ceil4(len(answer.text or "")))
        payload = _encode(dialect.render(req, body, answer, seq, usage))
        if kind == "truncated":
            payload = payload[: len(payload) // 2]
        return web.Response(
            body=payload,
            status=b.status or 200,
            content_type="application/json",
            headers=_headers(dialect, seq, b),
        )

    def _error(
        self,
        dialect: Dialect,
        status: int,
        seq: int,
        model: str,
        key: str | None,
        b: Behaviour,
        *,
        message: str | None = None,
    ) -> web.Response:
        text = message or error_message(status, model, key)
        headers = _headers(dialect, seq, b)
        if status == 429 and b.retry_after is None:
            headers.update(_retry_after_headers(self.config.retry_after_s))
        return web.Response(
            body=_encode(dialect.error(status, text, seq)),
            status=status,
            content_type="application/json",
            headers=headers,
        )


_OK = Behaviour()

_RATE_BEHAVIOURS: dict[str, Callable[[EndpointConfig], Behaviour]] = {
    "429": lambda c: Behaviour(kind="error", status=429, retry_after=c.retry_after_s),
    "500": lambda c: Behaviour(kind="error", status=500),
    "503": lambda c: Behaviour(kind="error", status=503),
    "timeout": lambda c: Behaviour(kind="timeout"),
    "truncated": lambda c: Behaviour(kind="truncated"),
    "non_json": lambda c: Behaviour(kind="non_json"),
    "invalid_verdict": lambda c: Behaviour(kind="invalid_verdict"),
}


def _outcome(b: Behaviour) -> str:
    if b.kind == "error" or (b.status is not None and b.status >= 400):
        return f"http_{b.status or 500}"
    return b.kind


def _answer_for(req: JudgeRequest, b: Behaviour, seq: int) -> Answer:
    kind = b.kind
    if b.content is not None:
        return Answer(text=b.content, tool_input=_json_object(b.content))
    if kind == "invalid_verdict":
        kind = ("prose", "missing_field", "out_of_range")[seq % 3]
    if kind == "prose":
        return Answer(text=PROSE)
    verdict = simulate_verdict(req.system, req.user)
    if kind == "missing_field":
        verdict = {"score": verdict["score"], "explanation": "simulated: label left out"}
    elif kind == "out_of_range":
        verdict = {**verdict, "score": 1.7, "explanation": "simulated: score out of range"}
    return Answer(text=_encode(verdict).decode(), tool_input=verdict)


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _headers(dialect: Dialect, seq: int, b: Behaviour) -> dict[str, str]:
    headers = {dialect.request_id_header: f"req_local_{seq}"}
    if b.retry_after is not None:
        headers.update(_retry_after_headers(b.retry_after))
    if b.should_retry is not None:
        headers["x-should-retry"] = "true" if b.should_retry else "false"
    return headers


def _retry_after_headers(seconds: float) -> dict[str, str]:
    # both clients read retry-after-ms first (more precise), then retry-after
    return {"retry-after": str(math.ceil(seconds)), "retry-after-ms": f"{seconds * 1000:g}"}


def _json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encode(obj), status=status, content_type="application/json")


async def _serve(server: _Server, stop: asyncio.Event, on_ready: Callable[[int], None]) -> None:
    """Listen on 127.0.0.1 until `stop` is set, then shut down quickly."""
    runner = web.AppRunner(
        server.app(),
        access_log=None,
        handle_signals=False,
        handler_cancellation=True,  # a client that gave up stops its simulated sleep
        shutdown_timeout=0.5,
    )
    await runner.setup()
    try:
        site = web.TCPSite(
            runner, HOST, server.config.port, backlog=server.config.backlog, reuse_address=True
        )
        await site.start()
        on_ready(runner.addresses[0][1])
        await stop.wait()
    finally:
        await runner.cleanup()


# --- in-process: a background thread with its own event loop ---------------


class LocalEndpoint:
    """The endpoint on a background thread; use as a context manager.

    `script`, `stats` and `reset` run on the endpoint's loop, so they are safe
    to call from any other thread (including from async test code).
    """

    def __init__(self, config: EndpointConfig | None = None) -> None:
        self.config = config or EndpointConfig()
        self._server = _Server(self.config)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL, `http://127.0.0.1:PORT/v1`."""
        return self.openai_base_url

    @property
    def openai_base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> Self:
        self._thread = threading.Thread(target=self._run, name="judgeflow-local-endpoint", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            msg = f"local endpoint: not listening after {timeout_s}s"
            raise RuntimeError(msg)
        if self._error is not None:
            msg = f"local endpoint: failed to start on port {self.config.port}"
            raise RuntimeError(msg) from self._error
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        loop, stop, thread = self._loop, self._stop, self._thread
        if thread is None:
            return
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop already gone
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout_s)
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def script(self, behaviours: Iterable[Behaviour | Mapping[str, Any]], *, append: bool = False) -> int:
        """Behaviours for the next judge requests, in order. Returns how many are pending."""
        items = [_as_behaviour(b) for b in behaviours]  # validate on the caller's thread
        return self._on_loop(lambda: self._server.set_script(items, append=append))

    def stats(self) -> dict[str, Any]:
        """Requests seen per route, per model and per outcome (see `_Server.stats`)."""
        return self._on_loop(self._server.stats)

    def reset(self) -> None:
        """Forget stats and script and restart request numbering (and so the fault draws)."""
        self._on_loop(self._server.reset)

    def _on_loop(self, fn: Callable[[], _T]) -> _T:
        if self._loop is None or self._thread is None:
            msg = "local endpoint: not running, use `with LocalEndpoint(...) as ep:`"
            raise RuntimeError(msg)

        async def call() -> _T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(10.0)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()

        def ready(port: int) -> None:
            self.port = port
            self._ready.set()

        await _serve(self._server, self._stop, ready)


# --- as a separate process -------------------------------------------------


def config_to_args(config: EndpointConfig) -> list[str]:
    """Command-line flags for `python -m simulators.local_endpoint` that rebuild `config`."""
    lat = config.latency_spec()
    args = [
        "--port",
        str(config.port),
        "--seed",
        str(config.seed),
        "--backlog",
        str(config.backlog),
    ]
    if lat.kind == "uniform":
        args += ["--latency-uniform", str(lat.lo_ms), str(lat.hi_ms)]
    elif lat.kind == "lognormal":
        args += ["--latency-lognormal", str(lat.median_ms), str(lat.sigma)]
    else:
        args += ["--latency-ms", str(lat.ms)]
    for name, rate in config.fault_rates():
        if rate:
            args += [f"--rate-{name.replace('_', '-')}", str(rate)]
    args += ["--retry-after", str(config.retry_after_s), "--timeout-s", str(config.timeout_s)]
    for key in sorted(config.bad_keys):
        args += ["--bad-key", key]
    for model in sorted(config.unknown_models):
        args += ["--unknown-model", model]
    if config.models != DEFAULT_MODELS:
        for model in config.models:
            args += ["--model", model]
    return args


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m simulators.local_endpoint",
        description="Local OpenAI/Anthropic-compatible judge endpoint with fault injection.",
    )
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backlog", type=int, default=4096)
    lat = p.add_mutually_exclusive_group()
    lat.add_argument("--latency-ms", type=float, default=0.0)
    lat.add_argument("--latency-uniform", type=float, nargs=2, metavar=("LO_MS", "HI_MS"))
    lat.add_argument("--latency-lognormal", type=float, nargs=2, metavar=("MEDIAN_MS", "SIGMA"))
    for name, _ in EndpointConfig().fault_rates():
        p.add_argument(f"--rate-{name.replace('_', '-')}", type=float, default=0.0)
    p.add_argument("--retry-after", type=float, default=1.0, help="seconds, for 429s")
    p.add_argument("--timeout-s", type=float, default=30.0, help="sleep of a 'timeout'")
    p.add_argument("--bad-key", action="append", default=[], help="API key answered with 401")
    p.add_argument("--unknown-model", action="append", default=[], help="model answered with 404")
    p.add_argument("--model", action="append", default=[], help="model listed by /v1/models")
    p.add_argument("--ready-file", type=Path, help="write the base URL here once listening")
    return p


def _config_from_args(ns: argparse.Namespace) -> EndpointConfig:
    if ns.latency_uniform:
        latency: Latency | float = Latency.uniform(*ns.latency_uniform)
    elif ns.latency_lognormal:
        latency = Latency.lognormal(*ns.latency_lognormal)
    else:
        latency = ns.latency_ms
    return EndpointConfig(
        port=ns.port,
        latency=latency,
        seed=ns.seed,
        backlog=ns.backlog,
        rate_429=ns.rate_429,
        rate_500=ns.rate_500,
        rate_503=ns.rate_503,
        rate_timeout=ns.rate_timeout,
        rate_truncated=ns.rate_truncated,
        rate_non_json=ns.rate_non_json,
        rate_invalid_verdict=ns.rate_invalid_verdict,
        retry_after_s=ns.retry_after,
        timeout_s=ns.timeout_s,
        bad_keys=frozenset(ns.bad_key),
        unknown_models=frozenset(ns.unknown_model),
        models=tuple(ns.model) or DEFAULT_MODELS,
    )


def parse_cli(argv: list[str] | None = None) -> tuple[EndpointConfig, Path | None]:
    """The config and the ready file named by command-line flags (see `config_to_args`)."""
    ns = _parser().parse_args(argv)
    return _config_from_args(ns), ns.ready_file


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; the first stdout line is the OpenAI base URL."""
    config, ready_file = parse_cli(argv)
    return asyncio.run(_serve_process(config, ready_file))


async def _serve_process(config: EndpointConfig, ready_file: Path | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def ready(port: int) -> None:
        url = f"http://{HOST}:{port}/v1"
        if ready_file is not None:  # before stdout, so a stdout reader finds it too
            tmp = ready_file.with_name(ready_file.name + ".tmp")
            tmp.write_text(url + "\n")
            tmp.replace(ready_file)  # readers never see a half-written file
        print(url, flush=True)

    await _serve(_Server(config), stop, ready)
    return 0


class EndpointProcess:
    """A running `python -m simulators.local_endpoint`; control goes over HTTP."""

    def __init__(self, proc: subprocess.Popen[bytes], openai_base_url: str) -> None:
        self.proc = proc
        self.openai_base_url = openai_base_url
        self.anthropic_base_url = openai_base_url.removesuffix("/v1")

    @property
    def base_url(self) -> str:
        return self.openai_base_url

    def script(self, behaviours: Iterable[Behaviour | Mapping[str, Any]], *, append: bool = False) -> int:
        items = [_as_behaviour(b).to_dict() for b in behaviours]
        query = "?append=1" if append else ""
        return int(self._control("POST", f"/_control/script{query}", items)["pending"])

    def stats(self) -> dict[str, Any]:
        return self._control("GET", "/_control/stats")

    def reset(self) -> None:
        self._control("POST", "/_control/reset", {})

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM, wait, and return the exit code (0 on a clean stop)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310 - always our own http://127.0.0.1 URL
            self.anthropic_base_url + path,
            data=data,
            method=method,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - same
            return json.loads(resp.read())


@contextlib.contextmanager
def start_endpoint_process(
    config: EndpointConfig | None = None,
    *,
    extra_args: Iterable[str] = (),
    ready_timeout_s: float = 20.0,
) -> Iterator[EndpointProcess]:
    """Start the endpoint as a child process, yield it, SIGTERM it on exit."""
    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p),
    }
    cmd = [
        sys.executable,
        "-m",
        "simulators.local_endpoint",
        *config_to_args(config or EndpointConfig()),
        *extra_args,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=root, env=env)  # noqa: S603
    handle = None
    try:
        url = _first_line(proc, ready_timeout_s)
        handle = EndpointProcess(proc, url)
        yield handle
    finally:
        if handle is None:
            handle = EndpointProcess(proc, "")
        handle.stop()


def _first_line(proc: subprocess.Popen[bytes], timeout_s: float) -> str:
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline().decode().strip() if readable else ""
    if not line.startswith("http://"):
        msg = f"local endpoint process: no base URL within {timeout_s}s (exit {proc.poll()})"
        raise RuntimeError(msg)
    return line


if __name__ == "__main__":
    sys.exit(main())
