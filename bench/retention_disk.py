"""ClickHouse disk per million events, per table, measured on the embedded engine (chdb).

The sample traffic (bench/_traffic.py: real arrival times and token counts,
cycled with fresh ids) runs through `build_flow` itself with the judges
answering from the local simulated endpoint, into a fresh chdb database; every
table is then merged (`OPTIMIZE ... FINAL`, what the background merges reach)
and its active parts measured in `system.parts`. The baseline is the default
config (no prompt or response text stored); the same run repeats with
`clickhouse.store_text = true`. The README's retention section quotes it.

    .venv/bin/python bench/retention_disk.py [--events 100000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bytewax.testing import TestingSource, run_main

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _traffic import messages, table

from flows.config import Settings, load_settings
from flows.deps import build_deps
from flows.judgeflow import build_flow
from simulators.local_endpoint import EndpointConfig, LocalEndpoint
from sinks.clickhouse import TABLES, connect

MB = 1_000_000


def settings_for(dsn: str, database: str, judge_url: str, *, store_text: bool) -> Settings:
    return load_settings(
        None,
        env={"OPENAI_API_KEY": "bench-key"},
        **{
            "clickhouse.dsn": dsn,
            "clickhouse.database": database,
            "clickhouse.store_text": store_text,
            "judges.tier1.base_url": judge_url,
        },
    )


def measure(settings: Settings, n: int) -> tuple[dict[str, tuple[int, int]], dict[int, int]]:
    """Run the flow over n events; table -> (rows, bytes on disk) after a final merge, and
    cost_windows rows per window size."""
    d = build_deps(settings)
    try:
        source = TestingSource(messages(n)[0], batch_size=1000)
        run_main(build_flow(settings, source=source, deps=d))
    finally:
        d.close()
    ch = settings.flow.clickhouse
    client = connect(ch.dsn, ch.database)
    for name in TABLES:
        client.command(f"OPTIMIZE TABLE {name} FINAL")
    rows = client.query(
        "SELECT table, sum(rows), sum(bytes_on_disk) FROM system.parts"
        " WHERE database = {db:String} AND active GROUP BY table",
        parameters={"db": ch.database},
    ).result_rows
    sizes = client.query("SELECT window_s, count() FROM cost_windows FINAL GROUP BY window_s").result_rows
    return {t: (int(r), int(b)) for t, r, b in rows}, {int(w): int(c) for w, c in sizes}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=100_000)
    args = p.parse_args()
    n = args.events
    per_m = 1_000_000 / n
    chdb_dir = tempfile.TemporaryDirectory(prefix="jf_disk_")
    results: dict[str, dict[str, tuple[int, int]]] = {}
    windows: dict[int, int] = {}
    with LocalEndpoint(EndpointConfig(latency=0.02, seed=7)) as ep:
        for label, store_text in (("default", False), ("store_text", True)):
            settings = settings_for(
                f"chdb://{chdb_dir.name}", f"disk_{label}", ep.openai_base_url, store_text=store_text
            )
            started = time.perf_counter()
            results[label], windows = measure(settings, n)
            print(f"{label}: {n} events in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    retention = load_settings(None, env={}).flow.retention
    kept = {**retention.table_days(), "cost_windows": retention.cost_windows_days}
    rows = []
    for name in TABLES:
        count, size = results["default"].get(name, (0, 0))
        text_size = results["store_text"].get(name, (0, 0))[1]
        rows.append(
            [
                name,
                f"{count * per_m:,.0f}",
                f"{size / max(count, 1):,.0f}",
                f"{size * per_m / MB:,.1f}",
                f"{text_size * per_m / MB:,.1f}",
                f"{kept[name]} d" if kept[name] else "kept",
            ]
        )
    total = sum(s for _, s in results["default"].values())
    total_text = sum(s for _, s in results["store_text"].values())
    rows.append(["all tables", "", "", f"{total * per_m / MB:,.1f}", f"{total_text * per_m / MB:,.1f}", ""])
    print(
        table(
            f"ClickHouse disk per 1M events (chdb, {n:,} events measured, after OPTIMIZE FINAL)",
            ["table", "rows per 1M events", "bytes/row", "MB (default)", "MB (store_text)", "retention"],
            rows,
        )
    )
    by_size = ", ".join(f"{w} s: {c * per_m:,.0f}" for w, c in sorted(windows.items()))
    print(f"cost_windows rows per 1M events by window size: {by_size}; only the smallest expire")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
