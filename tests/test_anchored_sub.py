"""`AnchoredSub` substitutes exactly as `re.sub` does, trying only near its anchor literal."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.config import CacheConfig
from operators.anchored_sub import AnchoredSub, anchor_of
from operators.dedup import ContentKeyer

DEFAULTS = "|".join(f"(?:{p})" for p in CacheConfig().volatile_patterns)

# patterns a user might configure: anchors in branches, after optional parts, behind lookbehinds,
# with back-references; and ones without an anchor, which fall back to `re.sub`
PATTERNS = [
    DEFAULTS,
    r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b",
    r"\b\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?\b",
    r"\b(?:req|trace)_[0-9a-z]{6,10}\b",
    r"a?b{0,3}-\d",
    r"(?<=\d)x\d+",
    r"(\d)-\1",
    r"(?:ab|c)-(?:d|ef)",
    r"\d+-\d",  # unbounded before the literal: no anchor
    r"(?i)ab-c",  # case-insensitive: no anchor
    r"a|b",  # branches without a common literal: no anchor
    r"-",
    r"--?-",
]


@pytest.mark.parametrize(
    ("pattern", "anchor"),
    [
        (DEFAULTS, ("-", 4, 8)),
        (r"\b(?:req|trace)_[0-9a-z]{6,10}\b", ("_", 3, 5)),
        (r"a?b{0,3}-\d", ("-", 0, 4)),
        (r"(?<=\d)x\d+", ("x", 0, 0)),
        (r"\d+-\d", None),
        (r"(?i)ab-c", None),
        (r"(?i:a)b-c", ("b", 1, 1)),
        (r"a|b", None),
        (r"[ab]{0,100}-", None),  # more starts per occurrence than it is worth
        (r"[ab]{100}-", ("-", 100, 100)),
    ],
)
def test_the_anchor_is_read_off_the_parse_tree(pattern: str, anchor: tuple[str, int, int] | None) -> None:
    assert anchor_of(re.compile(pattern)) == anchor


_ALPHABET = "0123456789abcdefxT Z:.+-_\n" + "reqtrc" + "é中"


@settings(max_examples=400, deadline=None)
@given(
    pattern=st.sampled_from(PATTERNS),
    parts=st.lists(
        st.one_of(
            st.text(alphabet=_ALPHABET, max_size=12),
            st.sampled_from(
                [
                    "123e4567-e89b-12d3-a456-426614174000",
                    "2024-05-01T12:00:00Z",
                    "2024-05-01 12:00",
                    "1999-12-31T23:59:59.123+02:00",
                    "req_abc123",
                    "trace_0011223344",
                    "1-1",
                    "abbb-7",
                ]
            ),
        ),
        max_size=12,
    ),
)
def test_it_substitutes_as_re_sub_does(pattern: str, parts: list[str]) -> None:
    text = "".join(parts)
    compiled = re.compile(pattern)
    assert AnchoredSub(compiled, "\x00").sub(text) == compiled.sub("\x00", text)


def test_the_content_key_normalizes_volatile_tokens_as_before() -> None:
    volatile = CacheConfig().volatile_patterns
    keyer = ContentKeyer(lowercase=False, volatile_patterns=volatile, judge_version="v")
    text = "run 123e4567-e89b-12d3-a456-426614174000  at 2024-05-01T12:00:00Z, again-2024-05-01x 1999-12-31"
    assert keyer.normalize(text) == "run \x00 at \x00, again-2024-05-01x \x00"
    assert keyer.normalize("no dash here") == "no dash here"
