"""What an alert rule is: its levels (warn < critical < emergency), how a reading steps them (with
hysteresis on the way down), and the money helpers the rules share. The rules themselves:
`operators.alert_rules`."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property
from typing import Any, ClassVar

from core.records import LEVELS, PICO_PER_USD, RANK
from operators.alert_state import TenantLedger

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
NANO = Decimal("0.000000001")


def usd(pico: int) -> Decimal:
    return Decimal(pico) / PICO_PER_USD


def dec(x: Decimal) -> str:
    """A decimal as plain digits (never `1E-7`), for alert details."""
    return format(x, "f")


def money(x: Decimal) -> str:
    return f"${x:,.2f}" if x >= 1 or x == 0 else f"${x:.4f}".rstrip("0")


@dataclass(frozen=True, slots=True)
class Reading:
    """One rule's value for one scope at one evaluation time.

    `value` None means "not enough data": the level is held.
    """

    scope: str
    value: Decimal | None
    start_ms: int
    details: Callable[[], dict[str, Any]] = dict  # built only when the level changes
    note: str = ""  # added to the message of a level other than ok (e.g. who drives it)


@dataclass(frozen=True)
class Rule:
    """Levels shared by every rule; subclasses add what they measure."""

    name: ClassVar[str] = ""
    what: ClassVar[str] = ""
    runbook: ClassVar[str] = ""

    warn: Decimal | None = None
    critical: Decimal | None = None
    emergency: Decimal | None = None

    @cached_property
    def levels(self) -> tuple[tuple[str, Decimal], ...]:
        """(level, threshold) of the levels that are set, lowest first."""
        return tuple((lv, t) for lv in LEVELS[1:] if (t := getattr(self, lv)) is not None)

    @property
    def enabled(self) -> bool:
        return bool(self.levels)

    def threshold(self, level: str) -> Decimal | None:
        return getattr(self, level, None) if level != "ok" else None

    def lookback_ms(self) -> int:
        """How much history (event time before `end`) the rule reads."""
        return HOUR_MS

    def next_level(self, current: str, value: Decimal | None, hysteresis: Decimal, deescalate: bool) -> str:
        """The level after reading `value`, with hysteresis on the way down.

        Up: the highest level whose threshold `value` reaches. Down: only once
        `value` is below threshold x (1 - hysteresis) — of the lowest level
        (the alert resolves from its peak), or with `deescalate` step by step.
        """
        if value is None:
            return current
        enabled = self.levels
        raw = "ok"
        for lv, t in enabled:
            if value >= t:
                raw = lv
        if RANK[raw] >= RANK[current]:
            return raw
        keep = 1 - hysteresis
        if not deescalate:
            lowest = enabled[0][1] if enabled else None
            return current if lowest is not None and value >= lowest * keep else "ok"
        held = "ok"
        for lv, t in enabled:
            if RANK[lv] <= RANK[current] and value >= t * keep:
                held = lv
        return held

    def evaluate(self, led: TenantLedger, end_ms: int) -> list[Reading]:
        raise NotImplementedError

    def readings(self, led: TenantLedger, end_ms: int, levelled: AbstractSet[str]) -> list[Reading]:
        """What an evaluation steps the levels with: `evaluate`'s readings. A rule with a reading per
        scope may leave out the scopes that are not in `levelled` (the scopes of this rule with a level
        other than ok) and whose reading cannot raise a level: reading them would change nothing."""
        return self.evaluate(led, end_ms)

    def show(self, value: Decimal) -> str:
        """A value or threshold with its unit, short (the message says what it measures)."""
        return f"{value:.2f}"

    def describe(self) -> str:
        """What the rule measures, as the alert message says it."""
        return self.what

    def runbook_for(self, tenant: str, scope: str) -> str:
        return self.runbook.format(tenant=shlex.quote(tenant), agent=shlex.quote(scope or "ALL"))
