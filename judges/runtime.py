"""The judge runtime: one background asyncio loop per process that keeps many
LLM judge calls in flight without ever blocking the dataflow on the network.

Workers hand work over with `submit_many` (one thread hop per batch); a
bounded number of calls is in flight (the worker blocks only when the bound is
reached: backpressure). Identical work is sent once by the judge stage
(`operators.judge`), which knows what it has under way.
Each judge endpoint (one per tier) has its own `EndpointPolicy`:

- client-side rate limits (requests and tokens per minute, token buckets);
- a circuit breaker: while open, no call reaches the endpoint; one probe per
  cool-down tests whether it is back (half-open), and its success closes it;
- exponential back-off with jitter on 429/5xx/timeouts, honouring Retry-After;
  an invalid verdict is asked again once, then recorded as an error; a fatal
  error (401, unknown model) disables the judge loudly.

Faults delay, they do not discard (`RetryPolicy.give_up_after_s` > 0, what the
flow configures): work that meets an open breaker or keeps failing with
transient errors waits — holding its in-flight slot, so newer work queues in
the judge stage (bounded, then backpressure: `operators.judge`) — and is
tried again after the cool-down or the back-off, until the deadline; only
then is it an error ("gave up after N s"). With `give_up_after_s = 0` a call fails
after `max_attempts` and an open breaker fails it at once.

Results come back through the caller's `on_done` callback, invoked on the loop
thread, which must only enqueue.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from core import metrics
from core.errors import Backoff
from core.records import PICO_PER_USD, JudgeCall, Verdict
from judges.base import (
    FatalJudgeError,
    InvalidVerdictError,
    JudgeError,
    JudgeItem,
    JudgeResult,
    LLMJudge,
    RetryableJudgeError,
)
from judges.limits import CLOSED, CircuitBreaker, RateLimiter
from judges.rubrics import estimate_prompt_tokens

log = logging.getLogger(__name__)

CIRCUIT_OPEN = "circuit open"


@dataclass(slots=True)
class Outcome:
    """The end of one (metric, item) judgement at one tier: a verdict or an error,
    and every billed call it took. `shared`: the judge stage gave it the outcome of another event's
    call for the same content (no call of its own)."""

    metric: str
    verdict: Verdict | None
    calls: list[JudgeCall] = field(default_factory=list)
    error: str = ""
    shared: bool = False
    tier: int = 0
    judge: str = ""


@dataclass(frozen=True, slots=True)
class Task:
    metric: str
    tier: int
    item: JudgeItem
    on_done: Callable[[Outcome], None]


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3  # with give_up_after_s = 0: attempts before an error
    base_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    invalid_retries: int = 1
    give_up_after_s: float = 0.0  # > 0: transient faults and an open breaker wait up to this long


@dataclass(frozen=True)
class EndpointPolicy:
    """Limits for one judge endpoint; 0 means no limit."""

    retry: RetryPolicy = RetryPolicy()
    requests_per_minute: float = 0
    tokens_per_minute: float = 0
    max_in_flight: int = 0
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0


class _Endpoint:
    """A judge with its limiter, breaker and concurrency cap (loop side only)."""

    def __init__(self, judge: LLMJudge, policy: EndpointPolicy) -> None:
        self.judge = judge
        self.policy = policy
        self.limiter = RateLimiter(policy.requests_per_minute, policy.tokens_per_minute)
        self.breaker = CircuitBreaker(policy.breaker_failures, policy.breaker_cooldown_s)
        self.cap = asyncio.Semaphore(policy.max_in_flight) if policy.max_in_flight > 0 else None
        # the hot path's metric children, looked up once
        name = judge.name
        self.ok = metrics.JUDGE_CALLS.labels(name, "ok")
        self.latency = metrics.JUDGE_LATENCY.labels(name)
        self.cost_usd = metrics.JUDGE_COST.labels(name)
        self.tokens_in = metrics.JUDGE_TOKENS.labels(name, "input")
        self.tokens_out = metrics.JUDGE_TOKENS.labels(name, "output")


class JudgeRuntime:
    """Per-process owner of the event loop, the LLM judges and the in-flight bound.

    Args:
        make_judges: builds tier -> judge; called once, inside the loop.
        max_in_flight: calls in flight in this process (all tiers together).
        retry: the retry policy of tiers without their own `policies` entry.
        policies: tier -> limits for that tier's endpoint.
    """

    def __init__(
        self,
        make_judges: Callable[[], Mapping[int, LLMJudge]],
        *,
        max_in_flight: int,
        retry: RetryPolicy = RetryPolicy(),
        policies: Mapping[int, EndpointPolicy] | None = None,
        disabled: Mapping[str, str] | None = None,
        on_disabled: Callable[[str, str], None] | None = None,
    ) -> None:
        self._make_judges = make_judges
        self._max_in_flight = max_in_flight
        self._default_policy = EndpointPolicy(retry=retry)
        self._policies = dict(policies or {})
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._start_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._endpoints: dict[int, _Endpoint] = {}
        self._disabled: dict[str, str] = dict(disabled or {})  # name -> why (remembered across restarts)
        self._on_disabled = on_disabled
        self._tasks: set[asyncio.Task] = set()
        self._running = 0  # tasks started and not finished (the in-flight gauge)
        self.clock: Callable[[], float] = time.monotonic  # for the give-up deadline

    # --- worker side -------------------------------------------------------

    def offer(self, queue: collections.deque[Task]) -> int:
        """Start tasks from the front of `queue` while a slot is free (never blocks);
        returns how many started. The rest stay in `queue` for a later offer."""
        loop = self._ensure_started()
        batch: list[Task] = []
        while queue and self._slots.acquire(blocking=False):
            batch.append(queue.popleft())
        if batch:
            loop.call_soon_threadsafe(self._spawn_all, batch)
        return len(batch)

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
        return {tier: ep.judge.name for tier, ep in self._endpoints.items()}

    def breaker_states(self) -> dict[str, str]:
        """Judge name -> circuit breaker state (closed, open, half_open)."""
        loop = self._ensure_started()

        async def states() -> dict[str, str]:
            return {ep.judge.name: ep.breaker.state for ep in self._endpoints.values()}

        return asyncio.run_coroutine_threadsafe(states(), loop).result(timeout=10)

    def disabled(self) -> dict[str, str]:
        """Judge name -> why it was disabled."""
        return dict(self._disabled)

    def close(self) -> None:
        """Cancel what is still in flight (it is in the operator's snapshot), close the clients."""
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
                asyncio.run_coroutine_threadsafe(self._build(), loop).result(timeout=30)
                self._thread = thread
                self._loop = loop
        assert self._loop is not None
        return self._loop

    # --- loop side ---------------------------------------------------------

    async def _build(self) -> None:
        for tier, judge in self._make_judges().items():
            policy = self._policies.get(tier, self._default_policy)
            self._endpoints[tier] = _Endpoint(judge, policy)
            metrics.JUDGE_BREAKER_OPEN.labels(judge.name).set(0)
            metrics.JUDGE_DISABLED.labels(judge.name).set(1 if judge.name in self._disabled else 0)

    async def _aclose(self) -> None:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ep in self._endpoints.values():
            await ep.judge.aclose()

    def _spawn_all(self, tasks: list[Task]) -> None:
        assert self._loop is not None
        for t in tasks:
            task = self._loop.create_task(self._run(t))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._running += len(tasks)
        metrics.JUDGE_IN_FLIGHT.set(self._running)

    async def _run(self, t: Task) -> None:
        try:
            outcome = await self._judge_with_retries(t)
        except Exception as exc:  # a bug in a judge must not lose the item
            log.exception("judge task failed")
            outcome = Outcome(t.metric, None, error=f"internal error: {type(exc).__name__}", tier=t.tier)
        finally:
            self._slots.release()
            self._running -= 1
            metrics.JUDGE_IN_FLIGHT.set(self._running)
        t.on_done(outcome)

    async def _judge_with_retries(self, t: Task) -> Outcome:
        ep = self._endpoints.get(t.tier)
        if ep is None:
            return Outcome(t.metric, None, error=f"no tier-{t.tier} judge configured", tier=t.tier)
        name = ep.judge.name
        out = Outcome(t.metric, None, tier=t.tier, judge=name)
        policy = ep.policy.retry
        invalid_left = policy.invalid_retries
        attempt = 0
        waits = policy.give_up_after_s > 0
        deadline = self.clock() + policy.give_up_after_s
        held_back = False
        while True:
            if name in self._disabled:
                out.error = f"judge {name} disabled: {self._disabled[name]}"
                metrics.JUDGE_CALLS.labels(name, "disabled").inc()
                return out
            if not ep.breaker.allow():
                if not held_back:  # once per piece of work, not per look while it waits
                    metrics.JUDGE_CALLS.labels(name, "breaker_open").inc()
                    held_back = True
                why = f"{CIRCUIT_OPEN}: {name} failed {ep.policy.breaker_failures} times in a row"
                if not waits:
                    out.error = why
                    return out
                if self.clock() >= deadline:
                    out.error = f"gave up after {policy.give_up_after_s:g} s: {why}"
                    return out
                # wait for the cool-down (or for the probe in flight), then look again
                pause = max(ep.breaker.retry_in(), min(1.0, ep.policy.breaker_cooldown_s / 4))
                metrics.JUDGE_WAITING.labels(name).inc()
                try:
                    await asyncio.sleep(min(pause, max(deadline - self.clock(), 0.0)) + 0.001)
                finally:
                    metrics.JUDGE_WAITING.labels(name).dec()
                continue
            attempt += 1
            started = time.perf_counter()
            try:
                result = await self._attempt(ep, t)
            except RetryableJudgeError as exc:
                self._breaker_result(ep, ok=exc.throttled)
                metrics.JUDGE_CALLS.labels(name, "throttled" if exc.throttled else "retryable_error").inc()
                if not waits and attempt >= policy.max_attempts:
                    out.error = f"gave up after {attempt} attempts: {exc}"
                    return out
                if waits and self.clock() >= deadline:
                    out.error = f"gave up after {policy.give_up_after_s:g} s ({attempt} attempts): {exc}"
                    return out
                await asyncio.sleep(self._backoff(policy, min(attempt, 16), exc.retry_after_s))
                continue
            except InvalidVerdictError as exc:
                self._breaker_result(ep, ok=True)
                metrics.JUDGE_CALLS.labels(name, "invalid_verdict").inc()
                self._bill(ep, out, exc.call)
                if invalid_left > 0:
                    invalid_left -= 1
                    continue
                out.error = f"invalid verdict: {exc}"
                return out
            except FatalJudgeError as exc:
                self._breaker_result(ep, ok=True)
                metrics.JUDGE_CALLS.labels(name, "fatal").inc()
                if name not in self._disabled:
                    self._disabled[name] = str(exc)
                    metrics.JUDGE_DISABLED.labels(name).set(1)
                    log.error("judge %s disabled, fix its configuration: %s", name, exc)
                    if self._on_disabled is not None:
                        try:  # remembered (control store), so a restart does not call it again
                            await asyncio.to_thread(self._on_disabled, name, str(exc))
                        except Exception as store_exc:
                            log.warning("could not record judge %s as disabled: %s", name, store_exc)
                out.error = f"judge {name} disabled: {exc}"
                return out
            except JudgeError as exc:
                self._breaker_result(ep, ok=True)
                metrics.JUDGE_CALLS.labels(name, "rejected").inc()
                self._bill(ep, out, exc.call)
                out.error = str(exc)
                return out
            self._breaker_result(ep, ok=True)
            ep.ok.inc()
            ep.latency.observe(time.perf_counter() - started)
            self._bill(ep, out, result.call)
            out.verdict = result.verdict
            return out

    async def _attempt(self, ep: _Endpoint, t: Task) -> JudgeResult:
        estimate = 0
        if ep.limiter.limited:
            estimate = estimate_prompt_tokens(t.metric, t.item) + 200
            wait = ep.limiter.reserve(estimate)
            if wait > 0:
                metrics.JUDGE_RATE_LIMIT_WAIT.labels(ep.judge.name).inc(wait)
                await asyncio.sleep(wait)
        try:
            if ep.cap is None:
                result = await ep.judge.judge(t.metric, t.item)
            else:
                async with ep.cap:
                    result = await ep.judge.judge(t.metric, t.item)
        except JudgeError as exc:
            if estimate and exc.call is not None:
                ep.limiter.settle(estimate, exc.call.input_tokens + exc.call.output_tokens)
            raise
        except BaseException:
            if ep.breaker.state != CLOSED:  # a cancelled probe must not leave the breaker stuck
                ep.breaker.failure()
            raise
        if estimate:
            ep.limiter.settle(estimate, result.call.input_tokens + result.call.output_tokens)
        return result

    def _breaker_result(self, ep: _Endpoint, *, ok: bool) -> None:
        was = ep.breaker.state
        if ok:
            ep.breaker.success()
        else:
            ep.breaker.failure()
        now = ep.breaker.state
        if now != was:
            metrics.JUDGE_BREAKER_OPEN.labels(ep.judge.name).set(0 if now == CLOSED else 1)
            if now == CLOSED:
                log.warning("judge %s is answering again: circuit closed", ep.judge.name)
            elif was == CLOSED:
                log.warning(
                    "judge %s failed %d times in a row: circuit open, calls fail fast for %g s",
                    ep.judge.name,
                    ep.policy.breaker_failures,
                    ep.policy.breaker_cooldown_s,
                )

    def _bill(self, ep: _Endpoint, out: Outcome, call: JudgeCall | None) -> None:
        if call is None:
            return
        out.calls.append(call)
        ep.cost_usd.inc(call.cost_pusd / PICO_PER_USD)
        ep.tokens_in.inc(call.input_tokens)
        ep.tokens_out.inc(call.output_tokens)

    def _backoff(self, p: RetryPolicy, attempt: int, retry_after_s: float | None) -> float:
        return Backoff(p.base_backoff_s, p.max_backoff_s).delay_s(attempt, retry_after_s)
