"""OTLP/JSON input: LLM calls as the OpenTelemetry GenAI instrumentation reports them.

Accepts what the OpenTelemetry Collector's Kafka exporter writes with
`encoding: otlp_json`: an `ExportTraceServiceRequest` (spans whose
`gen_ai.operation.name` is chat / text_completion / generate_content) or an
`ExportLogsServiceRequest` (`gen_ai.client.inference.operation.details`
events). Each such span or event becomes one `Event`; other spans (HTTP
handlers, `invoke_agent`...) are skipped and counted. Messages may be JSON
strings (span attributes) or structured values (events).

Mapping (semantic conventions 1.37): `gen_ai.request.model` /
`gen_ai.response.model` → model (the request model, which is what prices
are listed under), `gen_ai.provider.name` (or the older `gen_ai.system`) →
provider, `gen_ai.usage.*` → usage, `gen_ai.input.messages` /
`gen_ai.output.messages` → text, the `gen_ai.agent.name` of the call or of its
`invoke_agent` parent (else `service.name`) → agent, a configurable
attribute (default `tenant.id`, on the span or the resource) → tenant.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

from operators import metrics
from operators.records import ChatMessage, DeadLetter, Event, Source, Usage, WireEvent
from operators.validate import DecodeLimits, InvalidEvent, dead_letter, to_event

LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content"})
DETAILS_EVENT = "gen_ai.client.inference.operation.details"


@dataclass(frozen=True, slots=True)
class OtlpMapping:
    tenant_attribute: str = "tenant.id"
    variant_attribute: str = "judgeflow.variant"
    default_tenant: str = ""  # empty: a call without a tenant is a dead letter


def looks_like_otlp(raw: bytes) -> bool:
    head = raw[:64].lstrip()
    return head.startswith(b"{") and (b'"resourceSpans"' in head or b'"resourceLogs"' in head)


def decode_otlp(
    raw: bytes, limits: DecodeLimits, now_ms: int, source: Source | None, mapping: OtlpMapping
) -> list[Event | DeadLetter]:
    """All LLM calls in one OTLP/JSON export request (possibly none)."""
    try:
        doc = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        return [dead_letter("decode", f"malformed OTLP JSON: {exc}", raw, source, now_ms)]
    if not isinstance(doc, dict):
        return [dead_letter("decode", "OTLP export request is not a JSON object", raw, source, now_ms)]
    out: list[Event | DeadLetter] = []
    skipped = 0
    try:
        records = list(_records(doc))
    except (TypeError, AttributeError, ValueError) as exc:  # a wrong shape somewhere in the envelope
        reason = f"invalid OTLP envelope: {type(exc).__name__}: {exc}"
        return [dead_letter("decode", reason, raw, source, now_ms)]
    for record in records:
        if record is None:
            skipped += 1
            continue
        attrs, resource, parent_agent, ident, ts_ns, end_ns = record
        try:
            wire = _wire_event(attrs, resource, parent_agent, ident, ts_ns, end_ns, mapping)
            out.append(to_event(wire, limits, now_ms, source))
        except (InvalidEvent, msgspec.ValidationError, ValueError, TypeError) as exc:
            d = dead_letter("decode", f"invalid OTLP GenAI record {ident}: {exc}", raw, source, now_ms)
            out.append(msgspec.structs.replace(d, key=f"{d.key}:{ident}"))
    if skipped:
        metrics.OTLP_SKIPPED.inc(skipped)
    if not out:
        metrics.OTLP_EMPTY.inc()
    return out


_Record = tuple[dict[str, Any], dict[str, Any], str | None, str, int, int | None]


def _records(doc: dict) -> Iterator[_Record | None]:
    for rs in doc.get("resourceSpans") or []:
        resource = _attributes(rs.get("resource", {}).get("attributes"))
        spans = [s for ss in rs.get("scopeSpans") or [] for s in ss.get("spans") or []]
        agents = {
            s.get("spanId"): _attributes(s.get("attributes")).get("gen_ai.agent.name")
            for s in spans
            if _attributes(s.get("attributes")).get("gen_ai.operation.name") == "invoke_agent"
        }
        for s in spans:
            attrs = _attributes(s.get("attributes"))
            if attrs.get("gen_ai.operation.name") not in LLM_OPERATIONS:
                yield None
                continue
            ident = f"{s.get('traceId', '')}:{s.get('spanId', '')}"
            end = s.get("endTimeUnixNano")
            yield (
                attrs,
                resource,
                agents.get(s.get("parentSpanId")),
                ident,
                int(s["startTimeUnixNano"]),
                (int(end) if end else None),
            )
    for rl in doc.get("resourceLogs") or []:
        resource = _attributes(rl.get("resource", {}).get("attributes"))
        for sl in rl.get("scopeLogs") or []:
            for r in sl.get("logRecords") or []:
                attrs = _attributes(r.get("attributes"))
                if r.get("eventName") != DETAILS_EVENT and attrs.get("event.name") != DETAILS_EVENT:
                    yield None
                    continue
                ident = attrs.get("gen_ai.response.id") or f"{r.get('traceId', '')}:{r.get('spanId', '')}"
                ts = r.get("timeUnixNano") or r.get("observedTimeUnixNano")
                yield attrs, resource, None, f"log:{ident}", int(ts), None


def _wire_event(
    attrs: dict[str, Any],
    resource: dict[str, Any],
    parent_agent: str | None,
    ident: str,
    start_ns: int,
    end_ns: int | None,
    mapping: OtlpMapping,
) -> WireEvent:
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
        metadata={"otel.response_id": str(attrs.get("gen_ai.response.id", ""))},
    )


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
