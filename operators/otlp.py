"""OTLP input: LLM calls as the OpenTelemetry GenAI instrumentations report them.

Accepts what the OpenTelemetry Collector's Kafka exporter writes with
`encoding: otlp_json` or `encoding: otlp_proto` (the default): an
`ExportTraceServiceRequest` (spans whose `gen_ai.operation.name` is chat /
text_completion / generate_content) or an `ExportLogsServiceRequest`
(`gen_ai.client.inference.operation.details` events, and the older
per-message events `gen_ai.{system,user,assistant,tool}.message` /
`gen_ai.choice`). Both encodings are read into the same format-independent
`_Record`s, so one mapping serves both. Other spans and log records (HTTP
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

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from core import metrics
from core.dead_letters import dead_letter
from core.errors import InvalidInput
from core.records import ChatMessage, DeadLetter, Event, Source, Usage, WireEvent
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


class OtlpCall(msgspec.Struct, frozen=True, array_like=True):
    """An LLM call read from a span; its content may still come in log records of the same span."""

    span_key: str  # traceId:spanId (hex)
    end_ms: int  # when the span ended: its log records are all written by then
    event: Event
    has_content: bool


class OtlpContent(msgspec.Struct, frozen=True, array_like=True):
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


Decoded = Event | DeadLetter | OtlpCall | OtlpContent


def looks_like_otlp(raw: bytes) -> bool:
    """OTLP/JSON: an object whose first key is resourceSpans or resourceLogs."""
    head = raw[:64].lstrip()
    return head.startswith(b"{") and (b'"resourceSpans"' in head or b'"resourceLogs"' in head)


def looks_like_otlp_proto(raw: bytes) -> bool:
    """A protobuf export request starts with field 1 (length-delimited), i.e. byte 0x0a."""
    return raw[:1] == b"\n"


class OtlpWireError(InvalidInput):
    """Bytes that are not the envelope of a protobuf OTLP export request."""


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
        records = list(_json_records(doc))
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
        wanted = frozenset({mapping.tenant_attribute, mapping.variant_attribute, *_WANTED})
        if signal == "logs":
            request = ExportLogsServiceRequest.FromString(raw)
            records = list(_proto_log_records(request, wanted))
        else:
            request = ExportTraceServiceRequest.FromString(raw)
            records = list(_proto_span_records(request, wanted))
    except (OtlpWireError, DecodeError) as exc:
        return [dead_letter("decode", f"malformed OTLP protobuf: {exc}", raw, source, now_ms)]
    return map_records(records, raw, limits, now_ms, source, mapping)


# --- one format-independent record per span or log record ---------------------------


class _Record(NamedTuple):
    attrs: dict[str, Any]
    resource: dict[str, Any]
    trace_id: str  # hex; "" when absent
    span_id: str
    parent_span_id: str
    start_ns: int  # a span's start, a log record's time (else its observed time)
    end_ns: int | None
    event_name: str | None  # None: a span
    body: Any = None


def map_records(
    records: list[_Record],
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
            out.append(OtlpContent(span_key, event.ts_ms, _order(r, source, position), call=event))
    if skipped:
        metrics.OTLP_SKIPPED.inc(skipped)
    if not out:
        metrics.OTLP_EMPTY.inc()
    return out


def _span_key(r: _Record) -> str:
    if not r.trace_id.strip("0") or not r.span_id.strip("0"):
        return ""
    return f"{r.trace_id}:{r.span_id}"


def _order(r: _Record, source: Source | None, position: int) -> tuple[int, int, int, int]:
    if source is None:
        return (r.start_ns, -1, -1, position)
    return (r.start_ns, source.partition, source.offset, position)


def _message_content(r: _Record, span_key: str, position: int, source: Source | None) -> OtlpContent:
    """One message event of the older conventions (body: content, role / index, message)."""
    body = r.body if isinstance(r.body, dict) else {}
    order = _order(r, source, position)
    ts_ms = r.start_ns // 1_000_000
    if r.event_name == CHOICE_EVENT:
        message = body.get("message")
        message = message if isinstance(message, dict) else {}
        index = body.get("index", 0)
        return OtlpContent(
            span_key, ts_ms, order, "assistant", _message_text(message), choice=int(index or 0)
        )
    role = str(body.get("role") or MESSAGE_EVENTS[str(r.event_name)])
    return OtlpContent(span_key, ts_ms, order, role, _message_text(body))


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


def _wire_event(r: _Record, parent_agent: str | None, ident: str, mapping: OtlpMapping) -> WireEvent:
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


# --- OTLP/JSON -------------------------------------------------------------------------


def _json_records(doc: dict) -> Iterator[_Record]:
    for rs in doc.get("resourceSpans") or []:
        resource = _attributes(rs.get("resource", {}).get("attributes"))
        for ss in rs.get("scopeSpans") or []:
            for s in ss.get("spans") or []:
                end = s.get("endTimeUnixNano")
                yield _Record(
                    attrs=_attributes(s.get("attributes")),
                    resource=resource,
                    trace_id=str(s.get("traceId") or ""),
                    span_id=str(s.get("spanId") or ""),
                    parent_span_id=str(s.get("parentSpanId") or ""),
                    start_ns=int(s.get("startTimeUnixNano") or 0),
                    end_ns=int(end) if end else None,
                    event_name=None,
                )
    for rl in doc.get("resourceLogs") or []:
        resource = _attributes(rl.get("resource", {}).get("attributes"))
        for sl in rl.get("scopeLogs") or []:
            for r in sl.get("logRecords") or []:
                attrs = _attributes(r.get("attributes"))
                ts = int(r.get("timeUnixNano") or 0) or int(r.get("observedTimeUnixNano") or 0)
                body = r.get("body")
                yield _Record(
                    attrs=attrs,
                    resource=resource,
                    trace_id=str(r.get("traceId") or ""),
                    span_id=str(r.get("spanId") or ""),
                    parent_span_id="",
                    start_ns=ts,
                    end_ns=None,
                    event_name=str(r.get("eventName") or attrs.get("event.name") or ""),
                    body=_any_value(body) if body else None,
                )


def _attributes(kvs: list | None) -> dict[str, Any]:
    return {kv["key"]: _any_value(kv.get("value", {})) for kv in kvs or []}


def _any_value(v: dict) -> Any:
    """An OTLP AnyValue as plain Python (intValue arrives as a string in OTLP/JSON)."""
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        return int(v["intValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "arrayValue" in v:
        return [_any_value(x) for x in v["arrayValue"].get("values") or []]
    if "kvlistValue" in v:
        return {kv["key"]: _any_value(kv.get("value", {})) for kv in v["kvlistValue"].get("values") or []}
    return None


# --- OTLP protobuf ---------------------------------------------------------------------


_WANTED = ("service.name", "event.name", "user.id", "enduser.id")  # and every gen_ai.* attribute


def _proto_span_records(request: ExportTraceServiceRequest, wanted: frozenset[str]) -> Iterator[_Record]:
    for rs in request.resource_spans:
        resource = _proto_attributes(rs.resource.attributes, wanted)
        for ss in rs.scope_spans:
            for s in ss.spans:
                yield _Record(
                    attrs=_proto_attributes(s.attributes, wanted),
                    resource=resource,
                    trace_id=s.trace_id.hex(),
                    span_id=s.span_id.hex(),
                    parent_span_id=s.parent_span_id.hex(),
                    start_ns=s.start_time_unix_nano,
                    end_ns=s.end_time_unix_nano or None,
                    event_name=None,
                )


def _proto_log_records(request: ExportLogsServiceRequest, wanted: frozenset[str]) -> Iterator[_Record]:
    for rl in request.resource_logs:
        resource = _proto_attributes(rl.resource.attributes, wanted)
        for sl in rl.scope_logs:
            for r in sl.log_records:
                attrs = _proto_attributes(r.attributes, wanted)
                yield _Record(
                    attrs=attrs,
                    resource=resource,
                    trace_id=r.trace_id.hex(),
                    span_id=r.span_id.hex(),
                    parent_span_id="",
                    start_ns=r.time_unix_nano or r.observed_time_unix_nano,
                    end_ns=None,
                    event_name=r.event_name or str(attrs.get("event.name") or ""),
                    body=_proto_value(r.body) if r.HasField("body") else None,
                )


def _proto_attributes(kvs: Iterable[Any], wanted: frozenset[str]) -> dict[str, Any]:
    return {
        key: _proto_value(kv.value) for kv in kvs if (key := kv.key).startswith("gen_ai.") or key in wanted
    }


def _proto_value(v: Any) -> Any:
    """An OTLP AnyValue message as plain Python, as `_any_value` reads its JSON form."""
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_proto_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _proto_value(kv.value) for kv in v.kvlist_value.values}
    if kind is None or kind == "bytes_value":
        return None
    return getattr(v, kind)


# The envelope of both requests is the same on the wire: field 1 = ResourceSpans / ResourceLogs,
# in it field 2 = ScopeSpans / ScopeLogs, in that field 2 = the spans / log records. A span and a
# log record differ in the wire types of their fields, which tells the signal before parsing.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_SPAN_ONLY = {(1, _LEN), (2, _LEN), (4, _LEN), (6, _VARINT), (7, _I64), (8, _I64), (10, _VARINT)}
_SPAN_ONLY |= {(11, _LEN), (12, _VARINT), (13, _LEN), (14, _VARINT), (15, _LEN), (16, _I32)}
_LOG_ONLY = {(1, _I64), (2, _VARINT), (6, _LEN), (7, _VARINT), (8, _I32), (10, _LEN), (11, _I64), (12, _LEN)}


def proto_signal(raw: bytes, *, strict: bool = False) -> str:
    """The signal of a protobuf export request: "traces", "logs" or "" (no records), from its first
    record; raises `OtlpWireError` when the bytes read so far are not such an envelope. `strict`
    reads the whole envelope (every resource and scope), not only up to the first record."""
    signal = ""
    for field, wt, start, end in _fields(raw, 0, len(raw)):
        if (field, wt) != (1, _LEN):
            msg = f"field {field} (wire type {wt}) at the top level of an export request"
            raise OtlpWireError(msg)
        for f2, wt2, s2, e2 in _fields(raw, start, end):
            _expect_len(f2, wt2, "resource spans/logs")
            if f2 != 2:
                continue
            for f3, wt3, s3, e3 in _fields(raw, s2, e2):
                _expect_len(f3, wt3, "scope spans/logs")
                if f3 == 2 and not signal:
                    signal = _record_signal(raw, s3, e3)
                    if signal and not strict:
                        return signal
    return signal


def _expect_len(field: int, wt: int, where: str) -> None:
    if field not in (1, 2, 3) or wt != _LEN:
        msg = f"field {field} (wire type {wt}) in {where}"
        raise OtlpWireError(msg)


def _record_signal(raw: bytes, start: int, end: int) -> str:
    for field, wt, _, _ in _fields(raw, start, end):
        if (field, wt) in _SPAN_ONLY:
            return "traces"
        if (field, wt) in _LOG_ONLY:
            return "logs"
    return ""


def _fields(raw: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value start, value end) of each field in raw[start:end]."""
    i = start
    while i < end:
        tag, i = _varint(raw, i, end)
        field, wt = tag >> 3, tag & 7
        if field == 0:
            msg = f"field number 0 at byte {i}"
            raise OtlpWireError(msg)
        if wt == _LEN:
            n, i = _varint(raw, i, end)
            value_start, i = i, i + n
        elif wt == _VARINT:
            value_start = i
            _, i = _varint(raw, i, end)
        elif wt in (_I64, _I32):
            value_start, i = i, i + (8 if wt == _I64 else 4)
        else:
            msg = f"unsupported wire type {wt} at byte {i}"
            raise OtlpWireError(msg)
        if i > end:
            msg = f"field {field} runs past its message's end (byte {end})"
            raise OtlpWireError(msg)
        yield field, wt, value_start, i


def _varint(raw: bytes, i: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while i < end and shift < 64:
        b = raw[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
    msg = f"truncated varint at byte {i}"
    raise OtlpWireError(msg)
