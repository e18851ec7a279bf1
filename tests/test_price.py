"""price: exact costs that agree with genai-prices to the picodollar, config
overrides for fine-tuned models, provided costs, and unknown models flagged."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal

import bytewax.operators as op
import msgspec
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from genai_prices import Usage, calc_price
from prometheus_client import REGISTRY

from core.records import PICO_PER_USD, Event, PricingIssue
from operators.price import Catalog, Pricer, override_rates, price, pricing_issue


def event(
    model: str, provider: str = "", *, inp=1000, out=200, cr=0, cw=0, ts_ms=1_700_158_546_000, cost=None
) -> Event:
    return Event(
        event_id="e",
        ts_ms=ts_ms,
        tenant_id="t",
        agent="a",
        model=model,
        provider=provider,
        variant="baseline",
        input_text="",
        output_text="",
        context=None,
        input_tokens=inp,
        output_tokens=out,
        cache_read_tokens=cr,
        cache_write_tokens=cw,
        reasoning_tokens=0,
        provided_cost_pusd=cost,
        latency_ms=None,
        conversation_id=None,
        user_id=None,
        metadata={},
        source=None,
    )


def library_pico(model, provider, inp, out, cr, cw, ts_ms, reasoning=0) -> int:
    p = calc_price(
        Usage(
            input_tokens=inp,
            output_tokens=out,
            cache_read_tokens=cr,
            cache_write_tokens=cw,
            output_reasoning_tokens=reasoning,
        ),
        model,
        provider_id=provider or None,
        genai_request_timestamp=datetime.fromtimestamp(ts_ms / 1000, tz=UTC),
    )
    return int((p.total_price * PICO_PER_USD).to_integral_value())


MODELS = [
    ("gpt-4o", "openai"),
    ("gpt-4o-mini", ""),
    ("gpt-4.1", "openai"),
    ("claude-3-5-haiku-latest", "anthropic"),
    ("claude-sonnet-4-5", "anthropic"),
    ("gemini-2.5-pro", "google"),  # long-context tiers: the library's slow path
    ("deepseek-chat", "deepseek"),  # off-peak prices by time of day
    ("o3", "openai"),  # a price cut on a start date (2025-06-10)
    ("sonar-deep-research", "perplexity"),  # reasoning tokens have their own price
    ("sonar", "perplexity"),  # a per-request fee
]


def test_fast_rates_equal_the_library_exactly_on_random_usage():
    catalog = Catalog()
    rng = random.Random(42)
    for _ in range(2000):
        model, provider = rng.choice(MODELS)
        inp = rng.randint(0, 400_000)
        cr = rng.randint(0, inp // 2)
        cw = rng.randint(0, (inp - cr) // 3) if "claude" in model else 0
        out = rng.randint(0, 8000)
        reasoning = rng.randint(0, out)
        # 2023-11 .. 2026-01: across start dates, at any time of day, out of order
        ts = 1_700_000_000_000 + rng.randint(0, 67_000_000_000)
        got = catalog.cost_pico(model, provider, ts, inp, out, cr, cw, reasoning)
        want = library_pico(model, provider, inp, out, cr, cw, ts, reasoning)
        assert got == want, (model, inp, out, cr, cw, reasoning, ts)
        assert type(got) is int


def test_precedence_provided_then_override_then_catalog_then_unknown():
    ft = override_rates(Decimal("0.30"), Decimal("1.20"))
    pricer = Pricer({"ft:gpt-4o-mini:acme": ft}, prefer_provided=True)

    e = event("gpt-4o", "openai", cost=5 * 10**9)
    e = pricer.price(e)
    assert (e.cost_pusd, e.cost_source) == (5 * 10**9, "provided")

    e = event("ft:gpt-4o-mini:acme", inp=1_000_000, out=1_000_000)
    e = pricer.price(e)
    assert (e.cost_pusd, e.cost_source) == (int(Decimal("1.50") * PICO_PER_USD), "override")

    e = event("gpt-4o", "openai", inp=1000, out=200)
    e = pricer.price(e)
    # $2.50 / 1M input, $10 / 1M output on 2023-11-16
    assert (e.cost_pusd, e.cost_source) == (int(Decimal("0.0045") * PICO_PER_USD), "catalog")

    e = event("acme-llama-70b-selfhosted", "vllm")
    e = pricer.price(e)
    assert (e.cost_pusd, e.cost_source) == (0, "unknown")


def test_catalog_wins_over_provided_cost_when_configured():
    pricer = Pricer({}, prefer_provided=False)
    e = event("gpt-4o", "openai", inp=1000, out=200, cost=1)
    e = pricer.price(e)
    assert e.cost_source == "catalog" and e.cost_pusd == int(Decimal("0.0045") * PICO_PER_USD)
    # ...but a model the catalog lacks still uses the provided cost rather than zero
    e = event("mystery", "", cost=77)
    e = pricer.price(e)
    assert (e.cost_pusd, e.cost_source) == (77, "provided")


def test_unknown_provider_label_falls_back_to_model_inference():
    catalog = Catalog()
    assert catalog.cost_pico("gpt-4o", "my-gateway", 1_700_158_546_000, 1000, 200) == int(
        Decimal("0.0045") * PICO_PER_USD
    )


@pytest.mark.parametrize("cache_read", [None, Decimal("0.03")])
def test_override_cache_read_rate(cache_read):
    rates = override_rates(Decimal("0.30"), Decimal("1.20"), cache_read)
    # 1M input of which 400k cached, no output
    got = rates.cost_pico(1_000_000, 0, 400_000, 0)
    expected = (
        Decimal("0.18") + 400_000 * (cache_read if cache_read is not None else Decimal("0.30")) / 1_000_000
    )
    assert got == int(expected * PICO_PER_USD)


JULY_2025 = int(datetime(2025, 7, 1, 12, tzinfo=UTC).timestamp() * 1000)


def usd(text: str) -> int:
    return int(Decimal(text) * PICO_PER_USD)


def test_anthropic_cache_write_and_read_are_priced_at_their_own_rates():
    catalog = Catalog()
    # claude-sonnet-4-5: $3 input, $3.75 cache write, $0.30 cache read, $15 output per 1M
    # 10k input tokens: 4k uncached, 4k written to the cache, 2k read from it; 1k output
    got = catalog.cost_pico("claude-sonnet-4-5", "anthropic", JULY_2025, 10_000, 1_000, 2_000, 4_000)
    assert got == usd("0.012") + usd("0.015") + usd("0.0006") + usd("0.015")
    assert got == library_pico("claude-sonnet-4-5", "anthropic", 10_000, 1_000, 2_000, 4_000, JULY_2025)


@pytest.mark.parametrize(
    ("model", "provider"), [("claude-sonnet-4-5", "anthropic"), ("gemini-2.5-pro", "google")]
)
@pytest.mark.parametrize("inp", [199_999, 200_000, 200_001, 1_000_000])
def test_long_context_tier_applies_above_its_threshold_like_the_library(model, provider, inp):
    catalog = Catalog()
    got = catalog.cost_pico(model, provider, JULY_2025, inp, 1_000, inp // 10, 0)
    assert got == library_pico(model, provider, inp, 1_000, inp // 10, 0, JULY_2025)


def test_long_context_tier_price_is_the_higher_rate_on_all_tokens():
    catalog = Catalog()
    # above 200k input tokens claude-sonnet-4-5 costs $6 input / $22.50 output per 1M, on every token
    assert catalog.cost_pico("claude-sonnet-4-5", "anthropic", JULY_2025, 200_000, 1_000) == usd("0.615")
    assert catalog.cost_pico("claude-sonnet-4-5", "anthropic", JULY_2025, 200_001, 1_000) == usd("1.222506")


def test_reasoning_tokens_are_output_unless_the_catalog_prices_them_apart():
    catalog = Catalog()
    # o4-mini: reasoning tokens are output tokens ($4.40 / 1M) — they are already in output_tokens
    plain = catalog.cost_pico("o4-mini", "openai", JULY_2025, 1_000, 1_000)
    assert catalog.cost_pico("o4-mini", "openai", JULY_2025, 1_000, 1_000, reasoning=800) == plain
    # sonar-deep-research: $8 output, $3 reasoning per 1M
    got = catalog.cost_pico("sonar-deep-research", "perplexity", JULY_2025, 1_000, 1_000, reasoning=500)
    assert (
        got
        == usd("0.0075")
        == library_pico("sonar-deep-research", "perplexity", 1_000, 1_000, 0, 0, JULY_2025, 500)
    )


def test_prices_follow_time_of_day_and_start_dates():
    catalog = Catalog()
    noon, evening = JULY_2025, JULY_2025 + 5 * 3_600_000
    # deepseek-chat has off-peak prices from 16:30 to 00:30 UTC
    assert catalog.cost_pico("deepseek-chat", "deepseek", noon, 1_000_000, 0) == usd("0.27")
    assert catalog.cost_pico("deepseek-chat", "deepseek", evening, 1_000_000, 0) == usd("0.135")
    # o3 dropped from $10 to $2 per 1M input on 2025-06-10 (UTC)
    june_10 = int(datetime(2025, 6, 10, tzinfo=UTC).timestamp() * 1000)
    assert catalog.cost_pico("o3", "openai", june_10 - 1, 1_000_000, 0) == usd("10")
    assert catalog.cost_pico("o3", "openai", june_10, 1_000_000, 0) == usd("2")


def test_per_request_fee_is_charged_once_per_request():
    # perplexity sonar: $12 per 1k requests on top of $1 / 1M tokens
    got = Catalog().cost_pico("sonar", "perplexity", JULY_2025, 1_000, 1_000)
    assert got == usd("0.012") + usd("0.002")


def test_rates_round_half_to_even_once_per_request():
    rates = override_rates(Decimal("0.0000015"), Decimal(0))  # 1.5 picodollars per token
    assert [rates.cost_pico(n, 0) for n in (1, 3, 5)] == [2, 4, 8]  # 1.5, 4.5, 7.5 -> even


def test_unknown_models_are_counted_flagged_and_reported_once_per_model_provider_day():
    day = 86_400_000
    t0 = 1_700_092_800_000  # 2023-11-16 00:00 UTC
    events = [
        event("acme-llama-70b", "vllm", ts_ms=t0 + 1),
        event("acme-llama-70b", "vllm", ts_ms=t0 + 2),
        event("gpt-4o", "openai", ts_ms=t0 + 3),
        event("acme-llama-70b", "vllm", ts_ms=t0 + day + 5),  # the next day
        event("acme-llama-70b", "tgi", ts_ms=t0 + 7),  # another provider
    ]
    events = [msgspec.structs.replace(e, event_id=f"e{i}") for i, e in enumerate(events)]
    counter = ("judgeflow_unknown_model_events_total", {"model": "acme-llama-70b"})
    before = REGISTRY.get_sample_value(*counter) or 0

    flow = Dataflow("price_test")
    out = price("price", op.input("in", flow, TestingSource(events, batch_size=2)), pricer=Pricer({}))
    priced: list[Event] = []
    issues: list[PricingIssue] = []
    op.output("events", out.events, TestingSink(priced))
    op.output("issues", out.issues, TestingSink(issues))
    run_main(flow)

    assert sorted((e.event_id, e.cost_source) for e in priced) == [
        ("e0", "unknown"),
        ("e1", "unknown"),
        ("e2", "catalog"),
        ("e3", "unknown"),
        ("e4", "unknown"),
    ]
    assert sorted((i.model, i.provider, i.day_ms, i.issue) for i in issues) == [
        ("acme-llama-70b", "tgi", t0, "unknown_model"),
        ("acme-llama-70b", "vllm", t0, "unknown_model"),
        ("acme-llama-70b", "vllm", t0 + day, "unknown_model"),
    ]
    assert len({i.key for i in issues}) == 3
    assert (
        pricing_issue("acme-llama-70b", "vllm", t0 + 123).key
        == pricing_issue("acme-llama-70b", "vllm", t0).key
    )
    assert REGISTRY.get_sample_value(*counter) - before == 4
