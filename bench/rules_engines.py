"""Tier-0 rule engines side by side: us/event, events/s and agreement, on the same texts.

- `re table v1 (ASCII)`: the rules before this comparison (bench/_rules_v1.py): one hand-tuned
  `re` table over ASCII bytes, blind outside English — the baseline;
- `re, every row`: today's table (with the German, French, Spanish, Russian and Chinese packs),
  every row's own pattern on every event (`Tier0Rules(engine="re")`);
- `hyperscan prefilter + re confirm` (the default, `engine="hyperscan"`): one Hyperscan database
  per view of the rows' whole patterns in prefilter mode (lookarounds dropped, a superset), UTF-8
  with Unicode classes; one scan names the rows that can match, `re` and the checks confirm them;
  rows with their own prefilter (digit runs, token runs) skip the scan;
- `hyperscan literals + re confirm`: Hyperscan on the literals each row needs instead (read off
  the row's parse tree; quicker to compile, more rows to confirm);
- `RE2 set + re confirm`: the same with a `google-re2` Set per view (each row's pattern with its
  lookarounds and Unicode word boundaries dropped, a superset as RE2 cannot express them);
- `Aho-Corasick + re confirm`: a `pyahocorasick` automaton of the literals each row needs
  (rows without one, such as the number formats, always run).

Agreement: the share of events whose flags equal the `re, every row` reference; and, on the
English traffic, with the v1 table (the same English rules, so the same flags but for texts
with non-ASCII letters where v1 read `?`). Texts: ~2 KB outputs stitched from XSTest
completions (30% with a Presidio PII sentence) with XSTest prompts as inputs; and the
multilingual fixture (tests/fixtures/tier0_multilingual.jsonl) stitched to ~2 KB on both sides:
all of it (dense in hits: most sentences are toxic or injections, the worst case) and its benign
texts only (many with look-alike words). CPU time, best of --repeat rounds (engines interleaved).

    .venv/bin/python bench/rules_engines.py [--events 1000] [--chars 2048] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from re import _constants as sre
from re import _parser as sre_parse
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _rules_v1
from _traffic import table

from judges.base import JudgeItem
from judges.rule_table import RULES, Rule
from judges.rules import Tier0Rules, _Texts
from simulators.traffic import shared_data_dir

ROOT = Path(__file__).resolve().parents[1]


# --- the texts -------------------------------------------------------------------------------


def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def english(n: int, chars: int, rng: random.Random) -> list[JudgeItem]:
    data = shared_data_dir() / "labeled"
    xs = _jsonl(data / "xstest_completions_human_labeled.jsonl.gz")
    pii = [r["full_text"] for r in _jsonl(data / "presidio_synth_pii_v2.jsonl")]
    items = []
    for _ in range(n):
        o = ""
        while len(o) < chars:
            o += rng.choice(xs)["completion"] + "\n"
            if rng.random() < 0.3:
                o += rng.choice(pii) + "\n"
        items.append(JudgeItem(rng.choice(xs)["prompt"], o[:chars]))
    return items


def multilingual(n: int, chars: int, rng: random.Random, labels: tuple[str, ...] = ()) -> list[JudgeItem]:
    rows = _jsonl(ROOT / "tests" / "fixtures" / "tier0_multilingual.jsonl")
    texts = [r["text"] for r in rows if not labels or r["label"] in labels]

    def stitch() -> str:
        s = ""
        while len(s) < chars:
            s += rng.choice(texts) + " "
        return s[:chars]

    return [JudgeItem(stitch(), stitch()) for _ in range(n)]


# --- RE2 and Aho-Corasick prefilters (bench only) ---------------------------------------------


def _class_item(op: Any, av: Any, unicode: bool) -> str | None:
    if op is sre.LITERAL:
        c = chr(av)
        return "\\" + c if c in "\\]^-[" else (c if c.isprintable() and c != " " else f"\\x{{{av:x}}}")
    if op is sre.RANGE:
        return f"\\x{{{av[0]:x}}}-\\x{{{av[1]:x}}}"
    if op is sre.CATEGORY:
        if not unicode:
            return {sre.CATEGORY_DIGIT: r"\d", sre.CATEGORY_WORD: r"\w", sre.CATEGORY_SPACE: r"\s"}.get(av)
        return {sre.CATEGORY_DIGIT: r"\p{Nd}", sre.CATEGORY_WORD: r"\p{L}\p{N}_",
                sre.CATEGORY_SPACE: r"\s\p{Z}\x{1c}-\x{1f}\x{85}"}.get(av)  # fmt: skip
    return None


_CATEGORY = {
    sre.CATEGORY_DIGIT: (r"\d", r"\p{Nd}"),
    sre.CATEGORY_NOT_DIGIT: (r"\D", r"\P{Nd}"),
    sre.CATEGORY_WORD: (r"\w", r"[\p{L}\p{N}_]"),
    sre.CATEGORY_NOT_WORD: (r"\W", r"[^\p{L}\p{N}_]"),
    sre.CATEGORY_SPACE: (r"\s", r"[\s\p{Z}\x{1c}-\x{1f}\x{85}]"),
    sre.CATEGORY_NOT_SPACE: (r"\S", r"(?s:.)"),
}
_ANY = "(?s:.)"


def _re2(items: Any, unicode: bool) -> str:
    """The parse tree of a Python pattern as RE2 syntax, lookarounds and (Unicode) word
    boundaries dropped: RE2 matches a superset of what the pattern matches."""
    out = []
    for op, av in items:
        if op is sre.LITERAL:
            c = chr(av)
            out.append(re.escape(c) if c in ".^$*+?()[]{}|\\/-" else (c if c != " " else "[ ]"))
        elif op is sre.NOT_LITERAL:
            out.append(f"[^\\x{{{av:x}}}]")
        elif op is sre.ANY:
            out.append(_ANY)
        elif op is sre.IN:
            negate = av and av[0][0] is sre.NEGATE
            parts = [_class_item(o, a, unicode) for o, a in (av[1:] if negate else av)]
            if None in parts or (negate and unicode and any(o is sre.CATEGORY for o, _ in av)):
                out.append(_ANY)  # a class RE2 cannot say the same way: anything
            else:
                out.append("[" + ("^" if negate else "") + "".join(parts) + "]")  # type: ignore[arg-type]
        elif op is sre.BRANCH:
            out.append("(?:" + "|".join(_re2(b, unicode) for b in av[1]) + ")")
        elif op is sre.SUBPATTERN:
            _, add, _, sub = av
            inner = _re2(sub, unicode)
            out.append(f"(?i:{inner})" if add & re.IGNORECASE else f"(?:{inner})")
        elif op is sre.ATOMIC_GROUP:
            out.append(f"(?:{_re2(av, unicode)})")
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            lo, hi, sub = av
            hi_s = "" if hi is sre.MAXREPEAT else str(hi)
            out.append(f"(?:{_re2(sub, unicode)}){{{lo},{hi_s}}}")
        elif op is sre.AT:
            if av is sre.AT_BEGINNING_STRING or av is sre.AT_BEGINNING:
                out.append(r"\A")
            elif av is sre.AT_END_STRING:
                out.append(r"\z")
            elif av is sre.AT_END:
                out.append(r"(?:\n?\z)")
            elif av is sre.AT_BOUNDARY and not unicode:
                out.append(r"\b")
            # Unicode \b, \B: dropped (RE2's are ASCII)
        elif op in (sre.ASSERT, sre.ASSERT_NOT):
            pass  # lookarounds: dropped
        else:
            msg = f"no RE2 form for {op}"
            raise ValueError(msg)
    return "".join(out)


def to_re2(pattern: re.Pattern[str]) -> str:
    unicode = not pattern.flags & re.ASCII
    body = _re2(sre_parse.parse(pattern.pattern, pattern.flags), unicode)
    return ("(?i)" if pattern.flags & re.IGNORECASE else "") + body


def _required(items: Any) -> set[str] | None:
    """Strings one of which every match of the parsed pattern `items` contains
    (the longest such set found), or None."""
    best: set[str] | None = None
    run = ""

    def better(found: set[str] | None) -> None:
        nonlocal best
        if found and (best is None or min(map(len, found)) > min(map(len, best))):
            best = found

    for op, av in items:
        if op is sre.LITERAL:
            run += chr(av)
            continue
        if op in (sre.AT, sre.ASSERT, sre.ASSERT_NOT):
            continue  # zero-width: the literal run goes on around it
        better({run} if run else None)
        run = ""
        if op is sre.SUBPATTERN:
            better(_required(av[3]))
        elif op is sre.ATOMIC_GROUP:
            better(_required(av))
        elif op is sre.BRANCH:
            branches = [_required(b) for b in av[1]]
            if all(branches):
                better(set().union(*branches))  # type: ignore[arg-type]
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT) and av[0] >= 1:
            better(_required(av[2]))
    better({run} if run else None)
    return best


def required_literals(pattern: re.Pattern[str]) -> frozenset[str] | None:
    """Literals one of which every match of `pattern` contains, or None when
    there is no such set (or the pattern ignores case)."""
    if pattern.flags & re.IGNORECASE:
        return None
    try:
        found = _required(sre_parse.parse(pattern.pattern, pattern.flags))
    except (re.error, TypeError, ValueError):
        return None
    return frozenset(found) if found else None


def _on_literal(literal: int, start: int, end: int, flags: int, hits: list[int]) -> None:
    hits.append(literal)


class HyperscanLiteralEngine:
    """Hyperscan on the literals each row needs (read off the row's parse tree): one literal
    database per view; rows with their own prefilter (`needs`) or no literal always run."""

    name = "hyperscan-literals"

    def __init__(self, rules: Sequence[Rule]) -> None:
        import hyperscan

        self._hs = hyperscan
        self.always: list[int] = []  # rows that run on every item (own prefilter or no literal)
        by_view: dict[int, dict[str, list[int]]] = {}
        for i, r in enumerate(rules):
            literals = None if r.needs else required_literals(r.pattern)
            if not literals:
                self.always.append(i)
                continue
            for lit in literals:
                by_view.setdefault(r.reads, {}).setdefault(lit, []).append(i)
        self._rows: list[tuple[int, ...]] = []  # literal id -> rows
        self._dbs: list[tuple[int, Any]] = []
        for view, literals_of in sorted(by_view.items()):
            ids = []
            for _lit, rows in sorted(literals_of.items()):
                ids.append(len(self._rows))
                self._rows.append(tuple(rows))
            expressions = [re.escape(lit).encode() for lit in sorted(literals_of)]
            db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
            db.compile(
                expressions=expressions,
                ids=ids,
                elements=len(ids),
                flags=[hyperscan.HS_FLAG_SINGLEMATCH] * len(ids),
            )
            self._dbs.append((view, db))
        self._local = threading.local()

    def _scratches(self) -> list[Any]:
        # scratch space per thread and database: bytewax workers may share a process
        scratches = getattr(self._local, "scratches", None)
        if scratches is None:
            scratches = self._local.scratches = [self._hs.Scratch(db) for _, db in self._dbs]
        return scratches

    def candidates(self, texts: _Texts, views: Sequence[int] = ()) -> Sequence[int]:
        hits: list[int] = []
        for (view, db), scratch in zip(self._dbs, self._scratches(), strict=True):
            if views and view not in views:
                continue
            text = texts.get(view)
            if text:
                db.scan(text.encode(), match_event_handler=_on_literal, context=hits, scratch=scratch)
        if not hits:
            return self.always
        rows = set(self.always)
        for literal in hits:
            rows.update(self._rows[literal])
        return sorted(rows)  # table order: the same explanations whatever the scan order


class Re2SetEngine:
    name = "re2"

    def __init__(self, rules: Sequence[Rule]) -> None:
        import re2

        self.always: list[int] = []
        self._sets: list[tuple[int, Any, list[int]]] = []
        by_view: dict[int, list[int]] = {}
        for i, r in enumerate(rules):
            by_view.setdefault(r.reads, []).append(i)
        options = re2.Options()
        options.max_mem = 64 << 20
        for view, rows in sorted(by_view.items()):
            s, ids = re2.Set.SearchSet(options), []
            for i in rows:
                try:
                    s.Add(to_re2(rules[i].pattern))
                except (ValueError, re2.error):
                    self.always.append(i)
                else:
                    ids.append(i)
            s.Compile()
            self._sets.append((view, s, ids))

    def candidates(self, texts: _Texts, views: Sequence[int] = ()) -> list[int]:
        hits = list(self.always)
        for view, s, ids in self._sets:
            text = texts.get(view)
            if text:
                hits += [ids[k] for k in s.Match(text.encode()) or ()]
        hits.sort()
        return hits


class AhoCorasickEngine:
    name = "aho-corasick"

    def __init__(self, rules: Sequence[Rule]) -> None:
        import ahocorasick

        self.always: list[int] = []
        words: dict[int, dict[str, list[int]]] = {}
        for i, r in enumerate(rules):
            lits = required_literals(r.pattern)
            if not lits:
                self.always.append(i)
                continue
            for w in lits:
                words.setdefault(r.reads, {}).setdefault(w, []).append(i)
        self._automata = []
        for view, ws in sorted(words.items()):
            a = ahocorasick.Automaton()
            for w, rows in ws.items():
                a.add_word(w, tuple(rows))
            a.make_automaton()
            self._automata.append((view, a))

    def candidates(self, texts: _Texts, views: Sequence[int] = ()) -> list[int]:
        hits = set(self.always)
        for view, a in self._automata:
            text = texts.get(view)
            if text:
                for _, rows in a.iter(text):
                    hits.update(rows)
        return sorted(hits)


def with_engine(engine: Any) -> Tier0Rules:
    rules = Tier0Rules(engine="re")
    rules._engine = engine
    return rules


# --- the measurement -----------------------------------------------------------------------------


def best_times(engines: dict[str, Any], items: list[JudgeItem], repeat: int) -> dict[str, float]:
    """Best CPU time per engine over `repeat` rounds, the engines taking turns in each round
    (the machine may be shared: a busy spell then slows one round of every engine, and CPU
    time leaves out the time spent waiting for a core)."""
    best = dict.fromkeys(engines, float("inf"))
    for _ in range(repeat):
        for name, engine in engines.items():
            flags = engine.flags
            t0 = time.process_time()
            for item in items:
                flags(item)
            best[name] = min(best[name], time.process_time() - t0)
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=1000, help="events per traffic shape")
    p.add_argument("--chars", type=int, default=2048, help="characters per output (and multilingual input)")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()

    rng = random.Random(7)
    shapes = {
        "English (XSTest + Presidio)": english(args.events, args.chars, rng),
        "multilingual fixture, all": multilingual(args.events, args.chars, rng),
        "multilingual fixture, benign": multilingual(args.events, args.chars, rng, ("benign",)),
    }
    engines: dict[str, Any] = {}
    build_s: dict[str, float] = {}
    for name, make in (
        ("re table v1 (ASCII, before)", _rules_v1.Tier0Rules),
        ("re, every row", lambda: Tier0Rules(engine="re")),
        ("hyperscan prefilter + re confirm", lambda: Tier0Rules(engine="hyperscan")),
        ("hyperscan literals + re confirm", lambda: with_engine(HyperscanLiteralEngine(RULES))),
        ("RE2 set + re confirm", lambda: with_engine(Re2SetEngine(RULES))),
        ("Aho-Corasick + re confirm", lambda: with_engine(AhoCorasickEngine(RULES))),
    ):
        t0 = time.perf_counter()
        engines[name] = make()
        build_s[name] = time.perf_counter() - t0
    reference = engines["re, every row"]
    v1 = engines["re table v1 (ASCII, before)"]

    rows = []
    for shape, items in shapes.items():
        expected = [reference.flags(it) for it in items]
        before = [v1.flags(it) for it in items]
        times = best_times(engines, items, args.repeat)
        for name, engine in engines.items():
            secs = times[name]
            got = [engine.flags(it) for it in items]
            same = sum(g == e for g, e in zip(got, expected, strict=True)) / len(items)
            same_v1 = sum(g == b for g, b in zip(got, before, strict=True)) / len(items)
            flagged = sum(1 for g in got if g) / len(items)
            candidates = "-"
            prefilter = getattr(engine, "_engine", None)
            if prefilter is not None and name != "re, every row":
                n = sum(len(prefilter.candidates(_Texts(it))) for it in items)
                candidates = f"{n / len(items):.1f} of {len(RULES)}"
            rows.append([
                shape, name, f"{secs / len(items) * 1e6:,.1f}", f"{len(items) / secs:,.0f}",
                f"{same:.2%}", f"{same_v1:.2%}", f"{flagged:.0%}", candidates,
            ])  # fmt: skip
    print()
    print(
        table(
            f"tier-0 flags() per event: {args.events:,} events per shape, outputs of {args.chars:,} "
            f"characters, CPU time, best of {args.repeat} rounds, Python {sys.version.split()[0]}, "
            f"{os.cpu_count()} cores",
            [
                "traffic",
                "engine",
                "us/event",
                "events/s",
                "same flags as re",
                "same as v1",
                "events flagged",
                "rows tried/event",
            ],
            rows,
        )
    )
    print("\nbuild (compile) time: " + ", ".join(f"{k} {v * 1000:,.0f} ms" for k, v in build_s.items()))
    always = {
        name: len(e._engine.always)
        for name, e in engines.items()
        if hasattr(getattr(e, "_engine", None), "always")
    }
    print(
        "rows tried on every event (own prefilter, or no form for the engine): "
        + ", ".join(f"{name} {n}" for name, n in always.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
