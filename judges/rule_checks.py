"""rule_checks: what confirms a tier-0 rule's match (`judges.rule_table`), run only on the few
candidates its pattern found: checksums (Luhn for cards, mod-97 for IBANs), ranges (SSN areas, phone
lengths), the words around a match (a phone's label, a threat's lead-in, a secret's entropy).

Each check takes the text the rule read and one match, and says whether the finding stands.
"""

# ruff: noqa: RUF001 - the context words are written in Cyrillic and Chinese on purpose

from __future__ import annotations

import math
import re


def _digits(s: str) -> str:
    return "".join(c for c in s if "0" <= c <= "9")


def luhn_valid(number: str) -> bool:
    """Luhn (mod-10) checksum over the digits of `number`."""
    total = 0
    for i, c in enumerate(reversed([c for c in number if "0" <= c <= "9"])):
        d = ord(c) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# issuer prefixes of the card schemes (Visa, Mastercard incl. 2-series, Amex,
# Diners, Discover, JCB, Maestro, UnionPay): drops most of the one-in-ten
# Luhn-valid order ids, epoch milliseconds and other long numbers
_CARD_IIN = re.compile(r"4|5[0-9]|6[0-9]|3[0-9]|2[2-7]|2131|1800")


def check_card(text: str, m: re.Match[str]) -> bool:
    digits = _digits(m.group())
    return (
        13 <= len(digits) <= 19
        and _CARD_IIN.match(digits) is not None
        and len(set(digits)) > 1
        and luhn_valid(digits)
    )


# ISO 13616 IBAN length per country (SWIFT IBAN registry)
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24,
    "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_valid(iban: str) -> bool:
    """A known country, its registry length, and ISO 7064 mod-97 == 1."""
    s = iban.replace(" ", "").upper()
    if _IBAN_LENGTHS.get(s[:2]) != len(s) or not (s.isascii() and s.isalnum()):
        return False
    return int("".join(str(int(c, 36)) for c in s[4:] + s[:4])) % 97 == 1


def check_iban(text: str, m: re.Match[str]) -> bool:
    compact = m.group().replace(" ", "").upper()
    length = _IBAN_LENGTHS.get(compact[:2])
    # the greedy match may run into the next word: cut at the registry length
    return length is not None and len(compact) >= length and iban_valid(compact[:length])


def check_ssn(text: str, m: re.Match[str]) -> bool:
    area, group, serial = m.group().split("-")
    # never issued: area 000, 666 and 900-999, group 00, serial 0000
    return area not in ("000", "666") and area[:1] != "9" and group != "00" and serial != "0000"


_SSN_SHAPE = re.compile(r"\d{3}-\d{2}-\d{4}\Z", re.ASCII)
_PHONE_GAPS = re.compile(r"[ .\-]")
# phone words in English, German, French, Spanish, Russian and Chinese (lower case)
_PHONE_WORD_BEFORE = re.compile(
    r"(?:phone|\btel\b|\btel\.|telephone|mobile|\bmob\b|\bcell|\bfax|\bcall|\bdial|\btext me"
    r"|\bsms|whatsapp|reach me|contact|\bph\b|\bph\.|(?:office|desk|work|home)\s*:"
    r"|telefon|\bhandy|rufnummer|\bmobil|\btél|téléphone|\bportable|\bappele[zr]|\bappelle"
    r"|teléfono|\bmóvil|\bmovil|\bllám|\bllam[ae]|\bтел\b|\bтел\.|телефон|\bмоб|\bзвони|\bсвяз"
    r"|电话|手机|联系|致电|拨打|座机)"
    r"[^\n\d]{0,12}(?:\n[^\n\d]{0,3})?\Z"
)
_PHONE_WORD_AFTER = re.compile(r"[ \t]*[-,(]?[ \t]*(?:office|fax|mobile|cell|home|work|desk)\b")


def check_phone(text: str, m: re.Match[str]) -> bool:
    found = m.group()
    if _SSN_SHAPE.match(found):
        return False  # pii.ssn's call
    n = len(_digits(found))
    kind = m.lastgroup
    if kind == "intl":
        return 8 <= n <= 15
    if kind == "trunk":
        # "0xxxx xxxx" with a single gap is as often a street number as a phone
        return 9 <= n <= 12 and (n >= 10 or len(_PHONE_GAPS.findall(found)) >= 2)
    if kind in ("nanp", "area", "pairs", "ru", "cn", "es"):
        return True
    # bare digit groups count only next to a phone word ("Phone: 467 3395")
    if not 7 <= n <= 12:
        return False
    before = text[max(0, m.start() - 30) : m.start()].lower()
    after = text[m.end() : m.end() + 12].lower()
    return bool(_PHONE_WORD_BEFORE.search(before) or _PHONE_WORD_AFTER.match(after))


def _entropy(s: str) -> float:
    n = len(s)
    return -sum(k / n * math.log2(k / n) for k in (s.count(c) for c in set(s)))


_PLACEHOLDER = re.compile(r"your|xxxx|example|here|dummy|sample|placeholder|\.\.\.|\*\*\*")


def check_secret_value(text: str, m: re.Match[str]) -> bool:
    value = m.group("value")
    digits = sum("0" <= c <= "9" for c in value)
    return (
        digits >= 2
        and len(value) - digits >= 2
        and _entropy(value) >= 3.5
        and _PLACEHOLDER.search(value) is None
    )


def check_has_digit(text: str, m: re.Match[str]) -> bool:
    # real keys mix letters and digits; "sk-learn-style-words" do not
    return any("0" <= c <= "9" for c in m.group())


_THREAT_LEAD = re.compile(
    r"(?:\bi'll|\bi\ will|\bi'm\ going\ to|\bi\ am\ going\ to|\bi'm\ gonna|\bi\ am\ gonna"
    r"|\bgo|\bjust|\bshould)\ (?:kill|murder|hurt|rape|stab|shoot)\ \Z"
)


def check_threat(text: str, m: re.Match[str]) -> bool:
    if m.group() not in ("you", "yourself"):
        return True  # "you deserve to die", "you should die", "hope you die"
    # "<verb> you(rself)": only with a first-person or imperative lead-in, so
    # "this dose can kill you" is not a threat but "I'll kill you" is
    return _THREAT_LEAD.search(text, max(0, m.start() - 24), m.start()) is not None


_LEAK_VERB = re.compile(
    r"\b(?:reveal|print|show|repeat|output|leak|tell\ me|what\ (?:is|are|was|were))\s+(?:me\s+)?"
    r"(?:your|the)\s+(?:(?:full|entire|hidden|original|initial|exact|secret)\s+)*\Z"
)


def check_leak(text: str, m: re.Match[str]) -> bool:
    return _LEAK_VERB.search(text, max(0, m.start() - 48), m.start()) is not None


# Role-play alone is not a jailbreak ("act as a Linux terminal"); it is when
# the same input also talks about dropping the rules.
_RULE_NOUNS = ("restriction", "rules", "filter", "censor", "limitation", "guideline",
               "polic", "ethic", "moral", "confines", "boundar")  # fmt: skip
_DROP_WORDS = re.compile(
    r"\b(?:no|without|any|free|break|breaking|broken|bypass|ignore|ignoring|beyond|disregard"
    r"|not\s+bound|not\s+restricted|not\s+limited|abide|outside)\b"
)


def check_drops_rules(text: str, m: re.Match[str]) -> bool:
    for noun in _RULE_NOUNS:
        i = text.find(noun)
        while i >= 0:
            if _DROP_WORDS.search(text, max(0, i - 40), i):
                return True
            i = text.find(noun, i + 1)
    return False
