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
             opposite   not a word on one side and its reverse on the other ("turn on" / "turn off")
             modal      no modal left over on each side from a different class: "could he still
                        win" asks what "will he ever win" asks, "can I" does not ask "should I"
    model    a logistic regression over what the two prompts leave over after aligning their
             words (``apps.cache.pair_features``): how many words, of which kind, how far a
             substitute is from the word it replaces in the local model's vector space, and
             which words they are. It is trained by ``bench/verifier_train.py`` (fixed seed) on
             the tuning halves of the project's prompt pairs and of the public paraphrase sets,
             and shipped as ``data/verifier_model.json``; nothing is trained at run time. Its
             rejection reason is the kind of word that is left over: question, modal,
             entities, roles or content.

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
    word_vectors,
    words_close,
)

MODEL_FILE = DATA_DIR / "verifier_model.json"
DEFAULT_PRECISION = 0.97
# From this many words on (the longer prompt), a pair is served only when every content word aligns,
# in the same order: on long sentences, swapping two words or adding a clause changes the meaning
# while leaving almost every feature of the model unchanged (docs/benchmarks.md has the figures).
LONG_WORDS = 15
# Word pairs that turn a request into its reverse; "on" and "off" are function words to the model.
OPPOSITES = (("on", "off"), ("up", "down"), ("enable", "disable"), ("open", "close"), ("start", "stop"),
             ("buy", "sell"), ("upload", "download"), ("import", "export"), ("increase", "decrease"),
             ("add", "remove"), ("lock", "unlock"), ("install", "uninstall"), ("encrypt", "decrypt"))


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""
    score: float | None = None  # the model's probability that the pair asks the same thing


@dataclass(frozen=True)
class _Model:
    weights: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    operating_points: tuple[tuple[float, float], ...]  # (precision, minimum score), ascending precision

    def score(self, features: np.ndarray) -> float:
        z = float(((features - self.mean) / self.scale) @ self.weights)
        return 1.0 / (1.0 + math.exp(-max(min(z, 40.0), -40.0)))

    def threshold(self, precision: float) -> float:
        for target, minimum in self.operating_points:
            if target >= precision:
                return minimum
        return self.operating_points[-1][1]


def model_load(path=MODEL_FILE) -> _Model:
    """The verifier's weights and operating points, as written by ``bench/verifier_train.py``."""
    data = json.loads(path.read_text())
    return _Model(weights=np.asarray(data["weights"], dtype=np.float64),
                  mean=np.asarray(data["mean"], dtype=np.float64),
                  scale=np.asarray(data["scale"], dtype=np.float64),
                  operating_points=tuple(sorted((float(p), float(t)) for p, t in data["operating_points"].items())))


_MODEL = model_load() if MODEL_FILE.exists() else None
word_vectors() if _MODEL is not None else None  # load the word table now, not on the first request


def _roles(prompt: Prompt) -> dict[str, str]:
    """Each content word behind a direction word (up to two function words between): its role."""
    roles: dict[str, str] = {}
    words = prompt.words
    for index, word in enumerate(words):
        if word.text not in ROLE:
            continue
        for follower in words[index + 1:index + 4]:
            if follower.kind == "content":
                roles.setdefault(follower.stem, word.text)
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
           for x, y in OPPOSITES + tuple((y, x) for x, y in OPPOSITES)):
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
