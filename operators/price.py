"""price: every event gets an exact cost in picodollars, or is marked unknown.

Precedence: the event's own `cost_usd` (when `prefer_provided_cost`), then a
config override for the model (fine-tuned / self-hosted), then the
`genai-prices` catalog at the event's time. A model nobody knows is still
counted, with `cost_source = "unknown"`, a metric, and one `PricingIssue`
row per (model, provider, UTC day) for the report.

A catalog lookup costs ~100 µs, so `Catalog` asks the library once per model
and price period for its linear per-token rates — input, output, the extra
for cache reads, cache writes and reasoning tokens, and a per-request fee —
one set per long-context tier (the tier is chosen by the request's input
tokens, as the library does). The rates are derived from the library's own
answers and kept as integers, so every cost is the library's exact decimal
result, rounded once to the picodollar. Prices change over time only where
the catalog says so: never (most models), on start dates (re-read per UTC
day) or by time of day (re-read per minute).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import bytewax.operators as op
import msgspec
import xxhash
from bytewax.dataflow import Stream, operator
from genai_prices import Usage, calc_price
from genai_prices.types import ModelPrice, PriceCalculation, TieredPrices, TimeOfDateConstraint

from core import metrics
from core.dead_letters import guarded
from core.records import PICO_PER_USD, DeadLetter, Event, PricingIssue
from operators.stage import stage_of

MTOK = 1_000_000
DAY_MS = 86_400_000
_MINUTE_MS = 60_000
_MAX_CACHED = 50_000


@dataclass(frozen=True, slots=True)
class Rates:
    """Linear prices in picodollars per token, as integers scaled by `10**exp`.

    `input` applies to all input tokens; `cache_read`, `cache_write` and
    `reasoning` are the *extra* (often negative) amount for that share of the
    input or output, mirroring how the catalog prices them; `fixed` is a
    per-request fee. Integer arithmetic keeps the result exact and fast.
    """

    input: int
    output: int
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int = 0
    fixed: int = 0
    exp: int = 0

    @classmethod
    def from_decimals(
        cls,
        input: Decimal,
        output: Decimal,
        cache_read: Decimal = Decimal(0),
        cache_write: Decimal = Decimal(0),
        reasoning: Decimal = Decimal(0),
        fixed: Decimal = Decimal(0),
    ) -> Rates:
        """Rates from exact decimals in picodollars (per token; `fixed` per request)."""
        values = (input, output, cache_read, cache_write, reasoning, fixed)
        exp = max(0, *(-v.normalize().as_tuple().exponent for v in values))  # type: ignore[operator]
        scale = 10**exp
        i, o, cr, cw, r, f = (int(v * scale) for v in values)
        return cls(i, o, cr, cw, r, f, exp=exp)

    def cost_pico(
        self,
        input_tokens: int,
        output_tokens: int,
        cache_read: int = 0,
        cache_write: int = 0,
        reasoning: int = 0,
    ) -> int:
        total = (
            self.fixed
            + input_tokens * self.input
            + output_tokens * self.output
            + cache_read * self.cache_read
            + cache_write * self.cache_write
            + reasoning * self.reasoning
        )
        if not self.exp:
            return total
        # round half to even, as Decimal.to_integral_value does
        q, r = divmod(total, 10**self.exp)
        twice = 2 * r
        d = 10**self.exp
        if twice > d or (twice == d and q % 2):
            q += 1
        return q


def override_rates(
    input_per_mtok: Decimal,
    output_per_mtok: Decimal,
    cache_read_per_mtok: Decimal | None = None,
    cache_write_per_mtok: Decimal | None = None,
) -> Rates:
    """Rates from $ per 1M tokens (config overrides); cached input defaults to the input price."""
    per_tok = Decimal(PICO_PER_USD) / MTOK
    cr = input_per_mtok if cache_read_per_mtok is None else cache_read_per_mtok
    cw = input_per_mtok if cache_write_per_mtok is None else cache_write_per_mtok
    return Rates.from_decimals(
        input=input_per_mtok * per_tok,
        output=output_per_mtok * per_tok,
        cache_read=(cr - input_per_mtok) * per_tok,
        cache_write=(cw - input_per_mtok) * per_tok,
    )


@dataclass(frozen=True, slots=True)
class Schedule:
    """The rates of one model for one price period: one `Rates` per
    long-context band. `starts[i]` is the input-token count above which
    band i+1 applies (the library's threshold rule: `input_tokens > start`)."""

    starts: tuple[int, ...]
    bands: tuple[Rates, ...]

    def cost_pico(
        self, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int, reasoning: int
    ) -> int:
        rates = self.bands[bisect_left(self.starts, input_tokens)] if self.starts else self.bands[0]
        return rates.cost_pico(input_tokens, output_tokens, cache_read, cache_write, reasoning)


@dataclass(slots=True)
class _Model:
    period_ms: int  # 0: the price never changes; else re-read per period
    schedules: dict[int, Schedule]


class Catalog:
    """genai-prices, memoized per (model, provider, price period) as exact linear rates."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], _Model | None] = {}
        self._cached = 0

    def cost_pico(
        self,
        model: str,
        provider: str,
        ts_ms: int,
        input_tokens: int,
        output_tokens: int,
        cache_read: int = 0,
        cache_write: int = 0,
        reasoning: int = 0,
    ) -> int | None:
        """Exact cost of one request, or None when the catalog does not know the model."""
        key = (model, provider)
        m = self._models.get(key)
        if m is None:
            if key in self._models:  # a model the catalog does not know
                return None
            m = self._learn(model, provider, ts_ms)
            if m is None:
                return None
        period = ts_ms // m.period_ms if m.period_ms else 0
        schedule = m.schedules.get(period)
        if schedule is None:
            schedule = self._schedule(m, model, provider, ts_ms, period)
        return schedule.cost_pico(input_tokens, output_tokens, cache_read, cache_write, reasoning)

    def _learn(self, model: str, provider: str, ts_ms: int) -> _Model | None:
        if len(self._models) >= _MAX_CACHED:
            self._models.clear()
        found = _calc(Usage(input_tokens=1), model, provider, _dt(ts_ms))
        m = None if found is None else _Model(_price_period_ms(found), {})
        self._models[(model, provider)] = m
        return m

    def _schedule(self, m: _Model, model: str, provider: str, ts_ms: int, period: int) -> Schedule:
        if self._cached >= _MAX_CACHED:
            for other in self._models.values():
                if other is not None:
                    other.schedules.clear()
            self._cached = 0
        schedule = m.schedules[period] = _derive(model, provider, _dt(ts_ms))
        self._cached += 1
        return schedule


def _price_period_ms(found: PriceCalculation) -> int:
    """How long one price holds: forever (0), a UTC day, a minute, or one millisecond."""
    prices = found.model.prices
    if isinstance(prices, ModelPrice):
        return 0
    constraints = [c.constraint for c in prices if c.constraint is not None]
    times = [
        t for c in constraints if isinstance(c, TimeOfDateConstraint) for t in (c.start_time, c.end_time)
    ]
    if not times:
        return DAY_MS if constraints else 0
    if all(t.second == 0 and t.microsecond == 0 for t in times):
        return _MINUTE_MS
    return 1


def _tier_starts(mp: ModelPrice) -> tuple[int, ...]:
    starts = {t.start for v in vars(mp).values() if isinstance(v, TieredPrices) for t in v.tiers}
    return tuple(sorted(starts))


def _derive(model: str, provider: str, when: datetime) -> Schedule:
    """Per-band linear rates from the library's answers to a few probe usages.

    Within a band every price is constant and the library's cost is linear in
    each token count, so differences of one token give each exact rate."""
    first = _calc(Usage(input_tokens=1), model, provider, when)
    assert first is not None
    starts = _tier_starts(first.model_price)
    bands = []
    for n in (1, *(s + 1 for s in starts)):

        def total(**usage: int) -> Decimal:
            p = _calc(Usage(**usage), model, provider, when)
            assert p is not None
            return p.total_price

        base = total(input_tokens=n)
        per_input = total(input_tokens=n + 1) - base
        with_output = total(input_tokens=n, output_tokens=1)
        pico = Decimal(PICO_PER_USD)
        bands.append(
            Rates.from_decimals(
                input=per_input * pico,
                output=(with_output - base) * pico,
                cache_read=(total(input_tokens=n, cache_read_tokens=1) - base) * pico,
                cache_write=(total(input_tokens=n, cache_write_tokens=1) - base) * pico,
                reasoning=(total(input_tokens=n, output_tokens=1, output_reasoning_tokens=1) - with_output)
                * pico,
                fixed=(base - n * per_input) * pico,
            )
        )
    return Schedule(starts, tuple(bands))


def _calc(usage: Usage, model: str, provider: str, when: datetime) -> PriceCalculation | None:
    try:
        return calc_price(usage, model, provider_id=provider or None, genai_request_timestamp=when)
    except LookupError:
        if not provider:
            return None
    # an unknown provider name (e.g. a gateway's label): let the catalog infer it
    try:
        return calc_price(usage, model, genai_request_timestamp=when)
    except LookupError:
        return None


def _dt(ts_ms: int) -> datetime:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC)


class Pricer:
    """Applies the precedence rules to one event at a time."""

    def __init__(self, overrides: Mapping[str, Rates], *, prefer_provided: bool = True) -> None:
        self._overrides = dict(overrides)
        self._prefer_provided = prefer_provided
        self._catalog = Catalog()

    def price(self, e: Event) -> Event:
        """The event with its cost and where the cost came from (a new value: events are immutable)."""
        cost, source = self._cost(e)
        return msgspec.structs.replace(e, cost_pusd=cost, cost_source=source)

    def _cost(self, e: Event) -> tuple[int, str]:
        if e.provided_cost_pusd is not None and self._prefer_provided:
            return e.provided_cost_pusd, "provided"
        rates = self._overrides.get(e.model)
        if rates is not None:
            cost = rates.cost_pico(
                e.input_tokens, e.output_tokens, e.cache_read_tokens, e.cache_write_tokens, e.reasoning_tokens
            )
            return cost, "override"
        catalog = self._catalog.cost_pico(
            e.model,
            e.provider,
            e.ts_ms,
            e.input_tokens,
            e.output_tokens,
            e.cache_read_tokens,
            e.cache_write_tokens,
            e.reasoning_tokens,
        )
        if catalog is not None:
            return catalog, "catalog"
        if e.provided_cost_pusd is not None:
            return e.provided_cost_pusd, "provided"
        return 0, "unknown"


def pricing_issue(model: str, provider: str, ts_ms: int) -> PricingIssue:
    """The report row for a model nobody could price, one per (model, provider, UTC day)."""
    day = ts_ms - ts_ms % DAY_MS
    shown = f"{model!r}" + (f" (provider {provider!r})" if provider else "")
    return PricingIssue(
        key=xxhash.xxh3_128_hexdigest(f"unknown_model|{model}|{provider}|{day}".encode()),
        day_ms=day,
        model=model,
        provider=provider,
        issue="unknown_model",
        message=(
            f"no price for model {shown} in genai-prices and no [pricing.overrides] entry: its "
            "requests are counted with cost unknown (cost_source = 'unknown')"
        ),
    )


@dataclass(frozen=True)
class PriceOut:
    """`events`: every event, priced or marked unknown; `issues`: one row per
    unknown (model, provider, day) seen by a worker (the same key from
    several workers or a replay replaces itself in ClickHouse)."""

    events: Stream[Event]
    issues: Stream[PricingIssue]
    errs: Stream[DeadLetter]  # events whose pricing raised (a bug): dead letters, never a stopped flow


@operator
def price(step_id: str, up: Stream[Event], *, pricer: Pricer) -> PriceOut:
    """Price whole batches, count spend, and report unknown models."""
    stage = stage_of(step_id)  # what its dead letters name

    def price_all(events: list[Event]) -> list[Event]:
        return [pricer.price(e) for e in events]

    def price_batch(events: list[Event]) -> Iterable[tuple[list[Event], list[DeadLetter]]]:
        oks, dead = guarded(stage, price_all, events)
        _count(oks)
        return [(oks, dead)]

    both = op.flat_map_batch("batch", up, price_batch)  # one item per batch: no per-event routing
    priced = op.flat_map_batch("oks", both, lambda bs: [e for oks, _ in bs for e in oks])
    errs = op.flat_map_batch("errs", both, lambda bs: [d for _, dead in bs for d in dead])
    reported: set[tuple[str, str, int]] = set()

    def report_unknown(events: list[Event]) -> Iterable[PricingIssue]:
        issues = []
        unknown: dict[str, int] = {}
        for e in events:
            if e.cost_source != "unknown":
                continue
            unknown[e.model] = unknown.get(e.model, 0) + 1
            key = (e.model, e.provider, e.ts_ms // DAY_MS)
            if key not in reported:
                if len(reported) >= _MAX_CACHED:
                    reported.clear()
                reported.add(key)
                issues.append(pricing_issue(e.model, e.provider, e.ts_ms))
        for model, n in unknown.items():
            metrics.UNKNOWN_MODEL.labels(metrics.model_label(model)).inc(n)
        return issues

    issues = op.flat_map_batch("unknown", priced, report_unknown)
    return PriceOut(events=priced, issues=issues, errs=errs)


def _count(events: list[Event]) -> None:
    """Spend, requests, tokens and latency of one batch: the events grouped per label set first,
    then one update per series (a batch of 1,000 events touches tens of series, not thousands)."""
    groups: dict[tuple[str, str, str], list[Event]] = {}
    for e in events:
        key = (e.tenant_id, e.agent, e.model)
        group = groups.get(key)
        if group is None:
            groups[key] = [e]
        else:
            group.append(e)
    series: dict[tuple[str, str, str], list[int]] = {}  # per capped label set: with many keys, few series
    per_tenant: dict[str, list[int]] = {}
    per_model: dict[tuple[str, str], list[int]] = {}
    latency: dict[str, list[float]] = {}
    for (tenant, agent, model), group in groups.items():
        n = len(group)
        pico = sum([e.cost_pusd for e in group])
        labels = metrics.llm_labels(tenant, agent, model)
        acc = series.setdefault(labels, [0, 0])
        acc[0] += n
        acc[1] += pico
        t = labels[0]
        acc = per_tenant.setdefault(t, [0, 0])
        acc[0] += n
        acc[1] += pico
        model_label = metrics.model_label(model)
        tokens = per_model.setdefault((t, model_label), [0, 0, 0])
        tokens[0] += sum([e.input_tokens for e in group])
        tokens[1] += sum([e.output_tokens for e in group])
        tokens[2] += sum([e.cache_read_tokens for e in group])
        latency.setdefault(model_label, []).extend([e.latency_ms for e in group if e.latency_ms is not None])
    for (t, a, m), (n, pico) in series.items():
        metrics.LLM_REQUESTS.labels(t, a, m).inc(n)
        metrics.LLM_COST.labels(t, a, m).inc(pico / PICO_PER_USD)
    for tenant, (n, pico) in per_tenant.items():
        metrics.REQUESTS.labels(tenant).inc(n)
        # Prometheus counters are floats: the exact ledger is in ClickHouse
        metrics.COST.labels(tenant, "llm").inc(pico / PICO_PER_USD)
    for (tenant, model), counts in per_model.items():
        for kind, n in zip(("input", "output", "cached"), counts, strict=True):
            if n:
                metrics.LLM_TOKENS.labels(tenant, model, kind).inc(n)
    for model, ms in latency.items():
        if ms:
            metrics.observe_many(metrics.LLM_LATENCY.labels(model), [x / 1000 for x in ms if x >= 0])
    metrics.EVENTS_IN.inc(len(events))
