"""Where the hot path's time goes: `build_flow` with ClickHouse sinks, judges off, under cProfile,
its own time (not counting callees) summed per stage by the file each function lives in (a builtin's
time — `re.sub`, `str.join`, a C extension's method — goes to the stage of its caller).

    .venv/bin/python bench/profile_stages.py [--events 20000] [--batch 1000] [--top 12] [--http]

By default the ClickHouse engine (chdb) runs inside this process; `--http` writes over HTTP to a
server in another process (the chdb HTTP front in a subprocess: the deployment shape), so the
worker pays only the client's side, and the time it waits for the server's answer shows as
"waiting for ClickHouse" (wall time, not this process's CPU). The sinks insert in line
(`clickhouse.write_behind = false`): cProfile sees only the worker's thread, and the default
write-behind sinks run the client on writer threads of their own.

cProfile adds a constant per Python call, so call-heavy stages look a little dearer than they are; the
shares are what to read. "bytewax" is the dataflow runtime itself (routing, state, the Python/Rust
boundary); "ClickHouse engine" is chdb executing the inserts in this process.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bytewax.testing import TestingSource, run_main

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _traffic import messages, table

from flows.config import load_settings
from flows.deps import build_deps

# (path fragment, stage): the first fragment found in a function's file names its stage
STAGES = [
    ("operators/decode.py", "decode"),
    ("operators/validate.py", "decode"),
    ("operators/otlp", "decode"),
    ("msgspec", "decode"),
    ("operators/redeliveries.py", "redeliveries"),
    ("operators/price.py", "price"),
    ("genai_prices", "price"),
    ("operators/windows.py", "cost windows"),
    ("operators/tumbling.py", "abuse, estimates, savings windows"),
    ("operators/abuse.py", "abuse, estimates, savings windows"),
    ("operators/expensive.py", "alerts"),
    ("operators/alert", "alerts"),
    ("operators/dedup.py", "keying + verdict cache"),
    ("operators/cache.py", "keying + verdict cache"),
    ("xxhash", "keying + verdict cache"),
    ("judges/rule", "tier-0 rules"),  # rules.py, rule_table.py, rule_checks.py
    ("hyperscan", "tier-0 rules"),
    ("operators/sample", "sample"),  # sample.py, sample_tally.py, sample_design.py
    ("operators/estimates.py", "abuse, estimates, savings windows"),
    ("operators/savings.py", "abuse, estimates, savings windows"),
    ("operators/event_time.py", "event time"),
    ("core/metrics.py", "metrics"),
    ("prometheus_client", "metrics"),
    ("sinks/clickhouse", "sinks (row building, client)"),
    ("clickhouse_connect", "sinks (row building, client)"),
    ("simulators/chdb_http.py", "ClickHouse engine"),
    ("socket.py", "waiting for ClickHouse (HTTP, not CPU)"),
    ("urllib3", "sinks (row building, client)"),
    ("http/client.py", "sinks (row building, client)"),
    ("chdb", "ClickHouse engine"),
    ("bytewax", "bytewax"),
    ("importlib", "start-up (imports, once)"),
    ("core/records.py", "records (constructing events, rows)"),
    ("copy.py", "snapshots (copying state)"),
]


def stage_of(filename: str, funcname: str) -> str:
    if filename == "~":  # a builtin: named like <method 'execute' of '_chdb.Connection' objects>
        if "chdb" in funcname:
            return "ClickHouse engine"
        return "builtins"
    for fragment, stage in STAGES:
        if fragment in filename:
            return stage
    return "other Python"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--top", type=int, default=12, help="stages shown (the rest summed)")
    p.add_argument("--http", action="store_true", help="ClickHouse over HTTP in another process")
    args = p.parse_args()

    from flows.judgeflow import build_flow
    from sinks.clickhouse import connect, ensure_schema

    msgs = messages(args.events)[0]
    with tempfile.TemporaryDirectory(prefix="jf_profile_") as chdb_dir, contextlib.ExitStack() as stack:
        if args.http:
            from simulators.chdb_http import start_chdb_http

            dsn = stack.enter_context(start_chdb_http(chdb_dir))
        else:
            dsn = f"chdb://{chdb_dir}"
        ensure_schema(connect(dsn, "prof"), "prof")  # as a restart finds it
        settings = load_settings(
            None,
            env={},
            **{
                "judges.enabled": False,
                "clickhouse.dsn": dsn,
                "clickhouse.database": "prof",
                # in line: cProfile sees only the worker's thread, not the sinks' writer threads
                "clickhouse.write_behind": False,
            },
        )
        deps = build_deps(settings)
        try:
            flow = build_flow(settings, source=TestingSource(msgs, batch_size=args.batch), deps=deps)
            prof = cProfile.Profile()
            cpu, wall = time.process_time(), time.perf_counter()
            prof.enable()
            run_main(flow)
            prof.disable()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        finally:
            deps.close()

    per_stage: dict[str, float] = defaultdict(float)
    stats = pstats.Stats(prof)
    for (filename, _line, funcname), (_cc, _nc, tottime, _ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        stage = stage_of(filename, funcname)
        if filename == "~" and stage != "ClickHouse engine" and callers:
            # a builtin (re.sub, str.join, a C extension's method) is the work of whoever called it
            for (c_file, _c_line, c_func), (_c_cc, _c_nc, c_tottime, _c_ct) in callers.items():
                per_stage[stage_of(c_file, c_func)] += c_tottime
            continue
        per_stage[stage] += tottime
    total = sum(per_stage.values())
    ranked = sorted(per_stage.items(), key=lambda kv: -kv[1])
    shown, rest = ranked[: args.top], ranked[args.top :]
    if rest:
        shown.append(("(the rest)", sum(t for _, t in rest)))
    where = "over HTTP, server in another process" if args.http else "chdb engine in this process"
    rows = [[name, f"{t / args.events * 1e6:,.1f}", f"{t / total:.0%}"] for name, t in shown]
    rows.append(["total (under cProfile)", f"{total / args.events * 1e6:,.1f}", "100%"])
    print(
        table(
            f"build_flow with ClickHouse sinks ({where}), judges off: {args.events:,} events, batches of "
            f"{args.batch}; own time per stage under cProfile",
            ["stage", "µs/event", "share"],
            rows,
        )
    )
    print(
        f"\nthis process under cProfile: {wall / args.events * 1e6:,.1f} µs/event wall clock, "
        f"{cpu / args.events * 1e6:,.1f} µs/event CPU"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
