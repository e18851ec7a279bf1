"""A report and its text and JSON forms: the tables one `judgeflow report` command read, how a value
of each column kind is shown, and the hourly series pivoted for a terminal. `flows.report` builds
reports from the command line; `flows.report_html` draws the same report as a page."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from flows.report_queries import MINUTE_MS, Column, Scope, Table

TEXT_CUT = 60  # characters of a text cell in text tables (`--full`: none)


@dataclass
class Report:
    name: str
    scope: Scope
    tables: list[Table]
    charts: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "report": self.name,
            "range": {
                "since": iso(self.scope.since_ms),
                "until": iso(self.scope.until_ms),
                "now": iso(self.scope.now_ms),
                "now_from": self.scope.now_from,
            },
            "filters": {k: list(v) for k, v in self.scope.filters().items() if v},
            "tables": {
                t.title: {
                    "columns": [c.name for c in t.columns],
                    "rows": [_json_row(t.columns, r) for r in t.rows],
                    "total": _json_row(t.columns, t.total) if t.total is not None else None,
                    "note": t.note,
                }
                for t in self.tables
            },
        }

    def to_text(self, cut: int | None = TEXT_CUT) -> str:
        s = self.scope
        since, until = iso(s.since_ms, text=True), iso(s.until_ms, text=True)
        origin = {
            "data": "the newest event time in the data",
            "flag": "--now",
            "clock": "the wall clock (no windows yet)",
        }
        head = [f"judgeflow report {self.name}: {since} -> {until} UTC (now = {origin[s.now_from]})"]
        filters = ", ".join(f"{k}={','.join(v)}" for k, v in s.filters().items() if v)
        if filters:
            head.append(f"filters: {filters}")
        parts = ["\n".join(head)]
        for t in self.tables:
            shown = _pivot_series(t) if t.title == "hourly" else t
            parts.append(format_table(shown, cut))
        return "\n\n".join(parts)


def format_value(kind: str, v: Any, cut: int | None = TEXT_CUT) -> str:
    if v is None or v == "":
        return "-" if v is None else ""
    if kind == "usd":
        return f"${v:,.4f}"
    if kind == "usd_unit":
        return f"${v:,.6f}"
    if kind == "int":
        return f"{v:,}"
    if kind == "float":
        return f"{v:,.1f}"
    if kind == "pct":
        return f"{v * 100:.1f}%"
    if kind == "ratio":
        return f"{v:.2f}x"
    if kind == "time":
        return iso(v, text=True)
    text = str(v)
    return text if cut is None or len(text) <= cut else text[: cut - 3] + "..."


def format_table(t: Table, cut: int | None = TEXT_CUT) -> str:
    header = [c.name for c in t.columns]
    body = [[format_value(c.kind, v, cut) for c, v in zip(t.columns, r, strict=True)] for r in t.rows]
    if t.total is not None and t.rows:
        body.append([format_value(c.kind, v, cut) for c, v in zip(t.columns, t.total, strict=True)])
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(header)]
    right = [c.kind != "text" for c in t.columns]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(cells, widths, right, strict=True)
        ).rstrip()

    out = [f"{t.title}", line(header), line(["-" * w for w in widths])]
    if not t.rows:
        out.append("(no rows)")
    for i, r in enumerate(body):
        if t.total is not None and i == len(body) - 1 and t.rows:
            out.append(line(["-" * w for w in widths]))
        out.append(line(r))
    if t.note:
        out.append(f"({t.note})")
    return "\n".join(out)


def _pivot_series(t: Table, max_keys: int = 6) -> Table:
    """Hourly rows as one line per hour: total, then the top groups side by side."""
    n_keys = len(t.columns) - 4
    if n_keys == 0:
        return t
    cost_by_key: dict[str, Decimal] = {}
    for r in t.rows:
        key = "/".join(str(v) for v in r[1 : 1 + n_keys])
        cost_by_key[key] = cost_by_key.get(key, Decimal(0)) + r[-2] + r[-1]
    keys = sorted(cost_by_key, key=lambda k: (-cost_by_key[k], k))
    shown, rest = keys[:max_keys], keys[max_keys:]
    hours: dict[int, dict[str, Decimal]] = {}
    for r in t.rows:
        key = "/".join(str(v) for v in r[1 : 1 + n_keys])
        slot = hours.setdefault(r[0], {})
        name = key if key in shown else "other"
        slot[name] = slot.get(name, Decimal(0)) + r[-2] + r[-1]
    names = [*shown, *(["other"] if rest else [])]
    rows = [
        (hour, sum(v.values(), Decimal(0)), *(v.get(k, Decimal(0)) for k in names))
        for hour, v in sorted(hours.items())
    ]
    return Table(
        "hourly",
        [Column("hour", "time"), Column("total_usd", "usd"), *(Column(k, "usd") for k in names)],
        rows,
        note="LLM + judge spend per hour, by " + "/".join(c.name for c in t.columns[1 : 1 + n_keys]),
    )


def _json_row(columns: Sequence[Column], row: Sequence[Any]) -> dict[str, Any]:
    return {c.name: _json_value(c.kind, v) for c, v in zip(columns, row, strict=True)}


def _json_value(kind: str, v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, Decimal):
        return str(v)  # exact: never a float
    if kind == "time":
        return iso(v)
    return v


def iso(ms: int, *, text: bool = False) -> str:
    d = datetime.fromtimestamp(ms / 1000, tz=UTC)
    if text:
        return d.strftime("%Y-%m-%d %H:%M" if ms % MINUTE_MS == 0 else "%Y-%m-%d %H:%M:%S")
    return d.isoformat(timespec="milliseconds").replace("+00:00", "Z")
