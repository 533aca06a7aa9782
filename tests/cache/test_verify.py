"""The verification step and the request fingerprint, on their own."""

from __future__ import annotations

import json

import numpy as np
import pytest

from apps.cache.fingerprint import MAX_AGE_LIMIT, cache_control_parse, cacheable, fingerprint
from apps.cache.verify import candidate_verify


@pytest.mark.parametrize(("query", "cached"), [
    ("What is the capital of France?", "what is the capital of france"),
    ("What is the capital of France?", "Hey, can you tell me what the capital of France is?"),
    ("What is the capitol of Frnace?", "What is the capital of France?"),
    ("How do I sort a list in Python?", "In Python, how do I sort a list?"),
    ("what's the boiling point of water", "What is the boiling point of water?"),
    ("Give me 3 tips for better sleep", "Give me three tips for better sleep"),
])
def test_it_accepts_the_same_question_reworded(query, cached):
    assert candidate_verify(query, cached).ok


@pytest.mark.parametrize(("query", "cached", "reason"), [
    ("Train times from Paris to Rome", "train times from Rome to Paris", "order"),
    ("train times from paris to rome", "train times from rome to paris", "roles"),
    ("convert from json to yaml", "convert from yaml into json", "roles"),
    ("What is the capital of France?", "What is the capital of Spain?", "entities"),
    ("Give me 3 tips for sleep", "Give me 5 tips for sleep", "numbers"),
    ("Is coffee bad for you?", "Is coffee not bad for you?", "negation"),
    ('Translate "good night" to Spanish', 'Translate "good morning" to Spanish', "quotes"),
    ("Summarize this article about climate", "Translate this article about climate", "content"),
    ("Explain recursion", "Explain recursion in python", "content"),
])
def test_it_rejects_near_misses_with_a_reason(query, cached, reason):
    verdict = candidate_verify(query, cached)
    assert not verdict.ok
    assert verdict.reason == reason


@pytest.mark.parametrize(("query", "cached"), [
    ("How do I convert a PDF to Word?", "How can I turn a PDF into Word?"),
    ("Convert this JSON to YAML", "Turn this JSON into YAML"),
])
def test_into_gives_a_word_the_same_role_as_to(query, cached):
    from apps.cache.pair_features import prompt_parse
    from apps.cache.verify import guards_check

    assert guards_check(prompt_parse(query), prompt_parse(cached)) == ""


def _body(*messages, **params) -> dict:
    return {"model": "auto", "messages": [{"role": r, "content": c} for r, c in messages], **params}


def test_it_fingerprints_the_whole_conversation_and_the_answer_parameters():
    base = fingerprint(_body(("user", "hi"), ("assistant", "hello"), ("user", "and then?")))
    assert base.prompt_text == "and then?"
    other_history = fingerprint(_body(("user", "bye"), ("assistant", "hello"), ("user", "and then?")))
    assert other_history.context_hash != base.context_hash
    assert other_history.request_hash != base.request_hash
    hotter = fingerprint(_body(("user", "hi"), ("assistant", "hello"), ("user", "and then?"), temperature=0.5))
    assert hotter.request_hash != base.request_hash
    streamed = fingerprint(_body(("user", "hi"), ("assistant", "hello"), ("user", "and then?"), stream=True))
    assert streamed.request_hash == base.request_hash
    assert fingerprint({**_body(("user", "x")), "model": "sim-mini"}).request_hash != fingerprint(
        _body(("user", "x"))).request_hash


def test_it_applies_the_cacheability_policy():
    assert cacheable(_body(("user", "x")), max_temperature=0, tool_calls=False) is None
    assert cacheable(_body(("user", "x"), temperature=0), max_temperature=0, tool_calls=False) is None
    assert cacheable(_body(("user", "x"), temperature=0.7), max_temperature=0, tool_calls=False) == "temperature"
    assert cacheable(_body(("user", "x"), temperature=0.7), max_temperature=1, tool_calls=False) is None
    assert cacheable(_body(("user", "x"), n=3), max_temperature=1, tool_calls=True) == "n>1"
    assert cacheable(_body(("user", "x"), tools=[{}]), max_temperature=0, tool_calls=False) == "tools"


def test_it_parses_cache_control():
    assert cache_control_parse(None).lookup and cache_control_parse(None).store
    no_cache = cache_control_parse("no-cache")
    assert (no_cache.lookup, no_cache.store) == (False, True)
    no_store = cache_control_parse("No-Store")
    assert (no_store.lookup, no_store.store) == (False, False)
    assert cache_control_parse("max-age=30, no-cache").max_age == 30


def test_it_caps_a_huge_max_age_and_reads_a_malformed_one_as_zero():
    assert cache_control_parse("max-age=99999999999999999999999").max_age == MAX_AGE_LIMIT == 2**31
    assert cache_control_parse("max-age=" + "9" * 5000).max_age == MAX_AGE_LIMIT
    assert cache_control_parse('max-age="600"').max_age == 600
    for value in ("-1", "abc", "", "\u00b2", "1.5"):
        assert cache_control_parse(f"max-age={value}").max_age == 0, value


@pytest.mark.parametrize(("query", "cached"), [
    ("Can you explain what machine learning is?", "What is machine learning?"),
    ("I prefer to live with a small family", "I prefer living with a small family"),
    ("How do I recycle e-waste?", "How do I recycle E-Wastes?"),
    ("How many people live in a city of 1,000,000?", "How many people live in a city of 1000000?"),
])
def test_it_accepts_rewordings_the_rule_list_rejected(query, cached):
    assert candidate_verify(query, cached).ok
    assert candidate_verify(cached, query).ok


@pytest.mark.parametrize(("query", "cached", "reason"), [
    ("Why did the Berlin Wall fall?", "When did the Berlin Wall fall?", "question"),
    ("Where was Einstein born?", "When was Einstein born?", "question"),
    ("What is liquid nitrogen?", "How do you get liquid nitrogen?", "question"),
])
def test_it_rejects_a_different_question_word(query, cached, reason):
    verdict = candidate_verify(query, cached)
    assert not verdict.ok
    assert verdict.reason == reason


@pytest.mark.parametrize(("query", "cached", "same"), [
    ("Could Bernie Sanders still become president?", "Will bernie sanders ever become president?", True),
    ("Who should I follow on Instagram?", "Who is the most followed on Instagram?", False),
])
def test_it_decides_the_modal_examples(query, cached, same):
    assert candidate_verify(query, cached).ok is same


def test_it_loads_the_same_model_and_scores_deterministically():
    from apps.cache import verify

    again = verify.model_load()
    assert (again.feature == verify._MODEL.feature).all() and (again.value == verify._MODEL.value).all()
    assert again.operating_points == verify._MODEL.operating_points
    pair = ("Can you explain what machine learning is?", "What is machine learning?")
    assert verify.candidate_score(*pair) == verify.candidate_score(*pair)
    assert verify.candidate_score(*pair) == verify.candidate_score(*reversed(pair))


def test_it_scores_as_the_trainer_predicts(tmp_path):
    """The verifier's evaluation of the flat trees equals the trainer's own, tree by tree."""
    from apps.cache import verify
    from bench import boosting

    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 5))
    y = ((x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + rng.normal(scale=0.5, size=400)) > 0).astype(float)
    base, trees = boosting.boost(x, y, np.ones(400), rounds=30, min_leaf=10)
    assert any(len(tree["feature"]) > 1 for tree in trees)  # the trees split
    path = tmp_path / "model.json"
    path.write_text(json.dumps({**boosting.flatten(base, trees), "operating_points": {"0.97": 0.5}}))
    model = verify.model_load(path)
    probe = rng.normal(size=(50, 5))
    expected = boosting.predict(base, trees, probe)
    assert [model.score(row) for row in probe] == pytest.approx(list(expected), abs=1e-6)
    fitted = boosting.predict(base, trees, x)
    assert ((fitted > 0.5) == (y == 1)).mean() > 0.8  # it learned the labels, interaction included


def test_it_asks_more_of_a_candidate_for_a_higher_precision():
    from apps.cache.verify import model_load

    pair = ("Could Bernie Sanders still become president?", "Will bernie sanders ever become president?")
    verdict = candidate_verify(*pair)
    assert verdict.ok
    assert verdict.score is not None
    # The lowest precision whose operating point this pair's score does not reach rejects it.
    stricter_points = [p for p, minimum in model_load().operating_points if minimum > verdict.score]
    assert stricter_points, "the pair should fall short of the strictest operating point"
    stricter = candidate_verify(*pair, precision=stricter_points[0])
    assert not stricter.ok
    assert stricter.reason
    looser = candidate_verify(*pair, precision=0.90)
    assert looser.ok


@pytest.mark.parametrize(("query", "cached"), [
    ("Is coffee good for you?", "Is coffee bad for you?"),
    ("How do I increase my credit limit?", "How can I decrease my credit limit?"),
    ("What is the fastest way to learn chess?", "What is the slowest way to learn chess?"),
])
def test_it_rejects_an_antonym_as_opposite(query, cached):
    verdict = candidate_verify(query, cached)
    assert (verdict.ok, verdict.reason) == (False, "opposite")


def test_it_reads_an_acronym_written_like_a_pronoun_as_a_name():
    from apps.cache.pair_features import prompt_parse

    (us,) = [w for w in prompt_parse("Do I need a visa for Japan as a US citizen?").words if w.text == "us"]
    assert us.kind == "content" and us.entity
    (pronoun,) = [w for w in prompt_parse("Can you help us with billing?").words if w.text == "us"]
    assert pronoun.kind == "function"
    shouting = prompt_parse("CAN YOU HELP US WITH BILLING")
    assert all(w.kind != "content" or w.text in ("help", "billing") for w in shouting.words)


@pytest.mark.parametrize(("prompt", "kind"), [
    ("Why did the Berlin Wall fall?", "reason"),
    ("What caused the fall of the Berlin Wall?", "reason"),
    ("What year did the Berlin Wall fall?", "time"),
    ("How many calories are in an egg?", "quantity"),
    ("How do I reset my password?", "manner"),
    ("Hi, what's the best way to reset my password?", "manner"),
    ("Can you explain what machine learning is?", "thing"),
    ("Is there a fee for withdrawals?", ""),
])
def test_it_reads_the_kind_of_answer_a_question_asks_for(prompt, kind):
    from apps.cache.pair_features import answer_kind, prompt_parse

    assert answer_kind(prompt_parse(prompt)) == kind
