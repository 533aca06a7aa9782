"""Answers that are right or wrong as a file of known outcomes says, so that a client can grade
them and a router can learn from the grades.

The file is in RouteLLM's CSV format: a ``prompt`` column and one True/False column per model
(did that model answer the prompt correctly). ``--outcome-model sim-mini=COLUMN`` says which
simulated model answers as which column. When the last user message of a request to a mapped
model is one of the file's prompts, the answer's text starts with ``[correct]`` or ``[wrong]``;
other prompts and models answer as usual.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

CORRECT, WRONG = "[correct] ", "[wrong] "


def outcomes_load(paths: list[Path], mapping: list[str]) -> dict[tuple[str, str], bool]:
    """``{(simulated model, prompt): correct}`` from the files, for the ``NAME=COLUMN`` pairs."""
    columns: dict[str, str] = {}
    for pair in mapping:
        name, sep, column = pair.partition("=")
        if not sep or not name or not column:
            raise ValueError(f"--outcome-model takes NAME=COLUMN, not {pair!r}")
        columns[name] = column
    csv.field_size_limit(sys.maxsize)
    outcomes: dict[tuple[str, str], bool] = {}
    for path in paths:
        with Path(path).open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in columns.values() if c not in (reader.fieldnames or [])]
            if "prompt" not in (reader.fieldnames or []) or missing:
                raise ValueError(f"{path}: needs a 'prompt' column and {', '.join(missing) or 'the mapped columns'}")
            for row in reader:
                for name, column in columns.items():
                    outcomes[(name, row["prompt"])] = row[column].strip().lower() == "true"
    return outcomes


def last_user_text(messages: list) -> str | None:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else None
    return None


def graded(words: list[str], outcomes: dict, model: str, messages: list) -> list[str]:
    """``words`` with the grade in front when the file knows this model's outcome on this prompt."""
    if not outcomes or not words:
        return words
    text = last_user_text(messages)
    known = outcomes.get((model, text)) if text is not None else None
    if known is None:
        return words
    return [(CORRECT if known else WRONG) + words[0], *words[1:]]
