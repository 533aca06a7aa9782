"""OpenAI chat requests sent to a native Anthropic provider, and its answers read back in OpenAI's
shape: the reverse of :mod:`.translate`, which serves Anthropic clients from OpenAI-compatible
providers (and whose answer mapping, ``completion_from_message``, is reused here).

    request   ``messages_request``: the pipeline's chat form as an Anthropic Messages body
    answer    ``completion_of_message``: an Anthropic message as a chat.completion
    usage     ``chat_usage``: a call's tokens as chat usage (prompt-cache reads and writes kept)
    errors    ``openai_error_body``: an Anthropic error body in OpenAI's error shape

Request mapping (the table is in docs/anthropic.md): system and developer messages become
``system`` (in order); consecutive turns of one role merge (a parallel call's tool results go
back in one user turn, as Anthropic requires); ``image_url`` parts become image blocks (a
``data:`` URL a base64 source, an http(s) URL a url source); ``tool_calls`` become tool_use
blocks and ``tool`` messages tool_result blocks; ``cache_control`` on a text part is kept (the
provider's prompt cache). ``response_format`` ``json_schema`` is sent as one forced tool whose
input is the answer (read back as the message's text), ``json_object`` as an instruction.
What has no Anthropic equivalent (``n`` > 1, logprobs, audio, the legacy ``functions``, web
search options) is refused with a 400 naming the field; sampling knobs Anthropic lacks are dropped.
"""

from __future__ import annotations

import re
import time

import orjson

from apps.core.errors import BadRequest
from apps.gateway.dialects.anthropic.translate import completion_from_message

# A data URL of one of the image types Anthropic takes.
_DATA_URL = re.compile(r"data:(image/(?:png|jpeg|gif|webp));base64,(.+)", re.DOTALL)
JSON_INSTRUCTION = "Answer with one JSON object and nothing else."
_JSON_TOOL_DESCRIPTION = "Give the answer: its input is the whole answer, as a JSON object of this schema."


def _unsupported(param: str, what: str) -> BadRequest:
    return BadRequest(f"{what} cannot be sent to an Anthropic model ('{param}'); use a model served by an "
                      "OpenAI-compatible provider for it.", param=param, code="unsupported_parameter")


def _refused_fields(body: dict) -> None:
    if (body.get("n") or 1) > 1:
        raise _unsupported("n", "More than one choice (n > 1)")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise _unsupported("logprobs" if body.get("logprobs") else "top_logprobs", "Log probabilities")
    modalities = body.get("modalities")
    if body.get("audio") or (isinstance(modalities, list) and "audio" in modalities):
        raise _unsupported("audio" if body.get("audio") else "modalities", "Audio output")
    for name in ("functions", "function_call"):
        if body.get(name):
            raise _unsupported(name, "The legacy 'functions' API (use 'tools')")
    if body.get("web_search_options") is not None:
        raise _unsupported("web_search_options", "Web search options")


def json_tool_name(body: dict) -> str | None:
    """The forced tool carrying a ``json_schema`` answer, when the request asks for one."""
    response_format = body.get("response_format")
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    name = spec.get("name") if isinstance(spec, dict) else None
    return name if isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name) else "json_answer"


def _text(part: dict) -> dict:
    block = {"type": "text", "text": part["text"]}
    if isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]  # a prompt-cache mark, as Anthropic reads it
    return block


def _image(part: dict, where: str) -> dict:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise BadRequest(f"Missing required parameter: '{where}.image_url.url'.", param=f"{where}.image_url",
                         code="missing_required_parameter")
    if url.startswith("data:"):
        match = _DATA_URL.fullmatch(url)
        if match is None:
            raise BadRequest(f"Invalid '{where}.image_url.url': an Anthropic model takes data URLs of base64 "
                             "image/png, image/jpeg, image/gif or image/webp.", param=f"{where}.image_url",
                             code="invalid_value")
        source = {"type": "base64", "media_type": match.group(1), "data": match.group(2)}
    elif url.startswith(("https://", "http://")):
        source = {"type": "url", "url": url}
    else:
        raise BadRequest(f"Invalid '{where}.image_url.url': expected an http(s) or a data: URL.",
                         param=f"{where}.image_url", code="invalid_value")
    block: dict = {"type": "image", "source": source}
    if isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]
    return block


def _blocks(content, where: str, role: str) -> list[dict]:
    """A message's content as Anthropic blocks (empty text dropped: Anthropic refuses it)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for index, part in enumerate(content):
        here = f"{where}[{index}]"
        kind = part.get("type")
        if kind == "text":
            if part["text"]:
                blocks.append(_text(part))
        elif kind == "refusal" and role == "assistant" and isinstance(part.get("refusal"), str):
            blocks.append({"type": "text", "text": part["refusal"]})
        elif kind == "image_url" and role == "user":
            blocks.append(_image(part, here))
        else:
            raise _unsupported(f"{here}.type", f"A '{str(kind)[:60]}' content part in a {role} message")
    return blocks


def _tool_use(call, where: str) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(call.get("id"), str) or not isinstance(
            function.get("name"), str):
        raise BadRequest(f"Invalid '{where}': a tool call needs 'id' and 'function.name'.", param=where,
                         code="invalid_value")
    arguments = function.get("arguments") or "{}"
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str) else None
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise BadRequest(f"Invalid '{where}.function.arguments': an Anthropic model takes a tool call's arguments "
                         "only as a JSON object.", param=f"{where}.function.arguments", code="invalid_value")
    return {"type": "tool_use", "id": call["id"], "name": function["name"], "input": parsed}


def _tool_result(message: dict, where: str) -> dict:
    tool_call_id = message.get("tool_call_id")
    if not isinstance(tool_call_id, str) or not tool_call_id:
        raise BadRequest(f"Missing required parameter: '{where}.tool_call_id'.", param=f"{where}.tool_call_id",
                         code="missing_required_parameter")
    content = message.get("content")
    if isinstance(content, list):
        content = "\n".join(p["text"] for p in content if p.get("type") == "text")
    return {"type": "tool_result", "tool_use_id": tool_call_id, "content": content or ""}


def _turns(messages: list) -> tuple[list[dict], list[dict]]:
    """The system blocks and the user/assistant turns of chat ``messages``."""
    system: list[dict] = []
    turns: list[dict] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = message["role"]
        if role in ("system", "developer"):
            system += _blocks(message.get("content"), f"{where}.content", "system")
            continue
        if role == "tool":
            role, blocks = "user", [_tool_result(message, where)]
        elif role in ("user", "assistant"):
            blocks = _blocks(message.get("content"), f"{where}.content", role)
            if role == "assistant":
                blocks += [_tool_use(call, f"{where}.tool_calls[{n}]")
                           for n, call in enumerate(message.get("tool_calls") or [])]
            elif not blocks:
                blocks = [{"type": "text", "text": ""}]  # the provider says what it thinks of it
        else:
            raise _unsupported(f"{where}.role", f"A '{role}' message")
        if not blocks:
            continue  # an assistant turn with nothing in it
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks  # Anthropic's turns alternate
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        only = turn["content"][0]
        if len(turn["content"]) == 1 and only["type"] == "text" and "cache_control" not in only:
            turn["content"] = only["text"]  # a plain string, as most clients write it
    return system, turns


def _tools(tools: list) -> list[dict]:
    out = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict) \
                or not isinstance(function.get("name"), str):
            raise _unsupported(f"tools[{index}]", "A tool other than a function with a name")
        parameters = function.get("parameters")
        spec: dict = {"name": function["name"],
                      "input_schema": parameters if isinstance(parameters, dict) else {"type": "object",
                                                                                       "properties": {}}}
        if isinstance(function.get("description"), str):
            spec["description"] = function["description"]
        out.append(spec)
    return out


def _tool_choice(choice, parallel: bool) -> dict:
    if choice is None or choice == "auto":
        out: dict = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise BadRequest("Invalid 'tool_choice': expected 'auto', 'none', 'required' or "
                         "{'type': 'function', 'function': {'name': ...}}.", param="tool_choice", code="invalid_value")
    if not parallel:
        out["disable_parallel_tool_use"] = True
    return out


def messages_request(body: dict, upstream_id: str, *, stream: bool, max_tokens: int) -> bytes:
    """The chat form ``body`` as an Anthropic Messages request for ``upstream_id``; ``max_tokens``
    is sent when the request sets no limit (Anthropic requires one). Raises :class:`BadRequest`
    for what an Anthropic model cannot take."""
    _refused_fields(body)
    system, turns = _turns(body["messages"])
    if not turns:
        raise BadRequest("Invalid 'messages': an Anthropic model needs a user message besides the system prompt.",
                         param="messages", code="invalid_value")
    out: dict = {"model": upstream_id, "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens")
                 or max_tokens, "messages": turns}
    json_tool = json_tool_name(body)
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_object":
        system.append({"type": "text", "text": JSON_INSTRUCTION})
    if system:
        marked = any("cache_control" in block for block in system)
        out["system"] = system if marked else "\n\n".join(block["text"] for block in system)
    temperature = body.get("temperature")
    if temperature is not None:
        out["temperature"] = min(temperature, 1)  # OpenAI's scale goes to 2, Anthropic's to 1
    for name in ("top_p", "top_k"):
        if body.get(name) is not None:
            out[name] = body[name]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else stop
    if stream:
        out["stream"] = True
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    tools = body.get("tools")
    if json_tool is not None:
        if tools:
            raise _unsupported("response_format", "A 'json_schema' response format together with tools")
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec.get("schema"), dict) else {"type": "object"}
        out["tools"] = [{"name": json_tool, "description": spec.get("description") or _JSON_TOOL_DESCRIPTION,
                         "input_schema": schema}]
        out["tool_choice"] = {"type": "tool", "name": json_tool}
    elif tools:
        out["tools"] = _tools(tools)
        out["tool_choice"] = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls") is not False)
    return orjson.dumps(out)


def chat_usage(input_tokens: int, cached: int, written: int, output_tokens: int) -> dict:
    """Usage in chat's shape: ``prompt_tokens`` counts every input token, the prompt-cache reads
    in ``prompt_tokens_details.cached_tokens`` and its writes in ``cache_creation_input_tokens``."""
    usage = {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
             "total_tokens": input_tokens + output_tokens, "prompt_tokens_details": {"cached_tokens": cached}}
    if written:
        usage["cache_creation_input_tokens"] = written
    return usage


def completion_of_message(message: dict, *, completion_id: str, json_tool: str | None, usage: dict) -> dict:
    """An Anthropic message as the chat.completion an OpenAI client gets; with ``json_tool`` the
    forced tool's input is the answer's text."""
    completion = completion_from_message(message, completion_id=completion_id)
    completion["created"] = int(time.time())
    completion["usage"] = usage
    choice = completion["choices"][0]
    answer = choice["message"]
    calls = answer.get("tool_calls")
    if json_tool is not None and calls:
        answer["content"] = answer["content"] + "".join(call["function"]["arguments"] for call in calls)
        del answer["tool_calls"]
        if choice["finish_reason"] == "tool_calls":
            choice["finish_reason"] = "stop"
    elif calls and not answer["content"]:
        answer["content"] = None
    return completion


def openai_error_body(status: int, body: bytes) -> bytes:
    """An Anthropic error body (``{"type": "error", "error": {"type", "message"}}``) in OpenAI's
    shape, its type kept as the code."""
    kind, message = "invalid_request_error", f"The provider refused the request (status {status})."
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        if isinstance(error.get("message"), str):
            message = error["message"]
        if isinstance(error.get("type"), str):
            kind = error["type"]
    return orjson.dumps({"error": {"message": message, "type": "invalid_request_error" if status < 500 else kind,
                                   "param": None, "code": kind}})
