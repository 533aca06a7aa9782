"""Token counts: exact for long texts, which the encoder refuses in one call, cheap to stop, and
never a 500 through the gateway."""

from __future__ import annotations

from decimal import Decimal

from apps.core import tokens


def test_it_counts_a_long_text_as_the_encoder_counts_it_whole():
    text = " ".join(f"word{i % 97}, 😀 {i}\n" for i in range(12_000))  # past one piece, below the encoder's limits
    assert len(text) > 3 * 32_000
    assert tokens.text_tokens(text) == len(tokens._encoding().encode_ordinary(text))


def test_it_counts_texts_the_encoder_refuses_in_one_call():
    huge = "hello " * 250_000  # 1.5 million characters, 250,001 tokens
    assert tokens.text_tokens(huge) == 250_001
    assert 300_000 < tokens.text_tokens(huge * 2, stop_after=300_000) < 500_001


def test_it_bounds_a_text_from_above_without_counting():
    for text in ("hello world", "ünïcode 😀", "a" * 1000):
        assert tokens.text_tokens_most(text) >= tokens.text_tokens(text)


def test_it_answers_a_prompt_past_the_encoders_limit_for_a_key_with_a_budget(world):
    """A budget makes the gateway count the prompt before it goes upstream; a prompt of over
    200,000 tokens (1.3 MB, well inside the body limit) is counted, not a 500."""
    import httpx

    from tests.gateway.conftest import wait_until

    mini = world.models["sim-mini"]
    mini.context_window = 1_000_000  # room for the prompt: the window check would refuse it first
    mini.save()
    world.tenant_a.budget_usd = Decimal("100")
    world.tenant_a.save()  # saved last: once the gateway has the budget, it has the window too
    url, auth = world.gateway.v1 + "/chat/completions", {"Authorization": f"Bearer {world.key_a}"}

    def chat(content: str) -> httpx.Response:
        return httpx.post(url, headers=auth, timeout=60,
                          json={"model": "sim-mini", "messages": [{"role": "user", "content": content}]})

    assert wait_until(lambda: "x-switchyard-budget-limit" in chat("warm up").headers), \
        "the gateway never saw the budget"
    answer = chat("hello " * 220_000)
    assert answer.status_code == 200, answer.text[:500]
    assert answer.json()["choices"][0]["message"]["content"]
