"""dedup: look every event's content up in the verdict cache, one batch at a time.

It runs before the sampler, so an event the sampler chooses whose pair was
judged before costs nothing. The judge stage looks the events the sampler chose up once more before
calling a judge (`lookup`), because a sampled event waits for its window to
be decided and verdicts stored meanwhile should not be paid for twice. The
content key is xxh3-128 over the normalized input,
output and context (whitespace collapsed, optionally lower-cased, volatile
tokens such as UUIDs and dates replaced), and each metric's cache key adds the
metric and the judge version (rubrics, rules, judge models), so a rubric or
model change re-judges instead of reusing stale verdicts.

Identical pairs are judged once: a batch looks each distinct key up once (one
`get_many` per batch); identical keys that miss go to the same judge worker
(the judge shards by content), where one call at a time is made per key and
every other event needing it shares its outcome (`operators.judge_calls`).

A stored verdict names the event that paid for it (`CachedVerdict.paid_by`).
When that event itself finds it — read again after a crash, or in a replay of
the topic — the candidate carries the tiers it paid for (`Candidate.paid`), and
the judge emits what those calls gave, their spend included, instead of a free
hit: the calls were made once and are counted once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeGuard, cast

import bytewax.operators as op
import msgspec
import xxhash
from bytewax.dataflow import Stream, operator

from core import metrics
from core.dead_letters import guarded
from core.ports import PaidTier, VerdictCache
from core.records import DeadLetter, Event, Verdict
from operators.anchored_sub import AnchoredSub
from operators.stage import stage_of


class Candidate(msgspec.Struct, gc=False, array_like=True):
    """An event on its way to the judges: what the cache already knows, what is left."""

    event: Event
    content_hash: str = ""  # set by `dedup`
    cached: dict[str, Verdict] = {}
    todo: tuple[str, ...] = ()  # LLM metrics with no cached verdict
    inclusion_prob: float = 0.0  # 0 = not sampled
    sample_reason: str = ""
    stratum: str = ""  # the sampler's stratum within the tenant
    cheap: tuple[str, ...] = ()  # metrics whose cheap signal is flagged (set by `sample`)
    paid: dict[str, tuple[PaidTier, ...]] = {}  # cached verdicts this very event paid for, by metric


class ContentKeyer:
    """Normalizes text and derives the content and per-metric cache keys."""

    def __init__(self, *, lowercase: bool, volatile_patterns: Sequence[str], judge_version: str) -> None:
        self._lower = lowercase
        self._volatile = (
            AnchoredSub(re.compile("|".join(f"(?:{p})" for p in volatile_patterns)), "\x00")
            if volatile_patterns
            else None
        )
        self._version = judge_version

    def normalize(self, text: str) -> str:
        if self._volatile is not None:
            text = self._volatile.sub(text)
        text = " ".join(text.split())  # whitespace runs -> one space (str.split is ~3x a regex)
        return text.lower() if self._lower else text

    def content_hash(self, e: Event) -> str:
        h = xxhash.xxh3_128()
        for part in (e.input_text, e.output_text, e.context or ""):
            h.update(self.normalize(part).encode())
            h.update(b"\x1f")
        return h.hexdigest()

    def metric_key(self, content_hash: str, metric: str) -> str:
        return xxhash.xxh3_128_hexdigest(f"{content_hash}|{metric}|{self._version}".encode())


def lookup(
    cands: Sequence[Candidate],
    *,
    cache: VerdictCache,
    keyer: ContentKeyer,
    llm_metrics: Sequence[str],
    stage: str = "dedup",
) -> int:
    """Attach cached verdicts to candidates (one `get_many` for the batch, each distinct
    key once); sets `content_hash` where missing, `cached` and `todo`. Returns the hits.
    `stage` other than "dedup" (the judge's second look) counts its hits apart."""
    metrics_ = tuple(llm_metrics)
    if not metrics_:  # no LLM judge configured: nothing to look up, no key to compute
        return 0
    hashes = [c.content_hash or keyer.content_hash(c.event) for c in cands]
    keys_of = {h: [keyer.metric_key(h, m) for m in metrics_] for h in dict.fromkeys(hashes)}
    keys = [k for ks in keys_of.values() for k in ks]
    found = dict(zip(keys, cache.get_many(keys), strict=True)) if keys else {}
    hits = 0
    for c, h in zip(cands, hashes, strict=True):
        cached: dict[str, Verdict] = dict(c.cached)
        todo = []
        for m, key in zip(metrics_, keys_of[h], strict=True):
            v = found[key]
            if m in cached:
                continue
            if v is None:
                todo.append(m)
            else:
                cached[m] = v.verdict
                hits += 1
                if v.paid and v.paid_by == c.event.event_id:  # its own calls, read again
                    c.paid = {**c.paid, m: v.paid}
        c.content_hash, c.cached, c.todo = h, cached, tuple(todo)
    if stage != "dedup":
        metrics.CACHE.labels(f"hit_at_{stage}").inc(hits)
        return hits
    lookups = len(cands) * len(metrics_)
    metrics.CACHE.labels("hit").inc(hits)
    metrics.CACHE.labels("miss").inc(lookups - hits)
    metrics.CACHE_BATCH_DUPLICATES.inc(lookups - len(keys))
    return hits


@dataclass(frozen=True)
class DedupOut:
    """`cands`: every event as a candidate; `errs`: the dead letters of events whose
    lookup raised (a bug) — they stay candidates, with nothing cached and nothing to judge."""

    cands: Stream[Candidate]
    errs: Stream[DeadLetter]


@operator
def dedup(
    step_id: str,
    up: Stream[Event],
    *,
    cache: VerdictCache,
    keyer: ContentKeyer,
    llm_metrics: Sequence[str],
) -> DedupOut:
    """Every event becomes a candidate carrying the verdicts the cache already has."""
    stage = stage_of(step_id)  # what its dead letters name

    def look_up(cands: list[Candidate]) -> list[Candidate]:
        lookup(cands, cache=cache, keyer=keyer, llm_metrics=llm_metrics)
        return cands

    def lookup_batch(events: list[Event]) -> Iterable[Candidate | DeadLetter]:
        cands = [Candidate(e) for e in events]
        failed: list[Candidate] = []
        _, dead = guarded(stage, look_up, cands, failed=failed)
        for c in failed:  # priced and stored like any event, but never judged
            c.content_hash, c.cached, c.todo = "", {}, ()
        return [*cands, *dead]

    out = op.flat_map_batch("lookup", up, lookup_batch)
    split = op.branch("split", out, _is_candidate)
    return DedupOut(cands=split.trues, errs=cast(Stream[DeadLetter], split.falses))


def _is_candidate(x: Candidate | DeadLetter) -> TypeGuard[Candidate]:
    return type(x) is Candidate
