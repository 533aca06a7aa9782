"""The reduce stage of a map-reduce job.

The map answers are combined with the reduce prompt. When they do not fit the model's context
window (less the room kept for the answer), they are packed into groups that do fit, each group
is reduced in parallel, and the partial answers are reduced again: a tree, as many levels as it
takes. Every reduce call goes through the same pipeline as a live request, through the job's
executor (:mod:`apps.batches.executor`).
"""

from __future__ import annotations

import asyncio
import time

from apps.batches.executor import BatchExecutor
from apps.core import tokens
from apps.core.errors import BadRequest, GatewayError

MAX_LEVELS = 12
_SEPARATOR = "\n\n---\n\n"
_DEFAULT_OUTPUT_ROOM = 1024
_MARGIN = 32


def context_budget(windows: dict[str, int], model_name: str, reduce_prompt: str, max_tokens: int | None) -> int:
    """Tokens the combined answers may take in one reduce prompt (``windows``: each chat model's
    context window)."""
    window = windows.get(model_name)
    if window is None:  # "auto" or an alias: it may route to any chat model, so fit the smallest window
        window = min(windows.values()) if windows else 8192
    room = max_tokens or _DEFAULT_OUTPUT_ROOM
    budget = window - room - tokens.text_tokens(reduce_prompt) - _MARGIN
    if budget < 64:
        raise BadRequest(f"The reduce prompt and {room} tokens of answer leave no room in a context window of "
                         f"{window} tokens.", param="reduce_prompt")
    return budget


def _fill(template: str, results: str) -> str:
    return template.replace("{results}", results) if "{results}" in template else f"{template}\n\n{results}"


def _truncate(text: str, budget: int) -> str:
    if tokens.text_tokens(text) <= budget:
        return text
    # o200k averages about four characters a token; shrink until it fits.
    cut = budget * 4
    while cut > 0 and tokens.text_tokens(text[:cut]) > budget:
        cut = int(cut * 0.85)
    return text[:cut]


def groups_pack(texts: list[str], budget: int) -> list[list[str]]:
    """Consecutive texts packed into groups whose joined size fits ``budget`` tokens."""
    groups: list[list[str]] = []
    current: list[str] = []
    used = 0
    separator = tokens.text_tokens(_SEPARATOR)
    for text in texts:
        text = _truncate(text, budget)
        size = tokens.text_tokens(text) + separator
        if current and used + size > budget:
            groups.append(current)
            current, used = [], 0
        current.append(text)
        used += size
    if current:
        groups.append(current)
    return groups


async def reduce_run(executor: BatchExecutor, *, job_id: str, params: dict, texts: list[str],
                     concurrency: int) -> dict:
    """The final answer over ``texts``: ``{"output", "levels", "reduce_calls"}``."""
    budget = context_budget(executor.chat_context_windows(), params["model"], params["reduce_prompt"],
                            params.get("max_tokens"))
    limit = asyncio.Semaphore(concurrency)
    calls = 0

    async def reduce_one(level: int, position: int, group: list[str]) -> str:
        nonlocal calls
        body = {"model": params["model"],
                "messages": [{"role": "user", "content": _fill(params["reduce_prompt"], _SEPARATOR.join(group))}]}
        if params.get("max_tokens"):
            body["max_tokens"] = params["max_tokens"]
        async with limit:
            calls += 1
            return await executor.chat(body, request_id=f"{job_id}-r{level}.{position}")

    level = 0
    started = time.perf_counter()
    while True:
        level += 1
        groups = groups_pack(texts, budget)
        if len(groups) == 1:
            output = await reduce_one(level, 0, groups[0])
            return {"output": output, "levels": level, "reduce_calls": calls,
                    "reduce_seconds": round(time.perf_counter() - started, 3)}
        if level >= MAX_LEVELS:
            raise GatewayError(f"The answers did not fit one context window after {MAX_LEVELS} levels of reduction.",
                               code="reduce_did_not_converge")
        texts = list(await asyncio.gather(*(reduce_one(level, i, group) for i, group in enumerate(groups))))
