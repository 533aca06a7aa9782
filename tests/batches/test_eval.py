"""A batch's eval column: each line's answer is graded against what it expects, the grade is kept
as feedback on the line's request, and a learned rule's router learns from it."""

from __future__ import annotations

import httpx

from apps.routing.models import RouteOutcome, RoutingFallback, RoutingRule
from apps.usage.models import Feedback
from tests.batches.conftest import batch_wait, file_lines, jsonl, sdk
from tests.gateway.conftest import wait_until


def _line(custom_id: str, prompt: str, **extra) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "smart", "messages": [{"role": "user", "content": prompt}]}, **extra}


def test_a_batch_grades_its_answers_and_its_learned_routes_learn_from_them(world, workers):
    rule = RoutingRule.objects.create(tenant=world.tenant_a, name="learned smart", match_model="smart", priority=1,
                                      target=world.models["sim-premium"], learned=True, explore_share=0.0)
    RoutingFallback.objects.create(rule=rule, model=world.models["sim-mini"], position=0)

    def asked() -> httpx.Response | None:
        """The live answer, once the gateway has reloaded its config with the rule (model "smart"
        is unknown to it until then: a 404, nothing sent upstream)."""
        live = httpx.post(world.gateway.v1 + "/chat/completions",
                          headers={"Authorization": f"Bearer {world.key_a}", "Cache-Control": "no-store"},
                          json=_line("", "Name a prime number.")["body"], timeout=30)
        assert live.status_code in (200, 404), live.text
        return live if live.status_code == 200 else None

    live = wait_until(asked)
    assert live is not None, "the gateway never saw the rule"
    answer = live.json()["choices"][0]["message"]["content"]

    group = workers()
    group.start()
    client = sdk(world)
    lines = [
        _line("right", "Name a prime number.", eval={"expected": answer.upper() + "  "}),
        _line("wrong", "Name an even number.", eval={"expected": "zzz-not-in-any-answer", "match": "contains"}),
        # The same prompt with another temperature: the simulator answers it alike, uncached.
        {**_line("prefix", "Name a prime number.", eval={"expected": " ".join(answer.split()[:2]), "match": "prefix"},
                 quality_target=0.5), "body": {**_line("", "Name a prime number.")["body"], "temperature": 0}},
        _line("ungraded", "Name a square number."),
        _line("bad-match", "Name a cube.", eval={"expected": "8", "match": "fuzzy"}),
        _line("bad-expected", "Name a cube.", eval={"expected": ""}),
        _line("bad-target", "Name a cube.", quality_target="high"),
    ]
    batch = client.batches.create(input_file_id=client.files.create(file=jsonl(lines), purpose="batch").id,
                                  endpoint="/v1/chat/completions", completion_window="24h")
    batch = batch_wait(client, batch.id, workers=group)
    assert batch.status == "completed", batch
    output = {line["custom_id"]: line for line in file_lines(client, batch.output_file_id)}
    assert {name: line.get("eval") for name, line in output.items()} == {
        "right": {"score": 1.0}, "wrong": {"score": 0.0}, "prefix": {"score": 1.0}, "ungraded": None}
    errors = {line["custom_id"]: line["error"]["code"] for line in file_lines(client, batch.error_file_id)}
    assert errors == {"bad-match": "invalid_eval", "bad-expected": "invalid_eval",
                      "bad-target": "invalid_quality_target"}

    ids = {name: line["response"]["request_id"] for name, line in output.items()}
    graded = {ids["right"]: 1.0, ids["wrong"]: 0.0, ids["prefix"]: 1.0}
    feedback = wait_until(lambda: dict(Feedback.objects.filter(tenant=world.tenant_a, kind="outcome",
                                                               action="batch eval").values_list("request_id", "score"))
                          if Feedback.objects.filter(action="batch eval").count() == 3 else None)
    assert feedback == graded
    routes = dict(RouteOutcome.objects.filter(tenant=world.tenant_a, request_id__in=ids.values())
                  .values_list("request_id", "score"))
    assert routes == {**graded, ids["ungraded"]: None}
