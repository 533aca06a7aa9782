"""A simulator started with ``--rpm`` rate-limits each model per wall-clock minute, as a provider
does: the remaining requests in every answer's headers, then 429 with a Retry-After."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from tests.live import REPO, free_port, stop_process, wait_http


@pytest.fixture
def limited_simulator():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "apps.simulator.server", "--port", str(port), "--ttft-ms", "0",
                             "--rpm", "3"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/v1/models", proc=proc)
    yield base
    stop_process(proc)


def _chat(base: str, model: str, stream: bool = False) -> httpx.Response:
    return httpx.post(base + "/v1/chat/completions", timeout=10, json={
        "model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})


def test_it_takes_rpm_requests_a_minute_per_model_then_answers_429(limited_simulator):
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)  # the test's requests all fall in one minute
    answers = [_chat(limited_simulator, "sim-mini", stream=i == 1) for i in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["2", "1", "0", "0"]
    assert answers[0].headers["x-ratelimit-limit-requests"] == "3"
    assert 1 <= int(answers[3].headers["retry-after"]) <= 61
    assert answers[3].json()["error"]["type"] == "rate_limit_error"
    assert _chat(limited_simulator, "sim-premium").status_code == 200  # its own limit
    stats = httpx.get(limited_simulator + "/_sim/stats").json()
    assert stats["rate_limited"] == {"sim-mini": 1}
    assert list(stats["per_minute"]["sim-mini"].values()) == [3]
