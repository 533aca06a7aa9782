"""What two prompts share and what each leaves over: the input of the cache's verifier.

A prompt is read into words, each of one kind:

    question   what why when where who whom whose which how
    modal      can could should would will shall may might must
    negation   not no never none nothing nobody neither nor without
    number     digits, and cardinal words from two up ("one", "first", "half" are not counted:
               "one of", "at first" and "half an hour" are rarely the slot a question turns on)
    role       direction and comparison words: from to into than versus between before after ...
    function   articles, pronouns, auxiliaries, prepositions, greetings and politeness
    content    everything else; a content word is also an entity when it is written like a name
               (capitalised mid-sentence, an acronym, letters mixed with digits)

Words of the two prompts are aligned when they are the same, share a stem, or one is a typo of
the other. What is left over, and of which kind, is what :func:`pair_features` measures, together
with a static word vector per left-over word taken from the local model (all-MiniLM-L6-v2's own
output for the word alone, reduced to ``WORD_DIMS`` dimensions by ``bench/verifier_train.py``), which
measures how far a substitute is from the word it replaces and how well a left-over word is
covered by the other prompt's words ("explain" by "what is", not "python" by "recursion").
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"
WORDS_FILE = DATA_DIR / "verifier_words.npz"

QUESTION = frozenset("what why when where who whom whose which how".split())
# Question words that name different kinds of answer: two prompts asking "when" and "why" never
# share one (what/which/how do not separate so cleanly: "what year" asks "when").
QUESTION_STRICT = frozenset("why when where who".split())
MODAL = frozenset("can could should would will shall may might must".split())
NEGATION = frozenset("not no never none nothing nobody neither nor without n't".split())
ROLE = frozenset("from to into than versus vs between before after toward towards onto against via".split())
FUNCTION = frozenset("""
a an the this that these those is are was were be been being am do does did doing done have has had having
i me my mine myself you your yours yourself we us our ours he him his she her it its they them their theirs
of in on at by for with about as through during above below up down out off over under again once
here there and or but so if then else also just very too really actually exactly basically
please pls plz kindly hey hi hello thanks thank cheers ok okay well some any each every all both
someone somebody anyone anybody something anything
""".split())
_CARDINALS = {
    "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
    "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14", "fifteen": "15",
    "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19", "twenty": "20", "thirty": "30",
    "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80", "ninety": "90",
    "hundred": "100", "thousand": "1000", "million": "1000000", "billion": "1000000000", "dozen": "12",
}
_CONTRACTIONS = {
    "what's": "what is", "how's": "how is", "where's": "where is", "who's": "who is", "it's": "it is",
    "that's": "that is", "there's": "there is", "i'm": "i am", "you're": "you are", "we're": "we are",
    "they're": "they are", "can't": "can not", "won't": "will not", "don't": "do not", "doesn't": "does not",
    "didn't": "did not", "isn't": "is not", "aren't": "are not", "wasn't": "was not", "weren't": "were not",
    "shouldn't": "should not", "wouldn't": "would not", "couldn't": "could not", "haven't": "have not",
    "hasn't": "has not", "i'd": "i would", "i've": "i have", "let's": "let us", "cannot": "can not",
    "ain't": "is not", "hadn't": "had not", "mustn't": "must not",
}
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u00ab": '"', "\u00bb": '"'})
_TOKEN = re.compile(r"[A-Za-z0-9]+(?:['.][A-Za-z0-9]+)*|[.!?:;]")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_HYPHEN = re.compile(r"(?<=[A-Za-z0-9])-(?=[A-Za-z0-9])")
_QUOTED = re.compile(r'"([^"]{1,200})"')
_SENTENCE_ENDS = frozenset(".!?:;")


@dataclass(frozen=True, slots=True)
class Word:
    text: str  # lower case
    stem: str
    kind: str  # question, modal, negation, number, role, function, content
    entity: bool
    number: str | None


@dataclass(frozen=True, slots=True)
class Prompt:
    words: tuple[Word, ...]
    quotes: frozenset[str]


def stem(word: str) -> str:
    for suffix in ("ingly", "ings", "ing", "edly", "ied", "ies", "ed", "es", "s", "ly"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _kind(word: str) -> tuple[str, str | None]:
    if word in QUESTION:
        return "question", None
    if word in MODAL:
        return "modal", None
    if word in NEGATION:
        return "negation", None
    number = _CARDINALS.get(word)
    if number is None and word[0].isdigit() and re.fullmatch(r"\d+(?:\.\d+)?", word):
        number = word.lstrip("0") or "0"
    if number is not None:
        return "number", number
    if word in ROLE:
        return "role", None
    if word in FUNCTION:
        return "function", None
    return "content", None


@lru_cache(maxsize=8192)
def prompt_parse(text: str) -> Prompt:
    """Words of ``text`` with their kinds (cached: a stored prompt is verified many times)."""
    text = text.translate(_QUOTES)
    quotes = frozenset(q.strip().lower() for q in _QUOTED.findall(text) if q.strip())
    text = _HYPHEN.sub("", _THOUSANDS.sub("", text))
    words: list[Word] = []
    sentence_start = True
    terms = _TOKEN.findall(text)
    letters = [t for t in terms if t.isalpha() and len(t) > 1]
    # A prompt written in capitals has no acronyms to tell apart.
    acronyms = sum(t.isupper() for t in letters) * 2 < len(letters)
    for term in terms:
        if term in _SENTENCE_ENDS:
            sentence_start = True
            continue
        lower = term.lower()
        expanded = _CONTRACTIONS.get(lower)
        if expanded is None and lower.endswith("'s"):
            expanded = lower[:-2]
        parts = (expanded or lower).split()
        name_like = (term != "I" and (
            (term[0].isupper() and not sentence_start)
            or (len(term) > 1 and term.isupper() and term.isalpha())
            or (any(c.isdigit() for c in term) and any(c.isalpha() for c in term))))
        for part in parts:
            kind, number = _kind(part)
            if acronyms and kind in ("function", "role") and len(term) > 1 and term.isupper() and term.isalpha():
                kind = "content"  # "US", "IT", "OR": an acronym, not the pronoun or the preposition
            words.append(Word(part, stem(part), kind, name_like and kind == "content", number))
        sentence_start = False
    return Prompt(tuple(words), quotes)


def _edits_allowed(word: str) -> int:
    return 0 if len(word) < 5 else 1 if len(word) < 9 else 2


@lru_cache(maxsize=65536)
def words_close(a: str, b: str) -> bool:
    """Same word, same stem, or a typo of it (Damerau-Levenshtein within a length-based limit)."""
    if a == b or stem(a) == stem(b):
        return True
    # "living" / "live", "used" / "use": the suffix took a silent e with it.
    if any(x.endswith(("ing", "ed")) and stem(x) != x and stem(x) + "e" == y for x, y in ((a, b), (b, a))):
        return True
    limit = min(_edits_allowed(a), _edits_allowed(b))
    if limit == 0 or abs(len(a) - len(b)) > limit or (a[0] != b[0] and a[:2] != b[1::-1]):
        return False
    previous2: list[int] | None = None
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb))
            if previous2 is not None and i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
        if min(previous) > limit:
            return False
    return previous[-1] <= limit


class WordVectors:
    """The static word table: unit vectors (int8 on disk), looked up by word or by its stem."""

    def __init__(self, path: Path = WORDS_FILE) -> None:
        with np.load(path, allow_pickle=False) as data:
            self.words = bytes(data["words"]).decode("utf-8").split("\n")
            self.vectors = data["vectors"].astype(np.float32) / 127.0
        self.vectors /= np.maximum(np.linalg.norm(self.vectors, axis=1, keepdims=True), 1e-6)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.dims = self.vectors.shape[1]
        self.zero = np.zeros(self.dims, dtype=np.float32)

    def get(self, word: str) -> np.ndarray | None:
        row = self.index.get(word)
        if row is None:
            row = self.index.get(stem(word))
        if row is None and word.endswith("s"):
            row = self.index.get(word[:-1])
        return None if row is None else self.vectors[row]


_VECTORS: WordVectors | None = None


def word_vectors() -> WordVectors:
    global _VECTORS  # one table per process, loaded on first use
    if _VECTORS is None:
        _VECTORS = WordVectors()
    return _VECTORS


def _aligned(words: tuple[Word, ...], others: tuple[Word, ...]) -> tuple[list[tuple[Word, int]], list[Word]]:
    """The words that align with their positions in ``others`` (each used once), and those left over."""
    used: set[int] = set()
    positions: list[tuple[Word, int]] = []
    left: list[Word] = []
    for word in words:
        for index, other in enumerate(others):
            if index not in used and (word.text == other.text or (
                    word.kind == other.kind == "content" and words_close(word.text, other.text))):
                used.add(index)
                positions.append((word, index))
                break
        else:
            left.append(word)
    return positions, left


def _inversions(positions: list[int]) -> tuple[float, bool]:
    """Share of aligned word pairs in the other order, and whether one moved phrase explains it."""
    if len(positions) < 2:
        return 0.0, True
    pairs = len(positions) * (len(positions) - 1) / 2
    inverted = sum(1 for x, y in itertools.combinations(positions, 2) if y < x)
    descents = sum(1 for x, y in itertools.pairwise(positions) if y < x)
    rotation = descents == 0 or (descents == 1 and positions[-1] < positions[0])
    # A phrase moved to the front or the back ("In Python, how do I ...") is a rewording.
    return (0.0 if rotation else inverted / pairs), rotation


_SCOPE = frozenset("in on for with at by using about within inside under during".split())
# Modals by what they ask: whether something is possible or will happen ("could he still win",
# "will he ever win") against what one ought to do ("should I", "must I"): a swap inside a class keeps
# the intent, a swap across classes changes it ("can I change my username" is not "should I").
MODAL_OUGHT = frozenset("should must shall ought".split())
# Words that narrow a question to one extreme or one case: "the most followed", "only offline".
NARROWING = frozenset("most least only best worst fastest cheapest biggest largest smallest first last top".split())


def _scoped(prompt: Prompt, left: list[Word]) -> int:
    """Content words inside phrases only this side adds ("in python", "on my phone", "for beginners").

    Such a phrase narrows the question; it is counted only when all of it is left over, so a phrase
    that merely moved ("In Python, how do I ...") counts nothing."""
    left_ids = {id(w) for w in left}
    count = 0
    words = prompt.words
    for index, word in enumerate(words):
        if word.text not in _SCOPE or id(word) not in left_ids:
            continue
        phrase = []
        for follower in words[index + 1:index + 5]:
            if follower.kind in ("question", "modal", "role") or follower.text in _SCOPE:
                break
            phrase.append(follower)
        content = [w for w in phrase if w.kind == "content"]
        if content and all(id(w) in left_ids for w in content):
            count += len(content)
    return count


def modal_classes(words: list[Word]) -> set[str]:
    """The classes of the modals among ``words``: "possible" (can, could, will ...) or "ought"."""
    return {"ought" if w.text in MODAL_OUGHT else "possible" for w in words if w.kind == "modal"}


# What kind of answer a question asks for, read off its first question word and the word after it
# ("how many" a quantity, "what year" a time, "what causes" a reason, "how do I" a manner). Two
# prompts that ask for different kinds rarely share an answer, whatever else they share; a prompt
# with no question word (a yes/no question, an instruction) has no kind, and says nothing.
_MEASURE = frozenset("many much long often old far big tall fast hot cold large deep early late soon "
                     "high heavy wide expensive cheap".split())
_KIND_NOUNS = {
    "time": "time year years date day days month hour hours century age era season".split(),
    "place": "place places city cities country countries location state region continent".split(),
    "person": "person people author artist inventor president painter writer singer player".split(),
    "quantity": ("price prices cost costs number amount size height length distance population weight "
                 "temperature percentage rate speed limit fee fees capacity value salary").split(),
    "reason": "cause causes caused reason reasons makes made purpose point".split(),
    "manner": "way ways steps step method process procedure best".split(),
}
_KIND_OF_NOUN = {noun: kind for kind, nouns in _KIND_NOUNS.items() for noun in nouns}


def answer_kind(prompt: Prompt) -> str:
    """reason, time, place, person, quantity, manner or thing; "" without a question word."""
    words = prompt.words
    for index, word in enumerate(words):
        if word.kind != "question":
            continue
        after = [w.text for w in words[index + 1:index + 4]]
        if word.text == "why":
            return "reason"
        if word.text == "when":
            return "time"
        if word.text == "where":
            return "place"
        if word.text in ("who", "whom", "whose"):
            return "person"
        if word.text == "how":
            if after and after[0] in _MEASURE:
                return "quantity"
            return "reason" if after[:1] == ["come"] else "manner"
        for follower in words[index + 1:index + 5]:  # what / which: the first content word tells
            if follower.kind == "content":
                return _KIND_OF_NOUN.get(follower.text, "thing")
        return "thing"
    return ""


@dataclass(frozen=True, slots=True)
class Alignment:
    left_a: list[Word]  # words of the first prompt that found no partner in the second
    left_b: list[Word]
    in_order: bool  # the aligned content words and numbers come in the same order on both sides

    @property
    def left_content(self) -> int:
        return sum(w.kind == "content" for w in self.left_a + self.left_b)


def pair_align(a: Prompt, b: Prompt) -> Alignment:
    """What each prompt leaves over after aligning its words with the other's, and the order of the rest."""
    positions_a, left_a = _aligned(a.words, b.words)
    left_b = _aligned(b.words, a.words)[1]
    inverted, rotation = _inversions([index for word, index in positions_a if word.kind in ("content", "number")])
    return Alignment(left_a, left_b, inverted == 0.0 and rotation and
                     all(x < y for x, y in itertools.pairwise(
                         [index for word, index in positions_a if word.kind in ("content", "number")])))


FEATURE_NAMES = (
    "bias", "left_content", "left_content_min", "left_content_max", "left_entity", "left_entity_min",
    "left_question", "question_strict_swap", "left_modal", "left_role", "left_function", "left_unknown",
    "matched_share_min", "inversions", "not_rotation", "substitution_sim", "left_cover_min", "left_cover_mean",
    "length_log_ratio", "left_number", "left_negation", "left_modal_min", "left_question_min",
    "left_scoped", "added_only", "modal_cross", "modal_ought_one_side", "modal_same_class", "narrowing_one_side",
    "answer_kind_differs", "answer_kind_one_side",
)


def pair_features(a: Prompt, b: Prompt, vectors: WordVectors | None = None) -> np.ndarray:
    """The feature vector of a pair (symmetric in ``a`` and ``b``), in the order of ``FEATURE_NAMES``.

    (The summed vectors of the left-over words, as features of their own, were tried: on the
    tuning half's cross-validation they over-fitted, recall at precision 0.97 fell from 0.73 to 0.37.)"""
    vectors = vectors or word_vectors()
    positions_a, left_a = _aligned(a.words, b.words)
    _positions_b, left_b = _aligned(b.words, a.words)
    content_a = [w for w in left_a if w.kind == "content"]
    content_b = [w for w in left_b if w.kind == "content"]
    entity_a = sum(w.entity for w in content_a)
    entity_b = sum(w.entity for w in content_b)
    question_a = {w.text for w in left_a if w.kind == "question"}
    question_b = {w.text for w in left_b if w.kind == "question"}
    strict_swap = bool(question_a & QUESTION_STRICT and question_b & QUESTION_STRICT)
    n_content_a = sum(w.kind == "content" for w in a.words) or 1
    n_content_b = sum(w.kind == "content" for w in b.words) or 1
    matched_share = min(1 - len(content_a) / n_content_a, 1 - len(content_b) / n_content_b)
    modal_a, modal_b = modal_classes(left_a), modal_classes(left_b)
    # Order of the aligned content words and numbers only: function words move freely in a rewording.
    content_positions = [index for word, index in positions_a if word.kind in ("content", "number")]
    inverted, rotation = _inversions(content_positions)

    kind_a, kind_b = answer_kind(a), answer_kind(b)

    vec_a = [(w, vectors.get(w.text)) for w in content_a]
    vec_b = [(w, vectors.get(w.text)) for w in content_b]
    unknown = sum(v is None for _, v in vec_a + vec_b)
    substitution = 0.0
    for (_, va), (_, vb) in itertools.product(vec_a, vec_b):
        if va is not None and vb is not None:
            substitution = max(substitution, float(va @ vb))
    # How well each left-over word is covered by any content word of the other prompt.
    covers = []
    for left, other in ((vec_a, b), (vec_b, a)):
        others = [v for w in other.words if w.kind == "content" and (v := vectors.get(w.text)) is not None]
        for _, v in left:
            if v is not None:
                covers.append(max((float(v @ o) for o in others), default=0.0))
    return np.array([
        1.0, len(content_a) + len(content_b), min(len(content_a), len(content_b)),
        max(len(content_a), len(content_b)), entity_a + entity_b, min(entity_a, entity_b),
        len(question_a) + len(question_b), float(strict_swap),
        sum(w.kind == "modal" for w in left_a + left_b), sum(w.kind == "role" for w in left_a + left_b),
        min(sum(w.kind == "function" for w in left_a + left_b), 6), unknown, matched_share, inverted,
        float(not rotation), substitution, min(covers, default=1.0), float(np.mean(covers)) if covers else 1.0,
        abs(np.log((len(a.words) + 1) / (len(b.words) + 1))),
        sum(w.kind == "number" for w in left_a + left_b), sum(w.kind == "negation" for w in left_a + left_b),
        min(sum(w.kind == "modal" for w in left_a), sum(w.kind == "modal" for w in left_b)),
        min(len(question_a), len(question_b)), _scoped(a, left_a) + _scoped(b, left_b),
        float(max(len(content_a), len(content_b))) if min(len(content_a), len(content_b)) == 0 else 0.0,
        float(bool(modal_a) and bool(modal_b) and not modal_a & modal_b),
        float(("ought" in modal_a) != ("ought" in modal_b)),
        float(bool(modal_a & modal_b)),
        float(len({w.text for w in left_a} & NARROWING) + len({w.text for w in left_b} & NARROWING)),
        float(bool(kind_a) and bool(kind_b) and kind_a != kind_b), float(bool(kind_a) != bool(kind_b)),
    ], dtype=np.float32)
