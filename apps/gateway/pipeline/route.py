"""The route step: the requested model (a name, an alias or ``auto``) to the ordered chain of
models to try, filtered by what the key may use and what the client's dialect can reach."""

from __future__ import annotations

from typing import TYPE_CHECKING

from apps.core import tokens
from apps.core.errors import BadRequest, ModelNotAllowed, ModelNotFound
from apps.gateway.pipeline.call import Call
from apps.gateway.validation import model_field, tags_from
from apps.routing.engine import route_resolve

if TYPE_CHECKING:
    from apps.gateway.dialects.base import Dialect
    from apps.gateway.runtime import Runtime


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
        raise ModelNotFound(f"The model '{requested}' does not exist.", param="model")
    chain = tuple(m for m in route.chain if m.mode == mode)
    if not chain:
        raise ModelNotFound(f"The model '{requested}' cannot serve {mode} requests.", param="model")
    if dialect is not None and mode == "chat":
        chain = dialect.reachable(chain, requested=requested, native_only=native_only)
    if allowed is not None:
        chain = tuple(m for m in chain if m.name in allowed)
        if not chain:
            raise ModelNotAllowed(f"This API key may not use the model '{requested}'.", param="model")
    call.chain = chain
    call.rule_id = route.rule_id
    named = snapshot.models.get(requested)
    call.baseline = named if named is not None and named.mode == mode else snapshot.reference_models.get(mode)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit is not None and limit > max(m.max_output_tokens for m in chain):
        raise BadRequest(
            f"max_tokens {limit} exceeds the model's limit of {max(m.max_output_tokens for m in chain)}.",
            param="max_tokens",
        )
