"""Which models of a chain can serve a chat request: those with every capability it uses, and a
context window its prompt and answer fit in (part of the route step, :mod:`.route`).

A request needs a capability when, in its chat form, it offers ``tools`` (or ``functions``),
has an ``image_url`` part in a message, asks for a ``response_format`` of type ``json_schema``
(Anthropic's ``output_format`` / ``output_config.format``), or sets ``reasoning_effort``
(Anthropic's ``thinking``). A model without one of them is skipped, and so is a model whose
context window is smaller than the prompt's tokens plus the answer's (``max_completion_tokens``
or ``max_tokens``, else the model's max output). The prompt is counted by the tokenizer only
when a cheap upper bound (a token is at least a byte) says it might not fit, and then through
:meth:`Call.prompt_tokens_count`, once for every step that asks. Images and tool definitions
are not counted: a provider that finds the prompt too long answers its context-length error,
and the call moves on to a model with a larger window
(:func:`apps.providers.transport.with_fallbacks`).
"""

from __future__ import annotations

from apps.core import tokens
from apps.core.errors import CapabilityMissing, ContextTooLong
from apps.gateway.pipeline.call import Call
from apps.gateway.snapshot import ModelInfo

# How an error names each capability.
CAPABILITY_NAMES = {"tools": "tools", "vision": "image inputs", "json_schema": "JSON schema output",
                    "reasoning": "reasoning effort"}


def request_needs(body: dict) -> dict[str, str]:
    """The capabilities a chat-form request uses, each with the parameter that uses it, in the
    order tools, vision, json_schema, reasoning."""
    needs: dict[str, str] = {}
    for name in ("tools", "functions"):
        if body.get(name):
            needs["tools"] = name
            break
    image = _image_param(body.get("messages"))
    if image is not None:
        needs["vision"] = image
    native = body.get("native_parameters")  # what an Anthropic request sets that the chat form has no field for
    native = native if isinstance(native, dict) else {}
    response_format = body.get("response_format")
    output_config = native.get("output_config")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        needs["json_schema"] = "response_format"
    elif _typed(native.get("output_format")) == "json_schema":
        needs["json_schema"] = "output_format"
    elif isinstance(output_config, dict) and _typed(output_config.get("format")) == "json_schema":
        needs["json_schema"] = "output_config.format"
    if body.get("reasoning_effort") is not None:
        needs["reasoning"] = "reasoning_effort"
    elif _typed(native.get("thinking")) not in (None, "disabled"):
        needs["reasoning"] = "thinking"
    return needs


def chain_fit(call: Call, chain: tuple[ModelInfo, ...], body: dict, prompt_text: str, *,
              requested: str) -> tuple[ModelInfo, ...]:
    """``chain`` without the models that cannot serve ``body`` (each skip noted in
    ``call.failures``); raises :class:`CapabilityMissing` or :class:`ContextTooLong` when none can.

    ``prompt_text`` is the request's :func:`apps.core.tokens.messages_text`, already made."""
    needs = request_needs(body)
    if needs:
        chain = _capable(call, chain, needs, requested)
    messages = body.get("messages") or []
    limit = body.get("max_completion_tokens") or body.get("max_tokens")

    def output(model: ModelInfo) -> int:
        return limit if isinstance(limit, int) else model.max_output_tokens

    most = tokens.messages_tokens_most(prompt_text, len(messages))
    if all(most + output(m) <= m.context_window for m in chain):
        return chain  # fits everywhere even if every byte were a token: nothing to count
    prompt = call.prompt_tokens_count(messages)
    fit = []
    for model in chain:
        if prompt + output(model) <= model.context_window:
            fit.append(model)
        else:
            call.failures.append(f"{model.name}: skipped, {prompt + output(model)} tokens of context needed, "
                                 f"{model.context_window} in its window")
    if fit:
        return tuple(fit)
    roomiest = max(chain, key=lambda m: m.context_window - output(m))
    answer = f"max_tokens {limit}" if isinstance(limit, int) else "the model's max output"
    among = f", the roomiest of the models for '{requested}'," if len(chain) > 1 else ""
    raise ContextTooLong(
        f"This request needs {prompt + output(roomiest)} tokens of context: {prompt} in its messages and "
        f"{output(roomiest)} for the answer ({answer}). The context window of {roomiest.name}{among} is "
        f"{roomiest.context_window} tokens. Shorten the messages or lower max_tokens.", param="messages")


def _capable(call: Call, chain: tuple[ModelInfo, ...], needs: dict[str, str],
             requested: str) -> tuple[ModelInfo, ...]:
    capable = []
    lacking: list[tuple[ModelInfo, list[str]]] = []
    for model in chain:
        missing = [name for name in needs if name not in model.capabilities]
        if missing:
            lacking.append((model, missing))
            call.failures.append(f"{model.name}: skipped, no {' or '.join(CAPABILITY_NAMES[n] for n in missing)}")
        else:
            capable.append(model)
    if capable:
        return tuple(capable)
    first = lacking[0][1][0]
    uses = " and ".join(f"{CAPABILITY_NAMES[name]} ({needs[name]})" for name in needs)
    if len(lacking) == 1:
        model, missing = lacking[0]
        message = (f"This request uses {uses}; the model '{model.name}' does not support "
                   f"{' or '.join(CAPABILITY_NAMES[n] for n in missing)}.")
    else:
        gaps = "; ".join(f"{model.name} has no {' or '.join(CAPABILITY_NAMES[n] for n in missing)}"
                         for model, missing in lacking)
        message = f"This request uses {uses}, and no model for '{requested}' supports it all: {gaps}."
    raise CapabilityMissing(message, param=needs[first])


def _image_param(messages) -> str | None:
    """Where the first image part of the messages is (``messages[i].content[j]``), if any."""
    if not isinstance(messages, list):
        return None
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, dict) and part.get("type") == "image_url":
                    return f"messages[{i}].content[{j}]"
    return None


def _typed(value) -> str | None:
    """The ``type`` of an object parameter (None when it is not one)."""
    kind = value.get("type") if isinstance(value, dict) else None
    return kind if isinstance(kind, str) else None
