"""The sampling design, as pure functions: which stratum an event falls in and at what rate
(`Sampler.assign`), and which events of a closed window are chosen, with their inclusion
probabilities (`choose`, `choose_late`, `throttle`, `allocate`). The stage that runs it per tenant and
window, and the design's full description: `operators.sample`."""

from __future__ import annotations

import heapq
import itertools
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import msgspec
import xxhash

from core.ports import Override
from core.records import Event
from operators.dedup import Candidate

_TWO_64 = float(2**64)
SEP = "\x1f"

# stratum-level reasons (`Assignment.reason`) and per-event ones
FLAGGED = "flagged"  # certainty: a tier-0 rule with a forcing prefix fired
LONG = "long"  # certainty: longer than always_over_tokens
RATE = "rate"  # u < the stratum's rate
MINIMUM = "minimum"  # topped up to K in a small stratum
OVERRIDE = "override"  # the tenant's override rate
PAUSED = "paused"  # override rate 0
CAP = "cap"  # cut by the tenant's cap
SHARE = "share"  # cut by the tenant's judged-share ceiling
LATE = "late"  # its window had already been decided

DIMENSIONS = ("model", "variant", "input_length", "output_length", "flags")


def unit_hash(version: str, event_id: str) -> float:
    """A stable number in [0, 1) for an event id."""
    return xxhash.xxh3_64_intdigest(f"{version}|{event_id}".encode()) / _TWO_64


def bucket_labels(edges: Sequence[int]) -> list[str]:
    """Every label `length_bucket` can return for these edges."""
    if not edges:
        return ["any"]
    return [f"<{edges[0]}", *(f"{lo}-{hi}" for lo, hi in itertools.pairwise(edges)), f">={edges[-1]}"]


_ASSIGNED_MAX = 100_000  # remembered assignments, at most (then they are forgotten and made again)


def length_bucket(tokens: int, edges: Sequence[int]) -> str:
    """`<e0`, `e0-e1`, ..., `>=en`: the label rules and strata use."""
    if not edges or tokens < edges[0]:
        return f"<{edges[0]}" if edges else "any"
    for lo, hi in itertools.pairwise(edges):
        if tokens < hi:
            return f"{lo}-{hi}"
    return f">={edges[-1]}"


@dataclass(frozen=True)
class StratumRule:
    """`rate` for the events it matches; unset fields match anything. Names are
    glob patterns (`code-*`), lengths are bucket labels (`>=4000`), `flag` is the
    prefix of a tier-0 flag that fired (`refusal.`)."""

    rate: float
    tenant: str | None = None
    agent: str | None = None
    model: str | None = None
    variant: str | None = None
    input_length: str | None = None
    output_length: str | None = None
    flag: str | None = None

    def matches(self, e: Event, lengths: tuple[str, str], flags: Sequence[str]) -> bool:
        return (
            _glob(self.tenant, e.tenant_id)
            and _glob(self.agent, e.agent)
            and _glob(self.model, e.model)
            and _glob(self.variant, e.variant)
            and (self.input_length is None or self.input_length == lengths[0])
            and (self.output_length is None or self.output_length == lengths[1])
            and (self.flag is None or any(f.startswith(self.flag) for f in flags))
        )


def _glob(pattern: str | None, value: str) -> bool:
    return pattern is None or fnmatchcase(value, pattern)


@dataclass(frozen=True, slots=True)
class Assignment:
    """An event's stratum (within its tenant), its rate, why, and its K."""

    stratum: str
    rate: float
    reason: str  # FLAGGED | LONG | RATE | OVERRIDE | PAUSED
    min_k: int


@dataclass(frozen=True)
class Sampler:
    """The sampling design (see the module docstring); built from `[sampling]`."""

    base_rate: float = 0.1
    version: str = "v1"
    rules: tuple[StratumRule, ...] = ()
    strata: tuple[str, ...] = ("model", "variant", "input_length")
    length_buckets: tuple[int, ...] = (1000, 4000)
    always_over_tokens: int = 8000  # 0: off
    always_on_flags: tuple[str, ...] = ("pii.", "jailbreak.", "toxicity.")
    min_per_stratum: int = 2  # K
    max_per_tenant: int = 600  # M per window; 0: no cap
    max_judged_share: float = 0.0  # s: the judged-share ceiling per tenant and window; 0: none
    judged_share_by_tenant: tuple[tuple[str, float], ...] = ()  # (tenant, s) overriding it
    window_s: int = 60
    allowed_lateness_s: float = 10.0
    idle_s: float = 5.0

    # `assign`'s answers by what decides them (the tenant only when a rule names tenants)
    _assigned: dict[tuple[object, ...], Assignment] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _by_tenant: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_tenant", any(r.tenant is not None for r in self.rules))
        if any(lo >= hi for lo, hi in itertools.pairwise(self.length_buckets)):
            msg = f"sampler: length_buckets must be increasing, got {list(self.length_buckets)}"
            raise ValueError(msg)
        unknown = [d for d in self.strata if d not in DIMENSIONS]
        if unknown:
            msg = f"sampler: unknown strata dimensions {unknown}; allowed: {', '.join(DIMENSIONS)}"
            raise ValueError(msg)

    def unit(self, event_id: str) -> float:
        return unit_hash(self.version, event_id)

    def judged_share(self, tenant: str) -> float:
        """The tenant's judged-share ceiling s (0: none)."""
        for t, share in self.judged_share_by_tenant:
            if t == tenant:
                return share
        return self.max_judged_share

    def ceiling(self, tenant: str, start: int, events: int) -> int | None:
        """C = max(min(K, N), floor(s * N + v)) for a window of N `events` (None without a ceiling)."""
        share = self.judged_share(tenant)
        if share <= 0 or share >= 1:
            return None
        v = unit_hash(self.version, f"{tenant}{SEP}{start}")
        return max(min(self.min_per_stratum, events), int(share * events + v))

    def assign(self, e: Event, flags: Sequence[str]) -> Assignment:
        """The stratum of one event (within its tenant): remembered per combination of what decides
        it, as few combinations recur for most events (`_assign` works it out)."""
        tokens = e.input_tokens, e.output_tokens
        edges = self.length_buckets
        key = (
            e.tenant_id if self._by_tenant else "",
            e.agent,
            e.model,
            e.variant,
            bisect_right(edges, tokens[0]),
            bisect_right(edges, tokens[1]),
            bool(self.always_over_tokens) and tokens[0] + tokens[1] > self.always_over_tokens,
            flags if type(flags) is tuple else tuple(flags),
        )
        found = self._assigned.get(key)
        if found is None:
            if len(self._assigned) >= _ASSIGNED_MAX:
                self._assigned.clear()
            found = self._assigned[key] = self._assign(e, flags)
        return found

    def _assign(self, e: Event, flags: Sequence[str]) -> Assignment:
        forcing = self.always_on_flags
        if forcing and any(f.startswith(forcing) for f in flags):
            return Assignment(f"{e.agent}{SEP}certain", 1.0, FLAGGED, 0)
        if self.always_over_tokens and e.input_tokens + e.output_tokens > self.always_over_tokens:
            return Assignment(f"{e.agent}{SEP}certain", 1.0, LONG, 0)
        lengths = (
            length_bucket(e.input_tokens, self.length_buckets),
            length_bucket(e.output_tokens, self.length_buckets),
        )
        rate, rule = self.base_rate, -1
        for i, r in enumerate(self.rules):
            if r.matches(e, lengths, flags):
                rate, rule = r.rate, i
                break
        parts = [e.agent]
        for d in self.strata:
            if d == "model":
                parts.append(e.model)
            elif d == "variant":
                parts.append(e.variant)
            elif d == "input_length":
                parts.append(f"in{lengths[0]}")
            elif d == "output_length":
                parts.append(f"out{lengths[1]}")
            else:
                parts.append("+".join(sorted({f.split(".", 1)[0] for f in flags})) or "noflag")
        parts.append(f"rule{rule}@{rate:g}")  # one rate per stratum, even across config changes
        return Assignment(SEP.join(parts), rate, RATE, self.min_per_stratum)


# --- choosing within a window: pure functions ----------------------------------


@dataclass(slots=True)
class Held:
    """A candidate kept for the decision, with its hash and what judging it all would cost."""

    u: float
    event_id: str
    cand: Candidate
    reason: str
    calls: int
    cost_pusd: int


@dataclass(slots=True)
class StratumTally:
    """One stratum of one window: how many events, how many below the rate,
    the events that can still be chosen (sorted by hash on demand), and per
    metric with a cheap signal how many of all its events it flagged (the tier-0
    rules, or the local flag: `operators.local_flags`), which prediction-powered estimates use."""

    rate: float
    reason: str
    min_k: int
    n: int = 0
    below: int = 0
    held: list[Held] = field(default_factory=list)
    agent: str = ""
    cheap: dict[str, int] = field(default_factory=dict)

    def add(self, other: StratumTally, cap: int) -> list[Held]:
        """Merge `other` in; returns the held events that can no longer be chosen."""
        self.n += other.n
        self.below += other.below
        self.held.extend(other.held)
        for metric, k in other.cheap.items():
            self.cheap[metric] = self.cheap.get(metric, 0) + k
        return self.trim(cap)

    def trim(self, cap: int) -> list[Held]:
        """Keep what any outcome may choose: the events below the rate (the `cap`
        smallest when capped) and the `min_k` smallest others."""
        below = [h for h in self.held if h.u < self.rate]
        above = [h for h in self.held if h.u >= self.rate]
        keep_below = heapq.nsmallest(cap, below, key=_order) if cap and len(below) > cap else below
        keep_above = heapq.nsmallest(self.min_k, above, key=_order) if len(above) > self.min_k else above
        if len(keep_below) + len(keep_above) == len(self.held):
            return []
        kept = {id(h) for h in keep_below} | {id(h) for h in keep_above}
        dropped = [h for h in self.held if id(h) not in kept]
        self.held = keep_below + keep_above
        return dropped

    def want(self) -> int:
        if self.reason in (FLAGGED, LONG):
            return self.n
        return max(min(self.min_k, self.n), self.below)


def _order(h: Held) -> tuple[float, str]:
    return (h.u, h.event_id)


def allocate(wants: Sequence[int], capacity: int) -> list[int]:
    """Max-min fair shares of `capacity` (water-filling): small wants are met in
    full, the largest are cut to a common level; leftover units go to the
    earliest of the cut ones. Deterministic."""
    if sum(wants) <= capacity:
        return list(wants)
    level, remaining, left = 0, capacity, sorted(w for w in wants if w > 0)
    while left:  # raise the level until the next want no longer fits
        share = remaining // len(left)
        if left[0] > share:
            level = share
            break
        remaining -= left[0]
        level = left.pop(0)
    else:
        return list(wants)
    out = [min(w, level) for w in wants]
    spare = capacity - sum(out)
    for i, w in enumerate(wants):
        if spare <= 0:
            break
        if w > out[i]:
            out[i] += 1
            spare -= 1
    return out


@dataclass(slots=True)
class Choice:
    """The outcome for one window (or one late group) of one tenant."""

    chosen: list[Candidate]
    avoided_calls: int  # judge calls not made because the events were not chosen
    avoided_pusd: int
    sampled: dict[str, int]  # reason -> events chosen
    skipped: dict[str, int]  # reason -> events not chosen
    taken: dict[str, int] = field(default_factory=dict)  # stratum -> m_h


class StratumCount(msgspec.Struct, gc=False, frozen=True, array_like=True):
    """One decided stratum of one (tenant, window): its events N_h, how many were chosen
    (m_h, each with inclusion probability m_h / N_h) and, per metric with a tier-0 rule, how
    many of the N_h events the rules flagged. `operators.estimates` reads the design from
    these: the stratified variance, and the cheap signal's count on every event."""

    tenant_id: str
    agent: str
    window_start_ms: int  # the sampler's window
    stratum: str
    events: int
    chosen: int
    inclusion_prob: float
    cheap: tuple[tuple[str, int], ...]  # (metric, events the cheap signal flagged), by metric
    # where its events' partitions stood when they were read (the latest), when they are late for
    # the estimates' window (None: they are not; `operators.estimates` drops late ones in every run)
    after_ms: int | None = None


def choose(strata: dict[str, StratumTally], cap: int | None, *, salt: str = "", cut: str = CAP) -> Choice:
    """Pick each stratum's bottom-m_h by hash (see the module docstring) and
    set every chosen candidate's inclusion probability m_h / N_h.

    Args:
        cap: the most chosen in all (None: no cap), shared out by max-min water-filling;
            the units left over go to strata in the order of their hash with `salt`.
        cut: the reason counted for the events the cap cut (CAP or SHARE).
    """
    names = sorted(strata)
    wants = [strata[h].want() for h in names]
    alloc = list(wants)
    if cap is not None:
        order = sorted(range(len(names)), key=lambda i: (unit_hash(salt, names[i]), names[i]))
        for i, a in zip(order, allocate([wants[i] for i in order], cap), strict=True):
            alloc[i] = a
    out = Choice([], 0, 0, {}, {})
    for h, want, m in zip(names, wants, alloc, strict=True):
        s = strata[h]
        s.held.sort(key=_order)
        prob = m / s.n if s.n else 0.0
        out.taken[h] = m
        for i, held in enumerate(s.held):
            if i < m:
                reason = _chosen_reason(s, held)
                out.chosen.append(
                    msgspec.structs.replace(held.cand, inclusion_prob=prob, sample_reason=reason)
                )
                _count(out.sampled, reason, 1)
            else:
                out.avoided_calls += held.calls
                out.avoided_pusd += held.cost_pusd
        _count(out.skipped, cut, want - m)
        _count(out.skipped, _skip_reason(s), s.n - want)
    return out


def _chosen_reason(s: StratumTally, held: Held) -> str:
    if s.reason == OVERRIDE:
        return OVERRIDE
    if s.reason in (FLAGGED, LONG):
        return held.reason
    return MINIMUM if held.u >= s.rate else RATE


def _skip_reason(s: StratumTally) -> str:
    return PAUSED if s.reason == PAUSED else OVERRIDE if s.reason == OVERRIDE else RATE


def choose_late(strata: dict[str, StratumTally], share: float = 0.0) -> Choice:
    """Events whose window was already decided, each decided alone: chosen when u < r_h (1 in
    certainty strata; at most the judged-share ceiling `share` when one is set), with inclusion
    probability r_h — Bernoulli sampling, exact for Horvitz-Thompson, and the same whatever
    batch or process the event arrived with."""
    out = Choice([], 0, 0, {}, {})
    for h in sorted(strata):
        s = strata[h]
        rate = late_rate(s, share)
        m = 0
        for held in sorted(s.held, key=_order):
            if held.u >= rate:
                out.avoided_calls += held.calls
                out.avoided_pusd += held.cost_pusd
                continue
            reason = _chosen_reason(s, held)  # (u < the late rate <= the stratum's: never MINIMUM)
            out.chosen.append(msgspec.structs.replace(held.cand, inclusion_prob=rate, sample_reason=reason))
            _count(out.sampled, reason, 1)
            m += 1
        out.taken[h] = m
        _count(out.skipped, _skip_reason(s), s.n - m)
    return out


def late_rate(s: StratumTally, share: float = 0.0) -> float:
    """The inclusion probability of an event decided alone (late): its stratum's rate (1 in a
    certainty stratum), under the judged-share ceiling."""
    rate = 1.0 if s.reason in (FLAGGED, LONG) else s.rate
    return min(rate, share) if 0 < share < 1 else rate


def throttle(strata: dict[str, StratumTally], override: Override) -> dict[str, StratumTally]:
    """The window's strata under `override`: each rate capped at the override's, no K."""
    out = {}
    for name, t in strata.items():
        rate = min(t.rate, max(override.rate, 0.0))
        below = sum(1 for h in t.held if h.u < rate)
        out[name] = StratumTally(
            rate, OVERRIDE if rate > 0 else PAUSED, 0, t.n, below, t.held, t.agent, t.cheap
        )
    return out


def _count(d: dict[str, int], key: str, n: int) -> None:
    if n:
        d[key] = d.get(key, 0) + n
