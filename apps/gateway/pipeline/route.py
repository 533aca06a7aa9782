"""The route step: the requested model (a name, an alias or ``auto``) to the ordered chain of
models to try, filtered by what the key may use and what the client's dialect can reach."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import numpy as np

from apps.core import tokens
from apps.core.errors import BadRequest, ModelNotAllowed, ModelNotFound
from apps.gateway.pipeline.call import Call
from apps.gateway.validation import model_field, tags_from
from apps.routing.engine import route_resolve
from apps.routing.learned import model_pick

if TYPE_CHECKING:
    from apps.gateway.dialects.base import Dialect
    from apps.gateway.runtime import Runtime


MODELS_HINT = "GET /v1/models lists the models this key may use; model 'auto' routes a chat prompt for you."


def call_route(runtime: Runtime, call: Call, body: dict, tags_header: str | None, *, mode: str,
               dialect: Dialect | None = None, native_only: str | None = None) -> None:
    """Resolve ``body``'s model to ``call.chain`` (raises a :class:`GatewayError` when nothing fits).

    ``dialect`` decides which providers the request can be sent to (an OpenAI chat request
    never reaches a provider that speaks only Anthropic's Messages API); ``native_only`` names
    request features only a provider speaking the client's own protocol takes (for the error).
    """
    snapshot = runtime.snapshot
    requested = model_field(body)
    call.requested_model = requested
    allowed = call.key.allowed_models
    if allowed is not None and requested != "auto" and requested in snapshot.models and requested not in allowed:
        raise ModelNotAllowed(f"This API key may not use the model '{requested}'.", param="model")
    prompt_text = tokens.messages_text(body.get("messages") or []) if mode == "chat" else ""
    route = route_resolve(
        snapshot, tenant_id=call.key.tenant_id, requested=requested, prompt_text=prompt_text,
        prompt_tokens=tokens.prompt_tokens_rough(prompt_text), tags=tags_from(body, tags_header),
    )
    if route is None:
        raise ModelNotFound(f"The model '{requested}' does not exist. {MODELS_HINT}", param="model")
    chain = tuple(m for m in route.chain if m.mode == mode)
    if not chain:
        raise ModelNotFound(f"The model '{requested}' cannot serve {mode} requests. {MODELS_HINT}", param="model")
    if dialect is not None and mode == "chat":
        chain = dialect.reachable(chain, requested=requested, native_only=native_only)
    if allowed is not None:
        chain = tuple(m for m in chain if m.name in allowed)
        if not chain:
            raise ModelNotAllowed(f"This API key may not use the model '{requested}'.", param="model")
    call.chain = chain
    call.rule_id = route.rule_id
    if route.learned is not None and len(chain) > 1:
        call.learned_rule = route.learned
    named = snapshot.models.get(requested)
    call.baseline = named if named is not None and named.mode == mode else snapshot.reference_models.get(mode)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit is not None and limit > max(m.max_output_tokens for m in chain):
        raise BadRequest(
            f"max_tokens {limit} exceeds the model's limit of {max(m.max_output_tokens for m in chain)}.",
            param="max_tokens",
        )


MIN_OUTCOMES = 10  # scored outcomes each candidate needs before the router's estimates decide


async def call_route_learned(runtime: Runtime, call: Call, body: dict) -> None:
    """A learned rule matched: pick within its chain the cheapest model expected to keep the
    rule's quality target on this prompt, from the tenant's outcomes on similar prompts.

    Until every candidate has :data:`MIN_OUTCOMES` scored outcomes the rule's own order stands.
    A share of requests (the rule's ``explore_share``) goes instead to the candidate the router
    knows least about near this prompt, so that it keeps learning what it would not pick. The
    chosen model goes first; the others follow as fallbacks, the most promising first."""
    rule = call.learned_rule
    chain = call.chain
    if not runtime.semantic_ready(call.key):
        call.route_reason = "learned: rule order (the embedding model is still loading)"
        return
    vector = await runtime.batcher_for(call.key).embed_one(tokens.messages_text(body.get("messages") or []))
    tenant = await runtime.routers.router_for(call.key.tenant_id)
    router = tenant.router
    columns = [router.models.index(m.name) if m.name in router.models else -1 for m in chain]
    estimates, evidence = router.estimate_with_evidence(vector)
    estimate = np.array([estimates[0][c] if c >= 0 else np.nan for c in columns])
    known = np.array([evidence[0][c] if c >= 0 else 0.0 for c in columns])
    counts = [tenant.counts.get(m.name, 0) for m in chain]
    call.route_estimates = ";".join(f"{m.name}={e:.3f}" for m, e in zip(chain, estimate, strict=True)
                                    if not np.isnan(e))
    explore = rule.explore_share > 0 and random.random() < rule.explore_share  # nosec B311
    if min(counts) < MIN_OUTCOMES:
        pick = int(np.argmin(counts)) if explore else 0
        have = ", ".join(f"{m.name} {n}" for m, n in zip(chain, counts, strict=True))
        call.route_reason = (f"learned: {'explore' if explore else 'rule order'}, too few outcomes yet "
                             f"({have}; {MIN_OUTCOMES} each)")
    elif explore:
        pick = int(np.argmin(known))
        call.route_reason = f"learned: explore {chain[pick].name} (least known near this prompt)"
    else:
        costs = np.array([float(m.input_price + m.output_price) for m in chain])
        pick = model_pick(estimate, costs, target=rule.quality_target)
        others = ", ".join(f"{chain[i].name} {estimate[i]:.2f}" for i in range(len(chain)) if i != pick)
        call.route_reason = (f"learned: {chain[pick].name} expected {estimate[pick]:.2f} ({others}), "
                             f"target {rule.quality_target:.2f} of best")
    rest = sorted((i for i in range(len(chain)) if i != pick),
                  key=lambda i: -estimate[i] if not np.isnan(estimate[i]) else 0.0)
    call.chain = (chain[pick], *(chain[i] for i in rest))
    runtime.spawn(runtime.routers.record(tenant_id=call.key.tenant_id, request_id=call.request_id,
                                         rule_id=call.rule_id, model_name=chain[pick].name, vector=vector,
                                         explored=explore))
