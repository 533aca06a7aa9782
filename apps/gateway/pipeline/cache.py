"""The cache stage of the pipeline: plan, look up (exact, in-flight, semantic), save.

    plan     is this request cacheable (tenant on, policy, Cache-Control)? its fingerprint and
             namespace (``x-switchyard-cache-namespace``, or the ``user`` field when the tenant
             keeps a cache per end user)
    lookup   exact hash; then an identical request already upstream (wait for it and share its
             answer instead of paying twice); then, if any entry shares the conversation's
             context (otherwise the embedding is computed after the response, for the save),
             the nearest neighbour of the last user message's embedding, same tenant, namespace
             and context, at or above the tenant's threshold, accepted only if
             ``apps.cache.verify`` agrees it is the same question (the exact lookup and the
             context check are one statement)
    save     after a complete answer, off the response path
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from apps.cache.fingerprint import CacheControl, Fingerprint, cache_control_parse, cacheable, fingerprint
from apps.cache.store import CachedAnswer, fresh_for
from apps.cache.verify import Verdict, candidate_verify
from apps.gateway.pipeline.call import Call
from apps.gateway.pipeline.usage import call_log

if TYPE_CHECKING:
    from apps.gateway.runtime import Runtime

logger = logging.getLogger(__name__)

COALESCE_TIMEOUT = 120.0


@dataclass(slots=True)
class CachePlan:
    fp: Fingerprint
    namespace: str
    control: CacheControl
    vector: object = None  # np.ndarray once embedded
    leader: asyncio.Future | None = None
    key: tuple | None = None
    settled: bool = False
    # When the request asked: a purge recorded since keeps its answer out of the cache.
    asked_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def cache_plan(call, body: dict, *, cache_control: str | None, namespace: str | None) -> CachePlan | None:
    """None (and ``call.cache = "bypass"``) when this request neither reads nor writes the cache."""
    key = call.key
    control = cache_control_parse(cache_control)
    reason = None if key.cache_enabled else "disabled"
    reason = reason or cacheable(body, max_temperature=key.cache_max_temperature, tool_calls=key.cache_tool_calls)
    if reason is None and not (control.lookup or control.store):
        reason = "no-store"
    if reason is not None:
        call.cache = "bypass"
        return None
    scope = (namespace or "").strip()[:120]
    if key.cache_namespace_by_user and isinstance(body.get("user"), str):
        scope = f"{scope}|user:{body['user'][:64]}"
    return CachePlan(fp=fingerprint(body), namespace=scope, control=control)


def _hit(call, answer: CachedAnswer, kind: str) -> CachedAnswer:
    call.cache = kind
    call.cache_similarity = answer.similarity
    call.cache_entry = answer.id or None  # 0: shared by an identical request before its save
    call.saved_cost = answer.cost
    call.cache_age = max(int((datetime.now(UTC) - answer.created_at).total_seconds()), 0)
    return answer


async def cache_lookup(runtime, call, plan: CachePlan) -> CachedAnswer | None:
    """A cached answer for this request, or None (the caller then goes upstream and settles)."""
    tenant = call.key.tenant_id
    fp = plan.fp
    if plan.control.lookup:
        found = await runtime.cache.lookup(
            tenant_id=tenant, namespace=plan.namespace, request_hash=fp.request_hash, context_hash=fp.context_hash,
            max_age=plan.control.max_age)
        if found.exact is not None:
            runtime.cache.hit(found.exact.id)
            return _hit(call, found.exact, "exact")
        plan.key = (tenant, plan.namespace, fp.request_hash)
        pending = runtime.inflight.get(plan.key)
        if pending is not None:
            # Still upstream, or answered and not yet saved (the exact lookup above ran before
            # the save committed): either way this request shares that answer.
            try:
                shared = await asyncio.wait_for(asyncio.shield(pending), COALESCE_TIMEOUT)
            except (TimeoutError, asyncio.CancelledError):
                shared = None
            if shared is not None and _fresh_enough(shared, plan):
                return _hit(call, shared, "exact")
        _lead(runtime, plan)
        if fp.prompt_text and call.key.cache_semantic and runtime.semantic_ready(call.key, cache=True) and \
                found.context_has_entries:
            plan.vector = await _prompt_vector(runtime, call, fp.prompt_text)
            candidates = await runtime.cache.nearest(
                tenant_id=tenant, namespace=plan.namespace, context_hash=fp.context_hash, vector=plan.vector,
                embedding_model=_embedding_model(runtime, call), max_age=plan.control.max_age)
            for candidate in candidates:
                if candidate.similarity < call.key.cache_threshold:
                    break
                if candidate.min_similarity is not None and candidate.similarity < candidate.min_similarity:
                    verdict = Verdict(False, "feedback")  # the entry served a wrong hit this far away
                else:
                    verdict = candidate_verify(fp.prompt_text, candidate.prompt_text,
                                               precision=call.key.cache_precision)
                if verdict.ok:
                    runtime.cache.hit(candidate.id)
                    _release(runtime, plan, candidate)  # requests waiting on this one share the hit
                    return _hit(call, candidate, "semantic")
                logger.info("semantic candidate rejected", extra={
                    "request_id": call.request_id, "reason": verdict.reason, "similarity": candidate.similarity,
                    "entry": candidate.id})
    else:
        plan.key = (tenant, plan.namespace, fp.request_hash)
        _lead(runtime, plan)
    return None


async def _prompt_vector(runtime, call, text: str):
    """The prompt's embedding: the one the route step computed for the same text with the same
    model, or a new one."""
    batcher = runtime.batcher_for(call.key, cache=True)
    if call.prompt_vector is not None and call.prompt_vector[0] == text and batcher is runtime.batcher_for(call.key):
        return call.prompt_vector[1]
    return await batcher.embed_one(text)


def _embedding_model(runtime, call) -> str:
    """The name entries record for the vectors this call's lookups compare."""
    return runtime.batcher_for(call.key, cache=True).embedder.name


def _fresh_enough(shared: CachedAnswer, plan: CachePlan) -> bool:
    """Whether an identical request's answer may answer this one: one the upstream gave after this
    request asked always may; one given before it only within the request's max-age, as a saved
    entry would (``Cache-Control: max-age=0`` asks for nothing given before it)."""
    return shared.created_at >= plan.asked_at or fresh_for(shared, plan.control.max_age)


def _lead(runtime, plan: CachePlan) -> None:
    """Become the request identical ones wait for (registered before any further await)."""
    pending = runtime.inflight.get(plan.key)
    if pending is None or pending.done():
        plan.leader = asyncio.get_running_loop().create_future()
        runtime.inflight[plan.key] = plan.leader


def _release(runtime, plan: CachePlan, answer: CachedAnswer | None, *, until_saved: bool = False) -> None:
    """Hand ``answer`` to the requests waiting on this one. With ``until_saved`` the answer stays
    in the in-flight table until ``_forget`` (after the save commits), so an identical request
    whose exact lookup missed the not yet saved row still shares it."""
    plan.settled = True
    if plan.leader is not None:
        if not until_saved:
            _forget(runtime, plan)
        if not plan.leader.done():
            plan.leader.set_result(answer)


def _forget(runtime, plan: CachePlan) -> None:
    if plan.leader is not None and runtime.inflight.get(plan.key) is plan.leader:
        del runtime.inflight[plan.key]


def cache_settle(runtime, call, plan: CachePlan | None, response: dict | None) -> None:
    """After the upstream answered (``response``) or failed (None): release followers, and save."""
    if plan is None or plan.settled:
        return
    shared = None
    if response is not None:
        shared = CachedAnswer(id=0, response=response, cost=call.cost, model_name=call.model.name if call.model else "",
                              created_at=datetime.now(UTC), similarity=None, prompt_text=plan.fp.prompt_text)
    saving = response is not None and plan.control.store
    _release(runtime, plan, shared, until_saved=saving)
    if saving:
        runtime.spawn(_save(runtime, call, plan, response))


async def _save(runtime, call, plan: CachePlan, response: dict) -> None:
    try:
        vector = plan.vector
        if vector is None and plan.fp.prompt_text and call.key.cache_semantic and \
                runtime.semantic_ready(call.key, cache=True):
            vector = await _prompt_vector(runtime, call, plan.fp.prompt_text)
        usage = response.get("usage") if isinstance(response.get("usage"), dict) else {}
        await runtime.cache.save(
            tenant_id=call.key.tenant_id, namespace=plan.namespace, request_hash=plan.fp.request_hash,
            context_hash=plan.fp.context_hash, prompt_text=plan.fp.prompt_text, vector=vector,
            embedding_model=_embedding_model(runtime, call), response=response,
            model_id=call.model.id if call.model else None, model_name=call.model.name if call.model else "",
            input_tokens=usage.get("prompt_tokens") or call.input_tokens,
            output_tokens=usage.get("completion_tokens") or call.output_tokens, cost=call.cost,
            ttl_seconds=call.key.cache_ttl, asked_at=plan.asked_at,
        )
    finally:
        _forget(runtime, plan)  # committed (an exact lookup finds it from now on) or failed
    if vector is None and plan.fp.prompt_text and call.key.cache_semantic and \
            runtime.semantic_possible(call.key, cache=True):
        # Saved for exact hits at once; semantic hits once the model (still loading) embeds it.
        await runtime.embedder_loaded(cache=True)
        batcher = runtime.batcher_for(call.key, cache=True)
        await runtime.cache.embed_later(tenant_id=call.key.tenant_id, namespace=plan.namespace,
                                      request_hash=plan.fp.request_hash,
                                      vector=await batcher.embed_one(plan.fp.prompt_text),
                                      embedding_model=batcher.embedder.name)


def cache_hit_log(runtime: Runtime, call: Call, answer: CachedAnswer) -> None:
    """Record a hit: nothing billed, the cached answer's cost saved."""
    call.model = runtime.snapshot.models.get(answer.model_name)
    call.cost = Decimal(0)
    call.status = 200
    call.first_byte = time.perf_counter()
    call.overhead_ms = (call.first_byte - call.started) * 1000
    call_log(runtime, call)
