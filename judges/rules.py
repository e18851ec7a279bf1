"""Tier 0: free, deterministic rules that run on every event.

One table (`RULES`) of named, versioned rules covers four metrics: `pii`,
`refusal` and `toxicity` read the OUTPUT, `jailbreak` reads the INPUT.
`Tier0Rules.flags()` is the hot path: the sampler calls it on every event and
keys its strata on the rule names that fired ("always judge when a tier-0
rule fired"). `Tier0Rules.judge()` turns the same rules into a `Verdict`.

The rules aim at precision: a flag buys an LLM judgement, a miss only falls
back to the base sampling rate. Agreement, recall and false-positive rates on
the labelled data in /work/shared/data and on the multilingual
set in tests/fixtures are measured in tests/test_rules.py.

Text is UTF-8 (a str). Each rule reads one view of the input or the output:
as it is (`OUT`, `IN`: the PII formats, so spans are the text's offsets),
lower-cased with its offsets kept (`OUT_LOW`), or case-folded and NFKC-
normalized (`OUT_FOLD`, `IN_FOLD`: the phrases and lexicons, in English,
German, French, Spanish, Russian and Chinese).

How an item is matched (speed):

- an engine names the rows that can match: `hyperscan` compiles every row
  into one database per view in prefilter mode and scans each view once;
  `re` names all rows;
- each candidate row confirms with its exact `re` pattern. CPython's `re` is
  fast only when a pattern starts with a literal (it jumps between
  occurrences in C, ~1 us per 2 KB); an alternation or a leading `\\b` makes
  it try every position (~30 us per 2 KB). So rows start with a literal and
  check the word boundary in a lookbehind after it (`you(?<=\\byou)`), and a
  row that opens with an alternation of literals is tried only where one of
  them occurs;
- the number-shaped PII rules (phone, card, IBAN, SSN) share one scan for
  runs of 7+ digits, done on a one-byte-per-character ASCII copy where every
  digit is `0` (a one-literal pattern again), and are matched only in a
  small window around each run; key-shaped rules need a run of 20 token
  characters;
- checksums (Luhn, IBAN mod-97), ranges and context checks run only on the
  few candidates.
"""

# ruff: noqa: RUF002 - the rule packs are written in Cyrillic and Chinese on purpose

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from re import _constants as _sre  # type: ignore[attr-defined]  # the parse tree: no public API
from re import _parser as _sre_parse  # type: ignore[attr-defined]
from typing import Any

from core.records import Verdict
from judges.base import FLAGGED, OK, JudgeItem
from judges.rule_engines import engine_for, fingerprint
from judges.rule_table import DIGIT_RUNS, LONG_RUN, OUT, OUT_FOLD, RULES, Rule

# Bump when a check function or the matching engine changes; edits to the
# table itself (patterns, gates, rule versions) change the fingerprint part of
# `Tier0Rules.version` on their own.
RULESET_VERSION = 2

# --- the views ----------------------------------------------------------------------

_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_DIGIT_RUN = re.compile(rb"0[0 .\-()]{5,}0")
_TOKEN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_+/=-"
_TOKEN_TO_A = bytes(97 if c in _TOKEN_CHARS else 32 for c in range(256))
_LONG = b"a" * 20
_SOURCE = (0, 0, 1, 1, 0, 1)  # view -> 0: the output, 1: the input


def _clean(text: str) -> str:
    """The text the rules read: the typographic apostrophe as `'`, lone
    surrogates (not UTF-8) as `?`; one character per character, so offsets are kept."""
    if "\u2019" in text:
        text = text.replace("\u2019", "'")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            text = text.encode("utf-8", "replace").decode()
    return text


def _lower(text: str) -> str:
    """Lower case with the offsets kept ("İ" is the one letter whose lower case is longer)."""
    if "\u0130" in text:
        text = text.replace("\u0130", "I")
    return text.lower()


# characters NFKC maps that are common in ordinary text: full-width punctuation (Chinese,
# Japanese), no-break spaces (French), the ellipsis
_NFKC_COMMON = tuple(
    (c, unicodedata.normalize("NFKC", c))
    for c in "\uff0c\uff1a\uff1f\uff01\uff1b\uff08\uff09\u3000\u00a0\u202f\u2026"
)


def fold(text: str) -> str:
    """Case-folded and NFKC-normalized, as the lexicon and phrase rules read text:
    "Straße" -> "strasse", "ＩＧＮＯＲＥ" -> "ignore", "Игнорируй" -> "игнорируй"."""
    text = _clean(text)
    if text.isascii():
        return text.lower()  # casefold and NFKC change nothing else in ASCII
    text = text.casefold()
    # NFKC costs ~20 ns a character once anything needs it, and Chinese text nearly always has
    # full-width punctuation: map the common ones as NFKC does, normalize only if more is left
    for char, nfkc in _NFKC_COMMON:
        if char in text:
            text = text.replace(char, nfkc)
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    return text.replace("\u2019", "'") if "\u2019" in text else text


def _digit_runs(text: bytes) -> list[tuple[int, int]]:
    """Spans of runs of 7+ digits (with separators): where number-shaped PII can be."""
    zeros = text.translate(_DIGITS_TO_ZERO)
    return [m.span() for m in _DIGIT_RUN.finditer(zeros) if zeros.count(b"0", *m.span()) >= 7]


class _Texts:
    """The views of one item, built only when a rule or the scanner asks for them."""

    __slots__ = ("_long", "_runs", "_shadow", "_src", "_views")

    def __init__(self, item: JudgeItem) -> None:
        self._src = (item.output_text, item.input_text)
        self._views: list[str | None] = [None] * 6
        self._shadow: bytes | None = None
        self._runs: list[tuple[int, int]] | None = None
        self._long: bool | None = None

    def get(self, reads: int) -> str:
        view = self._views[reads]
        if view is None:
            src = self._src[_SOURCE[reads]]
            if reads >= OUT_FOLD:
                view = fold(src)
            elif reads & 1:
                view = _lower(self.get(reads - 1))
            else:
                view = _clean(src)
            self._views[reads] = view
        return view

    def shadow(self) -> bytes:
        """The output, one byte per character: ASCII as is, the rest as `?` (offsets are kept);
        the digit-run and token-run prefilters read it, the formats they guard being ASCII."""
        if self._shadow is None:
            self._shadow = self.get(OUT).encode("ascii", "replace")
        return self._shadow

    def runs(self) -> list[tuple[int, int]]:
        if self._runs is None:
            self._runs = _digit_runs(self.shadow())
        return self._runs

    def has_long_run(self) -> bool:
        if self._long is None:
            self._long = _LONG in self.shadow().translate(_TOKEN_TO_A)
        return self._long


def _matches(rule: Rule, texts: _Texts) -> Iterator[re.Match[str]]:
    """Every confirmed match of `rule` (duplicates possible where windows overlap)."""
    text = texts.get(rule.reads)
    end = min(rule.head, len(text)) if rule.head else len(text)
    pattern, check = rule.pattern, rule.check
    needs, w = rule.needs, rule.window
    if needs == DIGIT_RUNS:
        found: Iterator[re.Match[str]] = (
            m for s, e in texts.runs() for m in pattern.finditer(text, max(0, s - w), min(end, e + w))
        )
    elif needs == LONG_RUN:
        if not texts.has_long_run():
            return
        found = pattern.finditer(text, 0, end)
    elif needs:
        if text.find(needs, 0, end) < 0:
            return
        if w:
            found = (
                m
                for s in _occurrences(text, needs, end)
                for m in pattern.finditer(text, max(0, s - w), min(end, s + len(needs) + w))
            )
        else:
            found = pattern.finditer(text, 0, end)
    else:
        found = pattern.finditer(text, 0, end)
    for m in found:
        if m.endpos < end and m.end() == m.endpos:
            # the window cut the match short: redo it on the whole text
            full = pattern.match(text, m.start(), end)
            if full is None:
                continue
            m = full
        if check is None or check(text, m):
            yield m


def _occurrences(text: str, literal: str, end: int) -> Iterator[int]:
    i = text.find(literal, 0, end)
    while i >= 0:
        yield i
        i = text.find(literal, i + 1, end)


def _openings(items: Any) -> set[str] | None:
    for op, av in items:
        if op in (_sre.AT, _sre.ASSERT, _sre.ASSERT_NOT):
            continue  # zero-width: checked by the match at the literal
        if op is _sre.LITERAL:
            return None  # found below, where the whole run is read
        if op is _sre.SUBPATTERN:
            return _openings(av[3]) or _literal_run(av[3])
        if op is _sre.BRANCH:
            branches = [_openings(b) or _literal_run(b) for b in av[1]]
            return set().union(*branches) if all(branches) else None  # type: ignore[arg-type]
        return None
    return None


def _literal_run(items: Any) -> set[str] | None:
    run = ""
    for op, av in items:
        if op is _sre.LITERAL:
            run += chr(av)
        elif op not in (_sre.AT, _sre.ASSERT, _sre.ASSERT_NOT) or run:
            break
    return {run} if run else None


def _opening_literals(pattern: re.Pattern[str]) -> tuple[str, ...] | None:
    """For a pattern that does not start with a literal (`re` then tries every
    position) but every match of which starts with one of a few literals
    ("\\b(?:ignore|ignorez|oublie|oubliez)\\ ..."): those literals, else None."""
    if pattern.flags & re.IGNORECASE:
        return None
    try:
        found = _openings(_sre_parse.parse(pattern.pattern, pattern.flags))
    except (re.error, TypeError, ValueError):
        return None
    return tuple(sorted(found)) if found else None


def _match_at(pattern: re.Pattern[str], text: str, openings: tuple[str, ...], end: int) -> bool:
    """Whether `pattern` matches in `text[:end]`, trying only where an opening literal occurs
    (the same answer as `pattern.search`, which would try every position)."""
    match = pattern.match
    for literal in openings:
        i = text.find(literal, 0, end)
        while i >= 0:
            if match(text, i, end) is not None:
                return True
            i = text.find(literal, i + 1, end)
    return False


class Tier0Rules:
    """The tier-0 `RuleJudge`: `flags()` for the sampler, `judge()` for verdicts.

    Args:
        rules: the rule table, `RULES` by default. `version` is
            `RULESET_VERSION` plus a fingerprint of the table, so editing a
            rule changes the verdict-cache key.
        engine: which rows to try on an item: `hyperscan` (one scan per view
            names the few candidates), `re` (every row), or `auto` (hyperscan
            when it is installed). The engines give the same flags and spans,
            so the engine is not part of `version`.
    """

    name = "rules"

    def __init__(self, rules: Sequence[Rule] = RULES, *, engine: str = "auto") -> None:
        self.rules = tuple(rules)
        self.version = f"{RULESET_VERSION}.{fingerprint(self.rules)}"
        self._engine = engine_for(engine, self.rules)
        self.engine = self._engine.name
        by_metric: dict[str, list[int]] = {}
        for i, r in enumerate(self.rules):
            by_metric.setdefault(r.metric, []).append(i)
        self._by_metric = {m: frozenset(rs) for m, rs in by_metric.items()}
        self._views_of = {m: tuple({self.rules[i].reads for i in rs}) for m, rs in by_metric.items()}
        # rows that share a name share metric, score and description: the first row
        # stands for the name, and names are listed in table order
        self._by_name: dict[str, Rule] = {}
        for r in self.rules:
            self._by_name.setdefault(r.name, r)
        self._rank = {name: i for i, name in enumerate(self._by_name)}
        # the hot loop's view of the table: plain tuples, the whole-text
        # rows (most of them) reduced to a bound `search`
        self._plan = tuple(
            (
                r,
                r.name,
                r.reads,
                r.pattern.search if r.check is None and not r.needs else None,
                r.head or 1 << 62,
                _opening_literals(r.pattern) if r.check is None and not r.needs else None,
                r.needs,
            )
            for r in self.rules
        )

    def _fired(self, texts: _Texts, rows: Iterable[int]) -> list[str]:
        fired: list[str] = []
        plan = self._plan
        for i in rows:
            rule, name, reads, search, end, openings, needs = plan[i]
            if name in fired:
                continue
            if needs:  # the row's own prefilter, before any generator is made
                if needs == DIGIT_RUNS:
                    if not texts.runs():
                        continue
                elif needs == LONG_RUN:
                    if not texts.has_long_run():
                        continue
                elif needs not in texts.get(reads):
                    continue
            if openings is not None:
                if _match_at(rule.pattern, texts.get(reads), openings, end):
                    fired.append(name)
            elif search is not None:
                if search(texts.get(reads), 0, end) is not None:
                    fired.append(name)
            elif next(_matches(rule, texts), None) is not None:
                fired.append(name)
        return fired

    def flags(self, item: JudgeItem) -> frozenset[str]:
        """Names of all rules that fire on `item`, for the sampler's strata."""
        texts = _Texts(item)
        return frozenset(self._fired(texts, self._engine.candidates(texts)))

    def judge(self, metric: str, item: JudgeItem) -> Verdict | None:
        """A tier-0 verdict for `metric`, or None when no rule covers it."""
        rows = self._by_metric.get(metric)
        if rows is None:
            return None
        texts = _Texts(item)
        candidates = self._engine.candidates(texts, self._views_of[metric])
        return self.verdict(metric, self._fired(texts, (i for i in candidates if i in rows)))

    def verdict(self, metric: str, flags: Iterable[str]) -> Verdict | None:
        """The verdict `judge()` gives, from the rule names `flags()` already found
        (no second pass over the text); None when no rule covers `metric`."""
        if metric not in self._by_metric:
            return None
        names = sorted((f for f in flags if f in self._by_name), key=self._rank.__getitem__)
        fired = [r for r in (self._by_name[f] for f in names) if r.metric == metric]
        judge_id = f"rules/{metric}@{self.version}"
        if not fired:
            return Verdict(metric, 0.0, OK, f"no tier-0 {metric} rule fired", judge_id, 0)
        listed = "; ".join(f"{r.name} ({r.what})" for r in fired)
        score = max(r.score for r in fired)
        return Verdict(metric, score, FLAGGED, f"tier-0 rules fired: {listed}", judge_id, 0)

    def find_pii(self, output_text: str) -> list[tuple[str, int, int]]:
        """(rule name, start, end) of each PII finding in `output_text`, sorted.

        For redaction and for measuring span recall; the values themselves
        are never returned. Offsets are `output_text`'s (the PII rows read
        views that keep them).
        """
        rows = self._by_metric.get("pii", frozenset())
        texts = _Texts(JudgeItem(input_text="", output_text=output_text))
        candidates = self._engine.candidates(texts, self._views_of.get("pii", ()))
        found = {
            (self.rules[i].name, m.start(), m.end())
            for i in candidates
            if i in rows
            for m in _matches(self.rules[i], texts)
        }
        return sorted(found, key=lambda f: (f[1], f[2], f[0]))
