"""OTLP/JSON input: the GenAI spans and inference-details events emitted by the
OpenTelemetry OpenAI instrumentation (../shared/data/otel, see PROVENANCE.tsv)
become events; other spans are skipped; broken ones are dead letters. Also
through the whole flow on the Kafka mock cluster next to native events."""

from __future__ import annotations

import json
from copy import deepcopy
from decimal import Decimal

from core.records import DeadLetter, Event, Source
from operators.otlp import OtlpCall, OtlpContent, OtlpMapping, decode_otlp, decode_otlp_proto, looks_like_otlp
from operators.validate import DecodeLimits
from simulators.kafka_mock import produce_all
from simulators.otlp_encode import json_to_proto
from simulators.traffic import shared_data_dir
from sinks.clickhouse import connect, ensure_schema
from tests.conftest import run_flow, topic_flow_settings

OTEL = shared_data_dir() / "otel"
LIMITS = DecodeLimits(
    earliest_ts_ms=1_577_836_800_000, max_future_ms=10**13, max_tokens=10**7, max_cost_pico=10**15
)
DEFAULT_MAPPING = OtlpMapping()
NOW = 1_795_400_000_000
SRC = Source("llm-events", 0, 42)


def load(name: str) -> dict:
    return json.loads((OTEL / name).read_text())


def decode(doc: dict, mapping: OtlpMapping = DEFAULT_MAPPING) -> list:
    """The events and dead letters of one export request (spans and details events unwrapped
    from what the content join gets)."""
    raw = json.dumps(doc).encode()
    assert looks_like_otlp(raw)
    return [unwrap(x) for x in decode_otlp(raw, LIMITS, NOW, SRC, mapping)]


def unwrap(x):
    if isinstance(x, OtlpCall):
        return x.event
    if isinstance(x, OtlpContent):
        assert x.call is not None
        return x.call
    return x


def test_chat_span_becomes_an_event_with_agent_from_the_parent_span():
    out = decode(load("otlp_json_llm_chat_span.json"))
    assert len(out) == 1  # the invoke_agent span is not an LLM call
    e = out[0]
    assert isinstance(e, Event)
    assert e.event_id == "8b50010911ecd2f98c6e232e1082f628:8730f412456637c0"
    assert (e.tenant_id, e.agent, e.model) == ("acme-corp", "support-bot", "gpt-4o-mini")
    assert (e.provider, e.input_tokens, e.output_tokens) == ("openai", 41, 23)
    assert e.input_text == (
        "system: You are a helpful customer-support assistant.\nuser: How do I reset my password?"
    )
    assert e.output_text.startswith("You can reset your password from Settings")
    assert e.ts_ms == 1_795_379_050_079
    assert abs(e.latency_ms - 18.32) < 0.01
    assert e.source == SRC


def test_the_user_id_comes_from_user_id_or_enduser_id_on_the_call_or_its_resource():
    """`user.id` (semantic conventions) or the older `enduser.id`: what the abuse signals count."""
    doc = load("otlp_json_llm_chat_span.json")
    assert decode(doc)[0].user_id is None
    on_call = deepcopy(doc)
    on_call["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"].append(
        {"key": "user.id", "value": {"stringValue": "u-42"}}
    )
    assert decode(on_call)[0].user_id == "u-42"
    on_resource = deepcopy(doc)
    on_resource["resourceSpans"][0]["resource"]["attributes"].append(
        {"key": "enduser.id", "value": {"stringValue": "u-7"}}
    )
    assert decode(on_resource)[0].user_id == "u-7"
    proto = decode_otlp_proto(json_to_proto(json.dumps(on_call)), LIMITS, NOW, SRC, DEFAULT_MAPPING)
    assert unwrap(proto[0]).user_id == "u-42"  # the same from protobuf


def test_inference_details_log_event_with_structured_messages():
    doc = load("otlp_json_llm_inference_details_event.json")
    # the example's resource has no tenant: a default tenant covers single-tenant deployments
    out = decode(doc, OtlpMapping(default_tenant="acme-corp"))
    assert len(out) == 1 and isinstance(out[0], Event)
    e = out[0]
    assert e.event_id == "log:chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT"
    assert (e.agent, e.model, e.output_tokens) == ("support-bot", "gpt-4o-mini", 15)
    assert "customer-support assistant" in e.input_text and e.output_text


def test_missing_tenant_and_model_are_dead_letters_with_reasons():
    doc = load("otlp_json_llm_inference_details_event.json")
    out = decode(doc)
    assert len(out) == 1 and isinstance(out[0], DeadLetter)
    assert "no 'tenant.id' attribute" in out[0].reason
    assert out[0].key.startswith("llm-events:0:42:log:")

    span_doc = load("otlp_json_llm_chat_span.json")
    broken = deepcopy(span_doc)
    spans = broken["resourceSpans"][0]["scopeSpans"][0]["spans"]
    spans[0]["attributes"] = [a for a in spans[0]["attributes"] if "model" not in a["key"]]
    (d,) = decode(broken)
    assert isinstance(d, DeadLetter) and "no gen_ai.request.model" in d.reason


def test_non_llm_spans_only_yield_nothing_and_garbage_is_a_dead_letter():
    assert decode(load("opentelemetry-proto_examples_trace.json")) == []
    (d,) = decode_otlp(b'{"resourceSpans": [', LIMITS, NOW, SRC, OtlpMapping())
    assert isinstance(d, DeadLetter) and d.reason.startswith("malformed OTLP JSON")


def test_otlp_and_native_events_through_the_whole_flow(kafka, chdb_dsn, database, judge_endpoint):
    kafka.create_topic("llm-events", 2)
    span = load("otlp_json_llm_chat_span.json")
    messages = []
    for i in range(20):  # twenty exports, each one chat call with its own span id
        doc = deepcopy(span)
        doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"] = f"{i:016x}"
        messages.append(json.dumps(doc).encode())
    native = {
        "event_id": "native-1",
        "ts": "2026-11-20T10:00:00Z",
        "tenant_id": "acme-corp",
        "agent": "support-bot",
        "model": "gpt-4o-mini",
        "input": "hi",
        "output": "hello",
        "usage": {"input_tokens": 41, "output_tokens": 23},
    }
    messages.append(json.dumps(native).encode())
    produce_all(kafka.bootstrap, "llm-events", messages)
    settings = topic_flow_settings(kafka, chdb_dsn, database, judge_endpoint)
    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    run_flow(settings)
    rows = client.query(
        "SELECT count(), sum(cost_usd), uniqExact(agent) FROM llm_events FINAL WHERE tenant_id = 'acme-corp'"
    ).result_rows
    # gpt-4o-mini: $0.15 / 1M input, $0.60 / 1M output
    per_call = (41 * Decimal("0.15") + 23 * Decimal("0.60")) / 1_000_000
    assert rows == [(21, 21 * per_call, 1)]
