"""Sentence events: complete sentences out of streamed deltas."""

from __future__ import annotations

from apps.gateway.sentences import SentenceBuffer


def feed(*deltas: str) -> tuple[list[str], str]:
    buffer = SentenceBuffer()
    sentences = []
    for delta in deltas:
        sentences.extend(buffer.add(delta))
    return sentences, buffer.flush()


def test_it_splits_at_full_stops_exclamation_and_question_marks():
    sentences, rest = feed("Hello there. How are you? Great! And", " you")
    assert sentences == ["Hello there.", "How are you?", "Great!"]
    assert rest == "And you"


def test_it_waits_for_the_space_after_the_mark_across_deltas():
    buffer = SentenceBuffer()
    assert buffer.add("It is done.") == []  # "." could still be "..." or "3.5"
    assert buffer.add(" Next") == ["It is done."]
    assert buffer.add(" one") == []
    assert buffer.flush() == "Next one"
    assert buffer.flush() == ""


def test_it_keeps_decimals_abbreviations_initials_and_list_numbers_inside_a_sentence():
    sentences, rest = feed("Pi is 3.14 roughly. Dr. Smith met J. Doe at 5 p.m. today! Items:\n1. Eggs\n2. Milk. End")
    assert sentences == ["Pi is 3.14 roughly.", "Dr. Smith met J. Doe at 5 p.m. today!", "Items:\n1. Eggs\n2. Milk."]
    assert rest == "End"


def test_it_keeps_runs_of_marks_and_closing_quotes_with_their_sentence():
    sentences, rest = feed('Really?! "Yes." (Sure.) Wait... ok\n')
    assert sentences == ["Really?!", '"Yes."', "(Sure.)", "Wait...", ]
    assert rest == "ok"


def test_it_splits_at_a_newline_after_a_mark():
    assert feed("First.\nSecond!\n") == (["First.", "Second!"], "")
