"""Complete sentences out of a stream of deltas, for text-to-speech frontends.

A sentence ends at ``.``, ``!`` or ``?`` (a run of them, then any closing quotes or brackets)
followed by whitespace. A boundary is only known once the whitespace after it has arrived, so a
sentence is released one delta late at most; whatever is left when the stream ends is released
by :meth:`SentenceBuffer.flush`. Common abbreviations ("Dr.", "e.g."), single-letter initials
("J. Smith") and list numbers at the start of a line ("1. First") do not end a sentence.
"""

from __future__ import annotations

import re

_BOUNDARY = re.compile(r"[.!?]+[\"')\]\u201d\u2019]*(?=\s)")
_LAST_WORD = re.compile(r"(\S+)$")
_ABBREVIATIONS = frozenset({
    "mr.", "mrs.", "ms.", "dr.", "prof.", "sr.", "jr.", "st.", "vs.", "e.g.", "i.e.", "cf.", "approx.", "fig.",
    "no.", "inc.", "ltd.", "co.", "mt.", "a.m.", "p.m.",
})


def _is_false_boundary(piece: str) -> bool:
    """Does ``piece`` (the text up to a '.') end with an abbreviation, an initial or a list number?"""
    if not piece.endswith("."):
        return False
    match = _LAST_WORD.search(piece)
    if match is None:
        return False
    word = match.group(1)
    if word.lower() in _ABBREVIATIONS:
        return True
    if len(word) == 2 and word[0].isalpha() and word[0].isupper() and word[0] != "I":
        return True  # an initial: "J. Smith"
    if word[:-1].isdigit():
        before = piece[: match.start()]
        return before.strip(" \t") == "" or before.rstrip(" \t").endswith("\n")  # "1. First" in a list
    return False


class SentenceBuffer:
    """Feed deltas with :meth:`add`; get each sentence once it is complete."""

    __slots__ = ("_text",)

    def __init__(self) -> None:
        self._text = ""

    def add(self, delta: str) -> list[str]:
        """Append ``delta``; return the sentences it completed (stripped, in order)."""
        text = self._text + delta
        sentences: list[str] = []
        start = 0
        for match in _BOUNDARY.finditer(text):
            end = match.end()
            if _is_false_boundary(text[start:end]):
                continue
            sentence = text[start:end].strip()
            if sentence:
                sentences.append(sentence)
            start = end
        self._text = text[start:]
        return sentences

    def flush(self) -> str:
        """What is left once the stream has ended (an unfinished last sentence, or "")."""
        rest, self._text = self._text.strip(), ""
        return rest
