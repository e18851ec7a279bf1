"""A regex substitution tried only where a match can start: near a literal every match holds.

`ContentKeyer.normalize` replaces volatile tokens (UUIDs, timestamps) on every
text it keys, and its patterns open with `\\b` and a character class. CPython's
`re` then tries a match at every position of the text (~30 ns a character:
~65 us for a 2 KB text), where a pattern that opens with a literal jumps
between that literal's occurrences in C.

`AnchoredSub` reads the pattern's parse tree for an anchor: a literal that
every match contains at an offset from the match's start within known bounds
(the default patterns: the `-` after 8 hex digits or 4 decimal ones, so a match
starts 4 to 8 characters before a `-`). It finds the literal's occurrences
with `str.find` and tries `pattern.match` only at the positions those bounds
allow, in ascending order, resuming after each match as `re.sub` does: the
same result as `pattern.sub`, since no match can start anywhere else. A pattern
with no such anchor (case-insensitive, an unbounded prefix, alternatives
without a common literal) is substituted with `pattern.sub` as before.
"""

from __future__ import annotations

import re
from re import _constants as _sre  # type: ignore[attr-defined]  # the parse tree: no public API
from re import _parser as _sre_parse  # type: ignore[attr-defined]
from typing import Any

Anchor = tuple[str, int, int]  # the literal, and its least and greatest offset from a match's start

_MAX_SPREAD = 64  # starts tried per occurrence of the literal, at most (beyond, `pattern.sub` is as good)


class AnchoredSub:
    """`sub(text)` is `pattern.sub(repl, text)`, with `repl` taken literally (no escapes)."""

    def __init__(self, pattern: re.Pattern[str], repl: str) -> None:
        self.pattern = pattern
        self._repl = repl
        self._literal_repl = lambda _: repl  # `re.sub` reads a string for escapes, a function's answer as is
        self.anchor = anchor_of(pattern)

    def sub(self, text: str) -> str:
        if self.anchor is None:
            return self.pattern.sub(self._literal_repl, text)
        literal, lo, hi = self.anchor
        i = text.find(literal)
        if i < 0:
            return text
        match = self.pattern.match
        out: list[str] = []
        done = 0  # text[:done] is settled: in `out`, or no match starts before it
        tried = -1  # every start up to here has been tried
        while i >= 0:
            start = max(i - hi, done, tried + 1)
            last = i - lo
            while start <= last:
                m = match(text, start)
                if m is not None:
                    out.append(text[done : m.start()])
                    out.append(self._repl)
                    done = m.end()
                    start = done
                else:
                    start += 1
            tried = max(tried, last)
            i = text.find(literal, max(i + 1, done + lo))
        if not out:
            return text
        out.append(text[done:])
        return "".join(out)


def anchor_of(pattern: re.Pattern[str]) -> Anchor | None:
    """The anchor of `pattern` (see the module's docstring), or None."""
    if pattern.flags & re.IGNORECASE:
        return None
    try:
        tree = _sre_parse.parse(pattern.pattern, pattern.flags)
    except (re.error, TypeError, ValueError):
        return None
    found = _in_sequence(tree)
    if found is None or found[2] - found[1] > _MAX_SPREAD:
        return None  # unbounded, or too many starts to try per occurrence
    return found


def _in_sequence(seq: Any) -> Anchor | None:
    """The first anchor of a sequence of items, offset by the width of the items before it."""
    before_lo = before_hi = 0
    for item in seq.data:
        found = _in_item(item)
        if found is not None:
            literal, lo, hi = found
            return literal, before_lo + lo, before_hi + hi
        lo, hi = _sre_parse.SubPattern(seq.state, [item]).getwidth()
        before_lo += lo
        before_hi += hi
    return None


def _in_item(item: tuple[Any, Any]) -> Anchor | None:
    op, av = item
    if op is _sre.LITERAL:
        return chr(av), 0, 0
    if op is _sre.SUBPATTERN:
        _group, add_flags, _del_flags, sub = av
        if add_flags & _sre.SRE_FLAG_IGNORECASE:
            return None
        return _in_sequence(sub)
    if op is _sre.BRANCH:
        found = [_in_sequence(branch) for branch in av[1]]
        first = found[0]
        if first is None or any(f is None or f[0] != first[0] for f in found):
            return None  # a match through some branch might not hold the literal
        return first[0], min(f[1] for f in found if f), max(f[2] for f in found if f)
    return None
