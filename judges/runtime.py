"""The judge runtime: one background asyncio loop per process that keeps many
LLM judge calls in flight without ever blocking the dataflow on the network.

Workers hand work over with `submit_many` (one thread hop per batch); a
bounded number of calls is in flight (the worker blocks only when the bound is
reached: backpressure); each call is retried within bounds with exponential
back-off and jitter, honouring Retry-After; a fatal error (401, unknown model)
disables that judge loudly; identical work already in flight is not sent
twice. Results come back through the caller's `on_done` callback, invoked on
the loop thread, which must only enqueue.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from judges.base import (
    FatalJudgeError,
    InvalidVerdictError,
    JudgeError,
    JudgeItem,
    LLMJudge,
    RetryableJudgeError,
)
from operators import metrics
from operators.records import PICO_PER_USD, JudgeCall, Verdict

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Outcome:
    """The end of one (metric, item) judgement: a verdict or an error, and every
    billed call it took. `shared` means another in-flight request did the work."""

    metric: str
    verdict: Verdict | None
    calls: list[JudgeCall] = field(default_factory=list)
    error: str = ""
    shared: bool = False


@dataclass(frozen=True, slots=True)
class Task:
    metric: str
    tier: int
    item: JudgeItem
    key: str  # content key: identical keys in flight are judged once
    on_done: Callable[[Outcome], None]


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    base_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    invalid_retries: int = 1


class JudgeRuntime:
    """Per-process owner of the event loop, the LLM judges and the in-flight bound."""

    def __init__(
        self,
        make_judges: Callable[[], Mapping[int, LLMJudge]],
        *,
        max_in_flight: int,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        self._make_judges = make_judges
        self._max_in_flight = max_in_flight
        self._retry = retry
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._start_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._judges: dict[int, LLMJudge] = {}
        self._disabled: dict[str, str] = {}
        self._in_flight: dict[str, list[Task]] = {}

    # --- worker side -------------------------------------------------------

    def submit_many(self, tasks: Sequence[Task]) -> None:
        """Queue tasks on the loop; blocks while `max_in_flight` calls are running."""
        loop = self._ensure_started()
        batch: list[Task] = []
        for t in tasks:
            if not self._slots.acquire(blocking=False):
                if batch:
                    loop.call_soon_threadsafe(self._spawn_all, batch)
                    batch = []
                self._slots.acquire()
            batch.append(t)
        if batch:
            loop.call_soon_threadsafe(self._spawn_all, batch)

    def judge_names(self) -> dict[int, str]:
        self._ensure_started()
        return {tier: j.name for tier, j in self._judges.items()}

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._aclose(), loop)
        try:
            fut.result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
            self._loop = self._thread = None

    def _ensure_started(self) -> asyncio.AbstractEventLoop:
        if self._loop is not None:
            return self._loop
        with self._start_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="judge-loop", daemon=True)
                thread.start()
                judges = asyncio.run_coroutine_threadsafe(self._build(), loop).result(timeout=30)
                self._judges = dict(judges)
                self._thread = thread
                self._loop = loop
        assert self._loop is not None
        return self._loop

    # --- loop side ---------------------------------------------------------

    async def _build(self) -> Mapping[int, LLMJudge]:
        return self._make_judges()

    async def _aclose(self) -> None:
        for j in self._judges.values():
            await j.aclose()

    def _spawn_all(self, tasks: list[Task]) -> None:
        assert self._loop is not None
        for t in tasks:
            waiters = self._in_flight.get(t.key)
            if waiters is not None:
                waiters.append(t)
                self._slots.release()
                continue
            self._in_flight[t.key] = []
            self._loop.create_task(self._run(t))
        metrics.JUDGE_IN_FLIGHT.set(len(self._in_flight))

    async def _run(self, t: Task) -> None:
        try:
            outcome = await self._judge_with_retries(t)
        except Exception as exc:  # a bug in a judge must not lose the item
            log.exception("judge task failed")
            outcome = Outcome(t.metric, None, error=f"internal error: {type(exc).__name__}")
        finally:
            self._slots.release()
        waiters = self._in_flight.pop(t.key, [])
        metrics.JUDGE_IN_FLIGHT.set(len(self._in_flight))
        t.on_done(outcome)
        for w in waiters:
            w.on_done(Outcome(w.metric, outcome.verdict, error=outcome.error, shared=True))

    async def _judge_with_retries(self, t: Task) -> Outcome:
        judge = self._judges.get(t.tier)
        if judge is None:
            return Outcome(t.metric, None, error=f"no tier-{t.tier} judge configured")
        out = Outcome(t.metric, None)
        policy = self._retry
        invalid_left = policy.invalid_retries
        attempt = 0
        while True:
            if judge.name in self._disabled:
                out.error = f"judge {judge.name} disabled: {self._disabled[judge.name]}"
                metrics.JUDGE_CALLS.labels(judge.name, "disabled").inc()
                return out
            attempt += 1
            started = time.perf_counter()
            try:
                result = await judge.judge(t.metric, t.item)
            except RetryableJudgeError as exc:
                metrics.JUDGE_CALLS.labels(judge.name, "retryable_error").inc()
                if attempt >= policy.max_attempts:
                    out.error = f"gave up after {attempt} attempts: {exc}"
                    return out
                await asyncio.sleep(self._backoff(attempt, exc.retry_after_s))
                continue
            except InvalidVerdictError as exc:
                metrics.JUDGE_CALLS.labels(judge.name, "invalid_verdict").inc()
                self._bill(out, exc.call)
                if invalid_left > 0 and attempt < policy.max_attempts + policy.invalid_retries:
                    invalid_left -= 1
                    continue
                out.error = f"invalid verdict: {exc}"
                return out
            except FatalJudgeError as exc:
                metrics.JUDGE_CALLS.labels(judge.name, "fatal").inc()
                if judge.name not in self._disabled:
                    self._disabled[judge.name] = str(exc)
                    log.error("judge %s disabled, fix its configuration: %s", judge.name, exc)
                out.error = f"judge {judge.name} disabled: {exc}"
                return out
            except JudgeError as exc:
                metrics.JUDGE_CALLS.labels(judge.name, "rejected").inc()
                self._bill(out, exc.call)
                out.error = str(exc)
                return out
            metrics.JUDGE_CALLS.labels(judge.name, "ok").inc()
            metrics.JUDGE_LATENCY.labels(judge.name).observe(time.perf_counter() - started)
            self._bill(out, result.call)
            out.verdict = result.verdict
            return out

    def _bill(self, out: Outcome, call: JudgeCall | None) -> None:
        if call is None:
            return
        out.calls.append(call)
        metrics.JUDGE_COST.labels(call.judge).inc(call.cost_pusd / PICO_PER_USD)

    def _backoff(self, attempt: int, retry_after_s: float | None) -> float:
        p = self._retry
        delay = min(p.max_backoff_s, p.base_backoff_s * 2 ** (attempt - 1))
        delay *= 0.5 + random.random() / 2  # jitter: spread retries of a burst
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, p.max_backoff_s))
        return delay
