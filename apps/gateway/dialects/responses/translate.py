"""OpenAI Responses bodies to and from the pipeline's internal (OpenAI chat) form.

    request   ``responses_body_translate``: validate a Responses request and give the chat body
              that routing, limits and the cache work on (``instructions`` first, then the
              conversation of ``previous_response_id``, then ``input``)
    answer    ``response_from_completion``: a chat.completion as a ``response`` object
              ``output_items``: a chat.completion's message as Responses output items

What translates: ``instructions``, string or item-list ``input`` (``message`` items with text
parts, roles user, system, developer and assistant; ``function_call`` and
``function_call_output`` items, parallel calls included), ``max_output_tokens``,
``temperature``, ``top_p``, ``text.format`` (``json_schema``, ``json_object``), ``text.verbosity``,
function ``tools``, ``tool_choice``, ``parallel_tool_calls``, ``reasoning.effort`` (as
``reasoning_effort``), ``user``, ``metadata`` (its ``tags`` route as on the chat door). File
inputs and built-in tools are refused with a 400 naming them; ``background`` is the door's
(:mod:`apps.gateway.doors.background`), refused here only with ``store: false``.
"""

from __future__ import annotations

import re
import time

from apps.core.errors import BadRequest
from apps.core.json_checks import nesting_check
from apps.gateway.validation import fields_check, int_check, invalid_type, missing, model_field, number_check

# Every top-level field of OpenAI's create-response request, with the JSON types it may take
# (None: checked below). Those in ``_NOT_YET`` are known but not served yet.
RESPONSES_FIELDS: dict[str, tuple[type, ...] | None] = {
    "model": None, "input": (str, list), "instructions": (str,), "max_output_tokens": None,
    "temperature": None, "top_p": None, "text": (dict,), "tools": (list,), "tool_choice": (str, dict),
    "parallel_tool_calls": (bool,), "reasoning": (dict,), "store": (bool,), "stream": (bool,),
    "stream_options": (dict,), "metadata": (dict,), "previous_response_id": (str,), "user": (str,),
    "safety_identifier": (str,), "prompt_cache_key": (str,), "service_tier": (str,), "truncation": (str,),
    "include": (list,), "background": (bool,), "top_logprobs": None, "max_tool_calls": None,
    "conversation": (str, dict), "prompt": (dict,), "prompt_cache_options": (dict,),
    "prompt_cache_retention": (str,), "background_options": (dict,), "moderation": (dict,),
    "context_management": (list,), "access_programs": (dict,), "image": (dict,),
}
# Known fields this gateway cannot honour yet: refused when set, never silently dropped.
_NOT_YET = (("conversation", "A conversation object"),
            ("prompt", "A stored prompt template"), ("moderation", "Moderation of a response"),
            ("context_management", "Context management"), ("access_programs", "An access program"),
            ("image", "Request-level image options"))
MESSAGE_ROLES = frozenset({"user", "system", "developer", "assistant"})
REASONING_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh"})
_STATUS_BY_FINISH = {"length": ("incomplete", "max_output_tokens"),
                     "content_filter": ("incomplete", "content_filter")}


def _not_supported(param: str, what: str) -> BadRequest:
    return BadRequest(f"{what} is not supported by this gateway yet.", param=param, code="unsupported_parameter")


def _image_part(part: dict, where: str) -> dict:
    """An ``input_image`` part as a chat ``image_url`` part (an http(s) or ``data:`` URL)."""
    url = part.get("image_url")
    if url is None:
        if part.get("file_id") is not None:
            raise _not_supported(f"{where}.file_id", "An image given by file_id")
        raise missing(f"{where}.image_url")
    if not isinstance(url, str):
        raise invalid_type(f"{where}.image_url", "a string (an http(s) or data: URL)", url)
    if not url.startswith(("https://", "http://", "data:")):
        raise BadRequest(f"Invalid '{where}.image_url': expected an http(s) URL or a base64 data: URL.",
                         param=f"{where}.image_url", code="invalid_value")
    image: dict = {"url": url}
    detail = part.get("detail")
    if detail is not None:
        if not isinstance(detail, str) or detail not in ("auto", "low", "high"):
            raise BadRequest(f"Invalid value for '{where}.detail': expected 'auto', 'low' or 'high'.",
                             param=f"{where}.detail", code="invalid_value")
        image["detail"] = detail
    return {"type": "image_url", "image_url": image}


def _text_parts(content, where: str, role: str, *, images: bool = False) -> str | list[dict]:
    """The text of a message item's content (a string or a list of text parts); with ``images``
    (a user message's), content holding ``input_image`` parts is a list of chat parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid_type(f"{where}.content", "a string or an array of content parts", content)
    parts: list[dict] = []
    for index, part in enumerate(content):
        here = f"{where}.content[{index}]"
        if not isinstance(part, dict):
            raise invalid_type(here, "an object", part)
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            if not isinstance(part.get("text"), str):
                raise invalid_type(f"{here}.text", "a string", part.get("text"))
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "refusal" and role == "assistant" and isinstance(part.get("refusal"), str):
            parts.append({"type": "text", "text": part["refusal"]})
        elif kind == "input_image" and images:
            parts.append(_image_part(part, here))
        elif kind in ("input_image", "input_file", "input_audio"):
            raise _not_supported(here, f"An '{kind}' content part")
        else:
            raise BadRequest(f"Invalid value for '{here}.type': expected 'input_text' or 'output_text'.",
                             param=f"{here}.type", code="invalid_value")
    if any(part["type"] != "text" for part in parts):
        return parts
    return "".join(part["text"] for part in parts)


def _string(item: dict, name: str, where: str) -> str:
    value = item.get(name)
    if value is None:
        raise missing(f"{where}.{name}")
    if not isinstance(value, str):
        raise invalid_type(f"{where}.{name}", "a string", value)
    return value


def _output_text(output, where: str) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return _text_parts(output, where, "tool")
    raise invalid_type(f"{where}.output", "a string or an array of content parts", output)


def input_items(value) -> list[dict]:
    """``input`` as a list of items (a string is one user message)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return value


def items_to_messages(items: list, *, param: str = "input", origins: list[str] | None = None) -> list[dict]:
    """Responses input items as chat messages. Consecutive ``function_call`` items become one
    assistant message with several tool calls (a parallel call). ``origins``, when given, gets
    the item each message was made of (``input[3]``), one per message."""
    messages: list[dict] = []
    base = len(origins) if origins is not None else 0
    for index, item in enumerate(items):
        where = f"{param}[{index}]"
        if origins is not None:
            del origins[base + len(messages):]  # an item that made no message of its own (merged, skipped)
            origins.append(where)
        if not isinstance(item, dict):
            raise invalid_type(where, "an object", item)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if not isinstance(role, str) or role not in MESSAGE_ROLES:
                raise BadRequest(f"Invalid value for '{where}.role': expected one of assistant, developer, "
                                 "system, user.", param=f"{where}.role", code="invalid_value")
            if "content" not in item:
                raise missing(f"{where}.content")
            text = _text_parts(item["content"], where, role, images=role == "user")
            messages.append({"role": "system" if role == "developer" else role, "content": text})
        elif kind == "function_call":
            call = {"id": _string(item, "call_id", where), "type": "function",
                    "function": {"name": _string(item, "name", where), "arguments": _string(item, "arguments", where)}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # its text and its calls: one chat turn
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if "output" not in item:
                raise missing(f"{where}.output")
            messages.append({"role": "tool", "tool_call_id": _string(item, "call_id", where),
                             "content": _output_text(item["output"], where)})
        elif kind == "reasoning":
            continue  # a model's own reasoning summary: nothing a chat-completions model takes back
        elif kind is None:
            raise missing(f"{where}.type")
        elif isinstance(kind, str) and kind in ("item_reference", "input_image", "input_file"):
            raise _not_supported(where, f"An '{kind}' input item")
        else:
            raise BadRequest(f"Invalid value for '{where}.type': expected 'message', 'function_call', "
                             "'function_call_output' or 'reasoning'.", param=f"{where}.type", code="invalid_value")
    if origins is not None:
        del origins[base + len(messages):]
    return messages


# A chat-form field as the Responses request names it (the pipeline's errors name chat fields).
_PARAMS = {"messages": "input", "reasoning_effort": "reasoning.effort", "response_format": "text.format",
           "max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens", "functions": "tools"}
_MESSAGE_PATH = re.compile(r"messages\[(\d+)\]")


def chat_param(param: str | None, body: dict, history: list[dict] | None = None) -> str | None:
    """The Responses field of the request ``body`` (continuing ``history``) that a chat-form
    ``param`` names: ``reasoning_effort`` is ``reasoning.effort``, ``messages[2].content[1]`` the
    part of the input item (or ``instructions``, or ``previous_response_id``'s conversation)
    that message 2 was made of. Names the chat form shares are kept."""
    if param is None or param in RESPONSES_FIELDS:
        return param
    if param in _PARAMS:
        return _PARAMS[param]
    found = _MESSAGE_PATH.match(param)
    if found is None:
        return param
    origins: list[str] = []
    if body.get("instructions"):
        origins.append("instructions")
    if history:
        items_to_messages(history, param="previous_response_id", origins=origins)
        origins[:] = [origin.split("[")[0] for origin in origins]  # the stored items have no path the client knows
    try:
        items_to_messages(input_items(body.get("input")), origins=origins)
    except (BadRequest, TypeError, AttributeError):
        return "input"
    index = int(found.group(1))
    if index >= len(origins):
        return "input"
    origin = origins[index]
    return origin + param[found.end():] if origin.startswith("input[") else origin


def _tools(tools: list) -> list[dict]:
    out = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise invalid_type(where, "an object", tool)
        kind = tool.get("type")
        if kind != "function":
            if isinstance(kind, str):
                raise _not_supported(f"{where}.type", f"The '{kind[:60]}' tool")
            raise missing(f"{where}.type") if kind is None else invalid_type(f"{where}.type", "a string", kind)
        function: dict = {"name": _string(tool, "name", where)}
        if tool.get("description") is not None:
            function["description"] = _string(tool, "description", where)
        parameters = tool.get("parameters")
        if parameters is not None:
            if not isinstance(parameters, dict):
                raise invalid_type(f"{where}.parameters", "an object", parameters)
            function["parameters"] = parameters
        if tool.get("strict") is not None:
            if not isinstance(tool["strict"], bool):
                raise invalid_type(f"{where}.strict", "a boolean", tool["strict"])
            function["strict"] = tool["strict"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice) -> str | dict:
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise BadRequest("Invalid value for 'tool_choice': expected 'auto', 'none', 'required' or "
                             "{'type': 'function', 'name': ...}.", param="tool_choice", code="invalid_value")
        return choice
    if choice.get("type") != "function":
        raise _not_supported("tool_choice", "A tool_choice other than a function")
    return {"type": "function", "function": {"name": _string(choice, "name", "tool_choice")}}


def _response_format(text: dict) -> dict | None:
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise invalid_type("text.format", "an object", fmt)
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise (missing("text.format.schema") if schema is None
                   else invalid_type("text.format.schema", "an object", schema))
        spec: dict = {"name": _string(fmt, "name", "text.format"), "schema": schema}
        for name in ("strict", "description"):
            if fmt.get(name) is not None:
                spec[name] = fmt[name]
        return {"type": "json_schema", "json_schema": spec}
    raise BadRequest("Invalid value for 'text.format.type': expected 'text', 'json_object' or 'json_schema'.",
                     param="text.format.type", code="invalid_value")


def responses_body_translate(body: dict, history: list[dict] | None = None) -> dict:
    """Validate a Responses request; return its chat form. ``history``: the input and output
    items of the conversation ``previous_response_id`` continues. Raises :class:`BadRequest`."""
    nesting_check(body)
    fields_check(body, RESPONSES_FIELDS)
    model = model_field(body)
    if body.get("input") is None:
        raise missing("input")
    if body.get("background") and body.get("store") is False:
        raise BadRequest("A background response must be stored: 'background' cannot be true with 'store' false.",
                         param="background", code="invalid_value")
    for name, what in _NOT_YET:
        if body.get(name):
            raise _not_supported(name, what)
    int_check(body, "max_output_tokens", 1, 10_000_000)
    int_check(body, "top_logprobs", 0, 20)
    int_check(body, "max_tool_calls", 1, 10_000)
    number_check(body, "temperature", 0, 2)
    number_check(body, "top_p", 0, 1)
    if body.get("truncation") not in (None, "auto", "disabled"):
        raise BadRequest("Invalid value for 'truncation': expected 'auto' or 'disabled'.", param="truncation",
                         code="invalid_value")
    items = input_items(body["input"])
    if not items and not history:
        raise BadRequest("Invalid 'input': empty array. Expected an array with minimum length 1.", param="input",
                         code="empty_array")
    messages: list[dict] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    if history:
        messages += items_to_messages(history, param="previous_response_id")
    messages += items_to_messages(items)
    chat: dict = {"model": model, "messages": messages}
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    for name in ("temperature", "top_p", "parallel_tool_calls", "user", "metadata", "service_tier"):
        if body.get(name) is not None:
            chat[name] = body[name]
    text = body.get("text")
    if text is not None:
        response_format = _response_format(text)
        if response_format is not None:
            chat["response_format"] = response_format
        if isinstance(text.get("verbosity"), str):
            chat["verbosity"] = text["verbosity"]
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    reasoning = body.get("reasoning")
    if reasoning is not None and reasoning.get("effort") is not None:
        effort = reasoning["effort"]
        if not isinstance(effort, str) or effort not in REASONING_EFFORTS:
            raise BadRequest("Invalid value for 'reasoning.effort': expected one of "
                             f"{', '.join(sorted(REASONING_EFFORTS))}.", param="reasoning.effort", code="invalid_value")
        chat["reasoning_effort"] = effort
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # the stream's usage reaches its translator
    return chat


def response_id_of(request_id: str) -> str:
    """A response's id, made of its request's (``req_...`` -> ``resp_...``)."""
    return "resp_" + request_id.removeprefix("req_")


def response_shell(original: dict, *, response_id: str, model: str, created_at: int | None = None,
                   previous_response_id: str | None = None) -> dict:
    """A ``response`` object with no output yet: the request's settings echoed, as OpenAI does."""
    fmt = (original.get("text") or {}).get("format") if isinstance(original.get("text"), dict) else None
    reasoning = original.get("reasoning") if isinstance(original.get("reasoning"), dict) else {}
    return {
        "id": response_id, "object": "response", "created_at": created_at or int(time.time()),
        "status": "in_progress", "background": original.get("background") is True, "error": None,
        "incomplete_details": None,
        "instructions": original.get("instructions"), "max_output_tokens": original.get("max_output_tokens"),
        "max_tool_calls": original.get("max_tool_calls"), "model": model, "output": [],
        "parallel_tool_calls": original.get("parallel_tool_calls", True),
        "previous_response_id": previous_response_id,
        "reasoning": {"effort": reasoning.get("effort"), "summary": None},
        "service_tier": "default", "store": original.get("store", True),
        "temperature": original.get("temperature", 1.0),
        "text": {"format": fmt or {"type": "text"}}, "tool_choice": original.get("tool_choice", "auto"),
        "tools": original.get("tools") or [], "top_logprobs": original.get("top_logprobs", 0),
        "top_p": original.get("top_p", 1.0), "truncation": original.get("truncation", "disabled"),
        "usage": None, "user": original.get("user"), "metadata": original.get("metadata") or {},
    }


def response_usage(input_tokens: int, cached: int, output_tokens: int, reasoning: int = 0, written: int = 0) -> dict:
    return {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": cached,
                                                                   "cache_write_tokens": written},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": input_tokens + output_tokens}


def usage_from_chat(usage: dict | None) -> dict:
    """Chat usage in the Responses shape."""
    usage = usage if isinstance(usage, dict) else {}
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    cached = (prompt_details.get("cached_tokens") or 0) if isinstance(prompt_details, dict) else 0
    reasoning = (completion_details.get("reasoning_tokens") or 0) if isinstance(completion_details, dict) else 0
    return response_usage(usage.get("prompt_tokens") or 0, cached, usage.get("completion_tokens") or 0, reasoning,
                          usage.get("cache_creation_input_tokens") or 0)


def message_item(item_id: str, text: str, *, status: str = "completed") -> dict:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def function_call_item(item_id: str, call: dict, *, status: str = "completed") -> dict:
    function = call.get("function") or {}
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call.get("id") or item_id,
            "name": function.get("name") or "", "arguments": function.get("arguments") or ""}


def output_items(message: dict, item_ids: str) -> list[dict]:
    """A chat message (text, refusal, tool calls) as Responses output items; ``item_ids`` is
    the suffix their ids share."""
    output: list[dict] = []
    text = message.get("content")
    if isinstance(text, str) and text:
        output.append(message_item(f"msg_{item_ids}", text))
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        output.append({"id": f"msg_{item_ids}", "type": "message", "status": "completed", "role": "assistant",
                       "content": [{"type": "refusal", "refusal": refusal}]})
    for index, call in enumerate(message.get("tool_calls") or []):
        if isinstance(call, dict):
            output.append(function_call_item(f"fc_{item_ids}_{index}", call))
    return output


def response_from_completion(completion: dict, shell: dict, *, usage: dict | None = None) -> dict:
    """A chat.completion as a finished ``response`` object (``usage``: Responses-shaped, else
    read from the completion)."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    response = dict(shell)
    response["output"] = output_items(message, shell["id"].removeprefix("resp_"))
    status, reason = _STATUS_BY_FINISH.get(choice.get("finish_reason"), ("completed", None))
    response["status"] = status
    response["incomplete_details"] = {"reason": reason} if reason else None
    response["usage"] = usage or usage_from_chat(completion.get("usage"))
    return response


def items_stored(value, suffix: str) -> list[dict]:
    """A request's ``input`` as the items ``GET /v1/responses/{id}/input_items`` lists: each with
    an id, message content as a list of parts."""
    out = []
    for index, item in enumerate(input_items(value)):
        kind = item.get("type", "message")
        if kind == "message":
            content = item.get("content")
            if isinstance(content, str):
                part = "output_text" if item.get("role") == "assistant" else "input_text"
                content = [{"type": part, "text": content}]
            out.append({"id": item.get("id") or f"msg_{suffix}_in{index}", "type": "message",
                        "role": item.get("role"), "status": "completed", "content": content})
        else:
            prefix = {"function_call": "fc", "function_call_output": "fco"}.get(kind, "item")
            out.append({**item, "id": item.get("id") or f"{prefix}_{suffix}_in{index}", "status": "completed"})
    return out
