"""The spend metrics a cost dashboard reads: LLM cost, requests and tokens by tenant, agent and model,
request latency by model, with the labels capped (later tenants, agents, models and combinations fold
into `__other__` while every request and dollar is still counted)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import bytewax.operators as op
import msgspec
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from core import metrics
from core.records import Event
from operators.price import Pricer, override_rates, price
from tests.conftest import flow_settings
from tests.test_price import event

OTHER = metrics.OTHER
# $1 per 1M input tokens, $2 per 1M output tokens, cached input at $0.50
RATES = {"spend-model": override_rates(Decimal(1), Decimal(2), Decimal("0.5"))}


@pytest.fixture(autouse=True)
def fresh_labels() -> Iterator[None]:
    metrics.reset_labels()
    yield
    metrics.configure_labels(metrics.MAX_LABEL_VALUES, metrics.MAX_LABEL_SETS)
    metrics.reset_labels()


def request(
    tenant: str, agent: str, model: str = "spend-model", *, inp=1000, out=500, cached=0, latency_ms=None
) -> Event:
    e = event(model, inp=inp, out=out, cr=cached)
    return msgspec.structs.replace(e, tenant_id=tenant, agent=agent, latency_ms=latency_ms)


def run_price(events: list[Event]) -> None:
    """The price stage on one batch."""
    flow = Dataflow("spend_metrics")
    up = op.input("in", flow, TestingSource(events, batch_size=len(events)))
    out = price("price", up, pricer=Pricer(RATES))
    op.output("out", out.events, TestingSink([]))
    run_main(flow)


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def snapshot(names: list[str], label_sets: list[dict[str, str]]) -> dict[tuple, float]:
    return {(n, tuple(sorted(ls.items()))): value(n, **ls) for n in names for ls in label_sets}


def test_cost_requests_and_tokens_by_tenant_agent_and_model():
    a = [request("spend-acme", "chat", inp=1000, out=500) for _ in range(3)]
    b = [request("spend-acme", "search", inp=2000, out=100, cached=1000) for _ in range(2)]
    c = [request("spend-globex", "chat", inp=10, out=10)]
    sets = [
        {"tenant": "spend-acme", "agent": "chat", "model": "spend-model"},
        {"tenant": "spend-acme", "agent": "search", "model": "spend-model"},
        {"tenant": "spend-globex", "agent": "chat", "model": "spend-model"},
    ]
    names = ["judgeflow_llm_requests_total", "judgeflow_llm_cost_usd_total"]
    before = snapshot(names, sets)
    tokens = {
        (t, k): value("judgeflow_llm_tokens_total", tenant=t, model="spend-model", kind=k)
        for t in ("spend-acme", "spend-globex")
        for k in ("input", "output", "cached")
    }
    run_price(a + b + c)
    after = snapshot(names, sets)
    delta = {k: after[k] - before[k] for k in after}

    def d(name: str, i: int) -> float:
        return delta[(name, tuple(sorted(sets[i].items())))]

    assert [d("judgeflow_llm_requests_total", i) for i in range(3)] == [3, 2, 1]
    # 1000 in at $1/M + 500 out at $2/M = $0.002; 2000 in (1000 cached at $0.5/M) + 100 out = $0.0017
    assert d("judgeflow_llm_cost_usd_total", 0) == pytest.approx(3 * 0.002)
    assert d("judgeflow_llm_cost_usd_total", 1) == pytest.approx(2 * 0.0017)
    assert d("judgeflow_llm_cost_usd_total", 2) == pytest.approx(0.00003)
    grew = {
        k: value("judgeflow_llm_tokens_total", tenant=k[0], model="spend-model", kind=k[1]) - v
        for k, v in tokens.items()
    }
    assert grew == {
        ("spend-acme", "input"): 7000,
        ("spend-acme", "output"): 1700,
        ("spend-acme", "cached"): 2000,
        ("spend-globex", "input"): 10,
        ("spend-globex", "output"): 10,
        ("spend-globex", "cached"): 0,
    }


def test_labels_are_capped_and_nothing_is_lost():
    metrics.configure_labels(max_label_values=2, max_label_sets=3)
    # first seen: tenants cap-a, cap-b keep their names; (cap-a, x), (cap-a, y), (cap-b, x) keep theirs
    batch = [
        request("cap-a", "x"),
        request("cap-a", "y"),
        request("cap-b", "x"),
        request("cap-b", "y"),  # a fourth combination: its tenant stays, agent and model fold
        request("cap-c", "x"),  # a third tenant: folded
        request("cap-d", "z", "spend-model-2"),  # a third agent too, and a second model (within the cap)
    ]
    labels = {
        "kept": {"tenant": "cap-b", "agent": "x", "model": "spend-model"},
        "folded_set": {"tenant": "cap-b", "agent": OTHER, "model": OTHER},
        "folded_tenant": {"tenant": OTHER, "agent": OTHER, "model": OTHER},
    }
    before = {k: value("judgeflow_llm_requests_total", **ls) for k, ls in labels.items()}
    tenant_before = {t: value("judgeflow_requests_total", tenant=t) for t in ("cap-a", "cap-b", OTHER)}
    run_price(batch)
    grew = {k: value("judgeflow_llm_requests_total", **ls) - before[k] for k, ls in labels.items()}
    assert grew == {"kept": 1, "folded_set": 1, "folded_tenant": 2}
    assert value("judgeflow_llm_requests_total", tenant="cap-c", agent="x", model="spend-model") == 0
    # the per-tenant totals stay whole: cap-b has both its requests, the rest is __other__
    tenant_grew = {t: value("judgeflow_requests_total", tenant=t) - v for t, v in tenant_before.items()}
    assert tenant_grew == {"cap-a": 2, "cap-b": 2, OTHER: 2}
    exposed = {s.labels["tenant"] for m in metrics.LLM_REQUESTS.collect() for s in m.samples}
    assert not {"cap-c", "cap-d"} & exposed


def test_the_caps_come_from_the_flow_config():
    from flows.deps import build_deps

    settings = flow_settings(
        **{"metrics.max_label_values": 3, "metrics.max_label_sets": 7, "judges.enabled": False}
    )
    deps = build_deps(settings)
    try:
        assert metrics.llm_labels("k1", "a", "m") == ("k1", "a", "m")
        for t in ("k2", "k3", "k4"):
            metrics.tenant_label(t)
        assert metrics.tenant_label("k5") == OTHER
        assert metrics._LABEL_SETS.limit == 7
    finally:
        deps.close()


def test_request_latency_histogram_equals_one_observe_per_request():
    latencies = [120.0, 300.0, 999.0, 1000.0, 1500.0, 45_000.0, 250_000.0, None, 80.0]
    batch = [request("lat-t", "chat", "spend-model-lat", latency_ms=ms) for ms in latencies]
    reference = Histogram("ref", "", buckets=metrics.LLM_LATENCY_BUCKETS, registry=CollectorRegistry())
    for ms in latencies:
        if ms is not None:
            reference.observe(ms / 1000)
    run_price(batch)
    got = {
        s.labels.get("le", s.name): s.value
        for m in metrics.LLM_LATENCY.collect()
        for s in m.samples
        if s.labels.get("model") == "spend-model-lat" and not s.name.endswith("_created")
    }
    want = {
        s.labels.get("le", s.name.replace("ref", "judgeflow_llm_request_latency_seconds")): s.value
        for m in reference.collect()
        for s in m.samples
        if not s.name.endswith("_created")
    }
    assert got == pytest.approx(want)
    assert (
        got["judgeflow_llm_request_latency_seconds_count"] == 8
    )  # the event without a latency is not counted
