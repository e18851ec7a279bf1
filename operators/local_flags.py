"""Local flags: the local model tier's verdict on every event, as a flag the sampler reads.

With `[judges.local] score_every_event = true` (and the tier loaded), the sample stage scores
every event of a batch with each local model — one vectorised `scores()` call per model per
batch, on the text `LocalJudge.judge_many` judges — and adds `<metric>.local` (`toxicity.local`)
to the event's flags when the score is at or above `flag_at`. So:

- with `sampling.always_on_flags` holding the metric's prefix (`toxicity.` by default), the
  event is forced into the certainty stratum (within the judged-share ceiling), like a tier-0 flag;
- the flag is stored with the event (`llm_events.flags`), and the `flags` stratum dimension sees
  its family (`toxicity`);
- tier-0 verdicts do not change: `RuleJudge.verdict` reads only rule names;
- the cheap signal of prediction-powered estimates for that metric is the local flag
  (`cheap_flagged`); metrics without a local model keep the tier-0 rule verdict.

Scores are rounded (`judges.local`) and each depends on its own text only, so the same events
get the same flags, and the same judged set, in any batching.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.records import Verdict
from judges.base import FLAGGED, JudgeItem, RuleJudge
from judges.local import LocalJudge

SUFFIX = ".local"


def local_flag(metric: str) -> str:
    """The flag a local model's flagged score adds: `toxicity.local`."""
    return f"{metric}{SUFFIX}"


@dataclass(frozen=True)
class LocalFlags:
    """The local models that score every event. `or_rules`: the cheap signal of a local metric is
    the local flag OR the tier-0 rule verdict (default: the local flag alone, see the README)."""

    judge: LocalJudge
    or_rules: bool = False

    @property
    def metrics(self) -> frozenset[str]:
        return self.judge.metrics

    def flags(self, items: Sequence[JudgeItem]) -> list[tuple[str, ...]]:
        """The local flags of each event's item, in order: one batch call per model."""
        if not items:
            return []
        found: list[list[str]] = [[] for _ in items]
        for metric in sorted(self.judge.models):
            flag = local_flag(metric)
            for mine, hit in zip(found, self.judge.flagged_many(metric, items), strict=True):
                if hit:
                    mine.append(flag)
        return [tuple(f) for f in found]


def cheap_metrics(
    rules: RuleJudge, metrics_: Sequence[str], local: LocalFlags | None = None
) -> tuple[str, ...]:
    """The metrics (of `metrics_`) with a cheap signal on every event: a tier-0 rule covers them,
    or a local model scores them."""
    scored = local.metrics if local is not None else frozenset()
    return tuple(sorted(m for m in set(metrics_) if m in scored or rules.verdict(m, ()) is not None))


def cheap_flagged(metric: str, flags: Sequence[str], rules: RuleJudge, local: LocalFlags | None) -> bool:
    """The cheap signal of `metric` for an event with these flags: the local flag where a local
    model scores the metric (OR-ed with the rule verdict if asked), else the tier-0 rule verdict."""
    if local is not None and metric in local.metrics:
        if local_flag(metric) in flags:
            return True
        if not local.or_rules:
            return False
    return _flagged(rules.verdict(metric, flags))


def _flagged(v: Verdict | None) -> bool:
    return v is not None and v.label == FLAGGED
