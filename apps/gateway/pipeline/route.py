"""The route step: the requested model (a name, an alias or ``auto``) to the ordered chain of
models to try, filtered by what the key may use, what the client's dialect can reach, and what
the request needs of a model (its capabilities and context window, :mod:`.fit`)."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import numpy as np

from apps.cache.fingerprint import prompt_text
from apps.core import tokens
from apps.core.errors import BadRequest, ModelNotAllowed, ModelNotFound
from apps.gateway.pipeline.call import Call
from apps.gateway.pipeline.fit import chain_fit
from apps.gateway.validation import model_field, tags_from
from apps.routing.engine import route_resolve
from apps.routing.learned import model_pick, prior_blend

if TYPE_CHECKING:
    from apps.gateway.dialects.base import Dialect
    from apps.gateway.runtime import Runtime


MODELS_HINT = "GET /v1/models lists the models this key may use; model 'auto' routes a chat prompt for you."


def call_route(runtime: Runtime, call: Call, body: dict, tags_header: str | None, *, mode: str,
               dialect: Dialect | None = None, native_only: str | None = None, fit: bool = True) -> None:
    """Resolve ``body``'s model to ``call.chain`` (raises a :class:`GatewayError` when nothing fits).

    A chat request skips the models that lack a capability it uses or whose context window it
    would overflow (:func:`.fit.chain_fit`), unless ``fit`` is off (counting a prompt's tokens
    sends nothing to be answered).

    ``dialect`` decides which providers the request can be sent to (an Anthropic request using
    what only Anthropic's API takes goes only to native Anthropic providers); ``native_only`` names
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
    if fit and mode == "chat":
        chain = chain_fit(call, chain, body, prompt_text, requested=requested)
    call.chain = chain
    call.rule_id = route.rule_id
    call.route_tier = route.tier or ""
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


MIN_OUTCOMES = 10  # scored outcomes a candidate needs (or a global prior) before the router's estimates decide


def quality_target_parse(value: str | None) -> float | None:
    """``x-switchyard-quality-target``: the share of the best candidate's expected quality this
    request must keep (0 to 1), or None to keep the rule's own."""
    if value is None:
        return None
    try:
        target = float(value)
    except ValueError:
        target = -1.0
    if not 0.0 <= target <= 1.0:
        raise BadRequest("x-switchyard-quality-target must be a number from 0 to 1 (the share of the best "
                         "model's expected quality to keep).", param="x-switchyard-quality-target")
    return target


async def call_route_learned(runtime: Runtime, call: Call, body: dict, quality_target: float | None = None) -> None:
    """A learned rule matched: pick within its chain the cheapest model expected to keep the
    quality target (the request's own, else the rule's) on this prompt, from the tenant's
    outcomes on similar prompts, shrunk toward the global prior of each model.

    Until every candidate has :data:`MIN_OUTCOMES` scored outcomes, or a global prior, the
    rule's own order stands. A share of requests (the rule's ``explore_share``) goes instead to
    the candidate the router knows least about near this prompt, so that it keeps learning what
    it would not pick. The chosen model goes first; the others follow as fallbacks, the most
    promising first. The prompt's embedding is kept on the call for the cache to reuse."""
    rule = call.learned_rule
    chain = call.chain
    target = rule.quality_target if quality_target is None else quality_target
    if not runtime.semantic_ready(call.key):
        if not (call.batch and runtime.semantic_possible(call.key)):
            call.route_reason = "learned: rule order (the embedding model is still loading)"
            return
        await runtime.embedder_loaded()  # a batch line can wait for the model it learns with
    text = prompt_text(body)
    vector = await runtime.batcher_for(call.key).embed_one(text)
    call.prompt_vector = (text, vector)
    tenant = await runtime.routers.router_for(call.key.tenant_id)
    router = tenant.router
    counts = [tenant.counts.get(m.name, 0) for m in chain]
    # Each model's prior: the tenant's own mean shrunk toward what every tenant's feedback says.
    columns = {name: i for i, name in enumerate(router.models)}
    prior = {name: prior_blend(float(router.means[columns[name]]) if name in columns else None,
                               tenant.counts.get(name, 0), tenant.priors.get(name))
             for name in {*router.models, *tenant.priors}}
    estimates, evidence = router.estimate_with_evidence(
        vector, np.array([[prior[name] for name in router.models]]) if router.models else None)
    estimate = np.array([estimates[0][columns[m.name]] if m.name in columns else tenant.priors.get(m.name, np.nan)
                         for m in chain], dtype=np.float64)
    known = np.array([evidence[0][columns[m.name]] if m.name in columns else 0.0 for m in chain])
    call.route_estimates = ";".join(f"{m.name}={e:.3f}" for m, e in zip(chain, estimate, strict=True)
                                    if not np.isnan(e))
    explore = rule.explore_share > 0 and random.random() < rule.explore_share  # nosec B311
    ready = all(n >= MIN_OUTCOMES or m.name in tenant.priors for m, n in zip(chain, counts, strict=True))
    # The best candidate: the one every prompt would go to for quality alone (the highest prior;
    # the rule's own target while nothing is known). Routing savings are counted against it.
    rated = [prior.get(m.name, -1.0) for m in chain]
    best = int(np.argmax(rated)) if max(rated) >= 0 else 0
    if not ready:
        pick = int(np.argmin(counts)) if explore else 0
        have = ", ".join(f"{m.name} {n}" for m, n in zip(chain, counts, strict=True))
        call.route_reason = (f"learned: {'explore' if explore else 'rule order'}, too few outcomes yet "
                             f"({have}; {MIN_OUTCOMES} each)")
    elif explore:
        pick = int(np.argmin(known))
        call.route_reason = f"learned: explore {chain[pick].name} (least known near this prompt)"
    else:
        costs = np.array([float(m.input_price + m.output_price) for m in chain])
        pick = model_pick(estimate, costs, target=target)
        others = ", ".join(f"{chain[i].name} {estimate[i]:.2f}" for i in range(len(chain)) if i != pick)
        leaning = [m.name for m, n in zip(chain, counts, strict=True) if n < MIN_OUTCOMES]
        call.route_reason = (f"learned: {chain[pick].name} expected {estimate[pick]:.2f} ({others}), "
                             f"target {target:.2f} of best"
                             + (f"; global prior for {', '.join(leaning)}" if leaning else ""))
    rest = sorted((i for i in range(len(chain)) if i != pick),
                  key=lambda i: -estimate[i] if not np.isnan(estimate[i]) else 0.0)
    call.chain = (chain[pick], *(chain[i] for i in rest))
    call.baseline = chain[best]
    call.route_recorded = runtime.spawn(runtime.routers.record(
        tenant_id=call.key.tenant_id, request_id=call.request_id, rule_id=call.rule_id, model_name=chain[pick].name,
        vector=vector, explored=explore, estimate=_finite(estimate[pick]), best_model=chain[best].name,
        best_estimate=_finite(estimate[best])))


def _finite(value: float) -> float | None:
    return None if np.isnan(value) else float(value)
