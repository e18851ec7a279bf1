"""OTLP protobuf input: the shared OTLP/JSON examples re-encoded as protobuf give the same events
as their JSON; spans and log records made by the OpenTelemetry SDK and encoded by its own OTLP
protobuf encoder decode as expected; broken protobuf is a dead letter that says so; a native JSON
event is never taken for protobuf; and a topic mixing protobuf, OTLP/JSON and native events
gives the right rows in ClickHouse."""

from __future__ import annotations

import json
from copy import deepcopy
from decimal import Decimal

import pytest
from bytewax.connectors.kafka import KafkaSourceMessage
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry._logs import LogRecord
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core import metrics
from core.records import DeadLetter, Event, Source
from operators.decode import decode_record
from operators.otlp import OtlpCall, OtlpContent, OtlpMapping, decode_otlp_proto
from operators.otlp_wire import proto_signal
from operators.validate import DecodeLimits
from simulators.kafka_mock import produce_all
from simulators.otlp_encode import json_to_proto
from simulators.traffic import shared_data_dir
from sinks.clickhouse import connect, ensure_schema
from tests.conftest import rows, run_flow, topic_flow_settings

OTEL = shared_data_dir() / "otel"
LIMITS = DecodeLimits(
    earliest_ts_ms=1_577_836_800_000, max_future_ms=10**13, max_tokens=10**7, max_cost_pico=10**15
)
NOW = 1_795_400_000_000
SRC = Source("llm-events", 0, 42)
MAPPING = OtlpMapping(default_tenant="acme-corp")


def message(raw: bytes, offset: int = 42) -> KafkaSourceMessage:
    return KafkaSourceMessage(key=None, value=raw, topic="llm-events", partition=0, offset=offset)


@pytest.mark.parametrize("name", sorted(p.name for p in OTEL.glob("*.json")))
def test_every_shared_example_gives_the_same_records_as_protobuf_as_as_json(name: str) -> None:
    raw_json = (OTEL / name).read_bytes()
    raw_proto = json_to_proto(raw_json)
    as_json = decode_record(message(raw_json), LIMITS, NOW, MAPPING)
    as_proto = decode_record(message(raw_proto), LIMITS, NOW, MAPPING)
    assert as_proto == as_json
    assert proto_signal(raw_proto) == ("logs" if "resourceLogs" in json.loads(raw_json) else "traces")


def test_the_chat_span_and_the_details_event_as_protobuf() -> None:
    (call,) = decode_otlp_proto(
        json_to_proto((OTEL / "otlp_json_llm_chat_span.json").read_bytes()), LIMITS, NOW, SRC, MAPPING
    )
    assert isinstance(call, OtlpCall) and call.has_content
    e = call.event
    assert (e.tenant_id, e.agent, e.model, e.input_tokens, e.output_tokens) == (
        "acme-corp",
        "support-bot",
        "gpt-4o-mini",
        41,
        23,
    )
    assert e.output_text.startswith("You can reset your password from Settings")
    raw = json_to_proto((OTEL / "otlp_json_llm_inference_details_event.json").read_bytes())
    (details,) = decode_otlp_proto(raw, LIMITS, NOW, SRC, MAPPING)
    assert isinstance(details, OtlpContent) and details.call is not None
    assert details.span_key == "303bac2d6ee347baa8dc34d55f74ba1e:a9fe1f73d2bb390f"
    assert details.call.event_id == "log:chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT"
    assert "customer-support assistant" in details.call.input_text and details.call.output_text


@pytest.fixture
def sdk() -> tuple[TracerProvider, InMemorySpanExporter, LoggerProvider, InMemoryLogRecordExporter]:
    resource = Resource.create({"service.name": "support-bot", "tenant.id": "globex"})
    spans, logs = InMemorySpanExporter(), InMemoryLogRecordExporter()
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    return tracer_provider, spans, logger_provider, logs


def test_spans_and_a_details_event_from_the_sdk_encoded_by_its_own_exporter(sdk) -> None:
    tracer_provider, spans, logger_provider, logs = sdk
    tracer = tracer_provider.get_tracer("test")
    logger = logger_provider.get_logger("test")
    messages = [{"role": "user", "parts": [{"type": "text", "content": "Where is my order?"}]}]
    reply = [{"role": "assistant", "parts": [{"type": "text", "content": "It ships today."}]}]
    with (
        tracer.start_as_current_span(
            "invoke_agent",
            attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "orders-agent"},
        ),
        tracer.start_as_current_span("chat gpt-4o", kind=trace.SpanKind.CLIENT) as chat,
    ):
        chat.set_attributes(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.usage.input_tokens": 1200,
                "gen_ai.usage.output_tokens": 80,
                "gen_ai.usage.cache_read.input_tokens": 1024,
                "gen_ai.input.messages": json.dumps(messages),
                "gen_ai.output.messages": json.dumps(reply),
            }
        )
        logger.emit(
            LogRecord(
                event_name="gen_ai.client.inference.operation.details",
                attributes={
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": "gpt-4o",
                    "gen_ai.usage.input_tokens": 1200,
                    "gen_ai.usage.output_tokens": 80,
                    "gen_ai.input.messages": json.dumps(messages),
                    "gen_ai.output.messages": json.dumps(reply),
                },
            )
        )
        span_key = f"{chat.get_span_context().trace_id:032x}:{chat.get_span_context().span_id:016x}"
    span_bytes = encode_spans(spans.get_finished_spans()).SerializeToString()
    log_bytes = encode_logs(logs.get_finished_logs()).SerializeToString()

    (call,) = decode_record(message(span_bytes), LIMITS, NOW, OtlpMapping())
    assert isinstance(call, OtlpCall) and call.span_key == span_key
    e = call.event
    assert (e.tenant_id, e.agent, e.model, e.provider) == ("globex", "orders-agent", "gpt-4o", "openai")
    assert (e.input_tokens, e.output_tokens, e.cache_read_tokens) == (1200, 80, 1024)
    assert (e.input_text, e.output_text) == ("user: Where is my order?", "It ships today.")
    assert e.latency_ms is not None and e.latency_ms >= 0

    (details,) = decode_record(message(log_bytes), LIMITS, NOW, OtlpMapping())
    assert isinstance(details, OtlpContent) and details.span_key == span_key
    assert details.call is not None and details.call.output_text == "It ships today."


def test_broken_protobuf_is_a_dead_letter_that_says_so() -> None:
    good = json_to_proto((OTEL / "otlp_json_llm_chat_span.json").read_bytes())
    cases = {
        "truncated": good[: len(good) // 2],
        "length past the end": b"\n\xff\x01abc",
        "a field number 0": b"\n\x02\x00\x00",
        "bad wire type": b"\n\x03\x0b\x00\x00",
        "invalid UTF-8 in a string": json_to_proto(
            json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"name": "caf"}]}]}]})
        ).replace(b"caf", b"ca\xff"),
    }
    for case, raw in cases.items():
        out = decode_record(message(raw), LIMITS, NOW, OtlpMapping())
        assert len(out) == 1 and isinstance(out[0], DeadLetter), case
        assert out[0].reason.startswith("malformed OTLP protobuf: "), (case, out[0].reason)
        assert out[0].source == SRC and out[0].raw == raw


def test_a_native_event_after_a_newline_is_not_taken_for_protobuf() -> None:
    native = {
        "event_id": "e-1",
        "ts": "2026-11-20T10:00:00Z",
        "tenant_id": "acme",
        "agent": "bot",
        "model": "gpt-4o-mini",
        "input": "hi",
        "output": "hello",
        "usage": {"input_tokens": 3, "output_tokens": 2},
    }
    for raw in (b"\n" + json.dumps(native).encode(), b"\n" + json.dumps(native, indent=2).encode()):
        (e,) = decode_record(message(raw), LIMITS, NOW, OtlpMapping())
        assert isinstance(e, Event) and e.event_id == "e-1"
    span_json = b"\n" + (OTEL / "otlp_json_llm_chat_span.json").read_bytes()
    (call,) = decode_record(message(span_json), LIMITS, NOW, OtlpMapping())
    assert isinstance(call, OtlpCall)  # and OTLP/JSON after a newline is still OTLP/JSON


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_after_the_protobuf_tag_decode_without_raising(tail: bytes) -> None:
    for x in decode_record(message(b"\n" + tail), LIMITS, NOW, OtlpMapping()):
        assert isinstance(x, Event | DeadLetter | OtlpCall | OtlpContent)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_flipped_bytes_in_a_real_export_request_never_raise(data) -> None:
    good = bytearray(json_to_proto((OTEL / "otlp_json_llm_chat_span.json").read_bytes()))
    for _ in range(data.draw(st.integers(1, 4))):
        good[data.draw(st.integers(0, len(good) - 1))] = data.draw(st.integers(0, 255))
    for x in decode_record(message(bytes(good)), LIMITS, NOW, OtlpMapping()):
        if isinstance(x, DeadLetter):
            assert x.reason
        else:
            assert isinstance(x, Event | OtlpCall | OtlpContent)


def test_protobuf_otlp_json_and_native_events_on_one_topic(kafka, chdb_dsn, database) -> None:
    kafka.create_topic("llm-events", 3)
    span = json.loads((OTEL / "otlp_json_llm_chat_span.json").read_text())
    messages = []
    for i in range(30):  # each export one chat call with its own span id; every other one protobuf
        doc = deepcopy(span)
        doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"] = f"{i:016x}"
        raw = json.dumps(doc).encode()
        messages.append(json_to_proto(raw) if i % 2 else raw)
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
    messages += [json.dumps(native).encode(), b"\n\x05broken"]
    produce_all(kafka.bootstrap, "llm-events", messages)
    client = connect(chdb_dsn, database)
    ensure_schema(client, database)
    no_content_before = metrics.OTLP_JOIN.labels("no_content")._value.get()
    run_flow(topic_flow_settings(kafka, chdb_dsn, database, **{"clickhouse.store_text": True}))
    got = rows(
        client,
        "SELECT count(), sum(cost_usd), uniqExact(agent), countIf(output_text LIKE 'You can reset%') "
        "FROM llm_events FINAL WHERE tenant_id = 'acme-corp'",
    )
    per_call = (41 * Decimal("0.15") + 23 * Decimal("0.60")) / 1_000_000  # gpt-4o-mini, $ per token
    assert got == [(31, 31 * per_call, 1, 30)]
    dead = rows(client, "SELECT reason FROM dead_letters FINAL")
    assert len(dead) == 1 and dead[0][0].startswith("malformed OTLP protobuf: ")
    # the spans carried their content: none waited for log records
    assert metrics.OTLP_JOIN.labels("no_content")._value.get() == no_content_before


def test_broken_protobuf_counts_under_the_otlp_reason_class() -> None:
    counter = metrics.DEAD_LETTERS.labels("decode", "otlp")
    before = counter._value.get()
    (d,) = decode_record(message(b"\n\x05abc"), LIMITS, NOW, OtlpMapping())
    assert isinstance(d, DeadLetter) and d.reason.startswith("malformed OTLP protobuf")
    assert counter._value.get() - before == 1
