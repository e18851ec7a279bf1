"""The two OTLP wire formats read into one format-independent `Record` per span or log record:
OTLP/JSON (`json_records`) and OTLP protobuf (`proto_span_records`, `proto_log_records`, with
`proto_signal` telling traces from logs by the first field, without a full parse). What the records
mean — the GenAI mapping to events — is `operators.otlp`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from core.errors import InvalidInput


class OtlpWireError(InvalidInput):
    """Bytes that are not the envelope of a protobuf OTLP export request."""


class Record(NamedTuple):
    attrs: dict[str, Any]
    resource: dict[str, Any]
    trace_id: str  # hex; "" when absent
    span_id: str
    parent_span_id: str
    start_ns: int  # a span's start, a log record's time (else its observed time)
    end_ns: int | None
    event_name: str | None  # None: a span
    body: Any = None


# --- OTLP/JSON -------------------------------------------------------------------------


def json_records(doc: dict) -> Iterator[Record]:
    for rs in doc.get("resourceSpans") or []:
        resource = attributes(rs.get("resource", {}).get("attributes"))
        for ss in rs.get("scopeSpans") or []:
            for s in ss.get("spans") or []:
                end = s.get("endTimeUnixNano")
                yield Record(
                    attrs=attributes(s.get("attributes")),
                    resource=resource,
                    trace_id=str(s.get("traceId") or ""),
                    span_id=str(s.get("spanId") or ""),
                    parent_span_id=str(s.get("parentSpanId") or ""),
                    start_ns=int(s.get("startTimeUnixNano") or 0),
                    end_ns=int(end) if end else None,
                    event_name=None,
                )
    for rl in doc.get("resourceLogs") or []:
        resource = attributes(rl.get("resource", {}).get("attributes"))
        for sl in rl.get("scopeLogs") or []:
            for r in sl.get("logRecords") or []:
                attrs = attributes(r.get("attributes"))
                ts = int(r.get("timeUnixNano") or 0) or int(r.get("observedTimeUnixNano") or 0)
                body = r.get("body")
                yield Record(
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


def attributes(kvs: list | None) -> dict[str, Any]:
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


WANTED = ("service.name", "event.name", "user.id", "enduser.id")  # and every gen_ai.* attribute


def proto_span_records(request: ExportTraceServiceRequest, wanted: frozenset[str]) -> Iterator[Record]:
    for rs in request.resource_spans:
        resource = _protoattributes(rs.resource.attributes, wanted)
        for ss in rs.scope_spans:
            for s in ss.spans:
                yield Record(
                    attrs=_protoattributes(s.attributes, wanted),
                    resource=resource,
                    trace_id=s.trace_id.hex(),
                    span_id=s.span_id.hex(),
                    parent_span_id=s.parent_span_id.hex(),
                    start_ns=s.start_time_unix_nano,
                    end_ns=s.end_time_unix_nano or None,
                    event_name=None,
                )


def proto_log_records(request: ExportLogsServiceRequest, wanted: frozenset[str]) -> Iterator[Record]:
    for rl in request.resource_logs:
        resource = _protoattributes(rl.resource.attributes, wanted)
        for sl in rl.scope_logs:
            for r in sl.log_records:
                attrs = _protoattributes(r.attributes, wanted)
                yield Record(
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


def _protoattributes(kvs: Iterable[Any], wanted: frozenset[str]) -> dict[str, Any]:
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
