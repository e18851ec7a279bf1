"""The `--html` report: one self-contained page (inline CSS and SVG; no
scripts, fonts or anything fetched from elsewhere) with the cost over time
per tenant, the alerts timeline, the variant comparison and every table.

Charts plot floats; every amount printed on the page (tables, labels,
legends) comes from the exact decimals of the report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from html import escape
from typing import Any

from flows.report_format import Report, format_value
from flows.report_queries import Table

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")
LEVEL_COLORS = {"ok": "#d9ead3", "warn": "#f6c142", "critical": "#f28e2b", "emergency": "#d62728"}
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1100px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.meta{color:#666}.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:18px}.card span{color:#666;font-size:12px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}
th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:left;white-space:nowrap}
td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.total td{font-weight:600;border-top:1px solid #999}
.note{color:#666;font-size:12px}svg{display:block;margin:6px 0}
svg text{font:11px system-ui,sans-serif;fill:#333}
"""


def render_html(report: Report) -> str:

    tables = {t.title: t for t in report.tables}
    s = report.scope
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>judgeflow cost report {escape(_day(s.since_ms))} - {escape(_day(s.until_ms))}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>judgeflow cost report</h1>",
        f'<p class="meta">{escape(_when(s.since_ms))} to {escape(_when(s.until_ms))} UTC (event time; now = '
        f"{escape(_origin(s.now_from))}). Generated {escape(_when(_now_ms()))} UTC.</p>",
    ]
    filters = ", ".join(f"{k}: {', '.join(v)}" for k, v in s.filters().items() if v)
    if filters:
        out.append(f'<p class="meta">Filters: {escape(filters)}</p>')

    cost = tables.get("cost")
    if cost is not None and cost.total is not None:
        total = dict(zip([c.name for c in cost.columns], cost.total, strict=True))
        n_alerts = len(tables["alerts"].rows) if "alerts" in tables else 0
        cards = [
            ("total spend", format_value("usd", total["total_usd"])),
            ("LLM spend", format_value("usd", total["cost_usd"])),
            ("judge spend", format_value("usd", total["judge_cost_usd"])),
            ("requests", format_value("int", total["requests"])),
            ("cost / request", format_value("usd_unit", total["cost_per_request_usd"])),
            ("unpriced requests", format_value("int", total["unpriced_requests"])),
            ("alert transitions", format_value("int", n_alerts)),
        ]
        out.append('<div class="cards">')
        out.extend(f"<div class='card'><b>{escape(v)}</b><span>{escape(k)}</span></div>" for k, v in cards)
        out.append("</div>")

    series = report.charts.get("series")
    if series is not None:
        bucket_min = report.charts["bucket_ms"] // 60_000
        out.append(
            f"<h2>Cost over time per tenant</h2><p class='note'>LLM + judge spend per {bucket_min} min</p>"
        )
        out.append(cost_chart(series, s.since_ms, s.until_ms, report.charts["bucket_ms"]))
    for title in ("cost", "cost_detail"):
        if title in tables:
            out.append(
                f"<h2>{'Cost by tenant' if title == 'cost' else 'Cost by tenant, agent, model, variant'}</h2>"
            )
            out.append(html_table(tables[title]))

    if "alerts" in tables:
        out.append("<h2>Alerts timeline</h2>")
        out.append(alerts_chart(tables["alerts"], s.since_ms, s.until_ms))
        out.append(html_table(tables["alerts"]))

    if "variants" in tables:
        out.append("<h2>Variant comparison</h2>")
        out.append(variants_chart(tables["variants"]))
        out.append(html_table(tables["variants"]))
        if "quality" in tables:
            out.append("<h3>Judged quality</h3>")
            out.append(html_table(tables["quality"]))

    titles = {
        "budget": "Month to date vs budget",
        "top": "Most expensive requests",
        "tokens": "Tokens per request",
        "hourly": "Hourly cost",
        "pricing": "Models without a price",
        "abuse": "Abuse signals: repeated prompts and single users, per tenant",
        "abuse_windows": "Abuse signals: the windows with the highest shares",
    }
    for title, heading in titles.items():
        if title in tables:
            out.append(f"<h2>{heading}</h2>")
            if title == "budget":
                out.append(budget_chart(tables[title]))
            out.append(html_table(tables[title]))
    out.append("</body></html>")
    return "\n".join(out)


# --- tables ---------------------------------------------------------------------


def html_table(t: Table) -> str:

    head = "".join(f"<th>{escape(c.name)}</th>" for c in t.columns)
    rows = []
    for r, cls in [
        *((r, "") for r in t.rows),
        *([(t.total, "total")] if t.total is not None and t.rows else []),
    ]:
        cells = "".join(
            f"<td{' class=n' if c.kind != 'text' else ''}>{escape(format_value(c.kind, v, cut=None))}</td>"
            for c, v in zip(t.columns, r, strict=True)
        )
        rows.append(f"<tr class='{cls}'>{cells}</tr>" if cls else f"<tr>{cells}</tr>")
    if not t.rows:
        rows.append(f"<tr><td colspan='{len(t.columns)}'>(no rows)</td></tr>")
    note = f"<p class='note'>{escape(t.note)}</p>" if t.note else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{note}"


# --- charts ---------------------------------------------------------------------

W, H = 1000, 320
LEFT, RIGHT, TOP, BOTTOM = 70, 170, 16, 34


def cost_chart(series: Table, since_ms: int, until_ms: int, bucket_ms: int) -> str:
    """One line per tenant: spend per bucket over the whole range (empty buckets are zero)."""
    by_tenant: dict[str, dict[int, float]] = {}
    totals: dict[str, Decimal] = {}
    for start, tenant, _requests, usd, judge_usd in series.rows:
        by_tenant.setdefault(tenant, {})[start] = float(usd + judge_usd)
        totals[tenant] = totals.get(tenant, Decimal(0)) + usd + judge_usd
    if not by_tenant:
        return "<p class='note'>(no spend in this range)</p>"
    first = since_ms // bucket_ms * bucket_ms
    buckets = list(range(first, until_ms, bucket_ms))
    tenants = sorted(by_tenant, key=lambda t: -totals[t])
    y_max, ticks = _ticks(max(max(v.values()) for v in by_tenant.values()))
    x = _scale(since_ms, until_ms, LEFT, W - RIGHT)
    y = _scale(0, y_max, H - BOTTOM, TOP)
    parts = [
        _svg_open(W, H, "cost over time per tenant"),
        *_y_axis(ticks, y, "$"),
        *_x_axis(since_ms, until_ms, x),
    ]
    for i, tenant in enumerate(tenants):
        color = PALETTE[i % len(PALETTE)]
        values = by_tenant[tenant]
        points = " ".join(f"{x(b + bucket_ms / 2):.1f},{y(values.get(b, 0.0)):.1f}" for b in buckets)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{points}"/>')
        ly = TOP + 14 + 18 * i
        parts.append(f'<rect x="{W - RIGHT + 14}" y="{ly - 9}" width="12" height="10" fill="{color}"/>')
        label = f"{tenant} ${totals[tenant]:,.2f}"
        parts.append(f'<text x="{W - RIGHT + 30}" y="{ly}">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def alerts_chart(alerts: Table, since_ms: int, until_ms: int) -> str:
    """One lane per (tenant, rule, scope): the level held over time, a dot per transition."""
    lanes: dict[str, list[tuple[int, str, str]]] = {}
    for ts, tenant, rule, scope, previous, level, _value, _threshold, message in alerts.rows:
        label = f"{tenant} · {rule}" + (f" · {scope}" if scope else "")
        lanes.setdefault(label, []).append((ts, level, f"{_when(ts)} {previous} → {level}: {message}"))
    if not lanes:
        return "<p class='note'>(no alerts in this range)</p>"
    lane_h, left = 24, 230
    height = TOP + BOTTOM + lane_h * len(lanes) + 20
    x = _scale(since_ms, until_ms, left, W - 20)
    parts = [_svg_open(W, height, "alerts timeline"), *_x_axis(since_ms, until_ms, x, y0=height - BOTTOM)]
    for i, (label, changes) in enumerate(sorted(lanes.items())):
        top = TOP + i * lane_h
        parts.append(f'<text x="4" y="{top + 15}">{escape(label)}</text>')
        changes.sort()
        for j, (ts, level, title) in enumerate(changes):
            end = changes[j + 1][0] if j + 1 < len(changes) else until_ms
            x0, x1 = x(max(ts, since_ms)), x(min(end, until_ms))
            if level != "ok" and x1 > x0:
                parts.append(
                    f'<rect x="{x0:.1f}" y="{top + 4}" width="{max(x1 - x0, 1):.1f}" height="{lane_h - 8}"'
                    f' fill="{LEVEL_COLORS.get(level, "#999")}" opacity="0.85"/>'
                )
            color = LEVEL_COLORS.get(level, "#999")
            parts.append(
                f'<circle cx="{x0:.1f}" cy="{top + lane_h / 2}" r="4" fill="{color}" stroke="#333">'
                f"<title>{escape(title)}</title></circle>"
            )
    legend_y = height - 6
    for i, (level, color) in enumerate(LEVEL_COLORS.items()):
        parts.append(f'<rect x="{left + 110 * i}" y="{legend_y - 9}" width="12" height="10" fill="{color}"/>')
        parts.append(f'<text x="{left + 110 * i + 16}" y="{legend_y}">{level}</text>')
    parts.append("</svg>")
    return "".join(parts)


def variants_chart(variants: Table) -> str:
    """Cost per request of every variant, grouped (e.g. per agent), with the ratio to the baseline."""
    names = [c.name for c in variants.columns]
    i_variant = names.index("variant")
    i_cpr, i_ratio, i_tpr = (
        names.index("cost_per_request_usd"),
        i_variant + 4,
        names.index("tokens_per_request"),
    )
    rows = [r for r in variants.rows if r[i_cpr] is not None]
    if not rows:
        return "<p class='note'>(no requests in this range)</p>"
    bar_h, left = 20, 300
    height = TOP + BOTTOM + bar_h * len(rows) + 12 * len({tuple(r[:i_variant]) for r in rows})
    top_value = max(float(r[i_cpr]) for r in rows)
    x_max, ticks = _ticks(top_value)
    x = _scale(0, x_max, left, W - 140)
    parts = [_svg_open(W, height, "cost per request by variant")]
    for t in ticks:
        parts.append(
            f'<line x1="{x(t):.1f}" y1="{TOP}" x2="{x(t):.1f}" y2="{height - BOTTOM}" stroke="#eee"/>'
        )
        parts.append(
            f'<text x="{x(t):.1f}" y="{height - BOTTOM + 14}" text-anchor="middle">${_short(t)}</text>'
        )
    yy, group = TOP, None
    colors: dict[str, str] = {}
    for r in rows:
        g = tuple(r[:i_variant])
        if g != group:
            group = g
            yy += 12
        variant = r[i_variant]
        color = colors.setdefault(variant, PALETTE[len(colors) % len(PALETTE)])
        label = " / ".join(str(v) for v in (*g, variant))
        cpr = float(r[i_cpr])
        ratio = r[i_ratio]
        extra = f" ({ratio:.2f}x)" if ratio is not None else ""
        shown = f"${r[i_cpr]:.6f}{extra}"  # from the exact decimal
        parts.append(f'<text x="{left - 6}" y="{yy + 14}" text-anchor="end">{escape(label)}</text>')
        width = max(x(cpr) - left, 1)
        parts.append(
            f'<rect x="{left}" y="{yy + 3}" width="{width:.1f}" height="{bar_h - 6}" fill="{color}">'
            f"<title>{escape(label)}: {r[i_tpr]:,.0f} tokens per request</title></rect>"
        )
        parts.append(f'<text x="{x(cpr) + 4:.1f}" y="{yy + 14}">{escape(shown)}</text>')
        yy += bar_h
    parts.append("</svg>")
    return "".join(parts)


def budget_chart(budget: Table) -> str:
    """Month-to-date and projected spend as a share of each budget."""
    names = [c.name for c in budget.columns]
    n_keys = names.index("mtd_cost_usd")
    rows = [r for r in budget.rows if r[names.index("budget_usd")]]
    if not rows:
        return ""
    bar_h, left = 22, 200
    height = TOP + BOTTOM + bar_h * len(rows)
    top_share = max(1.0, *(r[names.index("projected_share")] or 0 for r in rows))
    x = _scale(0, top_share, left, W - 140)
    parts = [_svg_open(W, height, "budget use")]
    parts.append(
        f'<line x1="{x(1):.1f}" y1="{TOP}" x2="{x(1):.1f}" y2="{height - BOTTOM}" stroke="#d62728"/>'
    )
    parts.append(f'<text x="{x(1):.1f}" y="{height - BOTTOM + 14}" text-anchor="middle">budget</text>')
    for i, r in enumerate(rows):
        yy = TOP + i * bar_h
        used, projected = r[names.index("used")] or 0, r[names.index("projected_share")] or 0
        label = " / ".join(str(v) for v in r[:n_keys]) or "total"
        parts.append(f'<text x="{left - 6}" y="{yy + 15}" text-anchor="end">{escape(label)}</text>')
        parts.append(
            f'<rect x="{left}" y="{yy + 4}" width="{x(projected) - left:.1f}" height="14" fill="#c6dbef"/>'
        )
        parts.append(
            f'<rect x="{left}" y="{yy + 4}" width="{x(used) - left:.1f}" height="14" fill="#4e79a7"/>'
        )
        end = x(max(used, projected)) + 4
        parts.append(f'<text x="{end:.1f}" y="{yy + 15}">{used:.0%} used, {projected:.0%} projected</text>')
    parts.append("</svg>")
    return "".join(parts)


# --- SVG helpers ----------------------------------------------------------------


def _svg_open(width: int, height: float, label: str) -> str:
    return (
        f'<svg width="{width}" height="{height:.0f}"'
        f' viewBox="0 0 {width} {height:.0f}" role="img" aria-label="{escape(label)}">'
    )


def _scale(d0: float, d1: float, r0: float, r1: float):  # -> Callable[[float], float]
    span = (d1 - d0) or 1

    def f(v: float) -> float:
        return r0 + (float(v) - d0) / span * (r1 - r0)

    return f


def _ticks(top: float, n: int = 5) -> tuple[float, list[float]]:
    """A rounded axis maximum and evenly spaced ticks up to it."""
    if top <= 0:
        return 1.0, [0.0, 0.5, 1.0]
    raw = top / n
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    count = math.ceil(top / step)
    return step * count, [step * i for i in range(count + 1)]


def _y_axis(ticks: Sequence[float], y: Any, unit: str) -> list[str]:
    out = []
    for t in ticks:
        out.append(f'<line x1="{LEFT}" y1="{y(t):.1f}" x2="{W - RIGHT}" y2="{y(t):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{unit}{_short(t)}</text>')
    return out


def _x_axis(since_ms: int, until_ms: int, x: Any, y0: float = H - BOTTOM) -> list[str]:
    span = until_ms - since_ms
    step = next(
        (s for s in (300_000, 900_000, 3_600_000, 3 * 3_600_000, 6 * 3_600_000, 86_400_000) if span / s <= 8),
        7 * 86_400_000,
    )
    out = [f'<line x1="{x(since_ms):.1f}" y1="{y0}" x2="{x(until_ms):.1f}" y2="{y0}" stroke="#999"/>']
    t = -(-since_ms // step) * step
    while t <= until_ms:
        fmt = "%H:%M" if step < 86_400_000 else "%m-%d"
        label = datetime.fromtimestamp(t / 1000, tz=UTC).strftime(fmt)
        out.append(f'<line x1="{x(t):.1f}" y1="{y0}" x2="{x(t):.1f}" y2="{y0 + 4}" stroke="#999"/>')
        out.append(f'<text x="{x(t):.1f}" y="{y0 + 16}" text-anchor="middle">{label}</text>')
        t += step
    return out


def _short(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}".rstrip("0").rstrip(".")
    return f"{Decimal(repr(v)).normalize():f}"


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d")


def _origin(now_from: str) -> str:
    return {"data": "newest event time in the data", "flag": "--now", "clock": "wall clock"}[now_from]


def _now_ms() -> int:
    return int(datetime.now(tz=UTC).timestamp() * 1000)
