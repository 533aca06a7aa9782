"""The semantic cache's former rule-list verifier, kept for the quality benchmark's side-by-side figures.

Embedding similarity scores "train times from Paris to Rome" and "from Rome to Paris" as
near-identical, and the same for a changed number, name or a negation. A candidate that
passed the similarity threshold is served only if every check below agrees; otherwise the
first failing check is the rejection reason (logged, and counted in the quality benchmark).

    numbers      the same numbers (digits or spelled out), as a multiset
    quotes       the same quoted strings
    negation     the same polarity (count of negation words, mod 2)
    entities     every name-like term of one side (capitalised mid-sentence, acronyms, mixed
                 letters and digits) appears in the other
    order        the names both sides share come in the same order
    roles        the same (direction word, term) pairs: "from paris", "to rome"
    content      no content word of one side is missing from the other, except filler; typos
                 (one or two edits, by length) and word forms (plural, -ing, -ed) still match
    word order   the content words (and the numbers) come in the same order, except that one
                 phrase may move to the front or the back ("in Python, how do I sort a list");
                 swapping words in the middle ("butter with oil" / "oil with butter") fails

The checks are deliberately strict: a missed hit costs one upstream call, a wrong hit serves
a wrong answer.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

_CONTRACTIONS = {
    "what's": "what is", "how's": "how is", "where's": "where is", "who's": "who is", "it's": "it is",
    "that's": "that is", "there's": "there is", "i'm": "i am", "you're": "you are", "we're": "we are",
    "they're": "they are", "can't": "can not", "won't": "will not", "don't": "do not", "doesn't": "does not",
    "didn't": "did not", "isn't": "is not", "aren't": "are not", "wasn't": "was not", "weren't": "were not",
    "shouldn't": "should not", "wouldn't": "would not", "couldn't": "could not", "haven't": "have not",
    "hasn't": "has not", "i'd": "i would", "i've": "i have", "let's": "let us", "cannot": "can not",
}
_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14",
    "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19", "twenty": "20",
    "thirty": "30", "forty": "40", "fifty": "50", "hundred": "100", "thousand": "1000", "million": "1000000",
    "first": "1", "second": "2", "third": "3", "fourth": "4", "fifth": "5", "half": "0.5", "dozen": "12",
}
_NEGATIONS = frozenset({"not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without",
                        "nowhere", "hardly", "n't"})
_ROLE_WORDS = frozenset({"from", "to", "into", "than", "versus", "vs", "before", "after", "between",
                         "toward", "towards", "onto", "over", "under", "against", "via"})
# Words that carry no meaning of their own in a prompt: stop words, politeness, hedges.
_FILLER = frozenset("""
a an the this that these those is are was were be been being am do does did doing have has had having
i me my mine you your yours we us our he him his she her it its they them their what which who whom
whose when where why how whether if then else so and or but of in on at by for with about as
into through during above below up down out off again further once here there all any both each
few more most other some such only own same too very can will just should would could may might must
shall please pls plz kindly hey hi hello hiya thanks thank cheers ok okay well also really actually
basically quickly quick simply just tell know want wanted like need needed help give show let
wonder wondering curious question asking ask explain me? could would you can anyone somebody someone
one get got getting go going make sure exactly maybe perhaps probably i'd i'm
""".split())
_CURLY_APOSTROPHE = "\u2019"
_WORD = re.compile(r"[a-z0-9]+(?:[.'][a-z0-9]+)*")
_TOKEN = re.compile(r"[A-Za-z0-9]+(?:[.'\-][A-Za-z0-9]+)*|[.!?]")
_SENTENCE_ENDS = frozenset(".!?")
_QUOTED = re.compile("\"([^\"]{1,200})\"|\u201c([^\u201d]{1,200})\u201d|'([^']{2,200})'(?![a-z])")
_NUMERIC = re.compile(r"^\d+(?:[.,]\d+)*$")


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class _Parsed:
    words: tuple[str, ...]
    numbers: Counter
    number_order: tuple[str, ...]
    quotes: frozenset[str]
    negations: int
    entities: tuple[str, ...]
    roles: frozenset[tuple[str, str]]
    content: tuple[str, ...]


def _stem(word: str) -> str:
    for suffix in ("ingly", "ing", "edly", "ed", "ies", "es", "s", "ly"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    return word


def _normalise(text: str) -> str:
    text = text.replace(_CURLY_APOSTROPHE, "'").lower()
    text = re.sub(r"[a-z]+'[a-z]+", lambda m: _CONTRACTIONS.get(m.group(0), m.group(0).replace("'s", "")), text)
    return text


@lru_cache(maxsize=4096)
def _parse(text: str) -> _Parsed:
    quotes = frozenset(
        (a or b or c).strip().lower() for a, b, c in _QUOTED.findall(text) if (a or b or c).strip()
    )
    entities: list[str] = []
    sentence_start = True
    for term in _TOKEN.findall(text.replace(_CURLY_APOSTROPHE, "'")):
        if term in _SENTENCE_ENDS:
            sentence_start = True
            continue
        name_like = (
            (term[0].isupper() and not sentence_start and term.lower() not in _FILLER)
            or (len(term) > 1 and term.isupper() and term.isalpha())
            or (any(c.isdigit() for c in term) and any(c.isalpha() for c in term))
        )
        if name_like and term != "I":
            entities.append(term.lower().split("'")[0])
        sentence_start = False
    words = tuple(_WORD.findall(_normalise(text)))
    numbers: Counter = Counter()
    number_order: list[str] = []
    negations = 0
    roles: set[tuple[str, str]] = set()
    content: list[str] = []
    for index, word in enumerate(words):
        number = _NUMBER_WORDS.get(word) or (word.replace(",", "") if _NUMERIC.match(word) else None)
        if number is not None:
            numbers[number] += 1
            number_order.append(number)
        if word in _NEGATIONS:
            negations += 1
        if word in _ROLE_WORDS:
            following = next((w for w in words[index + 1:] if w not in _FILLER), None)
            if following is not None:
                roles.add((word, _stem(following)))
        if word not in _FILLER and word not in _NEGATIONS and word not in _ROLE_WORDS and number is None:
            content.append(word)
    return _Parsed(words=words, numbers=numbers, number_order=tuple(number_order), quotes=quotes, negations=negations,
                   entities=tuple(dict.fromkeys(entities)), roles=frozenset(roles), content=tuple(content))


def _edits_allowed(word: str) -> int:
    return 0 if len(word) < 5 else 1 if len(word) < 9 else 2


@lru_cache(maxsize=65536)
def _close(a: str, b: str) -> bool:
    """Same word, same stem, or a typo of it (Damerau-Levenshtein within a length-based limit)."""
    if a == b or _stem(a) == _stem(b):
        return True
    limit = min(_edits_allowed(a), _edits_allowed(b))
    if limit == 0 or abs(len(a) - len(b)) > limit or (a[0] != b[0] and a[:2] != b[1::-1]):
        return False
    previous2: list[int] | None = None
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cost = ca != cb
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if previous2 is not None and i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
        if min(previous) > limit:
            return False
    return previous[-1] <= limit


def _missing(words: tuple[str, ...], others: tuple[str, ...]) -> list[str]:
    return [w for w in words if not any(_close(w, o) for o in others)]


def _position(term: str, words: tuple[str, ...]) -> int:
    for index, word in enumerate(words):
        if _close(term, word):
            return index
    return -1


def candidate_verify(query: str, cached: str) -> Verdict:
    """Whether ``cached`` asks the same thing as ``query`` (see the module docstring)."""
    if query.strip().lower() == cached.strip().lower():
        return Verdict(True)
    a, b = _parse(query), _parse(cached)
    if a.numbers != b.numbers:
        return Verdict(False, "numbers")
    if a.quotes != b.quotes:
        return Verdict(False, "quotes")
    if a.negations % 2 != b.negations % 2:
        return Verdict(False, "negation")
    if _missing(a.entities, b.words) or _missing(b.entities, a.words):
        return Verdict(False, "entities")
    shared = [e for e in dict.fromkeys(a.entities + b.entities) if _position(e, a.words) >= 0
              and _position(e, b.words) >= 0]
    if len(shared) > 1:
        order_a = sorted(shared, key=lambda e: _position(e, a.words))
        order_b = sorted(shared, key=lambda e: _position(e, b.words))
        if order_a != order_b:
            return Verdict(False, "order")
    if {(r, t) for r, t in a.roles} != {(r, t) for r, t in b.roles} and not _roles_close(a.roles, b.roles):
        return Verdict(False, "roles")
    if _missing(a.content, b.content) or _missing(b.content, a.content):
        return Verdict(False, "content")
    if a.number_order != b.number_order and not _rotation([b.number_order.index(n) for n in a.number_order]):
        return Verdict(False, "order")
    if not _rotation(_positions(a.content, b.content)):
        return Verdict(False, "order")
    return Verdict(True)


def _positions(words: tuple[str, ...], others: tuple[str, ...]) -> list[int]:
    """Where each word of ``words`` sits in ``others`` (each position used once)."""
    used: set[int] = set()
    positions: list[int] = []
    for word in words:
        for index, other in enumerate(others):
            if index not in used and _close(word, other):
                used.add(index)
                positions.append(index)
                break
    return positions


def _rotation(sequence: list[int]) -> bool:
    """Sorted, or sorted after moving one leading or trailing run to the other end."""
    descents = sum(1 for x, y in itertools.pairwise(sequence) if y < x)
    if descents == 0:
        return True
    return descents == 1 and sequence[-1] < sequence[0]


def _roles_close(a: frozenset, b: frozenset) -> bool:
    if len(a) != len(b):
        return False
    return all(any(ra == rb and _close(ta, tb) for rb, tb in b) for ra, ta in a)
