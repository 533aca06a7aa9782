"""Redaction skips a built-in pattern when the text lacks what it needs (no ``@``, too few
digits): the result must be the one every pattern run in order gives, on texts built to sit
on each skip's edge."""

from __future__ import annotations

import pytest

from apps.core.redact import BUILT_IN, redact, redact_text


def _every_pattern(text: str, custom: tuple[str, ...] = ()) -> str:
    import re

    for pattern in custom:
        text = re.sub(pattern, "[REDACTED]", text)
    for pattern, replacement in BUILT_IN:
        text = pattern.sub(replacement, text)
    return text


TEXTS = [
    "",
    "Platform exact result coupling. Carriage switch tenant platform.",
    "Benchmark prompt 3-17",
    "write to jane.doe@example.com today",
    "an @ alone, and a@b",
    "card 4111 1111 1111 1111 and 4111-1111-1111-1112",
    "twelve digits 4111 1111 1111",
    "call +1 415 555 2671 or (415) 555-2671",
    "eight digits 1234 5678, nine 123 456 789",
    "Arabic-Indic ٤١١١١١١١١١١١١١١١ digits",  # \d counts them, so must the skip
    "key sk-live-abcdefghijklmnopqrstuvwx and pk-abcdefghijklmnopqrst",
    "Authorization: BEARER abcdefghijklmnop0123456789==",
    "bearer short",
    "AKIAABCDEFGHIJKLMNOP, ghp_" + "a" * 36 + ", xoxb-1234567890-abc",
    "jwt eyJhbGciOiJIUzI1.eyJzdWIiOiIxMjM0.SflKxwRJSMeKKF2QT4f",
    "card 4111 1111 1111 1111 then phone +44 20 7946 0958 then mail x@y.org",
    "card 4111111111111111 beside 12 other digits 1234567890 12",
]


@pytest.mark.parametrize("text", TEXTS)
def test_it_redacts_as_every_pattern_run_in_order_would(text):
    assert redact_text(text) == _every_pattern(text)
    custom = (r"ACME-\d{4}", r"\d{3}")
    assert redact_text(text + " ACME-7731", custom) == _every_pattern(text + " ACME-7731", custom)


def test_it_redacts_what_each_pattern_covers():
    text = ("jane@example.com 4111 1111 1111 1111 sk-live-abcdefghijklmnopqrstuvwx +1 415 555 2671 "
            "Bearer abcdefghijklmnop0123")
    assert redact({"content": [text]}) == {"content": [
        "[REDACTED email] [REDACTED card] [REDACTED key] [REDACTED phone] [REDACTED key]"]}
