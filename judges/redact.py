"""Optional PII redaction before text leaves for an external LLM judge.

The tier-0 PII rules (`judges.rules`) find e-mail addresses, phone numbers,
Luhn-valid cards, IBANs, SSNs and API-key-like secrets; each finding is
replaced by a marker naming its kind, e.g. `[PII:email]`, so the judge still
knows something was there (the pii rubric counts a marker as revealed data)
but never sees the value.
"""

from __future__ import annotations

from collections.abc import Callable

from judges.base import JudgeItem

# text -> [(rule name, start, end)], e.g. `Tier0Rules().find_pii`
FindPII = Callable[[str], list[tuple[str, int, int]]]


class Redactor:
    def __init__(self, find_pii: FindPII) -> None:
        self._find = find_pii

    def text(self, text: str) -> str:
        """`text` with every PII finding replaced by its marker (overlaps merged)."""
        found = self._find(text) if text else []
        if not found:
            return text
        parts: list[str] = []
        pos = 0
        for name, start, end in found:  # sorted by start
            if start < pos:  # overlaps the previous finding: extend it
                if end > pos:
                    pos = end
                continue
            parts.append(text[pos:start])
            parts.append(f"[PII:{name.removeprefix('pii.')}]")
            pos = end
        parts.append(text[pos:])
        return "".join(parts)

    def item(self, item: JudgeItem) -> JudgeItem:
        return JudgeItem(
            input_text=self.text(item.input_text),
            output_text=self.text(item.output_text),
            context=self.text(item.context) if item.context else item.context,
        )
