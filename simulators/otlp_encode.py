"""OTLP/JSON export requests re-encoded as protobuf (what the Collector's Kafka exporter writes with
`encoding: otlp_proto`), for tests and benchmarks that compare both encodings of the same spans."""

from __future__ import annotations

import base64
import json
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

_IDS = frozenset({"traceId", "spanId", "parentSpanId"})


def json_to_proto(raw: bytes | str) -> bytes:
    """One OTLP/JSON export request (traces or logs) as protobuf bytes.

    OTLP/JSON writes trace and span ids as hex where protobuf's JSON mapping expects base64;
    everything else maps one to one."""
    doc = json.loads(raw)
    request = ExportLogsServiceRequest() if "resourceLogs" in doc else ExportTraceServiceRequest()
    json_format.ParseDict(_base64_ids(doc), request)
    return request.SerializeToString()


def _base64_ids(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: base64.b64encode(bytes.fromhex(v)).decode() if k in _IDS and v else _base64_ids(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_base64_ids(v) for v in node]
    return node
