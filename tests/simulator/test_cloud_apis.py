"""The simulated upstream's Azure OpenAI and Gemini endpoints answer as those providers do:
their URLs, their credential headers, their error shapes and their checks of a body."""

from __future__ import annotations

import httpx
import openai
import orjson
import pytest

from tests.live import Simulator

HELLO = [{"role": "user", "content": "hello"}]
GEMINI_HELLO = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}


@pytest.fixture
def sim(simulator) -> Simulator:
    return simulator


def _generate(sim: Simulator, body: dict, *, key: str | None = "k", model: str = "gemini-x",
              stream: bool = False) -> httpx.Response:
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    headers = {"x-goog-api-key": key} if key is not None else {}
    return httpx.post(f"{sim.base}/v1beta/models/{model}:{method}", json=body, headers=headers, timeout=10)


def test_azure_answers_at_deployment_urls_with_its_own_sdk(sim):
    client = openai.AzureOpenAI(azure_endpoint=sim.base, api_key="az", api_version="2024-10-21", max_retries=0)
    answer = client.chat.completions.create(model="my-deployment", messages=HELLO)
    assert answer.model == "my-deployment" and answer.choices[0].message.content
    assert answer.prompt_filter_results[0]["content_filter_results"]["hate"]["filtered"] is False
    v1 = openai.OpenAI(base_url=sim.base + "/openai/v1", api_key="az", max_retries=0,
                       default_headers={"api-key": "az"})
    chunks = list(v1.chat.completions.create(model="v1-model", messages=HELLO, stream=True))
    assert chunks[0].choices == []  # Azure's first chunk: the prompt's filter results
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_azure_refuses_a_missing_key_a_missing_version_and_filtered_prompts(sim):
    url = f"{sim.base}/openai/deployments/d/chat/completions"
    body = {"messages": HELLO}
    assert httpx.post(url + "?api-version=2024-10-21", json=body).status_code == 401
    assert httpx.post(url + "?api-version=2024-10-21", json=body, headers={"api-key": "invalid"}).status_code == 401
    assert httpx.post(url, json=body, headers={"api-key": "k"}).status_code == 404
    sim.fault(model="d", mode="content_filter")
    refused = httpx.post(url + "?api-version=2024-10-21", json=body, headers={"api-key": "k"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "content_filter"


def test_gemini_answers_with_usage_and_streams_the_same_words(sim):
    body = {**GEMINI_HELLO, "systemInstruction": {"parts": [{"text": "Be brief and kind"}]},
            "generationConfig": {"thinkingConfig": {"thinkingBudget": 100}}}
    answer = _generate(sim, body).json()
    text = answer["candidates"][0]["content"]["parts"][0]["text"]
    usage = answer["usageMetadata"]
    assert answer["candidates"][0]["finishReason"] == "STOP"
    assert usage["thoughtsTokenCount"] == 2 * usage["candidatesTokenCount"]
    assert "cachedContentTokenCount" not in usage
    raw = _generate(sim, body, stream=True).content
    events = [orjson.loads(e[6:]) for e in raw.split(b"\r\n\r\n") if e]
    assert "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events) == text
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"
    assert events[-1]["usageMetadata"]["cachedContentTokenCount"] > 0  # the same instruction, again


def test_gemini_calls_functions_with_signatures_and_checks_the_answers_to_them(sim):
    tools = [{"functionDeclarations": [{"name": "weather", "parametersJsonSchema": {
        "type": "object", "properties": {"city": {"type": "string"}}}}]}]
    body = {**GEMINI_HELLO, "tools": tools, "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}}
    (part,) = _generate(sim, body).json()["candidates"][0]["content"]["parts"]
    assert part["functionCall"]["name"] == "weather" and set(part["functionCall"]["args"]) == {"city"}
    answered = {"role": "user", "parts": [{"functionResponse": {"name": "weather", "response": {"t": 20}}}]}
    good = {"contents": [*GEMINI_HELLO["contents"], {"role": "model", "parts": [part]}, answered], "tools": tools}
    assert _generate(sim, good).status_code == 200
    unsigned = {"functionCall": part["functionCall"]}
    bad = {**good, "contents": [*GEMINI_HELLO["contents"], {"role": "model", "parts": [unsigned]}, answered]}
    refused = _generate(sim, bad)
    assert refused.status_code == 400 and "thought_signature" in refused.json()["error"]["message"]
    orphan = {"contents": [*GEMINI_HELLO["contents"], answered]}
    assert _generate(sim, orphan).json()["error"]["status"] == "INVALID_ARGUMENT"


def test_gemini_refuses_keys_and_faults_in_googles_shape(sim):
    assert _generate(sim, GEMINI_HELLO, key=None).json()["error"]["status"] == "PERMISSION_DENIED"
    invalid = _generate(sim, GEMINI_HELLO, key="invalid-1").json()["error"]
    assert invalid["status"] == "INVALID_ARGUMENT" and invalid["details"][0]["reason"] == "API_KEY_INVALID"
    sim.fault(model="gemini-x", mode="status", status=429, retry_after=7)
    limited = _generate(sim, GEMINI_HELLO)
    assert limited.status_code == 429 and "retry-after" not in limited.headers
    assert limited.json()["error"]["details"][0]["retryDelay"] == "7s"
    sim.fault(model="gemini-x", mode="content_filter")
    stopped = _generate(sim, GEMINI_HELLO).json()["candidates"][0]
    assert stopped["finishReason"] == "SAFETY" and len(stopped["content"]["parts"][0]["text"].split()) <= 3
    models = httpx.get(f"{sim.base}/v1beta/models", headers={"x-goog-api-key": "k"}).json()["models"]
    assert "models/sim-mini" in {m["name"] for m in models}


def _signed(sim: Simulator, body: dict, credential: str, path: str = "/model/m%3A1/converse") -> httpx.Response:
    from types import SimpleNamespace

    from apps.providers.sigv4 import signed_headers

    payload = orjson.dumps(body)
    provider = SimpleNamespace(base_url=sim.base, credential=credential)
    headers = signed_headers(provider, path, payload, {"Content-Type": "application/json"})
    return httpx.post(sim.base + path, content=payload, headers=headers, timeout=10)


def test_bedrock_checks_sigv4_signatures_and_tool_results(sim):
    hello = {"messages": [{"role": "user", "content": [{"text": "hello"}]}]}
    answer = _signed(sim, hello, "AKID:simulated-secret")
    assert answer.status_code == 200 and answer.json()["stopReason"] == "end_turn"
    wrong = _signed(sim, hello, "AKID:other-secret")
    assert wrong.status_code == 403 and wrong.headers["x-amzn-ErrorType"] == "InvalidSignatureException"
    assert httpx.post(sim.base + "/model/m/converse", json=hello).headers["x-amzn-ErrorType"] == \
        "MissingAuthenticationTokenException"
    assert _signed(sim, hello, "invalid:simulated-secret").headers["x-amzn-ErrorType"] == \
        "UnrecognizedClientException"
    orphan = {"messages": [{"role": "user", "content": [{"toolResult": {"toolUseId": "t9", "content": []}}]}]}
    assert _signed(sim, orphan, "AKID:simulated-secret").headers["x-amzn-ErrorType"] == "ValidationException"
