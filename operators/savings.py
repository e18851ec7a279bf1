"""savings: what judging less saved, per tenant and window, against judging everything.

The reference is the naive policy: every event judged on every configured
metric by the most expensive configured judge. A call's reference cost is
estimated from the prompt it would send (the metric's rubric plus the event's
text, ~4 characters per token, as `judges.rubrics` builds it) and a short
verdict. Against it, per (tenant, window):

    sampling   calls for the events the sampler did not choose (paused tenants included), exact
    cache      verdicts answered by the cache (stored, or shared with an identical event's call);
               dollars at the window's mean reference cost per call
    judge      the calls actually made and their real cost (from the judge-spend ledger)
    cascade    the rest: metrics settled for free by tier-0 rules, and cheaper tiers
               costing less than the reference judge (net of retries)

`judge_savings` rows are re-emitted with a newer version as verdicts arrive
(see `operators.tumbling`); the same numbers are exported as Prometheus
counters (`judgeflow_judge_savings_*`), incremented by each revision's delta.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Stream, operator

from core import metrics
from core.records import (
    PICO_PER_USD,
    Evaluation,
    Event,
    JudgeSavings,
    LedgerEntry,
    SavingsEntry,
    pico_to_usd,
)
from judges.base import JudgeItem
from judges.rubrics import build_prompt
from operators import event_time
from operators.owed import arrived_ms
from operators.price import Catalog, Rates, override_rates
from operators.tumbling import tumbling

CHARS_PER_TOKEN = 4
VERDICT_TOKENS = 60  # a JSON verdict with a one-sentence explanation


@dataclass(frozen=True)
class ReferenceJudge:
    """The most expensive configured judge: what judging everything would cost."""

    name: str
    rates: Rates


def reference_judge(tiers: Iterable[Any], now_ms: int) -> ReferenceJudge:
    """The priciest of the configured judge tiers (`provider`, `model` and optional
    `input_per_mtok` / `output_per_mtok` in USD) for a 1,000-in / 60-out call;
    prices from the config, else from the catalog at `now_ms`."""
    best: tuple[int, ReferenceJudge] | None = None
    catalog = Catalog()
    for t in tiers:
        if t.input_per_mtok is not None and t.output_per_mtok is not None:
            rates = override_rates(t.input_per_mtok, t.output_per_mtok)
        else:
            per_in = catalog.cost_pico(t.model, t.provider, now_ms, 1_000_000, 0)
            per_out = catalog.cost_pico(t.model, t.provider, now_ms, 0, 1_000_000)
            if per_in is None or per_out is None:
                continue  # unpriced: cannot be the reference
            rates = override_rates(pico_to_usd(per_in), pico_to_usd(per_out))
        call = rates.cost_pico(1000, VERDICT_TOKENS)
        if best is None or call > best[0]:
            best = (call, ReferenceJudge(f"{t.provider}/{t.model}", rates))
    return best[1] if best is not None else ReferenceJudge("unpriced", Rates(0, 0))


class Baseline:
    """Reference judge calls and picodollars to judge one event on every metric."""

    def __init__(self, metrics_: Sequence[str], reference: ReferenceJudge) -> None:
        self.metrics = tuple(metrics_)
        self.reference = reference
        self._max_chars = int(inspect.signature(build_prompt).parameters["max_chars"].default)
        empty = JudgeItem("", "", None)
        self._overhead = {m: _chars(build_prompt(m, empty)) for m in self.metrics}

    def __call__(self, e: Event) -> tuple[int, int]:
        cap = self._max_chars
        inp = min(len(e.input_text), cap)
        out = min(len(e.output_text), cap)
        ctx = min(len(e.context or ""), cap)
        pusd = 0
        for m in self.metrics:
            chars = self._overhead[m] + inp
            if m != "jailbreak":
                chars += out
            if m == "hallucination":
                chars += ctx
            pusd += self.reference.rates.cost_pico(-(-chars // CHARS_PER_TOKEN), VERDICT_TOKENS)
        return len(self.metrics), pusd


def _chars(prompt: Any) -> int:
    return len(prompt.system) + len(prompt.user)


def from_spend(x: LedgerEntry) -> SavingsEntry:
    return SavingsEntry(
        tenant_id=x.tenant_id,
        ts_ms=x.ts_ms,
        judge_calls=x.judge_calls,
        judge_pusd=x.judge_cost_pusd,
        after_ms=x.after_ms,
    )


def from_evaluation(v: Evaluation) -> SavingsEntry:
    cache = 1 if v.cache_hit else 0
    return SavingsEntry(tenant_id=v.tenant_id, ts_ms=v.ts_ms, cache_calls=cache, after_ms=v.after_ms)


@dataclass
class _Acc:
    entry: SavingsEntry | None = None
    exported: dict[str, tuple[int, int]] = field(default_factory=dict)

    def copy(self) -> _Acc:
        """An independent copy, for snapshots (the entry's fields and the exported pairs are
        immutable)."""
        entry = msgspec.structs.replace(self.entry) if self.entry is not None else None
        return _Acc(entry, dict(self.exported))


def savings_row(start: int, window_ms: int, x: SavingsEntry, reference: str, version: int) -> JudgeSavings:
    per_call = x.baseline_pusd // x.baseline_calls if x.baseline_calls else 0
    cache_pusd = x.cache_calls * per_call
    return JudgeSavings(
        window_start_ms=start,
        window_ms=window_ms,
        tenant_id=x.tenant_id,
        events=x.events,
        baseline_calls=x.baseline_calls,
        baseline_pusd=x.baseline_pusd,
        sampling_calls=x.sampling_calls,
        sampling_pusd=x.sampling_pusd,
        cache_calls=x.cache_calls,
        cache_pusd=cache_pusd,
        cascade_calls=x.baseline_calls - x.sampling_calls - x.cache_calls - x.judge_calls,
        cascade_pusd=x.baseline_pusd - x.sampling_pusd - cache_pusd - x.judge_pusd,
        judge_calls=x.judge_calls,
        judge_pusd=x.judge_pusd,
        reference_judge=reference,
        version=version,
        judged_events=x.chosen,
        allowed_events=x.allowed,
        forced_events=x.forced,
    )


def _export(acc: _Acc, row: JudgeSavings) -> None:
    tenant = metrics.tenant_label(row.tenant_id)
    now = {
        "baseline": (row.baseline_calls, row.baseline_pusd),
        "sampling": (row.sampling_calls, row.sampling_pusd),
        "cache": (row.cache_calls, row.cache_pusd),
        "cascade": (row.cascade_calls, row.cascade_pusd),
        "judged": (row.judge_calls, row.judge_pusd),
    }
    for what, (calls, pusd) in now.items():
        was_calls, was_pusd = acc.exported.get(what, (0, 0))
        if calls > was_calls:
            metrics.SAVINGS_CALLS.labels(tenant, what).inc(calls - was_calls)
        if pusd > was_pusd:
            metrics.SAVINGS_USD.labels(tenant, what).inc((pusd - was_pusd) / PICO_PER_USD)
        acc.exported[what] = (max(calls, was_calls), max(pusd, was_pusd))


def fold(acc: _Acc, x: SavingsEntry) -> None:
    if acc.entry is None:
        acc.entry = SavingsEntry(tenant_id=x.tenant_id, ts_ms=x.ts_ms)
    acc.entry.add(x)


def combine(entries: Iterable[SavingsEntry], size_ms: int, lateness_ms: int) -> list[SavingsEntry]:
    """Sum a batch's entries per (tenant, window) before they cross workers, those of events late
    by their position for the window (`event_time.late`) apart, keeping the latest position."""
    acc: dict[tuple[str, int, bool], SavingsEntry] = {}
    for x in entries:
        window = x.ts_ms - x.ts_ms % size_ms
        late = event_time.late(x.after_ms, window + size_ms + lateness_ms)
        k = (x.tenant_id, window, late)
        cur = acc.get(k)
        if cur is None:
            cur = acc[k] = SavingsEntry(tenant_id=x.tenant_id, ts_ms=x.ts_ms)
        cur.add(x)  # (only the late ones have a position to keep)
    return list(acc.values())


@operator
def judge_savings(
    step_id: str,
    sampled: Stream[SavingsEntry],
    spend: Stream[LedgerEntry],
    evaluations: Stream[Evaluation],
    *,
    reference: str,
    size_s: int,
    allowed_lateness_s: int,
    clock: Callable[[], float] | None = None,
    processed: Callable[[], int | None] = arrived_ms,
    drop_finished: bool = False,
) -> Stream[JudgeSavings]:
    """The savings ledger per (tenant, window); see the module docstring.

    Args:
        sampled: the sampler's per-window baseline and sampling savings.
        spend: judge-spend ledger entries (the calls made).
        evaluations: verdicts (the cache hits among them).
        reference: the reference judge's name, stored on every row.
        processed: how far no record that is not late can still come (after the judges:
            `operators.owed.judged_ms`, which waits for what the sampler and the judges owe).
        drop_finished: with Kafka input, drop a key's state once none of its windows is open
            (`windows.drop_finished_keys`; `operators.tumbling`).
    """
    size_ms = size_s * 1000
    entries = op.merge(
        "merge",
        sampled,
        op.map("spend", spend, from_spend),
        op.map("cached", op.filter("hits", evaluations, _is_hit), from_evaluation),
    )
    lateness_ms = allowed_lateness_s * 1000
    combined = op.flat_map_batch("combine", entries, lambda xs: combine(xs, size_ms, lateness_ms))

    def rows(_key: str, start: int, acc: _Acc, version: int) -> list[JudgeSavings]:
        assert acc.entry is not None
        row = savings_row(start, size_ms, acc.entry, reference, version)
        _export(acc, row)
        return [row]

    return tumbling(
        "windows",
        combined,
        key_of=lambda x: x.tenant_id,
        size_s=size_s,
        allowed_lateness_s=allowed_lateness_s,
        ts_of=lambda x: x.ts_ms,
        new=_Acc,
        fold=fold,
        rows=rows,
        clock=clock or time.time,
        copy=_Acc.copy,
        processed=processed,
        after_of=lambda x: x.after_ms,
        drop_finished=drop_finished,
    )


def _is_hit(v: Evaluation) -> bool:
    return v.cache_hit
