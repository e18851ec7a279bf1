"""price: exact costs that agree with genai-prices to the picodollar, config
overrides for fine-tuned models, provided costs, and unknown models flagged."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from genai_prices import Usage, calc_price

from operators.price import Catalog, Pricer, override_rates
from operators.records import PICO_PER_USD, Event


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


def library_pico(model, provider, inp, out, cr, cw, ts_ms) -> int:
    p = calc_price(
        Usage(input_tokens=inp, output_tokens=out, cache_read_tokens=cr, cache_write_tokens=cw),
        model,
        provider_id=provider or None,
        genai_request_timestamp=datetime.fromtimestamp(ts_ms / 1000, tz=UTC),
    )
    return int(p.total_price * PICO_PER_USD)


MODELS = [
    ("gpt-4o", "openai"),
    ("gpt-4o-mini", ""),
    ("gpt-4.1", "openai"),
    ("claude-3-5-haiku-latest", "anthropic"),
    ("claude-sonnet-4-5", "anthropic"),
    ("gemini-2.5-pro", "google"),  # long-context tiers: the library's slow path
    ("deepseek-chat", "deepseek"),
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
        ts = 1_700_000_000_000 + rng.randint(0, 60_000_000_000)
        got = catalog.cost_pico(model, provider, ts, inp, out, cr, cw)
        assert got == library_pico(model, provider, inp, out, cr, cw, ts), (model, inp, out, cr, cw, ts)


def test_precedence_provided_then_override_then_catalog_then_unknown():
    ft = override_rates(Decimal("0.30"), Decimal("1.20"))
    pricer = Pricer({"ft:gpt-4o-mini:acme": ft}, prefer_provided=True)

    e = event("gpt-4o", "openai", cost=5 * 10**9)
    pricer.price(e)
    assert (e.cost_pusd, e.cost_source) == (5 * 10**9, "provided")

    e = event("ft:gpt-4o-mini:acme", inp=1_000_000, out=1_000_000)
    pricer.price(e)
    assert (e.cost_pusd, e.cost_source) == (int(Decimal("1.50") * PICO_PER_USD), "override")

    e = event("gpt-4o", "openai", inp=1000, out=200)
    pricer.price(e)
    # $2.50 / 1M input, $10 / 1M output on 2023-11-16
    assert (e.cost_pusd, e.cost_source) == (int(Decimal("0.0045") * PICO_PER_USD), "catalog")

    e = event("acme-llama-70b-selfhosted", "vllm")
    pricer.price(e)
    assert (e.cost_pusd, e.cost_source) == (0, "unknown")


def test_catalog_wins_over_provided_cost_when_configured():
    pricer = Pricer({}, prefer_provided=False)
    e = event("gpt-4o", "openai", inp=1000, out=200, cost=1)
    pricer.price(e)
    assert e.cost_source == "catalog" and e.cost_pusd == int(Decimal("0.0045") * PICO_PER_USD)
    # ...but a model the catalog lacks still uses the provided cost rather than zero
    e = event("mystery", "", cost=77)
    pricer.price(e)
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
