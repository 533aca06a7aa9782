"""A simulator started with a file of known outcomes answers each known prompt right or wrong, per
model, as the file says, in a form a client can grade; other prompts answer as usual."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from tests.live import REPO, free_port, stop_process, wait_http

QUESTION = "Which planet is largest?\nA. Mars\nB. Jupiter\nAnswer:"


@pytest.fixture
def graded_simulator(tmp_path):
    outcomes = tmp_path / "outcomes.csv"
    outcomes.write_text('prompt,weak-model,strong-model\n"Which planet is largest?\nA. Mars\nB. Jupiter\nAnswer:",'
                        'False,True\n"What is 2+2?",True,True\n')
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "apps.simulator.server", "--port", str(port), "--ttft-ms", "0", "--outcomes",
         str(outcomes), "--outcome-model", "sim-mini=weak-model", "--outcome-model", "sim-premium=strong-model"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}/v1"
    wait_http(base + "/models", proc=proc)
    yield base
    stop_process(proc)


def _answer(base: str, model: str, prompt: str, **extra) -> str:
    body = {"model": model, "messages": [{"role": "system", "content": "Answer."}, {"role": "user", "content": prompt}],
            **extra}
    response = httpx.post(base + "/chat/completions", json=body, timeout=10)
    assert response.status_code == 200, response.text
    if extra.get("stream"):
        return "".join(
            json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            for line in response.text.splitlines() if line.startswith("data: {"))
    return response.json()["choices"][0]["message"]["content"]


def test_each_model_answers_a_known_prompt_as_the_file_says(graded_simulator):
    assert _answer(graded_simulator, "sim-mini", QUESTION).startswith("[wrong] ")
    assert _answer(graded_simulator, "sim-premium", QUESTION).startswith("[correct] ")
    assert _answer(graded_simulator, "sim-mini", "What is 2+2?").startswith("[correct] ")
    assert _answer(graded_simulator, "sim-mini", QUESTION, stream=True).startswith("[wrong] ")


def test_unknown_prompts_and_unmapped_models_answer_as_usual(graded_simulator):
    for model, prompt in (("sim-mini", "Something else"), ("sim-standard", QUESTION)):
        text = _answer(graded_simulator, model, prompt)
        assert not text.startswith(("[correct]", "[wrong]")), text


def test_it_refuses_a_mapping_without_its_column(tmp_path):
    outcomes = tmp_path / "outcomes.csv"
    outcomes.write_text("prompt,a\nx,True\n")
    result = subprocess.run([sys.executable, "-m", "apps.simulator.server", "--port", str(free_port()), "--outcomes",
                             str(outcomes), "--outcome-model", "sim-mini=b"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "needs a 'prompt' column and b" in result.stderr
