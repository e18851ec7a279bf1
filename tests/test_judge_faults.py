"""Faults delay, they do not discard: through the real openai and anthropic clients, judge work
that meets transient errors or an open circuit breaker waits and is judged later — once."""

from __future__ import annotations

import threading

import pytest

from judges.base import METRICS, JudgeItem
from judges.local_endpoint import EndpointConfig, LocalEndpoint
from judges.runtime import RetryPolicy
from tests.test_judge_runtime import judge_all, make_judge, runtime

WAITING = RetryPolicy(max_attempts=3, base_backoff_s=0.01, max_backoff_s=0.1, give_up_after_s=60)
POLICY = {"retry": WAITING, "breaker_failures": 5, "breaker_cooldown_s": 0.2}


def work(n: int) -> list[tuple[str, JudgeItem]]:
    return [
        (METRICS[i % len(METRICS)], JudgeItem(f"question {i}?", f"answer {i}.", f"context {i}."))
        for i in range(n)
    ]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_quarter_of_calls_failing_transiently_still_gives_every_verdict_once(provider):
    faults = EndpointConfig(
        latency=2.0, seed=3, rate_429=0.10, retry_after_s=0.05, rate_500=0.10, rate_timeout=0.05, timeout_s=5
    )
    with (
        LocalEndpoint(faults) as ep,
        runtime(lambda: {1: make_judge(provider, ep, timeout_s=0.3)}, **POLICY) as rt,
    ):
        outcomes = judge_all(rt, work(300))
        stats = ep.stats()
    verdicts = [o for o in outcomes if o.verdict is not None]
    assert len(verdicts) >= 0.99 * len(outcomes), {o.error for o in outcomes if o.error}
    assert sum(v for k, v in stats["by_outcome"].items() if k != "ok") > 50  # the faults happened
    assert stats["by_outcome"]["ok"] == len(verdicts)  # each pair judged once, none twice


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_an_endpoint_that_is_down_then_back_loses_nothing(provider):
    with (
        LocalEndpoint(EndpointConfig(latency=2.0)) as ep,
        runtime(lambda: {1: make_judge(provider, ep)}, **POLICY) as rt,
    ):
        ep.script([{"status": 503}] * 25)  # down: the breaker opens, work waits, probes fail, then it is back
        outcomes = judge_all(rt, work(120))
        stats = ep.stats()
        states = rt.breaker_states()
    assert all(o.verdict is not None for o in outcomes), {o.error for o in outcomes if o.error}
    assert stats["by_outcome"]["ok"] == len(outcomes)
    assert set(states.values()) == {"closed"}


def test_work_gives_up_only_at_its_deadline_with_the_reason():
    policy = {**POLICY, "retry": RetryPolicy(base_backoff_s=0.01, max_backoff_s=0.05, give_up_after_s=0.6)}
    with (
        LocalEndpoint(EndpointConfig(latency=1.0)) as ep,
        runtime(lambda: {1: make_judge("openai", ep)}, **policy) as rt,
    ):
        ep.script([{"status": 503}] * 10_000)  # never comes back
        outcomes = judge_all(rt, work(20))
    assert all(o.verdict is None and o.error.startswith("gave up after 0.6 s") for o in outcomes)


def test_an_hour_long_deadline_is_tested_with_an_injected_clock():
    now = [1000.0]
    policy = {**POLICY, "retry": RetryPolicy(base_backoff_s=0.01, max_backoff_s=0.05, give_up_after_s=3600)}
    with (
        LocalEndpoint(EndpointConfig(latency=1.0)) as ep,
        runtime(lambda: {1: make_judge("openai", ep)}, **policy) as rt,
    ):
        rt.clock = lambda: now[0]
        ep.script([{"status": 503}] * 10_000)  # never comes back
        timer = threading.Timer(0.5, lambda: now.__setitem__(0, now[0] + 3601))  # an hour passes
        timer.start()
        outcomes = judge_all(rt, work(20))
        timer.join()
    assert all(o.verdict is None and o.error.startswith("gave up after 3600 s") for o in outcomes)
