"""The records that travel through the dataflow.

Hot-path records are `msgspec.Struct`s: cheap to build, to pickle across
workers and to encode. Money is an integer number of picodollars (1e-12 USD)
everywhere inside the flow, so sums are exact and never drift; sinks turn it
into ClickHouse `Decimal(38, 12)` dollars.

Records are declared `gc=False`: their fields are atomic values, tuples, dicts of atomic values and other
records, so no reference cycle can pass through one, and the cyclic collector neither counts them
towards its collections nor scans them (tens of thousands per batch, and the records windows and
ledgers keep). A record type that could ever hold itself, directly or not, must not be.
"""

from __future__ import annotations

import math
from datetime import datetime
from decimal import Decimal

import msgspec
import xxhash

PICO_PER_USD = 10**12


def usd_to_pico(usd: Decimal | int | str) -> int:
    """Dollars as an exact decimal -> integer picodollars (half-even below 1e-12)."""
    return int((Decimal(usd) * PICO_PER_USD).to_integral_value())


def pico_to_usd(pico: int) -> Decimal:
    return Decimal(pico).scaleb(-12)


# --- the wire format of a native LLM-request event -------------------------


class Usage(msgspec.Struct, gc=False, frozen=True, forbid_unknown_fields=False):
    """Token counts. `input_tokens` includes cached input (the OpenAI and
    OpenTelemetry convention); `reasoning_tokens` are part of `output_tokens`."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


class ChatMessage(msgspec.Struct, gc=False, frozen=True):
    role: str
    content: str


class WireEvent(msgspec.Struct, gc=False, frozen=True):
    """One LLM request as producers write it to Kafka (JSON)."""

    event_id: str
    ts: datetime | int  # RFC 3339 with offset, or epoch milliseconds
    tenant_id: str
    agent: str
    model: str
    input: str | list[ChatMessage]
    output: str
    usage: Usage
    provider: str | None = None
    variant: str = "baseline"
    context: str | None = None
    cost_usd: Decimal | None = None
    latency_ms: float | None = None
    conversation_id: str | None = None
    user_id: str | None = None
    metadata: dict[str, str] = {}


# --- inside the flow ---------------------------------------------------------


class Source(msgspec.Struct, gc=False, frozen=True, array_like=True):
    """Where a record came from (Kafka coordinates), for dead letters and audits, and where its
    partition stood when it was read: `after_ms`, the newest time the partition had released before
    it (None: unknown) — what makes an event late for a window, whatever the timing."""

    topic: str
    partition: int
    offset: int
    after_ms: int | None = None


class Event(msgspec.Struct, gc=False, frozen=True, array_like=True):
    """A decoded, validated event. `price` fills the cost fields."""

    event_id: str
    ts_ms: int
    tenant_id: str
    agent: str
    model: str
    provider: str
    variant: str
    input_text: str
    output_text: str
    context: str | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    provided_cost_pusd: int | None
    latency_ms: float | None
    conversation_id: str | None
    user_id: str | None
    metadata: dict[str, str]
    source: Source | None
    cost_pusd: int = 0
    cost_source: str = "unpriced"  # provided | catalog | override | unknown
    flags: tuple[str, ...] = ()  # tier-0 rules that fired (set by `sample`)


class DeadLetter(msgspec.Struct, gc=False, frozen=True, array_like=True):
    """A record the flow could not process, with the reason and its origin.

    `key` is deterministic (source coordinates, or a content hash) so a replay
    writes the same dead letter once.
    """

    key: str
    stage: str
    reason: str
    raw: bytes
    source: Source | None
    ts_ms: int


class PricingIssue(msgspec.Struct, gc=False, frozen=True, array_like=True):
    """A model the flow could not price, reported once per (model, provider,
    UTC day) — the events themselves are still counted, with cost unknown.
    `key` is deterministic, so repeats (workers, replays) replace each other."""

    key: str
    day_ms: int
    model: str
    provider: str
    issue: str  # unknown_model
    message: str


class Verdict(msgspec.Struct, gc=False, frozen=True, array_like=True):
    """One judge's answer for one metric."""

    metric: str
    score: float
    label: str
    explanation: str
    judge: str  # judge id, e.g. "rules/pii@1" or "openai/gpt-4o-mini"
    tier: int


class JudgeCall(msgspec.Struct, gc=False, frozen=True, array_like=True):
    """What one judge call cost (tokens and dollars) and how it went."""

    judge: str
    tier: int
    input_tokens: int
    output_tokens: int
    cost_pusd: int
    latency_ms: float
    ok: bool
    error: str = ""


class Evaluation(msgspec.Struct, gc=False, frozen=True, array_like=True):
    """A verdict attached to the event it judges (an evaluation row)."""

    eval_id: str
    event_id: str
    ts_ms: int
    tenant_id: str
    agent: str
    model: str
    variant: str
    metric: str
    score: float
    label: str
    explanation: str
    judge: str
    tier: int
    cache_hit: bool
    inclusion_prob: float
    content_hash: str
    judge_cost_pusd: int
    judge_latency_ms: float
    error: str = ""
    stratum: str = ""  # the sampler's stratum of the event (within its tenant and window)
    cheap: bool = False  # the cheap signal flagged the event for this metric (tier-0 rules or local flag)
    after_ms: int | None = None  # where the event's partition stood when it was read (`Source.after_ms`)


def entry_hash(entry_id: str) -> int:
    """The 64-bit hash `LedgerEntry.ids` combines."""
    return xxhash.xxh3_64_intdigest(entry_id.encode("utf-8", "surrogatepass"))


class LedgerEntry(msgspec.Struct, gc=False, array_like=True):
    """Partial sums for one (tenant, agent, model, variant, minute): what the
    windows add up. `price` makes one per event; judges make one per judged
    event (category `judge`)."""

    tenant_id: str
    agent: str
    model: str
    variant: str
    ts_ms: int
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_pusd: int = 0
    unknown_cost_requests: int = 0
    judge_calls: int = 0
    judge_cost_pusd: int = 0
    max_request_cost_pusd: int = 0
    # set only on entries that travel alone (not combined), so a correction has a stable id
    entry_id: str = ""
    # XOR of the 64-bit hashes of every entry id summed in: a stable, order-independent
    # id for a combined entry that turns out to be late
    ids: int = 0
    # late by its partition's position (`operators.event_time.late`): a correction, whatever the timing
    late: bool = False
    # where its event's partition stood when the event was read (`Source.after_ms`), for an entry made
    # later than its event (judge spend): its window decides from it whether it is late
    after_ms: int | None = None

    def add(self, other: LedgerEntry) -> None:
        self.requests += other.requests
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost_pusd += other.cost_pusd
        self.unknown_cost_requests += other.unknown_cost_requests
        self.judge_calls += other.judge_calls
        self.judge_cost_pusd += other.judge_cost_pusd
        self.max_request_cost_pusd = max(self.max_request_cost_pusd, other.max_request_cost_pusd)
        self.ids ^= other.ids


class SavingsEntry(msgspec.Struct, gc=False, array_like=True):
    """Partial sums of the judge savings ledger for one tenant, at a time in its
    window: the reference cost of judging every event on every metric, and what
    sampling, the cache and the judges actually did about it."""

    tenant_id: str
    ts_ms: int
    events: int = 0
    baseline_calls: int = 0  # every event x every metric, with the reference judge
    baseline_pusd: int = 0
    sampling_calls: int = 0  # not made: the event was not sampled (or its tenant paused)
    sampling_pusd: int = 0
    cache_calls: int = 0  # answered by the verdict cache (stored or in flight)
    judge_calls: int = 0  # made
    judge_pusd: int = 0
    chosen: int = 0  # events the sampler chose to judge
    allowed: int = 0  # the most it could choose: the tenant's cap or judged-share ceiling, else every event
    forced: int = 0  # events the rules would have judged all of (tier-0 flags, long conversations)
    # where its events' partitions stood when they were read (the latest), when they are late for
    # the savings window (None: they are not; the estimates and savings drop late ones in every run)
    after_ms: int | None = None

    def add(self, other: SavingsEntry) -> None:
        self.ts_ms = max(self.ts_ms, other.ts_ms)
        self.events += other.events
        self.baseline_calls += other.baseline_calls
        self.baseline_pusd += other.baseline_pusd
        self.sampling_calls += other.sampling_calls
        self.sampling_pusd += other.sampling_pusd
        self.cache_calls += other.cache_calls
        self.judge_calls += other.judge_calls
        self.judge_pusd += other.judge_pusd
        self.chosen += other.chosen
        self.allowed += other.allowed
        self.forced += other.forced
        if other.after_ms is not None:
            self.after_ms = max(self.after_ms or -1, other.after_ms)


class JudgeSavings(msgspec.Struct, gc=False, frozen=True, array_like=True):
    """One (tenant, window) row of the savings ledger: judge calls and dollars
    avoided by sampling, by the cache and by the cascade (tier-0 rules and
    cheaper tiers), against judging everything with the reference judge."""

    window_start_ms: int
    window_ms: int
    tenant_id: str
    events: int
    baseline_calls: int
    baseline_pusd: int
    sampling_calls: int
    sampling_pusd: int
    cache_calls: int
    cache_pusd: int
    cascade_calls: int
    cascade_pusd: int
    judge_calls: int
    judge_pusd: int
    reference_judge: str
    version: int  # emission time: the newest row of a window wins
    judged_events: int = 0  # events the sampler chose
    allowed_events: int = 0  # its cap or judged-share ceiling per window, summed (every event without)
    forced_events: int = 0  # events in certainty strata (tier-0 flags, long conversations)


class QualityEstimate(msgspec.Struct, gc=False, frozen=True, array_like=True):
    """Horvitz-Thompson estimate of the share of flagged responses for one
    (tenant, agent, metric, window), with a 95% interval; the sums let any
    rollup recompute it (see operators.estimates)."""

    window_start_ms: int
    window_ms: int
    tenant_id: str
    agent: str
    metric: str
    judged: int
    flagged: int
    rate: float
    ci_low: float
    ci_high: float
    population: float  # estimated events (sum of 1/pi)
    sum_w: float
    sum_wy: float
    sum_ww1: float  # sum of w(w-1), w = 1/pi
    sum_ww1y: float
    version: int
    # the stratified design (see operators.estimates): exact part, sampled part, variances
    exact_events: float = 0.0  # events of strata judged in full (inclusion probability 1)
    exact_flagged: float = 0.0
    sampled_events: float = 0.0  # events of the other strata with a verdict
    sampled_flagged: float = 0.0  # their stratified (HT) estimate of the flagged
    sampled_var: float = 0.0  # its variance: sum N_h^2 (1 - f_h) s_h^2 / m_h
    sampled_var_unit: float = 0.0  # sum N_h^2 (1 - f_h) / m_h
    # prediction-powered: the tier-0 verdict on every event plus the judged residuals
    cheap_events: float = 0.0  # events the cheap signal was counted on
    cheap_flagged: float = 0.0  # of which the cheap signal flagged (tier-0 rules, or the local flag)
    ppi_sampled_flagged: float = 0.0
    ppi_sampled_var: float = 0.0
    ppi_rate: float = math.nan
    ppi_low: float = math.nan
    ppi_high: float = math.nan


class CostWindow(msgspec.Struct, gc=False, frozen=True, array_like=True):
    """A closed (or revised, or still open: `provisional`) tumbling window for one
    (tenant, agent, model, variant)."""

    window_start_ms: int
    window_ms: int
    tenant_id: str
    agent: str
    model: str
    variant: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost_pusd: int
    unknown_cost_requests: int
    judge_calls: int
    judge_cost_pusd: int
    max_request_cost_pusd: int
    version: int  # emission time (ms): the newest row for a window key wins
    category: str = "llm"  # llm (the product's requests) | judge (judgeflow's own judge calls)
    kind: str = "window"  # window | correction (entries after the allowed lateness)
    correction_id: str = ""  # the late entry's id, for correction rows
    # an open window's sums so far: the final row (same key, higher version) supersedes it
    provisional: bool = False
    # a restored window's row written again as it stood (`operators.windows`): nothing new for the
    # levels built from it (not a column)
    restated: bool = False


class AbuseWindow(msgspec.Struct, gc=False, frozen=True, array_like=True):
    """One (tenant, window) of the usual abuse shapes (`operators.abuse`): requests that repeat
    a prompt already sent in the window, and the share of the user who sent the most."""

    window_start_ms: int
    window_ms: int
    tenant_id: str
    requests: int
    repeated_requests: int  # requests whose normalized prompt was already seen in the window
    distinct_prompts: int
    top_prompt_requests: int  # requests of the most repeated prompt
    distinct_users: int
    top_user: str  # the user id with the most requests ("" when no request carries one)
    top_user_requests: int
    version: int  # emission time: the newest row of a window wins

    @property
    def repeated_share(self) -> float:
        return self.repeated_requests / self.requests if self.requests else 0.0

    @property
    def top_user_share(self) -> float:
        return self.top_user_requests / self.requests if self.requests else 0.0


LEVELS = ("ok", "warn", "critical", "emergency")  # an alert's levels, in rising order
RANK = {level: i for i, level in enumerate(LEVELS)}


class Alert(msgspec.Struct, gc=False, frozen=True, array_like=True):
    """A state transition of one alert rule for one tenant."""

    alert_id: str
    rule: str
    tenant_id: str
    scope: str  # e.g. "" or an agent name
    level: str  # ok | warn | critical | emergency
    previous_level: str
    value: float
    threshold: float
    window_start_ms: int
    window_end_ms: int
    ts_ms: int
    message: str
    runbook: str
    details: str = ""  # JSON: the numbers that triggered it (per rule: see operators.alert_rules)


def alert_subject(tenant: str, scope: str) -> str:
    """Whom an alert is about, as its message begins: `tenant` or `tenant / scope`."""
    return f"{tenant} / {scope}" if scope else tenant


def alert_summary(a: Alert) -> str:
    """The message without its subject (for channels that show the subject apart)."""
    subject = alert_subject(a.tenant_id, a.scope)
    for prefix in (f"{subject}: ", f"resolved: {subject}: "):
        if a.message.startswith(prefix):
            return a.message[len(prefix) :]
    return a.message
