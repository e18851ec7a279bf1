"""The tumbling windows' state per key (`operators/tumbling.py`, used by the abuse, estimates and
savings steps): memory of final windows and the cost of a snapshot, against the old form in the
same run.

One key is fed a record a minute through the real logic and each user's real accumulator until it
holds `--windows` final minute windows and `--open` open ones (a few records each; the allowed
lateness keeps them open). Then:

- bytes per key: the pickled state (what bytewax writes to the recovery store at each snapshot)
  and the objects in memory (`sys.getsizeof`), with the final windows as the set of starts they
  were (old) and as bits (`FinalWindows`, new);
- µs per `snapshot()`: the old `copy.deepcopy` of the whole state (final windows as a set), the
  same deepcopy with the final windows as bits, and the new copy of the containers plus the
  user's `copy` of each open accumulator;
- µs per finalized window for the final-window bookkeeping alone: old set add plus a trim once it
  held > 2 x 1,440 entries, new bits add plus a trim on every advance.

    .venv/bin/python bench/tumbling_state.py [--windows 1440] [--open 3] [--repeat 5]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import pickle
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _traffic import table

from core.records import Evaluation, SavingsEntry
from operators import abuse, estimates, savings
from operators.sample_design import StratumCount
from operators.tumbling import _FORGOTTEN_HORIZON_MS, FinalWindows, _Spec, _TumblingLogic, _TumblingState

MIN = 60_000
T0 = 1_710_061_200_000  # 2024-03-10 09:00 UTC
RECORDS = 4  # per open window


def abuse_records(minute: int) -> list[Any]:
    ts = T0 + minute * MIN
    return [
        abuse.AbusePartial("acme", ts + i, 1, {(minute * RECORDS + i) * 2654435761: 1}, {f"user-{i}": 1})
        for i in range(RECORDS)
    ]


def estimates_records(minute: int) -> list[Any]:
    ts = T0 + minute * MIN
    out: list[Any] = [StratumCount("acme", "bot", ts, "s", 40, RECORDS, RECORDS / 40, (("pii", 3),))]
    for i in range(RECORDS):
        out.append(
            Evaluation(
                f"v-{minute}-{i}",
                f"e-{minute}-{i}",
                ts + i,
                "acme",
                "bot",
                "gpt-4o-mini",
                "baseline",
                "pii",
                0.0,
                "ok",
                "",
                "rules",
                0,
                False,
                RECORDS / 40,
                "h",
                0,
                0.0,
                stratum="s",
            )
        )
    return out


def savings_records(minute: int) -> list[Any]:
    ts = T0 + minute * MIN
    return [
        SavingsEntry("acme", ts + i, events=10, baseline_calls=30, baseline_pusd=3000, judge_calls=1)
        for i in range(RECORDS)
    ]


def savings_rows(key: str, start: int, acc: savings._Acc, version: int) -> list[Any]:
    assert acc.entry is not None
    row = savings.savings_row(start, MIN, acc.entry, "ref", version)
    savings._export(acc, row)
    return [row]


USERS: dict[str, tuple[Callable[[int], list[Any]], dict[str, Any]]] = {
    "abuse": (
        abuse_records,
        {
            "ts_of": lambda p: p.ts_ms,
            "new": abuse._Counts,
            "fold": abuse.fold,
            "rows": lambda k, s, acc, v: [abuse.abuse_row(k, s, MIN, acc, v)],
            "copy": abuse._Counts.copy,
        },
    ),
    "estimates": (
        estimates_records,
        {
            "ts_of": lambda v: v.window_start_ms if isinstance(v, StratumCount) else v.ts_ms,
            "new": estimates._Acc,
            "fold": lambda acc, v: estimates._fold(acc, v, MIN),
            "rows": lambda k, s, acc, v: [],
            "copy": estimates._Acc.copy,
        },
    ),
    "savings": (
        savings_records,
        {
            "ts_of": lambda x: x.ts_ms,
            "new": savings._Acc,
            "fold": savings.fold,
            "rows": savings_rows,
            "copy": savings._Acc.copy,
        },
    ),
}


def key_state(user: str, windows: int, open_: int) -> _TumblingLogic:
    records, fns = USERS[user]
    spec = _Spec(
        step_id=f"bench_{user}",
        key_of=lambda x: "acme",
        size_ms=MIN,
        lateness_ms=(open_ - 1) * MIN,
        idle_s=0.0,
        clock=lambda: 1000.0,
        **fns,
    )
    logic = _TumblingLogic(spec, None)
    for minute in range(windows + open_):
        logic.on_batch(records(minute))
    s = logic._s
    assert len(s.open) == open_, len(s.open)  # and the final ones of the last day
    return logic


def old_form(s: _TumblingState) -> _TumblingState:
    return dataclasses.replace(s, final=set(s.final))  # type: ignore[arg-type]


def in_memory(final: set[int] | FinalWindows) -> int:
    if isinstance(final, set):
        return sys.getsizeof(final) + sum(sys.getsizeof(f) for f in final)
    return sys.getsizeof(final) + sys.getsizeof(final.bits) + sys.getsizeof(final.base)


def best_us(fn: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def bookkeeping(days: int, repeat: int) -> tuple[float, float]:
    """µs per finalized minute window over `days` days: add it, trim to the horizon."""
    n = days * 1440

    def old() -> None:
        final: set[int] = set()
        for m in range(n):
            start = T0 + m * MIN
            final.add(start)
            if len(final) > 2 * 1440:
                final = {f for f in final if f >= start + MIN - _FORGOTTEN_HORIZON_MS}

    def new() -> None:
        final = FinalWindows(MIN)
        for m in range(n):
            start = T0 + m * MIN
            final.add(start)
            final.forget_before(start + MIN - _FORGOTTEN_HORIZON_MS)

    return best_us(old, 1, repeat) / n, best_us(new, 1, repeat) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=1440, help="final minute windows per key")
    ap.add_argument("--open", type=int, default=3, help="open windows per key")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--number", type=int, default=2000, help="snapshots per timing")
    ap.add_argument("--days", type=int, default=3, help="days of minutes for the bookkeeping timing")
    args = ap.parse_args()

    old_final = {T0 + m * MIN for m in range(args.windows)}
    new_final = FinalWindows(MIN)
    for start in sorted(old_final):
        new_final.add(start)
    memory = [
        [
            f"{args.windows:,} final windows",
            f"{len(pickle.dumps(old_final)):,}",
            f"{len(pickle.dumps(new_final)):,}",
            f"{in_memory(old_final):,}",
            f"{in_memory(new_final):,}",
        ]
    ]
    for user in USERS:
        s = key_state(user, args.windows, args.open)._s
        memory.append(
            [
                f"whole state, {user} ({len(s.final):,} final, {len(s.open)} open)",
                f"{len(pickle.dumps(old_form(s))):,}",
                f"{len(pickle.dumps(s)):,}",
                "",
                "",
            ]
        )
    print(
        table(
            f"Bytes per key: a day of minute windows ({RECORDS} records in each open one)",
            ["", "pickled, old (set)", "pickled, new (bits)", "in memory, old", "in memory, new"],
            memory,
        )
    )
    print()

    timings = []
    for user in USERS:
        logic = key_state(user, args.windows, args.open)
        old = old_form(logic._s)
        assert logic.snapshot() == copy.deepcopy(logic._s)
        t_old = best_us(lambda old=old: copy.deepcopy(old), max(args.number // 20, 1), args.repeat)
        t_bits = best_us(lambda s=logic._s: copy.deepcopy(s), max(args.number // 20, 1), args.repeat)
        t_new = best_us(logic.snapshot, args.number, args.repeat)
        timings.append([user, f"{t_old:,.1f}", f"{t_bits:,.1f}", f"{t_new:,.2f}", f"{t_old / t_new:,.0f}x"])
    print(
        table(
            f"µs per snapshot() of one key (a day of final minute windows, {args.open} open)",
            ["user", "old: deepcopy, set", "deepcopy, bits", "new: copy, bits", "speed-up"],
            timings,
        )
    )
    print()

    old_us, new_us = bookkeeping(args.days, args.repeat)
    print(
        table(
            f"µs per finalized minute window, add + trim to a day ({args.days} days of minutes)",
            ["old: set, trimmed past 2 x 1,440", "new: bits, trimmed on every advance"],
            [[f"{old_us:.3f}", f"{new_us:.3f}"]],
        )
    )


if __name__ == "__main__":
    main()
