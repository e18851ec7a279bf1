"""The tier-0 engines: which rows of the rule table can match an item (`judges.rules` confirms them).

An engine answers one question per item: which rows can match? `re` says
"all of them" (each row then runs its own pattern, as before). `hyperscan`
compiles every row's pattern into one database per view in prefilter mode
(Hyperscan drops what it cannot run, such as lookarounds, and matches a
superset) and scans each view once (UTF-8, Unicode classes where the row has
them); it names the few rows that can match. A row with its own prefilter
(`needs`: a digit run, a token run, a literal) is scanned for that prefilter
instead, so an item that has none of them tries none of those rows. The candidates
are confirmed by their exact `re` pattern and checks, so both engines give
the same flags and spans. bench/rules_engines.py measured the alternatives
(Hyperscan on required literals, an RE2 set, Aho-Corasick).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from judges.rule_table import DIGIT_RUNS, LONG_RUN, OUT, Rule

__all__ = ["ENGINES", "Views", "engine_for", "fingerprint"]


class Views(Protocol):
    """An item's texts by view (`judges.rule_table`: OUT, IN, OUT_FOLD, ...)."""

    def get(self, view: int) -> str: ...


ENGINES = ("hyperscan", "re")


class _ReEngine:
    name = "re"

    def __init__(self, rules: Sequence[Rule]) -> None:
        self._all = tuple(range(len(rules)))

    def candidates(self, texts: Views, views: Sequence[int] = ()) -> Sequence[int]:
        return self._all


def _on_match(row: int, start: int, end: int, flags: int, hits: list[int]) -> None:
    hits.append(row)


class _HyperscanEngine:
    """One Hyperscan database per view, one scan per view and item."""

    name = "hyperscan"

    def __init__(self, rules: Sequence[Rule]) -> None:
        import hyperscan

        self._hs = hyperscan
        # a row is scanned for its pattern (prefilter mode) in the view it reads; a row with its own
        # prefilter (`needs`) for that prefilter instead (`_gate`), which `judges.rules` then checks
        by_view: dict[int, list[_Entry]] = {}
        for i, r in enumerate(rules):
            view, expression, flags = _gate(hyperscan, r) if r.needs else _prefilter(hyperscan, r)
            by_view.setdefault(view, []).append((i, expression, flags))
        self.always: list[int] = []  # rows Hyperscan cannot take even as a prefilter: tried on every item
        self._dbs: list[tuple[int, Any]] = []
        for view, entries in sorted(by_view.items()):
            try:
                db = self._compile(entries)
            except hyperscan.error:
                ok = [e for e in entries if self._compiles(e)]
                self.always += [e[0] for e in entries if e not in ok]
                db = self._compile(ok) if ok else None
            if db is not None:
                self._dbs.append((view, db))
        self.always.sort()
        self._local = threading.local()

    def _compile(self, entries: list[_Entry]) -> Any:
        db = self._hs.Database(mode=self._hs.HS_MODE_BLOCK)
        db.compile(
            expressions=[e[1] for e in entries],
            ids=[e[0] for e in entries],
            elements=len(entries),
            flags=[e[2] for e in entries],
        )
        return db

    def _compiles(self, entry: _Entry) -> bool:
        try:
            self._compile([entry])
        except self._hs.error:
            return False
        return True

    def _scratches(self) -> list[Any]:
        # scratch space per thread and database: bytewax workers may share a process
        scratches = getattr(self._local, "scratches", None)
        if scratches is None:
            scratches = self._local.scratches = [self._hs.Scratch(db) for _, db in self._dbs]
        return scratches

    def candidates(self, texts: Views, views: Sequence[int] = ()) -> Sequence[int]:
        hits: list[int] = []
        for (view, db), scratch in zip(self._dbs, self._scratches(), strict=True):
            if views and view not in views:
                continue
            text = texts.get(view)
            if text:
                db.scan(text.encode(), match_event_handler=_on_match, context=hits, scratch=scratch)
        if not hits:
            return self.always
        return sorted(hits + self.always)  # table order: the same explanations whatever the scan order


_Entry = tuple[int, bytes, int]  # a row, the expression it is scanned for, the Hyperscan flags


def _prefilter(hs: Any, r: Rule) -> tuple[int, bytes, int]:
    """The row's own pattern, in the view it reads, as a prefilter (a superset of its matches)."""
    p = r.pattern
    flags = (
        hs.HS_FLAG_PREFILTER
        | hs.HS_FLAG_SINGLEMATCH
        | hs.HS_FLAG_UTF8
        | (0 if p.flags & re.ASCII else hs.HS_FLAG_UCP)
        | (hs.HS_FLAG_CASELESS if p.flags & re.IGNORECASE else 0)
        | (hs.HS_FLAG_DOTALL if p.flags & re.DOTALL else 0)
        | (hs.HS_FLAG_MULTILINE if p.flags & re.MULTILINE else 0)
    )
    return r.reads, (("(?x)" if p.flags & re.VERBOSE else "") + p.pattern).encode(), flags


# the row prefilters that read the output's one-byte-per-character copy (`judges.rules`), on the output's
# UTF-8 bytes: a non-ASCII character is bytes >= 0x80 there and `?` in the copy, neither of them in the
# classes, so each matches exactly where the copy has what the prefilter looks for (a run of 7+ digits
# is counted by `judges.rules` on the candidates)
_RUN_GATES = {DIGIT_RUNS: rb"[0-9][0-9 .\-()]{5,}[0-9]", LONG_RUN: rb"[A-Za-z0-9_+/=\-]{20}"}


def _gate(hs: Any, r: Rule) -> tuple[int, bytes, int]:
    """The row's own prefilter (`needs`): a digit run or a token run in the output, or its literal
    in the view it reads."""
    flags = hs.HS_FLAG_SINGLEMATCH | hs.HS_FLAG_UTF8
    if r.needs in _RUN_GATES:
        return OUT, _RUN_GATES[r.needs], flags
    return r.reads, re.escape(r.needs).encode(), flags


# compiled databases per rule table (by fingerprint): compiling takes ~0.5 s and a
# process builds its rules more than once (deps, tests)
_COMPILED: dict[str, _HyperscanEngine] = {}


def _hyperscan(rules: Sequence[Rule]) -> _HyperscanEngine:
    key = fingerprint(rules)
    engine = _COMPILED.get(key)
    if engine is None:
        engine = _COMPILED[key] = _HyperscanEngine(rules)
    return engine


def engine_for(name: str, rules: Sequence[Rule]) -> _ReEngine | _HyperscanEngine:
    if name == "auto":
        try:
            return _hyperscan(rules)
        except ImportError:
            return _ReEngine(rules)
    if name == "hyperscan":
        try:
            return _hyperscan(rules)
        except ImportError as e:
            msg = f"engine 'hyperscan' needs the hyperscan package: pip install 'hyperscan>=0.7,<1' ({e})"
            raise ImportError(msg) from e
    if name == "re":
        return _ReEngine(rules)
    msg = f"unknown tier-0 engine {name!r}; allowed: auto, {', '.join(ENGINES)}"
    raise ValueError(msg)


def fingerprint(rules: Sequence[Rule]) -> str:
    h = hashlib.sha256()
    for r in rules:
        fields = (r.name, r.metric, r.version, r.pattern.pattern, r.pattern.flags, r.reads, r.needs,
                  r.window, r.head, r.score)  # fmt: skip
        h.update(repr(fields).encode())
    return h.hexdigest()[:8]
