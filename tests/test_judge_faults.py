"""Faults delay, they do not discard: through the real openai and anthropic clients, judge work
that meets transient errors or an open circuit breaker waits and is judged later — once."""

from __future__ import annotations

import queue
import threading

import pytest
from prometheus_client import REGISTRY

from core.records import Evaluation
from judges.base import METRICS, JudgeItem
from judges.runtime import RetryPolicy, Task
from simulators.local_endpoint import EndpointConfig, LocalEndpoint
from tests.test_judge_cascade import RULES, T0, candidate, drain, event
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
        # 1 s: far above the 2 ms answers even on a busy machine (a late "ok" would be judged twice),
        # far below the 5 s stall of a "timeout" fault
        runtime(lambda: {1: make_judge(provider, ep, timeout_s=1.0)}, **POLICY) as rt,
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


def _wait_all(rt, pairs, *, timeout_s: float):
    """Submit (metric, item) pairs and wait up to `timeout_s` for every outcome."""
    done: queue.Queue = queue.Queue()
    tasks = [Task(m, 1, item, on_done=lambda o, i=i: done.put((i, o))) for i, (m, item) in enumerate(pairs)]
    rt.submit_many(tasks)
    return [done.get(timeout=timeout_s)[1] for _ in pairs]


@pytest.mark.slow
def test_a_minute_long_outage_loses_nothing_and_judges_each_pair_once():
    """Both real clients, each endpoint answering 503 for 60 s, then back (the default deadline: 1 h)."""
    hour = RetryPolicy(max_attempts=3, base_backoff_s=0.01, max_backoff_s=0.1, give_up_after_s=3600)
    policy = {**POLICY, "retry": hour}
    with (
        LocalEndpoint(EndpointConfig(latency=2.0)) as ep_openai,
        LocalEndpoint(EndpointConfig(latency=2.0)) as ep_anthropic,
        runtime(lambda: {1: make_judge("openai", ep_openai)}, **policy) as rt_openai,
        runtime(lambda: {1: make_judge("anthropic", ep_anthropic)}, **policy) as rt_anthropic,
    ):
        for ep in (ep_openai, ep_anthropic):
            ep.script([{"status": 503}] * 1_000_000)
        back = [threading.Timer(60, ep.script, args=([],)) for ep in (ep_openai, ep_anthropic)]
        for t in back:
            t.start()
        results = {}

        def run(name, rt):
            results[name] = _wait_all(rt, work(150), timeout_s=180)

        threads = [
            threading.Thread(target=run, args=("openai", rt_openai)),
            threading.Thread(target=run, args=("anthropic", rt_anthropic)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for t in back:
            t.cancel()
        stats = {"openai": ep_openai.stats(), "anthropic": ep_anthropic.stats()}
    for name, outcomes in results.items():
        assert len(outcomes) == 150
        assert all(o.verdict is not None for o in outcomes), {o.error for o in outcomes if o.error}
        assert stats[name]["by_outcome"]["ok"] == 150  # none twice
        assert stats[name]["by_outcome"]["http_503"] > 100  # the outage happened: probes for a minute


def test_the_judge_stage_queues_work_while_a_judge_is_down_and_the_stream_goes_on(judge_endpoint_down):
    """A down judge holds every runtime slot; the judge operator queues the rest instead of blocking
    the worker (so cost windows and the sampler go on), up to `max_queued`, then waits (backpressure)."""
    ep, make_logic = judge_endpoint_down
    logic, deps = make_logic(max_queued=1_000)
    pairs_per_event = len(deps.plan.llm_metrics)
    first = [cand(deps, i) for i in range(30)]
    out, _ = logic.on_batch(first)  # returns although only 4 calls can be in flight
    assert len(logic._queued) == 30 * pairs_per_event - 4
    out2, _ = logic.on_batch([cand(deps, i) for i in range(30, 40)])  # and takes more input
    assert len(logic._queued) == 40 * pairs_per_event - 4
    ep.script([])  # back
    got = [*out, *out2, *drain(logic, timeout_s=60)]
    verdicts = [v for v in got if isinstance(v, Evaluation) and v.tier == 1]
    assert len(verdicts) == 40 * pairs_per_event and not [v for v in verdicts if v.error]
    assert ep.stats()["by_outcome"]["ok"] == 40 * pairs_per_event  # each once


def test_past_max_queued_the_worker_waits_for_judge_slots(judge_endpoint_down):
    ep, make_logic = judge_endpoint_down
    logic, deps = make_logic(max_queued=10)
    before = REGISTRY.get_sample_value("judgeflow_judge_backpressure_total") or 0
    threading.Timer(1.0, ep.script, args=([],)).start()  # back after a second
    out, _ = logic.on_batch([cand(deps, i) for i in range(30)])  # returns once slots free up
    assert len(logic._queued) <= 10
    assert (REGISTRY.get_sample_value("judgeflow_judge_backpressure_total") or 0) > before
    got = [*out, *drain(logic, timeout_s=60)]
    verdicts = [v for v in got if isinstance(v, Evaluation) and v.tier == 1]
    assert len(verdicts) == 30 * len(deps.plan.llm_metrics) == ep.stats()["by_outcome"]["ok"]


@pytest.fixture
def judge_endpoint_down():
    """A local endpoint answering 503 until scripted back, and a judge operator over the real
    openai client with 4 slots."""
    from judges.cascade import JudgePlan
    from judges.openai_judge import OpenAIJudge
    from judges.runtime import EndpointPolicy, JudgeRuntime
    from operators.dedup import ContentKeyer
    from operators.judge import _Deps, _JudgeLogic
    from sinks.memory_store import MemoryVerdictCache

    runtimes = []
    with LocalEndpoint(EndpointConfig(latency=1.0)) as ep:
        ep.script([{"status": 503}] * 1_000_000)

        def cost(i: int, o: int) -> int:
            return 1000 * (i + o)

        def make_logic(*, max_queued: int):
            judge = OpenAIJudge(
                model="gpt-4o-mini", api_key="k", base_url=ep.openai_base_url, tier=1, timeout_s=5, cost=cost
            )
            rt = JudgeRuntime(lambda: {1: judge}, max_in_flight=4, policies={1: EndpointPolicy(**POLICY)})
            runtimes.append(rt)
            plan = JudgePlan(metrics={"toxicity": (1,), "hallucination": (1,)}, costs={1: cost})
            deps = _Deps(
                plan=plan,
                rules=RULES,
                runtime=rt,
                cache=MemoryVerdictCache(max_entries=10_000, ttl_s=3600),
                keyer=ContentKeyer(lowercase=False, volatile_patterns=(), judge_version="t"),
                now_ms=lambda: T0,
                eof_timeout_s=30,
                max_queued=max_queued,
            )
            return _JudgeLogic(deps, None), deps

        try:
            yield ep, make_logic
        finally:
            for rt in runtimes:
                rt.close()


def cand(deps, i: int):
    return candidate(event(f"e{i}", f"answer number {i}.", inp=f"question {i}?"), deps.plan, deps.keyer)
