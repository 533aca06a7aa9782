"""Verification of a semantic cache candidate: does the stored answer answer the new prompt?

Embedding similarity scores "train times from Paris to Rome" and "from Rome to Paris" as
near-identical, and the same for a changed number, name, question word or a negation, while a
rewording with synonyms or extra words may score lower than either. A candidate that passed the
tenant's similarity threshold goes through two stages; a rejection carries its reason (logged,
and counted in the quality benchmark):

    guards   slots that must be equal on both sides, each kept because it rejects near misses
             on the tuning data at almost no cost in true rewordings (``bench/verifier_train.py``
             prints that count for each):
             numbers    the same numbers (digits or cardinal words), as a multiset
             quotes     the same quoted strings
             negation   the same polarity (count of negation words, mod 2)
             entities   no name-like word left over on both sides (one name replaced by another)
             order      the names both sides share come in the same order
             roles      no word behind a different direction word on each side ("from paris")
             question   not two different question words among why, when, where, who
             opposite   not a word on one side and its reverse on the other ("turn on" / "turn off",
                        and WordNet 3.0's antonyms among content words: "good" / "bad", "increase" /
                        "decrease"), which word vectors place side by side
             modal      no modal left over on each side from a different class: "could he still
                        win" asks what "will he ever win" asks, "can I" does not ask "should I"
    model    gradient-boosted decision trees over what the two prompts leave over after aligning
             their words (``apps.cache.pair_features``): how many words, of which kind, how far
             a substitute is from the word it replaces in the local model's vector space, and
             which words they are. They are trained by ``bench/verifier_train.py`` (no
             randomness) on the tuning halves of the project's prompt pairs, prompt pairs written
             for training only, and samples of the public paraphrase sets, and shipped as
             ``data/verifier_model.json``; nothing is trained at run time. The trees replaced a
             logistic regression over the same features, which ranked the support-queue pairs
             of the tuning half worse (out-of-fold AUC 0.856 against 0.881): whether a left-over
             word matters depends on what else is left over, which one weight per feature
             cannot say. The rejection reason is the kind of word that is left over: question,
             modal, entities, roles or content.

The model's score is calibrated on held-apart tuning data into operating points: a target
precision of served hits (``precision=``, default ``DEFAULT_PRECISION``) maps to the score the
candidate must reach.

    long       a pair whose longer prompt has ``LONG_WORDS`` words or more is served only when no
               content word is left over and the aligned words keep their order, whatever the score
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from apps.cache.pair_features import (
    DATA_DIR,
    QUESTION_STRICT,
    ROLE,
    Prompt,
    modal_classes,
    pair_align,
    pair_features,
    prompt_parse,
    stem,
    word_vectors,
    words_close,
)

MODEL_FILE = DATA_DIR / "verifier_model.json"
ANTONYMS_FILE = DATA_DIR / "antonyms.txt"  # written by bench/antonyms_build.py
DEFAULT_PRECISION = 0.97
# From this many words on (the longer prompt), a pair is served only when every content word aligns,
# in the same order: on long sentences, swapping two words or adding a clause changes the meaning
# while leaving almost every feature of the model unchanged (docs/benchmarks.md has the figures).
LONG_WORDS = 15
# Word pairs that turn a request into its reverse; "on" and "off" are function words to the model.
OPPOSITES = (("on", "off"), ("up", "down"), ("enable", "disable"), ("open", "close"), ("start", "stop"),
             ("buy", "sell"), ("upload", "download"), ("import", "export"), ("increase", "decrease"),
             ("add", "remove"), ("lock", "unlock"), ("install", "uninstall"), ("encrypt", "decrypt"))


def antonyms_load(path=ANTONYMS_FILE) -> dict[str, frozenset[str]]:
    """Each word's antonyms, by stem (so "increases" finds "decrease")."""
    table: dict[str, set[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            word, antonym = line.split("\t")
            table.setdefault(stem(word), set()).add(stem(antonym))
    return {word: frozenset(antonyms) for word, antonyms in table.items()}


_ANTONYMS = antonyms_load()


@lru_cache(maxsize=65536)
def _forms(word: str) -> frozenset[str]:
    """The stems a word may be listed under: itself, and its base when it is a comparative or superlative."""
    forms = {stem(word)}
    for suffix in ("iest", "ier", "est", "er"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            base = word[: -len(suffix)] + ("y" if suffix.startswith("i") else "")
            forms |= {stem(base), stem(base[:-1]) if base[-1:] == base[-2:-1] else stem(base)}  # "biggest"
    return frozenset(forms)


def _antonym_swapped(a: Prompt, b: Prompt) -> bool:
    """A content word only one side has, whose antonym only the other side has."""
    forms_a = frozenset().union(*(_forms(w.text) for w in a.words))
    forms_b = frozenset().union(*(_forms(w.text) for w in b.words))
    only_b = frozenset().union(*(_forms(w.text) for w in b.words if w.kind == "content")) - forms_a
    return any(_ANTONYMS.get(f, frozenset()) & only_b for w in a.words if w.kind == "content"
               for forms in (_forms(w.text),) if not forms & forms_b for f in forms)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""
    score: float | None = None  # the model's probability that the pair asks the same thing


@dataclass(frozen=True)
class _Model:
    """The trees as flat node arrays: a node with ``feature`` -1 is a leaf holding ``value``."""

    base: float
    depth: int
    roots: np.ndarray
    feature: np.ndarray
    cut: np.ndarray  # an inner node sends a pair left when its feature is at most this
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    operating_points: tuple[tuple[float, float], ...]  # (precision, minimum score), ascending precision

    def score(self, features: np.ndarray) -> float:
        x = np.append(features.astype(np.float64), 0.0)  # a leaf's feature -1 reads this padding
        node = self.roots
        for _ in range(self.depth):  # every tree at once, one level per step
            inner = self.feature[node]
            node = np.where(inner < 0, node,
                            np.where(x[inner] <= self.cut[node], self.left[node], self.right[node]))
        z = self.base + float(self.value[node].sum())
        return 1.0 / (1.0 + math.exp(-max(min(z, 40.0), -40.0)))

    def threshold(self, precision: float) -> float:
        for target, minimum in self.operating_points:
            if target >= precision:
                return minimum
        return self.operating_points[-1][1]


def model_load(path=MODEL_FILE) -> _Model:
    """The verifier's weights and operating points, as written by ``bench/verifier_train.py``."""
    data = json.loads(path.read_text())
    return _Model(base=float(data["base"]), depth=int(data["depth"]),
                  roots=np.asarray(data["roots"], dtype=np.int64),
                  feature=np.asarray(data["feature"], dtype=np.int64),
                  cut=np.asarray(data["threshold"], dtype=np.float64),
                  left=np.asarray(data["left"], dtype=np.int64), right=np.asarray(data["right"], dtype=np.int64),
                  value=np.asarray(data["value"], dtype=np.float64),
                  operating_points=tuple(sorted((float(p), float(t)) for p, t in data["operating_points"].items())))


_MODEL = model_load() if MODEL_FILE.exists() else None
word_vectors() if _MODEL is not None else None  # load the word table now, not on the first request


# Direction words that give their word the same role ("convert a PDF to Word" / "turn a PDF into Word").
_SAME_ROLE = {"into": "to", "onto": "to", "toward": "to", "towards": "to", "vs": "versus"}


def _roles(prompt: Prompt) -> dict[str, str]:
    """Each content word behind a direction word (up to two function words between): its role."""
    roles: dict[str, str] = {}
    words = prompt.words
    for index, word in enumerate(words):
        if word.text not in ROLE:
            continue
        for follower in words[index + 1:index + 4]:
            if follower.kind == "content":
                roles.setdefault(follower.stem, _SAME_ROLE.get(word.text, word.text))
                break
            if follower.kind != "function":
                break
    return roles


def guards_check(a: Prompt, b: Prompt) -> str:
    """The first slot that differs between the prompts, or "" (see the module docstring)."""
    if sorted(w.number for w in a.words if w.number) != sorted(w.number for w in b.words if w.number):
        return "numbers"
    if a.quotes != b.quotes:
        return "quotes"
    if sum(w.kind == "negation" for w in a.words) % 2 != sum(w.kind == "negation" for w in b.words) % 2:
        return "negation"
    names_a = [w for w in a.words if w.entity]
    names_b = [w for w in b.words if w.entity]
    if (any(not any(words_close(n.text, w.text) for w in b.words) for n in names_a)
            and any(not any(words_close(n.text, w.text) for w in a.words) for n in names_b)):
        return "entities"
    shared = list(dict.fromkeys(n.stem for n in names_a + names_b))
    position_a = {s: next((i for i, w in enumerate(a.words) if words_close(s, w.stem)), -1) for s in shared}
    position_b = {s: next((i for i, w in enumerate(b.words) if words_close(s, w.stem)), -1) for s in shared}
    shared = [s for s in shared if position_a[s] >= 0 and position_b[s] >= 0]
    if sorted(shared, key=position_a.__getitem__) != sorted(shared, key=position_b.__getitem__):
        return "order"
    roles_a, roles_b = _roles(a), _roles(b)
    if any(term in roles_b and roles_b[term] != role for term, role in roles_a.items()):
        return "roles"
    questions_a = {w.text for w in a.words} & QUESTION_STRICT
    questions_b = {w.text for w in b.words} & QUESTION_STRICT
    if questions_a and questions_b and not questions_a & questions_b:
        return "question"
    texts_a, texts_b = {w.text for w in a.words}, {w.text for w in b.words}
    if any(x in texts_a and y in texts_b and x not in texts_b and y not in texts_a
           for x, y in OPPOSITES + tuple((y, x) for x, y in OPPOSITES)) or _antonym_swapped(a, b):
        return "opposite"
    alignment = pair_align(a, b)
    modals_a, modals_b = modal_classes(alignment.left_a), modal_classes(alignment.left_b)
    if modals_a and modals_b and not modals_a & modals_b:
        return "modal"
    return ""


def _model_reason(a: Prompt, b: Prompt) -> str:
    texts_a = {w.text for w in a.words}
    texts_b = {w.text for w in b.words}
    left = [w for w in a.words if w.text not in texts_b] + [w for w in b.words if w.text not in texts_a]
    kinds = {w.kind for w in left}
    for kind in ("question", "modal"):
        if kind in kinds:
            return kind
    if any(w.entity for w in left):
        return "entities"
    if "role" in kinds:
        return "roles"
    return "content"


def candidate_score(query: str, cached: str) -> float:
    """The model's probability that the two prompts ask the same thing (guards not applied)."""
    if _MODEL is None:
        raise RuntimeError(f"{MODEL_FILE} is missing: run bench/verifier_train.py")
    return _MODEL.score(pair_features(prompt_parse(query), prompt_parse(cached)))


def candidate_verify(query: str, cached: str, *, precision: float = DEFAULT_PRECISION) -> Verdict:
    """Whether the answer stored for ``cached`` answers ``query`` (see the module docstring).

    ``precision`` is the share of served hits that should be right; a higher target serves fewer."""
    if query.strip().lower() == cached.strip().lower():
        return Verdict(True)
    a, b = prompt_parse(query), prompt_parse(cached)
    if [w.text for w in a.words] == [w.text for w in b.words] and a.quotes == b.quotes:
        return Verdict(True)  # casing and punctuation only
    reason = guards_check(a, b)
    if reason:
        return Verdict(False, reason)
    if _MODEL is None:
        raise RuntimeError(f"{MODEL_FILE} is missing: run bench/verifier_train.py")
    score = _MODEL.score(pair_features(a, b))
    if score < _MODEL.threshold(precision):
        return Verdict(False, _model_reason(a, b), score)
    if max(len(a.words), len(b.words)) >= LONG_WORDS:
        alignment = pair_align(a, b)
        if alignment.left_content or not alignment.in_order:
            return Verdict(False, "long", score)
    return Verdict(True, score=score)
