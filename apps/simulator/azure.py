"""The SIMULATED upstream's Azure OpenAI endpoints, so an ``azure`` provider can be tested over
real HTTP. The provider's base URL is the simulator's root (as an Azure resource's endpoint is).

    POST /openai/deployments/{deployment}/chat/completions?api-version=V
                                    the chat answer of model ``deployment`` (``api-version`` required:
                                    404 without it, as Azure answers)
    POST /openai/v1/chat/completions
                                    the chat answer of the body's model (an ``api-version`` is optional)
    POST /openai/deployments/{deployment}/embeddings?api-version=V, POST /openai/v1/embeddings
                                    the embeddings answer, likewise
    GET  /openai/v1/models, GET /openai/models?api-version=V
                                    the simulator's models

Every request needs an ``api-key`` header: none, or one starting with ``invalid``, is answered
401 in Azure's shape. Answers are the chat endpoint's (same words, knobs and faults) with
Azure's additions: ``prompt_filter_results`` and each choice's ``content_filter_results`` in a
JSON answer, and a first stream chunk holding only the prompt's filter results. The
``content_filter`` fault answers Azure's 400 with code ``content_filter``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from apps.simulator.answers import MODELS, dumps, loads
from apps.simulator.control import HEADERS

if TYPE_CHECKING:
    from apps.simulator.server import Simulator

FILTER_RESULTS = {name: {"filtered": False, "severity": "safe"} for name in ("hate", "self_harm", "sexual", "violence")}
PROMPT_FILTER_RESULTS = [{"prompt_index": 0, "content_filter_results": FILTER_RESULTS}]
AZURE_FIRST_CHUNK = b"data: " + dumps({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                                       "prompt_filter_results": PROMPT_FILTER_RESULTS}) + b"\n\n"


def azure_error(status: int, code: str, message: str) -> web.Response:
    body = {"error": {"code": code, "message": f"[simulated] {message}"}}
    return web.Response(status=status, body=dumps(body), content_type="application/json", headers=HEADERS)


def content_filter_response() -> web.Response:
    """Azure's answer to a prompt its content filter stopped."""
    body = {"error": {
        "message": "[simulated] The response was filtered due to the prompt triggering Azure OpenAI's content "
                   "management policy. Please modify your prompt and retry.",
        "type": None, "param": "prompt", "code": "content_filter", "status": 400,
        "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {
            **FILTER_RESULTS, "violence": {"filtered": True, "severity": "high"}}}}}
    return web.Response(status=400, body=dumps(body), content_type="application/json", headers=HEADERS)


class AzureAPI:
    """The handlers, sharing the chat endpoint's :class:`Simulator` (state, knobs, faults)."""

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator

    @staticmethod
    def _refused(request: web.Request) -> web.Response | None:
        key = request.headers.get("api-key", "")
        if not key or key.startswith("invalid"):
            return azure_error(401, "401", "Access denied due to invalid subscription key or wrong API endpoint. "
                                           "Make sure to provide a valid key for an active subscription and use a "
                                           "correct regional API endpoint for your resource.")
        return None

    async def _body(self, request: web.Request) -> tuple[dict | None, web.Response | None]:
        try:
            body = loads(await request.read())
        except ValueError:
            return None, azure_error(400, "invalid_request_error", "The request body is not valid JSON.")
        if not isinstance(body, dict):
            return None, azure_error(400, "invalid_request_error", "The request body must be a JSON object.")
        return body, None

    async def deployment_chat(self, request: web.Request) -> web.StreamResponse:
        """``POST /openai/deployments/{deployment}/chat/completions?api-version=...``."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        if not request.query.get("api-version"):
            return azure_error(404, "404", "Resource not found")
        body, error = await self._body(request)
        if error:
            return error
        body["model"] = request.match_info["deployment"]
        return await self.simulator.chat_answer(request, body, azure=True)

    async def v1_chat(self, request: web.Request) -> web.StreamResponse:
        """``POST /openai/v1/chat/completions``."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        body, error = await self._body(request)
        if error:
            return error
        return await self.simulator.chat_answer(request, body, azure=True)

    async def deployment_embeddings(self, request: web.Request) -> web.StreamResponse:
        """``POST /openai/deployments/{deployment}/embeddings?api-version=...``."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        if not request.query.get("api-version"):
            return azure_error(404, "404", "Resource not found")
        body, error = await self._body(request)
        if error:
            return error
        body["model"] = request.match_info["deployment"]
        return await self.simulator.embeddings_answer(request, body)

    async def v1_embeddings(self, request: web.Request) -> web.StreamResponse:
        """``POST /openai/v1/embeddings``."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        body, error = await self._body(request)
        if error:
            return error
        return await self.simulator.embeddings_answer(request, body)

    async def models(self, request: web.Request) -> web.Response:
        """``GET /openai/v1/models`` and ``GET /openai/models?api-version=...``."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        if request.path == "/openai/models" and not request.query.get("api-version"):
            return azure_error(404, "404", "Resource not found")
        data = [{"id": m, "object": "model", "created_at": 0, "status": "succeeded"} for m in MODELS]
        return web.json_response({"object": "list", "data": data}, headers=HEADERS)


def azure_routes(app: web.Application, simulator: Simulator) -> None:
    """Add Azure OpenAI's endpoints to a simulator's application."""
    api = AzureAPI(simulator)
    app.router.add_post("/openai/deployments/{deployment}/chat/completions", api.deployment_chat)
    app.router.add_post("/openai/v1/chat/completions", api.v1_chat)
    app.router.add_post("/openai/deployments/{deployment}/embeddings", api.deployment_embeddings)
    app.router.add_post("/openai/v1/embeddings", api.v1_embeddings)
    app.router.add_get("/openai/v1/models", api.models)
    app.router.add_get("/openai/models", api.models)
