"""sample: decide, deterministically, which events the LLM judges see.

The decision hashes the event id with the sampler version (never `random()`),
so a replay or a 2-worker run picks exactly the same events. Every sampled
event carries its inclusion probability, which is what makes the quality
estimates unbiased (Horvitz-Thompson). Tier-0 rules run on every event here:
their flags are recorded on the event and can force a judgement.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import bytewax.operators as op
import xxhash
from bytewax.dataflow import Stream

from judges.base import JudgeItem, RuleJudge
from operators import metrics
from operators.dedup import Candidate

_TWO_64 = float(2**64)


def unit_hash(version: str, event_id: str) -> float:
    """A stable number in [0, 1) for an event id."""
    return xxhash.xxh3_64_intdigest(f"{version}|{event_id}".encode()) / _TWO_64


@dataclass(frozen=True)
class Sampler:
    base_rate: float
    version: str
    always_when_flagged: bool = True

    def decide(self, c: Candidate) -> tuple[float, str]:
        """(inclusion probability, reason); probability 0 means not sampled."""
        if self.always_when_flagged and c.flags:
            return 1.0, "flagged"
        if self.base_rate > 0 and unit_hash(self.version, c.event.event_id) < self.base_rate:
            return self.base_rate, "base_rate"
        return 0.0, "skipped"


@dataclass(frozen=True)
class SampleOut:
    """`events`: every event, now with its tier-0 flags; `judge`: candidates with
    something to judge or a cached verdict to report."""

    events: Stream[Candidate]
    judge: Stream[Candidate]


def sample(step_id: str, up: Stream[Candidate], *, sampler: Sampler, rules: RuleJudge) -> SampleOut:
    def sample_batch(cands: list[Candidate]) -> Iterable[Candidate]:
        counts: dict[str, int] = {}
        for c in cands:
            e = c.event
            c.flags = e.flags = tuple(sorted(rules.flags(JudgeItem(e.input_text, e.output_text, e.context))))
            c.inclusion_prob, c.sample_reason = sampler.decide(c)
            counts[c.sample_reason] = counts.get(c.sample_reason, 0) + 1
        for reason, n in counts.items():
            metrics.SAMPLED.labels(reason).inc(n)
        return cands

    decided = op.flat_map_batch(f"{step_id}_decide", up, sample_batch)
    to_judge = op.filter(f"{step_id}_to_judge", decided, lambda c: c.inclusion_prob > 0 or bool(c.cached))
    return SampleOut(events=decided, judge=to_judge)
