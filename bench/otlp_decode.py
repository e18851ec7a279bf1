"""OTLP decode throughput: the same GenAI chat spans as OTLP protobuf, as OTLP/JSON, and as native
JSON events, through the decode step's per-message function (`decode_record`), one thread.

The spans are the shared instrumentation example (../shared/data/otel/otlp_json_llm_chat_span.json:
an invoke_agent span and a chat span with its messages as attributes), each export with its own
span ids, `--spans` chat spans per export request (the Collector batches several per Kafka
message); protobuf is that JSON re-encoded (`simulators.otlp_encode`). Native events carry the same
call (ids, tokens, texts). Counted: events out per second of decode time, median of `--repeat`.

    .venv/bin/python bench/otlp_decode.py [--events 20000] [--spans 1 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from copy import deepcopy
from pathlib import Path

from bytewax.connectors.kafka import KafkaSourceMessage

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _traffic import median_rate, table

from operators.decode import decode_record
from operators.otlp import OtlpCall, OtlpMapping
from operators.validate import DecodeLimits
from simulators.otlp_encode import json_to_proto
from simulators.traffic import shared_data_dir

LIMITS = DecodeLimits(earliest_ts_ms=0, max_future_ms=10**13, max_tokens=10**8, max_cost_pico=10**18)
MAPPING = OtlpMapping()


def exports(n: int, per_message: int) -> list[bytes]:
    """n chat calls as OTLP/JSON export requests of `per_message` calls (plus their agent spans)."""
    doc = json.loads((shared_data_dir() / "otel" / "otlp_json_llm_chat_span.json").read_text())
    scope_spans = doc["resourceSpans"][0]["scopeSpans"]
    out = []
    for m in range(0, n, per_message):
        d = deepcopy(doc)
        d["resourceSpans"][0]["scopeSpans"] = []
        for i in range(m + 1, min(n, m + per_message) + 1):  # trace id 0 would be no trace
            for ss in deepcopy(scope_spans):
                for s in ss["spans"]:
                    s["traceId"] = f"{i:032x}"
                    s["spanId"] = f"{int(s['spanId'], 16) ^ i:016x}"
                    if s.get("parentSpanId"):
                        s["parentSpanId"] = f"{int(s['parentSpanId'], 16) ^ i:016x}"
                d["resourceSpans"][0]["scopeSpans"].append(ss)
        out.append(json.dumps(d, separators=(",", ":")).encode())
    return out


def natives(n: int, raw_json: bytes) -> list[bytes]:
    """The same calls as native judgeflow events (one per message)."""
    (call,) = [x for x in decode_record(message(raw_json), LIMITS, 0, MAPPING) if isinstance(x, OtlpCall)]
    e = call.event
    out = []
    for i in range(n):
        out.append(
            json.dumps(
                {
                    "event_id": f"{i + 1:032x}:{i + 1:016x}",
                    "ts": e.ts_ms,
                    "tenant_id": e.tenant_id,
                    "agent": e.agent,
                    "model": e.model,
                    "provider": e.provider,
                    "input": [
                        {"role": r, "content": c}
                        for r, c in (line.split(": ", 1) for line in e.input_text.split("\n"))
                    ],
                    "output": e.output_text,
                    "usage": {"input_tokens": e.input_tokens, "output_tokens": e.output_tokens},
                    "latency_ms": e.latency_ms,
                    "metadata": e.metadata,
                }
            ).encode()
        )
    return out


def message(raw: bytes, offset: int = 0) -> KafkaSourceMessage:
    return KafkaSourceMessage(key=None, value=raw, topic="llm-events", partition=0, offset=offset)


def run(msgs: list[KafkaSourceMessage]) -> tuple[float, int]:
    t = time.perf_counter()
    n = sum(len(decode_record(m, LIMITS, 0, MAPPING)) for m in msgs)
    return time.perf_counter() - t, n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--spans", type=int, nargs="+", default=[1, 20])
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()

    rows = []
    native_rate = 0.0
    for per_message in args.spans:
        as_json = exports(args.events, per_message)
        inputs = [("OTLP protobuf", [json_to_proto(r) for r in as_json]), ("OTLP/JSON", as_json)]
        if not native_rate:
            inputs.append(("native JSON events", natives(args.events, as_json[0])))
        json_rate = 0.0
        for name, raws in inputs:
            msgs = [message(r, i) for i, r in enumerate(raws)]
            run(msgs[:100])  # warm-up
            results = [run(msgs) for _ in range(args.repeat)]
            assert all(n == args.events for _, n in results), (name, results[0][1])
            rate, spread = median_rate(args.events, [s for s, _ in results])
            if name == "OTLP/JSON":
                json_rate = rate
            if name.startswith("native"):
                native_rate = rate
            size = sum(len(r) for r in raws) / args.events
            per_msg = "1" if name.startswith("native") else str(per_message)
            rows.append(
                [name, per_msg, f"{size:,.0f}", f"{rate:,.0f}", f"{1e6 / rate:.1f}", f"±{spread / 2:.0%}"]
            )
        for r in rows[-len(inputs) :]:
            r.append(f"{float(r[3].replace(',', '')) / json_rate:.2f}x")
    print(
        table(
            f"OTLP decode, 1 thread: {args.events:,} chat calls, median of {args.repeat}",
            ["input", "calls/message", "bytes/call", "events/s", "µs/event", "spread", "vs OTLP/JSON"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
