"""Content keying: the verdict cache's normalization (`ContentKeyer.normalize`) per text, with the
volatile tokens replaced by `re.sub` (the baseline: the pattern tried at every position) and by
`AnchoredSub` (tried only near its anchor literal), on the same texts in the same run.

Texts: the sample traffic's inputs and outputs (short chat turns, ~60-100 characters) and ~2 KB
outputs stitched from XSTest completions and the Presidio synthetic PII set (real third-party text,
with hyphens, dates and numbers), as `bench/rules_engines.py` stitches them. Both ways must give the
same normalized text for every one (checked); the table prints microseconds per text (best of
`--repeat`) and the whole content hash per event (input, output and context, as `dedup` keys an event).

    .venv/bin/python bench/content_key.py [--texts 2000] [--chars 2048] [--repeat 5]
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _traffic import messages, table
from rules_engines import english

from core.records import Event
from flows.config import CacheConfig
from operators.decode import decode_message
from operators.dedup import ContentKeyer
from operators.validate import DecodeLimits

LIMITS = DecodeLimits(earliest_ts_ms=0, max_future_ms=10**13, max_tokens=10**8, max_cost_pico=10**18)


class _PlainSub:
    """The baseline: `pattern.sub` over the whole text."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern

    def sub(self, text: str) -> str:
        return self.pattern.sub("\x00", text)


def keyers() -> dict[str, ContentKeyer]:
    cfg = CacheConfig()
    anchored = ContentKeyer(lowercase=False, volatile_patterns=cfg.volatile_patterns, judge_version="b")
    plain = ContentKeyer(lowercase=False, volatile_patterns=cfg.volatile_patterns, judge_version="b")
    assert anchored._volatile is not None and anchored._volatile.anchor is not None
    plain._volatile = _PlainSub(anchored._volatile.pattern)  # type: ignore[assignment]
    return {"re.sub (every position)": plain, "anchored (near each '-')": anchored}


def best(f: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def _per(times: list[float], n: int) -> list[str]:
    """µs per text of the baseline and the new way, and the speed-up."""
    return [f"{times[0] / n * 1e6:.2f}", f"{times[1] / n * 1e6:.2f}", f"{times[0] / times[1]:.1f}x"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--texts", type=int, default=2000)
    p.add_argument("--chars", type=int, default=2048, help="characters per stitched output")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()

    events = [e for m in messages(args.texts)[0] if isinstance(e := decode_message(m, LIMITS, 0), Event)]
    long_items = english(args.texts, args.chars, random.Random(7))
    sets = {
        "sample traffic, inputs": [e.input_text for e in events],
        "sample traffic, outputs": [e.output_text for e in events],
        f"~{args.chars} chars, XSTest + Presidio": [i.output_text for i in long_items],
    }
    ks = keyers()
    (base_name, base), (new_name, new) = ks.items()
    rows = []
    for name, texts in sets.items():
        mismatched = sum(base.normalize(t) != new.normalize(t) for t in texts)
        if mismatched:
            print(f"{name}: {mismatched} texts normalized differently", file=sys.stderr)
            return 1
        avg = sum(map(len, texts)) / len(texts)
        dash = sum("-" in t for t in texts) / len(texts)
        times = [best(lambda k=k, ts=texts: [k.normalize(t) for t in ts], args.repeat) for k in (base, new)]
        rows.append([name, f"{avg:,.0f}", f"{dash:.0%}", *_per(times, len(texts))])
    times = [best(lambda k=k: [k.content_hash(e) for e in events], args.repeat) for k in (base, new)]
    rows.append(["content hash per sample event", "", "", *_per(times, len(events))])
    header = ["texts", "chars (mean)", "with '-'", f"µs: {base_name}", f"µs: {new_name}", "speed-up"]
    print(table("normalize per text, best of the runs (same normalized text both ways)", header, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
