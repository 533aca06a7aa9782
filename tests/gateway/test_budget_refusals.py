"""What a budget refusal tells the official SDKs, against a live gateway: a spent budget cannot
be helped by waiting, so the SDK gives up after one attempt, while rate-limit refusals keep
their retry hints; answers report the money a budget has left."""

from __future__ import annotations

import re
import threading
import time
from decimal import Decimal
from zoneinfo import ZoneInfo

import anthropic
import httpx
import openai
import pytest

from apps.limits.periods import period_bounds
from tests.gateway.conftest import wait_until
from tests.gateway.test_limits import _limits_set, _same_minute

DEADLINE = 30.0


def _attempts_counted(sdk_module):
    """An HTTP client for the SDK that counts the requests it really sends (retries included)."""
    sent: list[str] = []
    client = sdk_module.DefaultHttpxClient(event_hooks={"request": [lambda request: sent.append(str(request.url))]})
    return client, sent


def _refusal_within_deadline(call) -> Exception:
    """The exception ``call`` ends with; fails if it is still waiting to retry at the deadline
    (an SDK that honours a long Retry-After would sleep until the budget's period ends)."""
    ended: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            ended.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(DEADLINE)
    if thread.is_alive():
        pytest.fail(f"the SDK is still retrying the refused request {DEADLINE:g} s later")
    assert ended, "the request was not refused"
    return ended[0]


def _budget_spent(world, key: str) -> bool:
    """The gateway refuses the key for its budget (config changes reach it by message, and a
    request's spend settles just after its answer)."""
    def refused() -> bool:
        response = httpx.post(world.gateway.v1 + "/chat/completions", timeout=DEADLINE,
                              headers={"Authorization": f"Bearer {key}", "Cache-Control": "no-store"},
                              json={"model": "sim-mini", "messages": [{"role": "user", "content": "spend"}]})
        return response.status_code == 429 and response.json()["error"]["code"] == "budget_exceeded"

    return wait_until(refused, timeout=DEADLINE)


def _assert_money_reads_well(message: str) -> None:
    assert "E-" not in message and "E+" not in message, message
    amounts = re.findall(r"\$(\S+?)[ )]", message)
    assert len(amounts) == 3 and all(re.fullmatch(r"\d+\.\d{2,9}", amount) for amount in amounts), message


def test_it_tells_the_openai_sdk_not_to_retry_a_spent_budget(world):
    _limits_set(world.tenant_a, budget_usd=Decimal("0.000001"), budget_period="never")
    assert _budget_spent(world, world.key_a)
    http_client, sent = _attempts_counted(openai)
    sdk = openai.OpenAI(base_url=world.gateway.v1, api_key=world.key_a, http_client=http_client)  # retries: 2
    upstream_calls = world.simulator.stats()["requests"]
    refused = _refusal_within_deadline(lambda: sdk.chat.completions.create(
        model="sim-mini", messages=[{"role": "user", "content": "Once more"}]))
    assert isinstance(refused, openai.RateLimitError), refused
    assert len(sent) == 1, f"the SDK sent the refused request {len(sent)} times"
    headers = refused.response.headers
    assert headers["x-should-retry"] == "false"
    assert "retry-after" not in headers  # a lifetime budget never resets
    assert headers["x-switchyard-budget-remaining"] == "0"
    body = refused.body
    assert body["code"] == "budget_exceeded"
    _assert_money_reads_well(body["message"])
    assert world.simulator.stats()["requests"] == upstream_calls


def test_it_tells_the_anthropic_sdk_not_to_retry_a_spent_budget(world):
    _limits_set(world.tenant_a, budget_usd=Decimal("0.000001"), budget_period="day")
    assert _budget_spent(world, world.key_a)
    http_client, sent = _attempts_counted(anthropic)
    sdk = anthropic.Anthropic(base_url=world.gateway.base, api_key=world.key_a, http_client=http_client)
    refused = _refusal_within_deadline(lambda: sdk.messages.create(
        model="sim-mini", max_tokens=16, messages=[{"role": "user", "content": "Once more"}]))
    assert isinstance(refused, anthropic.RateLimitError), refused
    assert len(sent) == 1, f"the SDK sent the refused request {len(sent)} times"
    headers = refused.response.headers
    assert headers["x-should-retry"] == "false"
    # A daily budget resets at midnight: Retry-After says so, never anything sooner.
    tz = ZoneInfo(world.tenant_a.budget_timezone or "UTC")
    assert int(headers["retry-after"]) >= int(period_bounds("day", tz, time.time())[1] - time.time())
    _assert_money_reads_well(refused.body["error"]["message"])


def test_it_keeps_the_retry_hints_of_a_rate_limit(world):
    from apps.tenants.services import key_create

    key = key_create(tenant=world.tenant_a, name="one a minute", rpm_limit=1).secret
    sdk = openai.OpenAI(base_url=world.gateway.v1, api_key=key, max_retries=0)
    _same_minute(6)
    sdk.chat.completions.create(model="sim-mini", messages=[{"role": "user", "content": "First"}])
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(model="sim-mini", messages=[{"role": "user", "content": "Second"}])
    headers = refused.value.response.headers
    assert refused.value.body["code"] == "rate_limit_exceeded"
    assert 1 <= int(headers["retry-after"]) <= 60
    assert "x-should-retry" not in headers


def test_it_reports_the_money_a_budget_has_left_on_an_answer(world):
    # Less than the most a request may cost (4,096 output tokens at $0.60/M): the reservation
    # alone is more than the budget, yet an answer costs far less.
    _limits_set(world.tenant_a, budget_usd=Decimal("0.002"), budget_period="day")
    sdk = openai.OpenAI(base_url=world.gateway.v1, api_key=world.key_a, max_retries=0)

    def answer():
        raw = sdk.chat.completions.with_raw_response.create(
            model="sim-mini", messages=[{"role": "user", "content": "How much is left"}],
            extra_headers={"Cache-Control": "no-store"})
        return raw if "x-switchyard-budget-remaining" in raw.headers else None

    raw = wait_until(answer, timeout=DEADLINE)
    assert raw, "the gateway never applied the budget"
    cost = Decimal(raw.headers["x-switchyard-cost"])
    remaining = Decimal(raw.headers["x-switchyard-budget-remaining"])
    assert 0 < cost and 0 < remaining <= Decimal("0.002") - cost, raw.headers
