"""The reports' shared ground: what a query reads (`Scope`), what it returns (`Table`), and how a range
is read at the coarsest grain that tiles it. The queries themselves: `flows.report_spend`,
`flows.report_signals`, `flows.report_quality`.

Every query takes a client (`sinks.clickhouse.connect`) and a `Scope`
(time range and filters) and returns a `Table`: named, typed columns and
rows of plain values. Money stays `Decimal` from the `Decimal(38, 12)`
columns to the output (never a float); rates and token averages are floats.

Spend comes from `cost_windows`: the newest version of every window plus its
correction rows. A range is read at the coarsest grain that tiles it — whole
UTC days from the 1-day rollups, whole hours from the 1-hour ones, the rest
from the minutes — so a 30-day report reads ~30 rows per key, not 43,200.
A range is taken at minute resolution: a minute window counts when it
starts inside the range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from core.errors import FatalError

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
PICO = Decimal("1e-12")

# --by dimension -> column
DIMENSIONS = {"tenant": "tenant_id", "agent": "agent", "model": "model", "variant": "variant"}


@dataclass(frozen=True)
class Scope:
    """What a report covers: [since, until) in event time, and optional filters."""

    since_ms: int
    until_ms: int
    now_ms: int
    now_from: str = "data"  # data (newest event time) | flag (--now) | clock (no data)
    tenants: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    variants: tuple[str, ...] = ()

    def filters(self) -> dict[str, tuple[str, ...]]:
        return {
            "tenant_id": self.tenants,
            "agent": self.agents,
            "model": self.models,
            "variant": self.variants,
        }


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # text | int | usd | usd_unit (per request) | float | pct | time | ratio


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    total: tuple[Any, ...] | None = None
    note: str = ""

    def dicts(self) -> list[dict[str, Any]]:
        names = [c.name for c in self.columns]
        return [dict(zip(names, r, strict=True)) for r in self.rows]


class ReportError(FatalError):
    """A report cannot be produced (bad arguments, nothing to read); the message says why."""


def by_columns(by: Sequence[str]) -> list[str]:
    bad = [b for b in by if b not in DIMENSIONS]
    if bad:
        msg = f"--by: unknown {', '.join(bad)}; use any of {', '.join(DIMENSIONS)} (comma-separated)"
        raise ReportError(msg)
    return [DIMENSIONS[b] for b in dict.fromkeys(by)]


# --- time ---------------------------------------------------------------------


def newest_event_ms(client: Any) -> int | None:
    """End of the newest 1-minute LLM window: the data's "now"."""
    rows = client.query(
        "SELECT max(window_start), count() FROM cost_windows WHERE window_s = 60 AND category = 'llm'"
    ).result_rows
    newest, n = rows[0]
    if not n:
        return None
    return to_ms(newest) + MINUTE_MS


def available_grains(client: Any) -> tuple[int, ...]:
    """Window sizes (ms) present in `cost_windows`, coarsest first."""
    rows = client.query("SELECT DISTINCT window_s FROM cost_windows").result_rows
    grains = sorted((r[0] * 1000 for r in rows), reverse=True)
    return tuple(grains) or (MINUTE_MS,)


def segments(since_ms: int, until_ms: int, grains: Sequence[int]) -> list[tuple[int, int, int]]:
    """Tile [since, until) with (grain, start, end) pieces, coarsest grain first.

    A piece of grain g covers whole g-windows; what is left at either edge
    goes to the next finer grain; the finest grain takes the rest as is."""
    grains = sorted(grains, reverse=True)
    if since_ms >= until_ms:
        return []
    g, finer = grains[0], grains[1:]
    if not finer:
        return [(g, since_ms, until_ms)]
    lo = -(-since_ms // g) * g
    hi = until_ms // g * g
    if lo >= hi:
        return segments(since_ms, until_ms, finer)
    return [*segments(since_ms, lo, finer), (g, lo, hi), *segments(hi, until_ms, finer)]


# --- SQL helpers --------------------------------------------------------------


class Sql:
    """Collects WHERE conditions and their bound parameters."""

    def __init__(self) -> None:
        self.conditions: list[str] = []
        self.params: dict[str, Any] = {}

    def param(self, value: Any, type_: str) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f"{{{name}:{type_}}}"

    def filters(self, scope: Scope) -> None:
        for column, values in scope.filters().items():
            if values:
                self.conditions.append(f"{column} IN {self.param(list(values), 'Array(String)')}")

    def time_range(self, column: str, since_ms: int, until_ms: int) -> None:
        self.conditions.append(
            f"{column} >= fromUnixTimestamp64Milli({self.param(since_ms, 'Int64')}, 'UTC')"
            f" AND {column} < fromUnixTimestamp64Milli({self.param(until_ms, 'Int64')}, 'UTC')"
        )

    def windows(self, scope: Scope, grains: Sequence[int], max_grain_ms: int | None = None) -> None:
        usable = [g for g in grains if max_grain_ms is None or g <= max_grain_ms] or [MINUTE_MS]
        parts = []
        for g, lo, hi in segments(scope.since_ms, scope.until_ms, usable):
            inner = Sql()
            inner.params = self.params
            inner.time_range("window_start", lo, hi)
            parts.append(f"(window_s = {g // 1000} AND {inner.conditions[0]})")
        self.conditions.append("(" + (" OR ".join(parts) or "0") + ")")

    def where(self) -> str:
        return " AND ".join(self.conditions) or "1"


def run_query(client: Any, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    return client.query(sql, parameters=params).result_rows


def to_ms(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def per_request(amount: Decimal, requests: int) -> Decimal | None:
    return (amount / requests).quantize(PICO) if requests else None


def ratio(a: int | float | Decimal, b: int | float | Decimal) -> float | None:
    return float(a) / float(b) if b else None


def utc_minute(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
