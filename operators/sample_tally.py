"""sample_tally: the sample stage's first step, on the worker that holds the batch.

Each event gets its tier-0 (and local model) flags, its stratum and the cheap signal of the metrics
that have one; then the batch is tallied per (tenant, sampler window): per stratum, how many events
and the tier-0 flags among them, and only the candidates some outcome may still choose (`Held`:
those below their stratum's rate, plus the K smallest others) — so only these, and the counts,
cross workers to the tenant's sampler (`operators.sample`). The savings of the events dropped here
are counted here.

Events late by their partition's position for their window are tallied apart (the sampler decides
them alone), and those late for the estimates' and savings' window too apart again, with the latest
position, so that those stages drop their design counts and savings in every run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgspec

from core.records import Event, SavingsEntry
from judges.base import JudgeItem, RuleJudge
from operators import event_time
from operators.dedup import Candidate
from operators.local_flags import LocalFlags, cheap_flagged
from operators.sample_design import Held, Sampler, StratumTally


@dataclass(slots=True)
class Part:
    """What one worker's batch adds to one tenant's window: per-stratum tallies
    (with the pre-selected candidates) and the savings of the events it dropped."""

    tenant: str
    window: int
    strata: dict[str, StratumTally]
    savings: SavingsEntry
    late: bool = False  # events their partition released after the window's end plus lateness


def tally_batch(
    cands: Sequence[Candidate],
    *,
    sampler: Sampler,
    rules: RuleJudge,
    baseline: Callable[[Event], tuple[int, int]],
    cheap: Sequence[str] = (),
    local: LocalFlags | None = None,
    judged_window_s: tuple[int, int] | None = None,
) -> list[Part]:
    """Flag and stratify a batch (each candidate gets its event with `flags`, its `stratum` and
    `cheap`) and tally it per (tenant, window): counts per stratum (with the cheap signal of the
    `cheap` metrics), and only the candidates any outcome may choose; the savings of the
    others are counted here. `local`: the local models add their flags (`operators.local_flags`).
    `judged_window_s`: the estimates' and savings' window and allowed lateness; events late by
    their position for it are tallied apart, with that position."""
    size_ms = sampler.window_s * 1000
    closes_ms = size_ms + int(sampler.allowed_lateness_s * 1000)
    judged_size_ms, judged_lateness_ms = (
        (0, 0) if judged_window_s is None else (judged_window_s[0] * 1000, judged_window_s[1] * 1000)
    )
    parts: dict[tuple[str, int, bool, bool], Part] = {}
    items = [JudgeItem(c.event.input_text, c.event.output_text, c.event.context) for c in cands]
    scored = local.flags(items) if local is not None else None
    for i, c in enumerate(cands):
        e = c.event
        found = rules.flags(items[i])
        flags = tuple(sorted(found.union(scored[i]) if scored else found))
        c.event = e = msgspec.structs.replace(e, flags=flags)  # the cost branch keeps its own value
        a = sampler.assign(e, e.flags)
        c.stratum = a.stratum
        if cheap:
            c.cheap = tuple(m for m in cheap if cheap_flagged(m, e.flags, rules, local))
        window = e.ts_ms - e.ts_ms % size_ms
        after = e.source.after_ms if e.source is not None else None
        late = event_time.late(after, window + closes_ms)  # its partition was past the window
        # ... and past the estimates' and savings' window (of the sampler window's start)
        stale = (
            late
            and judged_size_ms > 0
            and event_time.late(after, _closes(window, judged_size_ms, judged_lateness_ms))
        )
        part = parts.get((e.tenant_id, window, late, stale))
        if part is None:
            part = parts[(e.tenant_id, window, late, stale)] = Part(
                e.tenant_id, window, {}, SavingsEntry(tenant_id=e.tenant_id, ts_ms=e.ts_ms), late
            )
        sv = part.savings
        if stale and after is not None:
            # (late for the estimates' and savings' window too: they drop what comes of these events)
            sv.after_ms = max(sv.after_ms or -1, after)
        sv.ts_ms = max(sv.ts_ms, e.ts_ms)
        calls, pusd = baseline(e)
        sv.events += 1
        sv.baseline_calls += calls
        sv.baseline_pusd += pusd
        tally = part.strata.get(a.stratum)
        if tally is None:
            tally = part.strata[a.stratum] = StratumTally(
                a.rate, a.reason, a.min_k, agent=e.agent, cheap=dict.fromkeys(cheap, 0)
            )
        tally.n += 1
        for m in c.cheap:
            tally.cheap[m] += 1
        u = sampler.unit(e.event_id)
        if u < a.rate:
            tally.below += 1
        if a.rate > 0 or a.min_k > 0:
            tally.held.append(Held(u, e.event_id, c, a.reason, calls, pusd))
        else:
            sv.sampling_calls += calls
            sv.sampling_pusd += pusd
    for part in parts.values():
        for tally in part.strata.values():
            for h in tally.trim(sampler.max_per_tenant):  # only what may be chosen crosses workers
                part.savings.sampling_calls += h.calls
                part.savings.sampling_pusd += h.cost_pusd
    return list(parts.values())


def _closes(window_ms: int, size_ms: int, lateness_ms: int) -> int:
    """When the `size_ms` window holding a sampler window's start closes (its end plus lateness)."""
    return window_ms - window_ms % size_ms + size_ms + lateness_ms
