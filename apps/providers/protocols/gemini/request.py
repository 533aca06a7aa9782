"""The chat form as a Gemini ``generateContent`` body (the mapping is drawn in the package's docstring)."""

from __future__ import annotations

import base64
import mimetypes
from urllib.parse import unquote_to_bytes, urlsplit

import orjson

SIGNATURE = "__thought__"  # a tool call's id: call_<hex>[__thought__<signature>]
_THINKING_BUDGET = {"none": 0, "minimal": 0, "low": 1024, "medium": 8192, "high": 24576}


def _media_part(url: str, default_mime: str) -> dict:
    """A data: URL as inlineData (base64), any other URL as fileData."""
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        mime = header[5:].split(";")[0] or default_mime
        if ";base64" not in header:
            data = base64.b64encode(unquote_to_bytes(data)).decode()
        return {"inlineData": {"mimeType": mime, "data": data}}
    mime = mimetypes.guess_type(urlsplit(url).path)[0] or default_mime
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def _parts(content) -> list[dict]:
    """An OpenAI message content as Gemini parts."""
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict] = []
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if isinstance(text, str) and text:
                parts.append({"text": text})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str) and url:
                parts.append(_media_part(url, "image/jpeg"))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            parts.append({"inlineData": {"mimeType": f"audio/{audio.get('format') or 'wav'}",
                                         "data": audio.get("data") or ""}})
        elif kind == "file":
            data = (part.get("file") or {}).get("file_data")
            if isinstance(data, str) and data:
                parts.append(_media_part(data, "application/pdf"))
    return parts


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text") or "" for p in content or [] if isinstance(p, dict) and p.get("type") == "text")


def _arguments(raw) -> dict:
    if isinstance(raw, dict):
        return raw
    try:
        value = orjson.loads(raw or "{}")
    except (orjson.JSONDecodeError, TypeError):
        return {"arguments": raw}
    return value if isinstance(value, dict) else {"value": value}


def _response_object(content) -> dict:
    """A tool result as functionResponse.response, which must be an object."""
    text = _text(content)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"result": text}
    return value if isinstance(value, dict) else {"result": value}


def _add(contents: list[dict], role: str, parts: list[dict]) -> None:
    """Parts appended to the conversation, merged into the last turn when it has the same role."""
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _conversation(messages: list) -> tuple[list[dict], list[dict]]:
    """The system instruction's parts and the contents."""
    system: list[dict] = []
    contents: list[dict] = []
    names: dict[str, str] = {}  # a tool call's id -> its function's name
    for message in messages:
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend(_parts(content))
        elif role == "user":
            _add(contents, "user", _parts(content))
        elif role == "assistant":
            parts = _parts(content)
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                name = function.get("name") or ""
                ident = call.get("id") or ""
                names[ident] = name
                part: dict = {"functionCall": {"name": name, "args": _arguments(function.get("arguments"))}}
                _head, _, signature = ident.partition(SIGNATURE)
                if signature:
                    part["thoughtSignature"] = signature
                parts.append(part)
            _add(contents, "model", parts)
        elif role in ("tool", "function"):
            name = names.get(message.get("tool_call_id") or "") or message.get("name") or ""
            _add(contents, "user", [{"functionResponse": {"name": name, "response": _response_object(content)}}])
    return system, contents


def _tools(body: dict) -> tuple[list[dict], dict | None]:
    declarations = []
    for tool in body.get("tools") or []:
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(function, dict) or not function.get("name"):
            continue
        declaration = {"name": function["name"]}
        if function.get("description"):
            declaration["description"] = function["description"]
        if isinstance(function.get("parameters"), dict):
            declaration["parametersJsonSchema"] = function["parameters"]
        declarations.append(declaration)
    tools = [{"functionDeclarations": declarations}] if declarations else []
    choice = body.get("tool_choice")
    config: dict | None = None
    if choice == "none":
        config = {"mode": "NONE"}
    elif choice == "auto":
        config = {"mode": "AUTO"}
    elif choice == "required":
        config = {"mode": "ANY"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        config = {"mode": "ANY", "allowedFunctionNames": [choice["function"].get("name")]}
    return tools, ({"functionCallingConfig": config} if config and declarations else None)


def _generation_config(body: dict) -> dict:
    config: dict = {}
    for name, gemini in (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed"),
                         ("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty"),
                         ("n", "candidateCount")):
        if body.get(name) is not None:
            config[gemini] = body[name]
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit is not None:
        config["maxOutputTokens"] = limit
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        if response_format.get("type") == "json_object":
            config["responseMimeType"] = "application/json"
        elif response_format.get("type") == "json_schema":
            config["responseMimeType"] = "application/json"
            schema = (response_format.get("json_schema") or {}).get("schema")
            if isinstance(schema, dict):
                config["responseJsonSchema"] = schema
    effort = body.get("reasoning_effort")
    if effort in _THINKING_BUDGET:
        config["thinkingConfig"] = {"thinkingBudget": _THINKING_BUDGET[effort]}
    return config


def gemini_request(body: dict) -> dict:
    """An OpenAI chat body as a ``generateContent`` body."""
    system, contents = _conversation(body.get("messages") or [])
    out: dict = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    tools, tool_config = _tools(body)
    if tools:
        out["tools"] = tools
    if tool_config:
        out["toolConfig"] = tool_config
    config = _generation_config(body)
    if config:
        out["generationConfig"] = config
    return out
