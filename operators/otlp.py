"""OTLP input: LLM calls as the OpenTelemetry GenAI instrumentations report them.

Accepts what the OpenTelemetry Collector's Kafka exporter writes with
`encoding: otlp_json` or `encoding: otlp_proto` (the default): an
`ExportTraceServiceRequest` (spans whose `gen_ai.operation.name` is chat /
text_completion / generate_content) or an `ExportLogsServiceRequest`
(`gen_ai.client.inference.operation.details` events, and the older
per-message events `gen_ai.{system,user,assistant,tool}.message` /
`gen_ai.choice`). Both encodings are read into the same format-independent
`Record`s, so one mapping serves both. Other spans and log records (HTTP
handlers, `invoke_agent`...) are skipped and counted.

What comes out:

- a span or details event without a usable trace/span id: an `Event`;
- a span with one: an `OtlpCall` (the `Event` plus its span id), and a details
  event or message event with one: an `OtlpContent` — `operators.otlp_join`
  fills the prompt and completion of spans that carry none from the log
  records of the same span (the older instrumentation sends them apart);
- a call that cannot be mapped: a `DeadLetter` naming the record.

Mapping (semantic conventions 1.37, and 1.30 as the OpenAI instrumentation
emits it by default): `gen_ai.request.model` / `gen_ai.response.model` →
model (the request model, which is what prices are listed under),
`gen_ai.provider.name` (or the older `gen_ai.system`) → provider,
`gen_ai.usage.*` → usage, `gen_ai.input.messages` / `gen_ai.output.messages`
→ text, the `gen_ai.agent.name` of the call or of its `invoke_agent` parent
(else `service.name`) → agent, a configurable attribute (default
`tenant.id`, on the span or the resource) → tenant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from core import metrics
from core.dead_letters import dead_letter
from core.records import ChatMessage, DeadLetter, Event, Source, Usage, WireEvent
from operators.otlp_wire import (
    WANTED,
    OtlpWireError,
    Record,
    json_records,
    proto_log_records,
    proto_signal,
    proto_span_records,
)
from operators.validate import DecodeLimits, InvalidEvent, to_event

LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content"})
DETAILS_EVENT = "gen_ai.client.inference.operation.details"
# semantic conventions 1.30 and before: one log record per message, correlated by span id
MESSAGE_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
CHOICE_EVENT = "gen_ai.choice"


@dataclass(frozen=True, slots=True)
class OtlpMapping:
    tenant_attribute: str = "tenant.id"
    variant_attribute: str = "judgeflow.variant"
    default_tenant: str = ""  # empty: a call without a tenant is a dead letter


class OtlpCall(msgspec.Struct, gc=False, frozen=True, array_like=True):
    """An LLM call read from a span; its content may still come in log records of the same span."""

    span_key: str  # traceId:spanId (hex)
    end_ms: int  # when the span ended: its log records are all written by then
    event: Event
    has_content: bool
    # the Kafka time of its message when that was the first the flow read from its partition (which
    # then stood nowhere before it): where the join's bounds count from instead (`first_read`)
    first_read_ms: int | None = None


class OtlpContent(msgspec.Struct, gc=False, frozen=True, array_like=True):
    """Content of one LLM call sent in a log record apart from its span.

    A message event is one input message (`choice` -1) or one output choice
    (`choice` = its index); a details event carries the whole call (`call`),
    which stands on its own when its span never comes."""

    span_key: str
    ts_ms: int
    order: tuple[int, int, int, int]  # (time ns, partition, offset, position): how messages sort
    role: str = ""
    text: str = ""
    choice: int = -1
    call: Event | None = None
    source: Source | None = None  # the Kafka message it came in, and where its partition stood then
    first_read_ms: int | None = None  # as `OtlpCall.first_read_ms`


Decoded = Event | DeadLetter | OtlpCall | OtlpContent


def first_read(items: list[Decoded], kafka_ms: int) -> list[Decoded]:
    """`items` of the first message the flow read from its partition, which stood nowhere before it,
    marked with the message's Kafka time: the join bounds them from there, as it bounds the items of a
    later message from where their partition stood. Bounded from their own times instead, a span's
    log records in another partition, read at that partition's (later) Kafka time, would be past it."""
    return [
        msgspec.structs.replace(x, first_read_ms=kafka_ms) if isinstance(x, OtlpCall | OtlpContent) else x
        for x in items
    ]


def looks_like_otlp(raw: bytes) -> bool:
    """OTLP/JSON: an object whose first key is resourceSpans or resourceLogs."""
    head = raw[:64].lstrip()
    return head.startswith(b"{") and (b'"resourceSpans"' in head or b'"resourceLogs"' in head)


def looks_like_otlp_proto(raw: bytes) -> bool:
    """A protobuf export request starts with field 1 (length-delimited), i.e. byte 0x0a."""
    return raw[:1] == b"\n"


def decode_otlp(
    raw: bytes, limits: DecodeLimits, now_ms: int, source: Source | None, mapping: OtlpMapping
) -> list[Decoded]:
    """All LLM calls in one OTLP/JSON export request (possibly none)."""
    try:
        doc = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        return [dead_letter("decode", f"malformed OTLP JSON: {exc}", raw, source, now_ms)]
    if not isinstance(doc, dict):
        return [dead_letter("decode", "OTLP export request is not a JSON object", raw, source, now_ms)]
    try:
        records = list(json_records(doc))
    except (TypeError, AttributeError, ValueError, KeyError) as exc:  # a wrong shape in the envelope
        reason = f"invalid OTLP envelope: {type(exc).__name__}: {exc}"
        return [dead_letter("decode", reason, raw, source, now_ms)]
    return map_records(records, raw, limits, now_ms, source, mapping)


def decode_otlp_proto(
    raw: bytes, limits: DecodeLimits, now_ms: int, source: Source | None, mapping: OtlpMapping
) -> list[Decoded]:
    """All LLM calls in one protobuf OTLP export request (traces or logs, told apart on the wire)."""
    try:
        signal = proto_signal(raw)
        request: ExportTraceServiceRequest | ExportLogsServiceRequest
        # the attributes the mapping reads (converting every value costs ~2 µs each)
        wanted = frozenset({mapping.tenant_attribute, mapping.variant_attribute, *WANTED})
        if signal == "logs":
            request = ExportLogsServiceRequest.FromString(raw)
            records = list(proto_log_records(request, wanted))
        else:
            request = ExportTraceServiceRequest.FromString(raw)
            records = list(proto_span_records(request, wanted))
    except (OtlpWireError, DecodeError) as exc:
        return [dead_letter("decode", f"malformed OTLP protobuf: {exc}", raw, source, now_ms)]
    return map_records(records, raw, limits, now_ms, source, mapping)


# --- one format-independent record per span or log record ---------------------------


def map_records(
    records: list[Record],
    raw: bytes,
    limits: DecodeLimits,
    now_ms: int,
    source: Source | None,
    mapping: OtlpMapping,
) -> list[Decoded]:
    """The GenAI mapping shared by both encodings: records → events, join inputs or dead letters."""
    agents = {
        r.span_id: r.attrs.get("gen_ai.agent.name")
        for r in records
        if r.event_name is None and r.attrs.get("gen_ai.operation.name") == "invoke_agent"
    }
    out: list[Decoded] = []
    skipped = 0
    for position, r in enumerate(records):
        span_key = _span_key(r)
        if r.event_name is None and r.attrs.get("gen_ai.operation.name") in LLM_OPERATIONS:
            ident = f"{r.trace_id}:{r.span_id}"
        elif r.event_name == DETAILS_EVENT:
            ident = "log:" + str(r.attrs.get("gen_ai.response.id") or f"{r.trace_id}:{r.span_id}")
        elif span_key and (r.event_name in MESSAGE_EVENTS or r.event_name == CHOICE_EVENT):
            try:
                out.append(_message_content(r, span_key, position, source))
            except (TypeError, AttributeError, ValueError) as exc:
                reason = f"invalid OTLP GenAI record log:{span_key}: {type(exc).__name__}: {exc}"
                d = dead_letter("decode", reason, raw, source, now_ms)
                out.append(msgspec.structs.replace(d, key=f"{d.key}:log:{span_key}:{position}"))
            continue
        else:
            skipped += 1
            continue
        try:
            wire = _wire_event(r, agents.get(r.parent_span_id), ident, mapping)
            event = to_event(wire, limits, now_ms, source)
        except (InvalidEvent, msgspec.ValidationError, ValueError, TypeError, AttributeError) as exc:
            d = dead_letter("decode", f"invalid OTLP GenAI record {ident}: {exc}", raw, source, now_ms)
            out.append(msgspec.structs.replace(d, key=f"{d.key}:{ident}"))
            continue
        if not span_key:
            out.append(event)
        elif r.event_name is None:
            has_content = "gen_ai.input.messages" in r.attrs or "gen_ai.output.messages" in r.attrs
            end_ms = (r.end_ns or r.start_ns) // 1_000_000
            out.append(OtlpCall(span_key, end_ms, event, has_content))
        else:
            order = _order(r, source, position)
            out.append(OtlpContent(span_key, event.ts_ms, order, call=event, source=source))
    if skipped:
        metrics.OTLP_SKIPPED.inc(skipped)
    if not out:
        metrics.OTLP_EMPTY.inc()
    return out


def _span_key(r: Record) -> str:
    if not r.trace_id.strip("0") or not r.span_id.strip("0"):
        return ""
    return f"{r.trace_id}:{r.span_id}"


def _order(r: Record, source: Source | None, position: int) -> tuple[int, int, int, int]:
    if source is None:
        return (r.start_ns, -1, -1, position)
    return (r.start_ns, source.partition, source.offset, position)


def _message_content(r: Record, span_key: str, position: int, source: Source | None) -> OtlpContent:
    """One message event of the older conventions (body: content, role / index, message)."""
    body = r.body if isinstance(r.body, dict) else {}
    order = _order(r, source, position)
    ts_ms = r.start_ns // 1_000_000
    if r.event_name == CHOICE_EVENT:
        message = body.get("message")
        message = message if isinstance(message, dict) else {}
        index = body.get("index", 0)
        text = _message_text(message)
        return OtlpContent(span_key, ts_ms, order, "assistant", text, choice=int(index or 0), source=source)
    role = str(body.get("role") or MESSAGE_EVENTS[str(r.event_name)])
    return OtlpContent(span_key, ts_ms, order, role, _message_text(body), source=source)


def _message_text(message: dict[str, Any]) -> str:
    """A message's text parts, or its tool calls when it has no text (the call is what was said)."""
    text = _content_text(message.get("content"))
    if text:
        return text
    calls = message.get("tool_calls") or []
    out = []
    for c in calls if isinstance(calls, list) else []:
        fn = (c.get("function") if isinstance(c, dict) else None) or {}
        out.append(f"{fn.get('name', '')}({fn.get('arguments', '')})")
    return "\n".join(out)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "\n".join(
            str(p.get("text", p.get("content", "")))
            for p in content
            if isinstance(p, dict) and p.get("type", "text") == "text"
        )
    return str(content)


def _wire_event(r: Record, parent_agent: str | None, ident: str, mapping: OtlpMapping) -> WireEvent:
    attrs, resource = r.attrs, r.resource
    tenant = (
        attrs.get(mapping.tenant_attribute)
        or resource.get(mapping.tenant_attribute)
        or mapping.default_tenant
    )
    if not tenant:
        msg = f"no {mapping.tenant_attribute!r} attribute on the call or its resource"
        raise InvalidEvent(msg)
    model = attrs.get("gen_ai.request.model") or attrs.get("gen_ai.response.model")
    if not model:
        msg = "no gen_ai.request.model or gen_ai.response.model"
        raise InvalidEvent(msg)
    usage = Usage(
        input_tokens=int(attrs.get("gen_ai.usage.input_tokens", 0)),
        output_tokens=int(attrs.get("gen_ai.usage.output_tokens", 0)),
        cache_read_tokens=int(attrs.get("gen_ai.usage.cache_read.input_tokens", 0)),
        cache_write_tokens=int(attrs.get("gen_ai.usage.cache_creation.input_tokens", 0)),
        reasoning_tokens=int(attrs.get("gen_ai.usage.reasoning.output_tokens", 0)),
    )
    agent = attrs.get("gen_ai.agent.name") or parent_agent or resource.get("service.name") or "unknown"
    start_ns, end_ns = r.start_ns, r.end_ns
    return WireEvent(
        event_id=ident,
        ts=start_ns // 1_000_000,
        tenant_id=str(tenant),
        agent=str(agent),
        model=str(model),
        provider=attrs.get("gen_ai.provider.name") or attrs.get("gen_ai.system"),
        variant=str(
            attrs.get(mapping.variant_attribute) or resource.get(mapping.variant_attribute) or "baseline"
        ),
        input=_messages(attrs.get("gen_ai.input.messages")),
        output=_text(_messages(attrs.get("gen_ai.output.messages"))),
        usage=usage,
        latency_ms=(end_ns - start_ns) / 1e6 if end_ns else None,
        conversation_id=attrs.get("gen_ai.conversation.id"),
        user_id=_user_id(attrs, resource),
        metadata={"otel.response_id": str(attrs.get("gen_ai.response.id", ""))},
    )


def _user_id(attrs: dict[str, Any], resource: dict[str, Any]) -> str | None:
    """`user.id` (or the deprecated `enduser.id`) of the call, else of its resource."""
    for where in (attrs, resource):
        for key in ("user.id", "enduser.id"):
            value = where.get(key)
            if value not in (None, ""):
                return str(value)
    return None


def _messages(value: Any) -> list[ChatMessage]:
    """OTel GenAI messages (JSON string or structured) → chat messages with text parts joined."""
    if value is None:
        return []
    if isinstance(value, str):
        value = msgspec.json.decode(value)
    out = []
    for m in value:
        parts = m.get("parts") or []
        text = "\n".join(str(p.get("content", "")) for p in parts if p.get("type", "text") == "text")
        out.append(ChatMessage(role=str(m.get("role", "")), content=text))
    return out


def _text(messages: list[ChatMessage]) -> str:
    return "\n".join(m.content for m in messages)
