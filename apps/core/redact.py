"""Redaction of request bodies before they are stored: what a pattern matches is replaced by a
marker (``[REDACTED email]``) and never reaches the database.

Built in: email addresses, phone numbers (9 to 15 digits, with the usual separators), payment
card numbers (13 to 19 digits passing the Luhn check), and keys and tokens (``sk-``/``pk-``/
``rk-`` keys, AWS access key ids, GitHub and Slack tokens, JSON web tokens, ``Bearer`` values).
A tenant adds its own patterns (Python regular expressions, one per line).
"""

from __future__ import annotations

import re
from functools import lru_cache

MAX_PATTERNS = 50


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card(match: re.Match) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "[REDACTED card]" if 13 <= len(digits) <= 19 and _luhn(digits) else match.group(0)


def _phone(match: re.Match) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "[REDACTED phone]" if 9 <= len(digits) <= 15 else match.group(0)


# Order matters: keys before the card and phone patterns (a token may hold long digit runs).
BUILT_IN: tuple[tuple[re.Pattern, object], ...] = (
    (re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}|\bAKIA[0-9A-Z]{16}\b|\bgh[pousr]_[A-Za-z0-9]{30,}"
                r"|\bxox[abprs]-[A-Za-z0-9-]{10,}|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
                r"|(?i:bearer)\s+[A-Za-z0-9._~+/-]{16,}=*"), "[REDACTED key]"),
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"), "[REDACTED email]"),
    (re.compile(r"(?<![\w.])\d(?:[ -]?\d){12,18}(?![\w.])"), _card),
    (re.compile(r"(?<![\w.])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,5}){1,3}(?![\w.])"), _phone),
)


# What each built-in pattern cannot match without: a text lacking it skips the pattern (most
# prompts and answers hold no key, no @ and few digits, and a skipped scan is the saving).
_DIGIT = re.compile(r"\d")
_KEY_HINTS = ("k-", "AKIA", "_", "xox", "eyJ")


def _could_hold_key(text: str) -> bool:
    return any(hint in text for hint in _KEY_HINTS) or "bearer" in text.lower()


def _digits(text: str) -> int:
    """How many digits ``text`` holds, as ``\\d`` counts them (Unicode digits included)."""
    return len(_DIGIT.findall(text)) if _DIGIT.search(text) else 0


def patterns_check(text: str) -> list[str]:
    """A tenant's patterns, one per line (blank lines ignored); raises ValueError naming the
    first that is not a valid regular expression, or when there are too many."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if len(lines) > MAX_PATTERNS:
        raise ValueError(f"At most {MAX_PATTERNS} patterns.")
    for line in lines:
        try:
            re.compile(line)
        except re.error as exc:
            raise ValueError(f"Not a regular expression: {line} ({exc})") from None
    return lines


@lru_cache(maxsize=256)
def _tenant_patterns(lines: tuple[str, ...]) -> tuple[re.Pattern, ...]:
    return tuple(re.compile(line) for line in lines)


def redact_text(text: str, custom: tuple[str, ...] = ()) -> str:
    if custom:
        for pattern in _tenant_patterns(custom):
            text = pattern.sub("[REDACTED]", text)
    (keys, key), (emails, email), (cards, card), (phones, phone) = BUILT_IN
    if _could_hold_key(text):
        text = keys.sub(key, text)
    if "@" in text:
        text = emails.sub(email, text)
    digits = _digits(text)
    if digits >= 13:  # a card number has 13 to 19 digits
        text = cards.sub(card, text)
        digits = _digits(text)
    if digits >= 9:  # a phone number 9 to 15
        text = phones.sub(phone, text)
    return text


def redact(value, custom: tuple[str, ...] = ()):
    """``value`` (JSON: strings, lists, dicts) with every string redacted."""
    if isinstance(value, str):
        return redact_text(value, custom)
    if isinstance(value, list):
        return [redact(item, custom) for item in value]
    if isinstance(value, dict):
        return {key: redact(item, custom) for key, item in value.items()}
    return value
