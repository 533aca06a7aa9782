"""The OpenAI Agents SDK (the ``openai-agents`` package), unchanged, running a tool-calling agent
against a live Switchyard over the Responses API: for an OpenAI-compatible provider and for a
native Anthropic one (reached by translation). The agent calls its function tool, gets the
result back into the conversation, and answers; each model turn is one usage row of the tenant."""

from __future__ import annotations

import asyncio

import pytest
from openai import AsyncOpenAI

from tests.gateway.conftest import request_logs
from tests.gateway.test_chat_to_anthropic import NATIVE, native  # noqa: F401  # the fixture, reused

SEEN: list[str] = []


def _agent_run(world, model: str) -> object:
    from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)  # the SDK's own trace upload goes to OpenAI, which is not reachable here

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        SEEN.append(city)
        return f"Sunny and 21 degrees in {city}."

    client = AsyncOpenAI(base_url=world.gateway.v1, api_key=world.key_a, max_retries=0)
    agent = Agent(
        name="Forecaster", instructions="Answer with the weather tool's result.", tools=[get_weather],
        # Required on the first turn; the SDK resets it after a tool call, so the second turn answers.
        model=OpenAIResponsesModel(model=model, openai_client=client),
        model_settings=ModelSettings(tool_choice="required"))

    async def run():
        try:
            return await Runner.run(agent, "What is the weather in Paris?", max_turns=4)
        finally:
            await client.close()

    return asyncio.run(run())


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_an_agent_runs_its_tool_loop_through_switchyard(request, world, kind):
    model = "sim-mini"
    if kind == "anthropic":
        request.getfixturevalue("native")
        model = NATIVE
    SEEN.clear()
    result = _agent_run(world, model)
    assert len(SEEN) == 1 and SEEN[0]  # the tool ran once, with the argument the model gave
    calls = [item for item in result.new_items if item.type == "tool_call_item"]
    outputs = [item for item in result.new_items if item.type == "tool_call_output_item"]
    assert len(calls) == 1 and len(outputs) == 1 and "Sunny" in outputs[0].output
    assert isinstance(result.final_output, str) and result.final_output
    rows = request_logs(2, tenant=world.tenant_a, endpoint="/v1/responses")
    assert [row.model_used for row in rows] == [model, model] and all(row.status_code == 200 for row in rows)
    assert all(row.cost > 0 for row in rows)
