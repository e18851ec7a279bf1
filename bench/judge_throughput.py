"""Judge calls per second per worker, and CPU per call, through the official clients.

The local endpoint runs in a SEPARATE process (`start_endpoint_process`), so the
CPU measured here (this process's CPU time / calls) is the client side only:
the judge runtime's loop, the SDK, the transport, and — in the `flow` rows — a
Bytewax worker driving the judge operator. Every row is compared with a
blocking one-call-per-event baseline (the sync `openai` client, as a naive
`map` step would call it) measured in the same run.

    .venv/bin/python bench/judge_throughput.py                 # 200 ms and 1 s, all variants
    .venv/bin/python bench/judge_throughput.py --profile       # + where the CPU goes (cProfile)

Variants:
    baseline   sync openai client, one call at a time
    sdk        OpenAIJudge(raw=False): chat.completions.create + pydantic models, aiohttp transport
    raw        OpenAIJudge (default): client.post() with a msgspec body, msgspec-decoded answer
    anthropic  AnthropicJudge (default raw path, tool use)
    flow       raw, driven by the judge operator in a 1-worker Bytewax dataflow
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bytewax.operators as op
import openai
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from core.records import Event
from judges.anthropic_judge import AnthropicJudge
from judges.base import JudgeItem, LLMJudge
from judges.cascade import JudgePlan
from judges.openai_judge import OpenAIJudge
from judges.rubrics import build_prompt
from judges.rules import Tier0Rules
from judges.runtime import EndpointPolicy, JudgeRuntime, Outcome, Task
from operators.dedup import Candidate, ContentKeyer
from operators.judge import judge
from simulators.local_endpoint import EndpointConfig, start_endpoint_process
from sinks.memory_store import MemoryVerdictCache


@dataclass
class Row:
    latency_ms: int
    variant: str
    in_flight: int
    calls: int
    wall_s: float
    cpu_s: float
    server_cpu_s: float = 0.0

    @property
    def per_s(self) -> float:
        return self.calls / self.wall_s

    @property
    def cpu_ms(self) -> float:
        return self.cpu_s / self.calls * 1000

    @property
    def server_ms(self) -> float:
        return self.server_cpu_s / self.calls * 1000


def item(i: int) -> JudgeItem:
    # distinct content per call: nothing is deduplicated away
    return JudgeItem(
        f"Question {i}: how do I reset my password?", f"Answer {i}: open Settings, then Security."
    )


def cost(i: int, o: int) -> int:
    return 150_000 * i + 600_000 * o


def measure(fn: Callable[[], int], server_pid: int) -> tuple[int, float, float, float]:
    """(calls, wall s, this process's CPU s, the endpoint process's CPU s)."""
    s0, c0, t0 = _cpu_of(server_pid), time.process_time(), time.perf_counter()
    calls = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return calls, wall, cpu, _cpu_of(server_pid) - s0


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of another process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- baseline: one blocking call per event -----------------------------------------------


def baseline(url: str, n: int) -> int:
    with openai.OpenAI(api_key="bench", base_url=url, max_retries=0) as client:
        for i in range(n):
            p = build_prompt("toxicity", item(i))
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "system", "content": p.system}, {"role": "user", "content": p.user}],
                max_tokens=200,
            )
    return n


# --- the judge runtime, fed the way the operator feeds it ---------------------------------


def make_judge(variant: str, openai_url: str, anthropic_url: str, in_flight: int) -> LLMJudge:
    common = {"api_key": "bench", "tier": 1, "timeout_s": 60, "cost": cost, "max_connections": in_flight}
    if variant == "anthropic":
        return AnthropicJudge(model="claude-haiku-4-5", base_url=anthropic_url, **common)
    return OpenAIJudge(model="gpt-4o-mini", base_url=openai_url, raw=variant != "sdk", **common)


def run_runtime(rt: JudgeRuntime, n: int, offset: int, batch: int = 500) -> int:
    done = threading.Semaphore(0)
    errors: list[str] = []

    def on_done(o: Outcome) -> None:
        if o.verdict is None:
            errors.append(o.error)
        done.release()

    for start in range(0, n, batch):  # one submit per source batch, as the operator does
        rt.submit_many(
            [
                Task("toxicity", 1, item(offset + i), on_done=on_done)
                for i in range(start, min(n, start + batch))
            ]
        )
    for _ in range(n):
        done.acquire()
    if errors:
        raise RuntimeError(f"{len(errors)} judge errors, e.g. {errors[0]}")
    return n


def runtime_for(variant: str, urls: tuple[str, str], in_flight: int) -> JudgeRuntime:
    return JudgeRuntime(
        lambda: {1: make_judge(variant, *urls, in_flight)},
        max_in_flight=in_flight,
        policies={1: EndpointPolicy(max_in_flight=in_flight)},
    )


# --- the judge operator in a 1-worker Bytewax dataflow ----------------------------------


def candidates(n: int, offset: int, keyer: ContentKeyer) -> list[Candidate]:
    out = []
    for i in range(offset, offset + n):
        it = item(i)
        e = Event(
            f"e{i}", 1_795_000_000_000 + i, "acme", "support", "gpt-4.1", "openai", "baseline",
            it.input_text, it.output_text, None, 50, 20, 0, 0, 0, None, None, None, None, {}, None,
        )  # fmt: skip
        out.append(Candidate(e, keyer.content_hash(e), {}, ("toxicity",), inclusion_prob=1.0))
    return out


def run_flow(rt: JudgeRuntime, n: int, offset: int) -> int:
    keyer = ContentKeyer(lowercase=False, volatile_patterns=(), judge_version="bench")
    plan = JudgePlan({"toxicity": (1,)})
    flow = Dataflow("judge_bench")
    source = op.input("in", flow, TestingSource(candidates(n, offset, keyer), batch_size=500))
    out = judge(
        "judge",
        source,
        plan=plan,
        rules=Tier0Rules(),
        runtime=rt,
        cache=MemoryVerdictCache(max_entries=n, ttl_s=3600),
        keyer=keyer,
        now_ms=lambda: 0,
        eof_timeout_s=600,
    )
    got: list = []
    op.output("out", out.evaluations, TestingSink(got))
    run_main(flow)
    bad = [v for v in got if v.error]
    if len(got) != n or bad:
        raise RuntimeError(f"{len(got)} evaluations for {n} events, {len(bad)} errors")
    return n


# --- where the CPU goes ------------------------------------------------------------------


def profile_breakdown(stats: pstats.Stats, calls: int) -> list[tuple[str, float]]:
    """Own CPU time per package, in ms per call."""
    by: dict[str, float] = defaultdict(float)
    for (file, _, _), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        by[_package(file)] += tottime
    return sorted(((k, v / calls * 1000) for k, v in by.items()), key=lambda kv: -kv[1])


def _package(file: str) -> str:
    if "site-packages/" in file:
        return file.split("site-packages/")[1].split("/")[0]
    for mine in ("judges/", "operators/"):
        if f"/{mine}" in file:
            return "judgeflow " + mine.rstrip("/")
    if "/asyncio/" in file:
        return "asyncio"
    if file.startswith("~") or file.startswith("<"):
        return "builtins (C: sockets, json, select...)"
    return "stdlib other"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=6000, help="judge calls per row at 200 ms")
    ap.add_argument("--latencies", type=int, nargs="+", default=[200, 1000])
    ap.add_argument("--in-flight", type=int, nargs="+", default=[256])
    ap.add_argument("--variants", nargs="+", default=["sdk", "raw", "anthropic", "flow"])
    ap.add_argument("--profile", action="store_true", help="profile the raw and sdk variants at 200 ms")
    args = ap.parse_args()

    rows: list[Row] = []
    base: dict[int, Row] = {}
    for latency in args.latencies:
        with start_endpoint_process(EndpointConfig(latency=float(latency))) as ep:
            urls = (ep.openai_base_url, ep.anthropic_base_url)
            n_base = max(5, 3000 // latency)  # ~3 s of blocking calls
            pid = ep.proc.pid
            measured = measure(lambda: baseline(ep.openai_base_url, n_base), pid)  # noqa: B023
            base[latency] = Row(latency, "baseline (blocking)", 1, *measured)
            rows.append(base[latency])
            print(_fmt(base[latency], base[latency]), flush=True)
            for in_flight in args.in_flight if latency <= 200 else sorted({*args.in_flight, 1024}):
                n = max(in_flight * 8, int(args.calls * 200 / latency))  # >= 8 rounds of in-flight calls
                for variant in args.variants:
                    rt = runtime_for("raw" if variant == "flow" else variant, urls, in_flight)
                    try:
                        run_runtime(rt, min(n, 2 * in_flight), offset=10**8)  # warm the pool
                        offset = 10**6 * (len(rows) + 1)
                        work = run_flow if variant == "flow" else run_runtime
                        measured = measure(lambda: work(rt, n, offset), pid)  # noqa: B023
                    finally:
                        rt.close()
                    row = Row(latency, variant, in_flight, *measured)
                    rows.append(row)
                    print(_fmt(row, base[latency]), flush=True)
            if args.profile and latency == 200:
                for variant in ("sdk", "raw"):
                    _profile(variant, urls, args.in_flight[0], args.calls)

    print(f"\n{os.cpu_count()} CPUs; endpoint in its own process (its CPU is the last column)")
    print("| latency | variant | in flight | calls | calls/s | CPU ms/call | vs baseline | server ms/call |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(_fmt(r, base[r.latency_ms]))
    return 0


def _profile(variant: str, urls: tuple[str, str], in_flight: int, n: int) -> None:
    """cProfile on the runtime's loop thread, where the SDK, transport and parsing run."""
    rt = runtime_for(variant, urls, in_flight)
    prof = cProfile.Profile()
    try:
        run_runtime(rt, 2 * in_flight, offset=10**8 + 10**7)
        loop = rt._ensure_started()  # a benchmark may reach in to profile the loop thread
        _on_loop(loop, prof.enable)
        run_runtime(rt, n, offset=2 * 10**8)
        _on_loop(loop, prof.disable)
    finally:
        rt.close()
    stats = pstats.Stats(prof)
    total = sum(tt for (_, _, tt, _, _) in stats.stats.values()) / n * 1000  # type: ignore[attr-defined]
    print(f"\nwhere the CPU goes, variant {variant}, loop thread ({total:.2f} ms/call under cProfile,"
          " which inflates small functions); own time by package, ms per call:")  # fmt: skip
    for pkg, ms in profile_breakdown(stats, n)[:10]:
        print(f"  {pkg:42s} {ms:6.3f}  {ms / total:4.0%}")
    stats.sort_stats("tottime").print_stats(10)


def _on_loop(loop, fn: Callable[[], None]) -> None:
    done = threading.Event()
    loop.call_soon_threadsafe(lambda: (fn(), done.set()))
    done.wait()


def _fmt(r: Row, base: Row) -> str:
    return (
        f"| {r.latency_ms} ms | {r.variant} | {r.in_flight} | {r.calls} | {r.per_s:,.0f} | "
        f"{r.cpu_ms:.2f} | {r.per_s / base.per_s:,.0f}x | {r.server_ms:.2f} |"
    )


if __name__ == "__main__":
    sys.exit(main())
