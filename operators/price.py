"""price: every event gets an exact cost in picodollars, or is marked unknown.

Precedence: the event's own `cost_usd` (when `prefer_provided_cost`), then a
config override for the model (fine-tuned / self-hosted), then the
`genai-prices` catalog at the event's time. A model nobody knows is still
counted, with `cost_source = "unknown"`, a metric and a report row.

Catalog lookups cost ~100 µs, so prices are resolved once per (model,
provider, minute) into linear per-token rates derived from the library itself
(`Catalog.rates`); models with long-context tiers take the library's slow
path per event. Both give the library's exact decimal result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import bytewax.operators as op
from bytewax.dataflow import Stream
from genai_prices import Usage, calc_price
from genai_prices.types import TieredPrices

from operators import metrics
from operators.records import PICO_PER_USD, Event

MTOK = 1_000_000
_MINUTE_MS = 60_000
_MAX_CACHED = 50_000


@dataclass(frozen=True, slots=True)
class Rates:
    """Picodollars per token, as exact decimals; `input` applies to all input
    tokens, `cache_read`/`cache_write` are the *extra* (usually negative) amount
    for the cached share, mirroring how the catalog prices them."""

    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal

    def cost_pico(
        self, input_tokens: int, output_tokens: int, cache_read: int = 0, cache_write: int = 0
    ) -> int:
        total = (
            input_tokens * self.input
            + output_tokens * self.output
            + cache_read * self.cache_read
            + cache_write * self.cache_write
        )
        return int(total.to_integral_value())


def override_rates(
    input_per_mtok: Decimal,
    output_per_mtok: Decimal,
    cache_read_per_mtok: Decimal | None = None,
    cache_write_per_mtok: Decimal | None = None,
) -> Rates:
    """Rates from $ per 1M tokens (config overrides)."""
    per_tok = Decimal(PICO_PER_USD) / MTOK
    cr = input_per_mtok if cache_read_per_mtok is None else cache_read_per_mtok
    cw = input_per_mtok if cache_write_per_mtok is None else cache_write_per_mtok
    return Rates(
        input=input_per_mtok * per_tok,
        output=output_per_mtok * per_tok,
        cache_read=(cr - input_per_mtok) * per_tok,
        cache_write=(cw - input_per_mtok) * per_tok,
    )


_TIERED = object()  # marker: this model has long-context tiers


class Catalog:
    """genai-prices behind a per-(model, provider, minute) memo."""

    def __init__(self) -> None:
        self._memo: dict[tuple[str, str, int], object] = {}

    def cost_pico(
        self,
        model: str,
        provider: str,
        ts_ms: int,
        input_tokens: int,
        output_tokens: int,
        cache_read: int = 0,
        cache_write: int = 0,
    ) -> int | None:
        """Exact cost of one request, or None when the catalog does not know the model."""
        key = (model, provider, ts_ms // _MINUTE_MS)
        rates = self._memo.get(key, _MISSING)
        if rates is _MISSING:
            if len(self._memo) >= _MAX_CACHED:
                self._memo.clear()
            rates = self._memo[key] = self._resolve(model, provider, _dt(ts_ms))
        if rates is None:
            return None
        if rates is _TIERED:
            usage = Usage(
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cache_read_tokens=cache_read,
                cache_write_tokens=cache_write,
            )
            total = _calc(usage, model, provider, _dt(ts_ms))
            assert total is not None
            return int((total.total_price * PICO_PER_USD).to_integral_value())
        return rates.cost_pico(input_tokens, output_tokens, cache_read, cache_write)  # type: ignore[attr-defined]

    def _resolve(self, model: str, provider: str, when: datetime) -> object:
        base = _calc(Usage(input_tokens=MTOK), model, provider, when)
        if base is None:
            return None
        mp = base.model_price
        if any(isinstance(v, TieredPrices) for v in vars(mp).values()):
            return _TIERED
        out = _calc(Usage(output_tokens=MTOK), model, provider, when)
        cr = _calc(Usage(input_tokens=MTOK, cache_read_tokens=MTOK), model, provider, when)
        cw = _calc(Usage(input_tokens=MTOK, cache_write_tokens=MTOK), model, provider, when)
        assert out is not None and cr is not None and cw is not None
        scale = Decimal(PICO_PER_USD) / MTOK
        return Rates(
            input=base.total_price * scale,
            output=out.total_price * scale,
            cache_read=(cr.total_price - base.total_price) * scale,
            cache_write=(cw.total_price - base.total_price) * scale,
        )


_MISSING = object()


def _calc(usage: Usage, model: str, provider: str, when: datetime):  # -> PriceCalculation | None
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

    def price(self, e: Event) -> None:
        if e.provided_cost_pusd is not None and self._prefer_provided:
            e.cost_pusd, e.cost_source = e.provided_cost_pusd, "provided"
            return
        rates = self._overrides.get(e.model)
        if rates is not None:
            e.cost_pusd = rates.cost_pico(
                e.input_tokens, e.output_tokens, e.cache_read_tokens, e.cache_write_tokens
            )
            e.cost_source = "override"
            return
        cost = self._catalog.cost_pico(
            e.model,
            e.provider,
            e.ts_ms,
            e.input_tokens,
            e.output_tokens,
            e.cache_read_tokens,
            e.cache_write_tokens,
        )
        if cost is not None:
            e.cost_pusd, e.cost_source = cost, "catalog"
        elif e.provided_cost_pusd is not None:
            e.cost_pusd, e.cost_source = e.provided_cost_pusd, "provided"
        else:
            e.cost_pusd, e.cost_source = 0, "unknown"


def price(step_id: str, up: Stream[Event], *, pricer: Pricer) -> Stream[Event]:
    """Price whole batches in place and count spend and unknown models."""

    def price_batch(events: list[Event]) -> Iterable[Event]:
        for e in events:
            pricer.price(e)
            if e.cost_source == "unknown":
                metrics.UNKNOWN_MODEL.labels(e.model[:64]).inc()
        _count(events)
        return events

    return op.flat_map_batch(step_id, up, price_batch)


def _count(events: list[Event]) -> None:
    per_tenant: dict[str, list[int]] = {}
    for e in events:
        acc = per_tenant.setdefault(e.tenant_id, [0, 0])
        acc[0] += 1
        acc[1] += e.cost_pusd
    for tenant, (n, pico) in per_tenant.items():
        label = metrics.tenant_label(tenant)
        metrics.REQUESTS.labels(label).inc(n)
        metrics.COST.labels(label, "llm").inc(pico / PICO_PER_USD)
    metrics.EVENTS_IN.inc(len(events))
