"""A sample of the Azure production trace, priced through the whole flow (Kafka
mock -> flow -> ClickHouse), costs exactly what genai-prices says, per tenant —
in `llm_events` and in the 1 min / 1 h / 1 day windows, on 1 and 2 workers.

Arrival times and token counts are the real ones (Azure LLM inference traces,
2023-11-16, CC-BY-4.0); models, cache usage and reasoning are assigned per row
so every pricing path is exercised: OpenAI prompt-cache reads, Anthropic cache
reads and writes, a long-context tier (inputs scaled x60, as for long
documents, so many cross 200k tokens), reasoning tokens, a config override
(fine-tuned model), a provided cost, and a model nobody can price.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from genai_prices import Usage, calc_price

from simulators.kafka_mock import produce_all
from simulators.traffic import read_trace
from sinks.clickhouse import connect, ensure_schema
from tests.conftest import run_flow, topic_flow_settings

TOPIC = "llm-events"
FT = ("ft:gpt-4o-mini:acme:support", Decimal("0.30"), Decimal("1.20"))  # the example config's override


def trace_events() -> list[dict]:
    rows = [("conv", r) for r in read_trace("conv")[:2000]] + [("code", r) for r in read_trace("code")[:1200]]
    rows.sort(key=lambda x: x[1].ts_ms)
    out = []
    for i, (trace, r) in enumerate(rows):
        inp, outp = r.input_tokens, r.output_tokens
        d: dict = {"event_id": f"{trace}-{i:05d}", "ts": r.ts_ms, "agent": trace, "input": "q", "output": "a"}
        usage = {"input_tokens": inp, "output_tokens": outp}
        k = i % 8
        if trace == "code":
            if k < 5:  # OpenAI: prompt-cache reads
                d |= {"tenant_id": "globex", "model": "gpt-4.1", "provider": "openai"}
                usage["cache_read_tokens"] = inp * 3 // 5
            else:  # reasoning tokens are part of the output
                d |= {"tenant_id": "globex", "model": "o4-mini", "provider": "openai"}
                usage["reasoning_tokens"] = outp // 2
        elif k < 3:  # Anthropic: cache reads and writes
            d |= {"tenant_id": "acme", "model": "claude-sonnet-4-5", "provider": "anthropic"}
            usage["cache_write_tokens"] = inp // 4
            usage["cache_read_tokens"] = inp // 2
        elif k == 3:  # long documents: the long-context tier
            d |= {"tenant_id": "umbrella", "model": "gemini-2.5-pro", "provider": "google"}
            usage["input_tokens"] = inp * 60
            usage["cache_read_tokens"] = inp * 10
        elif k == 4:
            d |= {"tenant_id": "acme", "model": FT[0], "provider": "openai", "variant": "finetuned"}
        elif k == 5:  # the gateway reports the cost
            d |= {"tenant_id": "hooli", "model": "gpt-4o", "provider": "openai", "cost_usd": f"0.00{i:04d}"}
        elif k == 6:
            d |= {"tenant_id": "initech", "model": "llama-3-70b-selfhosted", "provider": "vllm"}
        else:
            d |= {"tenant_id": "acme", "model": "gpt-4o-mini", "provider": "openai"}
            usage["cache_read_tokens"] = inp // 3
        d["usage"] = usage
        out.append(d)
    return out


def independent_cost(d: dict) -> Decimal:
    """What the request costs, straight from genai-prices (or the override / provided cost)."""
    u = d["usage"]
    if "cost_usd" in d:
        return Decimal(d["cost_usd"])
    if d["model"] == FT[0]:
        return (u["input_tokens"] * FT[1] + u["output_tokens"] * FT[2]) / 1_000_000
    try:
        price = calc_price(
            Usage(
                input_tokens=u["input_tokens"],
                output_tokens=u["output_tokens"],
                cache_read_tokens=u.get("cache_read_tokens", 0),
                cache_write_tokens=u.get("cache_write_tokens", 0),
                output_reasoning_tokens=u.get("reasoning_tokens", 0),
            ),
            d["model"],
            provider_id=d["provider"],
            genai_request_timestamp=datetime.fromtimestamp(d["ts"] / 1000, tz=UTC),
        )
    except LookupError:
        return Decimal(0)  # unknown: counted, cost unknown
    return price.total_price


def source_of(d: dict) -> str:
    if "cost_usd" in d:
        return "provided"
    if d["model"] == FT[0]:
        return "override"
    return "unknown" if d["model"] == "llama-3-70b-selfhosted" else "catalog"


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_trace_costs_equal_genai_prices_per_tenant(kafka, chdb_dsn, database, workers):
    events = trace_events()
    kafka.create_topic(TOPIC, 4)
    produce_all(
        kafka.bootstrap, TOPIC, [(d["event_id"].encode(), json.dumps(d).encode(), d["ts"]) for d in events]
    )
    settings = topic_flow_settings(kafka, chdb_dsn, database, topic=TOPIC)
    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    run_flow(settings, workers=workers)

    want: dict[str, Decimal] = defaultdict(Decimal)
    want_rounded: dict[str, Decimal] = defaultdict(Decimal)  # each request rounded to the picodollar once
    for d in events:
        c = independent_cost(d)
        want[d["tenant_id"]] += c
        want_rounded[d["tenant_id"]] += c.quantize(Decimal("1e-12"))
    assert sum(1 for d in events if d["usage"]["input_tokens"] > 200_000) > 20  # the tier is exercised

    def per_tenant(sql: str) -> dict[str, Decimal]:
        return dict(client.query(sql).result_rows)

    got = per_tenant("SELECT tenant_id, sum(cost_usd) FROM llm_events FINAL GROUP BY tenant_id")
    assert got.keys() == want.keys()
    for tenant, usd in got.items():
        assert abs(usd - want[tenant]) < Decimal("0.005"), tenant  # to the cent...
        assert usd == want_rounded[tenant], tenant  # ...and in fact to the picodollar
    for window_s in (60, 3600, 86400):
        windows = per_tenant(
            "SELECT tenant_id, sum(cost_usd) FROM cost_windows FINAL"
            f" WHERE category = 'llm' AND window_s = {window_s} GROUP BY tenant_id"
        )
        assert windows == got, window_s

    sources = dict(
        client.query("SELECT cost_source, count() FROM llm_events FINAL GROUP BY cost_source").result_rows
    )
    assert sources == Counter(source_of(d) for d in events)
    issues = client.query("SELECT model, provider, toString(day) FROM pricing_issues FINAL").result_rows
    assert issues == [("llama-3-70b-selfhosted", "vllm", "2023-11-16")]
