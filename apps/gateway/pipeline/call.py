"""The record of one request as it moves through the pipeline, and what its usage row will say.

A :class:`Call` holds data and pure computations only (prices, headers, the usage row); writing
the row and settling the request's limits happen in one place, :func:`call_log`.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from apps.core import tokens
from apps.core.errors import GatewayError
from apps.gateway.attribution import NONE as NO_ATTRIBUTION
from apps.gateway.attribution import Attribution
from apps.gateway.snapshot import KeyInfo, ModelInfo
from apps.usage.buffer import BODY

_ZERO = Decimal(0)
_CACHE_HEADER = {"miss": b"miss", "exact": b"hit-exact", "semantic": b"hit-semantic", "bypass": b"bypass"}
CACHE_NAMES = {"miss": "miss", "exact": "hit-exact", "semantic": "hit-semantic", "bypass": "bypass"}

_REQUEST_PREFIX = "req_" + os.urandom(8).hex()
_request_counter = itertools.count(1)


def request_id_new() -> str:
    """Unique per request: a random per-process prefix and a counter (no syscall per request)."""
    return f"{_REQUEST_PREFIX}{next(_request_counter):08x}"


def completion_text(completion: dict) -> str:
    """A chat completion's answer as one text: each choice's content, then its tool calls."""
    parts = []
    for choice in completion.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        if isinstance(message.get("content"), str):
            parts.append(message["content"])
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                parts.append(f"[tool call] {function.get('name')}({function.get('arguments')})")
    return "\n".join(parts)


def money(value: Decimal) -> str:
    """A cost as the API shows it: ten decimal places at most, no exponent."""
    return f"{value.quantize(Decimal('0.0000000001')).normalize():f}"


@dataclass(slots=True)
class Call:
    """One request as it moves through the pipeline, and what its usage row will say."""

    key: KeyInfo
    endpoint: str
    started: float
    request_id: str = field(default_factory=request_id_new)
    requested_model: str = ""
    chain: tuple = ()
    rule_id: int | None = None
    route_tier: str = ""  # the prompt's complexity, when routing had to read it (auto, a rule on a tier)
    learned_rule: object = None  # RuleInfo of a learned rule that matched: the router picks within the chain
    route_reason: str = ""  # why the learned router chose (x-switchyard-route-reason)
    route_estimates: str = ""  # its estimate per candidate, "model=0.912;..." (x-switchyard-route-estimates)
    route_recorded: object = None  # the task keeping a learned route's outcome row (feedback waits for it)
    prompt_vector: tuple | None = None  # (text, embedding) of the prompt, once a step embedded it
    model: ModelInfo | None = None
    stream: bool = False
    input_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    tokens_estimated: bool = False
    cost: Decimal = _ZERO
    status: int = 200
    error_code: str = ""
    upstream_started: float | None = None
    upstream_ended: float | None = None
    first_byte: float | None = None
    overhead_ms: float = 0.0
    failures: list = field(default_factory=list)
    cache: str = "miss"  # miss | exact | semantic | bypass
    cache_similarity: float | None = None
    cache_entry: int | None = None  # the entry that answered a hit
    saved_cost: Decimal = _ZERO
    cache_age: int | None = None
    baseline: ModelInfo | None = None  # what routing is compared with: the model asked for, or the dearest
    reservation: object = None  # apps.limits.enforce.Reservation when the key or tenant has limits
    refusal: GatewayError | None = None  # a token or budget refusal, raised unless the cache answers
    batch: bool = False  # a line of a batch job answered live: priced live (only a provider Batch API discounts)
    attribution: Attribution = NO_ATTRIBUTION  # end user, tags, metadata, session (apps.gateway.attribution)
    # For a tenant that keeps bodies: the prompt and, once known, the answer; written (redacted) with
    # the usage row by the buffer, which reads it at its next flush (a stream's answer lands after
    # its row is queued, in the same step of the event loop).
    body: dict | None = None
    trace: object = None  # apps.gateway.tracing.RequestTrace when tracing is on: its span ends with the row
    prompt_counted: int | None = field(default=None, init=False, repr=False)
    logged: bool = field(default=False, init=False, repr=False)  # its row is written once, however it ends

    def prompt_tokens_count(self, messages: list) -> int:
        """The request's prompt as the tokenizer counts it, counted once however many stages ask
        (limits' reservation, a translated stream's ``message_start``, usage an upstream omitted)."""
        if self.prompt_counted is None:
            self.prompt_counted = tokens.messages_tokens(messages)
        return self.prompt_counted

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The ``x-switchyard-*`` headers (cost deferred to the stream's end for streams)."""
        model = self.model
        deferred = self.stream and self.status == 200 and self.cache in ("miss", "bypass")
        headers = [
            (b"x-switchyard-request-id", self.request_id.encode()),
            (b"x-switchyard-model", (model.name if model else "").encode()),
            (b"x-switchyard-provider", (model.provider.name if model else "").encode()),
            (b"x-switchyard-cache", _CACHE_HEADER[self.cache]),
            (b"x-switchyard-cost", b"deferred" if deferred else money(self.cost).encode()),
            (b"x-switchyard-overhead-ms", f"{self.overhead_ms:.2f}".encode()),
        ]
        if model is not None and model.deployment_id is not None:
            headers.append((b"x-switchyard-deployment",
                            f"{model.deployment_id} {model.deployment_label}".encode("ascii", "replace")))
        if self.cache_similarity is not None:
            headers.append((b"x-switchyard-cache-similarity", f"{self.cache_similarity:.4f}".encode()))
        if self.cache_age is not None:
            headers.append((b"age", str(self.cache_age).encode()))
        if self.route_reason:
            headers.append((b"x-switchyard-route-reason", self.route_reason.encode("ascii", "replace")))
        if self.route_estimates:
            headers.append((b"x-switchyard-route-estimates", self.route_estimates.encode("ascii", "replace")))
        if self.reservation is not None:
            headers += self.reservation.headers(cost=None if deferred else self.cost)
        if self.trace is not None:
            headers.append((b"x-switchyard-trace-id", self.trace.trace_id.encode()))
        return headers

    def usage_estimate(self, messages: list, answer_text: str) -> None:
        """Usage the provider did not report, counted here: the prompt and the answer's text."""
        self.set_usage(None, fallback_prompt=self.prompt_tokens_count(messages),
                       fallback_completion=tokens.text_tokens(answer_text))

    def set_usage(self, usage: dict | None, *, fallback_prompt: int, fallback_completion: int) -> None:
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            self.input_tokens = usage["prompt_tokens"]
            self.output_tokens = usage.get("completion_tokens") or 0
            details = usage.get("prompt_tokens_details") or {}
            self.cached_tokens = details.get("cached_tokens") or 0 if isinstance(details, dict) else 0
            # Prompt-cache writes, where a translated provider reports them (chat's form has no
            # field: the gateway's own chat usage, and LiteLLM's, carry Anthropic's name for them).
            written = usage.get("cache_creation_input_tokens")
            self.cache_write_tokens = written if isinstance(written, int) and 0 < written <= self.input_tokens else 0
        else:
            self.input_tokens, self.output_tokens, self.cached_tokens = fallback_prompt, fallback_completion, 0
            self.cache_write_tokens = 0
            self.tokens_estimated = True
        self._price()

    def set_usage_anthropic(self, usage: dict | None, *, fallback_prompt: int, fallback_completion: int) -> None:
        """Usage in Anthropic's shape: ``input_tokens`` there excludes the prompt-cache reads
        and writes, which are counted (and priced) apart."""
        if isinstance(usage, dict) and isinstance(usage.get("input_tokens"), int):
            read = usage.get("cache_read_input_tokens") or 0
            written = usage.get("cache_creation_input_tokens") or 0
            self.input_tokens = usage["input_tokens"] + read + written
            self.cached_tokens, self.cache_write_tokens = read, written
            self.output_tokens = usage.get("output_tokens") or 0
        else:
            self.set_usage(None, fallback_prompt=fallback_prompt, fallback_completion=fallback_completion)
            return
        self._price()

    def _price(self) -> None:
        if self.model is not None:
            self.cost = self.model.cost(self.input_tokens, self.cached_tokens, self.output_tokens,
                                        self.cache_write_tokens)

    def _routing_saved(self) -> Decimal:
        """What the answer would have cost on the baseline model, less what it cost (never
        negative; nothing for cache hits, whose saving is counted as the cache's)."""
        model, baseline = self.model, self.baseline
        if model is None or baseline is None or baseline.id == model.id or self.cache in ("exact", "semantic"):
            return _ZERO
        baseline_cost = baseline.cost(self.input_tokens, self.cached_tokens, self.output_tokens,
                                      self.cache_write_tokens)
        return max(baseline_cost - self.cost, _ZERO)

    def body_keep(self, prompt) -> None:
        """Start the request's body record, if its tenant keeps bodies."""
        if self.key.store_bodies:
            self.body = {"tenant_id": self.key.tenant_id, "request_id": self.request_id, "prompt": prompt,
                         "answer": "", "patterns": self.key.redact_patterns}

    def body_answer(self, completion: dict | None) -> None:
        """The answer's text and tool calls, from its chat completion form (kept bodies only)."""
        if self.body is not None and isinstance(completion, dict):
            self.body["answer"] = completion_text(completion)

    def usage_row(self) -> dict:
        """The request's usage row, as it stands now (see :func:`call_log`)."""
        now = time.perf_counter()
        model = self.model
        row = {
            "tenant_id": self.key.tenant_id,
            "api_key_id": self.key.id,
            "request_id": self.request_id,
            "endpoint": self.endpoint,
            "requested_model": self.requested_model[:200],
            "model_used": model.name if model else "",
            "model_id": model.id if model else None,
            "provider_id": model.provider.id if model else None,
            "deployment_id": model.deployment_id if model else None,
            "routing_rule_id": self.rule_id,
            "route_reason": self.route_reason[:200],
            "route_tier": self.route_tier,
            "route_chain": " > ".join(model.name for model in self.chain)[:500],
            "price_id": model.price_id if model else None,
            "input_tokens": self.input_tokens,
            "cached_tokens": self.cached_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "output_tokens": self.output_tokens,
            "tokens_estimated": self.tokens_estimated,
            "cost": self.cost,
            "latency_ms": (now - self.started) * 1000,
            "ttft_ms": (self.first_byte - self.started) * 1000 if self.first_byte else None,
            "overhead_ms": self.overhead_ms,
            "is_stream": self.stream,
            "cache_outcome": self.cache,
            "cache_similarity": self.cache_similarity,
            "cache_entry_id": self.cache_entry,
            "saved_cost": self.saved_cost,
            "routing_saved_cost": self._routing_saved(),
            "status_code": self.status,
            "error_code": self.error_code[:64],
            "upstream_failures": "; ".join(self.failures)[:2000] if self.failures else "",
            "end_user": self.attribution.end_user,
            "tags": list(self.attribution.tags),
            "metadata": self.attribution.metadata,
            "session_id": self.attribution.session_id,
            "created_at": datetime.now(UTC),
        }
        if self.body is not None:
            row[BODY] = self.body
        return row
