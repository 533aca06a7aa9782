"""Routing: classify a prompt's complexity and pick the model chain for a request.

Pure functions over the gateway's snapshot; no database access. The classifier starts from
the seed guide's heuristics (indicator phrases plus word counts); its phrases are rows of
``ComplexityIndicator``, editable in the admin.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

SIMPLE, MODERATE, COMPLEX = "simple", "moderate", "complex"
SIMPLE_MAX_WORDS = 50
COMPLEX_MIN_WORDS = 200


def complexity_classify(text: str, simple: re.Pattern | None, complex_: re.Pattern | None) -> str:
    """``simple`` for a short prompt with a simple phrase; ``complex`` for a complex phrase or a
    long prompt; ``moderate`` otherwise."""
    words = len(text.split())
    lower = text.lower()
    if simple is not None and words < SIMPLE_MAX_WORDS and simple.search(lower):
        return SIMPLE
    if words > COMPLEX_MIN_WORDS or (complex_ is not None and complex_.search(lower)):
        return COMPLEX
    return MODERATE


@dataclass(frozen=True, slots=True)
class Route:
    chain: tuple  # ModelInfo, in the order to try
    rule_id: int | None
    tier: str | None
    learned: object = None  # the matched rule when it routes by what it learned (RuleInfo)


def _rule_matches(rule, requested: str, tier_of, prompt_tokens: int, tags: frozenset[str]) -> bool:
    if rule.match_model and rule.match_model != requested:
        return False
    if rule.min_prompt_tokens is not None and prompt_tokens < rule.min_prompt_tokens:
        return False
    if rule.max_prompt_tokens is not None and prompt_tokens > rule.max_prompt_tokens:
        return False
    if rule.tags and not rule.tags <= tags:
        return False
    return not (rule.match_tier and rule.match_tier != tier_of())


def route_resolve(snapshot, *, tenant_id: int, requested: str, prompt_text: str, prompt_tokens: int,
                  tags: frozenset[str] = frozenset()) -> Route | None:
    """The chain for a request, or None when the requested model is unknown.

    Rules are tried tenant first, then global, by ascending priority; among matching rules of
    the first matching priority one is drawn by weight. With no matching rule, a concrete model
    name routes to itself, and ``auto`` to the cheapest active chat model of the prompt's tier.
    """
    tier: str | None = None

    def tier_of() -> str:
        nonlocal tier
        if tier is None:
            tier = complexity_classify(prompt_text, snapshot.simple_pattern, snapshot.complex_pattern)
        return tier

    matched = []
    for rule in snapshot.rules_for(tenant_id):
        if matched and rule.priority != matched[0].priority:
            break
        if _rule_matches(rule, requested, tier_of, prompt_tokens, tags):
            matched.append(rule)
    if matched:
        rule = matched[0] if len(matched) == 1 else random.choices(matched, [r.weight for r in matched])[0]
        return Route(chain=rule.chain, rule_id=rule.id, tier=tier, learned=rule if rule.learned else None)

    model = snapshot.models.get(requested)
    if model is not None:
        return Route(chain=(model,), rule_id=None, tier=tier)
    if requested == "auto":
        chat = [m for m in snapshot.models.values() if m.mode == "chat"]
        if not chat:
            return None
        wanted = tier_of()
        same_tier = [m for m in chat if m.tier == wanted] or chat
        same_tier.sort(key=lambda m: (m.input_price + m.output_price, m.name))
        return Route(chain=tuple(same_tier[:1]) + tuple(m for m in chat if m not in same_tier[:1])[:1],
                     rule_id=None, tier=wanted)
    return None
