"""Prometheus metrics of one gateway process, served at ``GET /metrics``.

Nothing is counted on the request path: every request already leaves a usage row in the
buffer, and the buffer hands each flushed batch to :func:`rows_observe` (once a second, off the
path), which updates the counters and histograms from the rows. Embedding batch sizes are
observed when a batch closes; the buffer's depth is read at scrape time.

``/metrics`` is not public: with ``METRICS_TOKEN`` set it needs ``Authorization: Bearer
<token>``; without it, only clients on the loopback interface are answered.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections import Counter as Tally

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_OVERHEAD = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)

REQUESTS = Counter("switchyard_requests", "Requests answered, by endpoint, status, cache outcome and model.",
                   ["endpoint", "status", "cache", "model"], registry=REGISTRY)
UPSTREAM_ERRORS = Counter("switchyard_upstream_errors", "Requests that ended in an upstream error, by provider "
                          "and error code.", ["provider", "code"], registry=REGISTRY)
CACHE_HITS = Counter("switchyard_cache_hits", "Cache hits by kind.", ["kind"], registry=REGISTRY)
SPEND = Counter("switchyard_spend_usd", "Cost billed to tenants, in USD.", ["tenant"], registry=REGISTRY)
SAVED = Counter("switchyard_saved_usd", "Cost saved by cache hits, in USD.", ["tenant"], registry=REGISTRY)
TOKENS = Counter("switchyard_tokens", "Tokens by direction.", ["direction"], registry=REGISTRY)
LATENCY = Histogram("switchyard_request_duration_seconds", "Whole request time.", ["endpoint"], buckets=_SECONDS,
                    registry=REGISTRY)
TTFT = Histogram("switchyard_time_to_first_token_seconds", "Time to the first byte of the answer.", ["endpoint"],
                 buckets=_SECONDS, registry=REGISTRY)
OVERHEAD = Histogram("switchyard_overhead_seconds", "Time the gateway itself added before the upstream call.",
                     buckets=_OVERHEAD, registry=REGISTRY)
EMBED_BATCH = Histogram("switchyard_embedding_batch_size", "Prompts per embedding batch.",
                        buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=REGISTRY)
BUFFER_DEPTH = Gauge("switchyard_usage_buffer_rows", "Usage rows waiting to be written.", registry=REGISTRY)
ROWS_WRITTEN = Gauge("switchyard_usage_rows_written", "Usage rows written by this process.", registry=REGISTRY)
UPSTREAM_IN_FLIGHT = Gauge("switchyard_upstream_in_flight", "Upstream calls holding a connection (JSON answers "
                           "being read and open streams).", registry=REGISTRY)
LOOP_TASKS = Gauge("switchyard_event_loop_tasks", "Tasks alive on this process's event loop.", registry=REGISTRY)
CIRCUIT_OPEN = Gauge("switchyard_circuit_open", "1 while one of this process's circuit breakers for the "
                     "provider's models is open or probing.", ["provider"], registry=REGISTRY)
MODEL_CIRCUIT_OPEN = Gauge("switchyard_model_circuit_open", "1 while this process's circuit breaker for the model "
                           "is open or probing.", ["provider", "model"], registry=REGISTRY)


def rows_observe(rows: list[dict], tenant_names: dict[int, str], providers: dict[str, str]) -> None:
    """Count a flushed batch of usage rows (``providers``: model name to provider name): counters
    summed per label set first, one increment each; histograms observe every row."""
    requests: Tally = Tally()
    hits: Tally = Tally()
    errors: Tally = Tally()
    spend: Tally = Tally()
    saved: Tally = Tally()
    tokens = dict.fromkeys(("input", "cached", "cache_write", "output"), 0)
    latency: dict = {}
    ttft: dict = {}
    for row in rows:
        endpoint, status, outcome = row["endpoint"], row["status_code"], row["cache_outcome"]
        requests[(endpoint, status, outcome, row["model_used"] or "none")] += 1
        child = latency.get(endpoint) or latency.setdefault(endpoint, LATENCY.labels(endpoint))
        child.observe(row["latency_ms"] / 1000)
        if row["ttft_ms"] is not None:
            child = ttft.get(endpoint) or ttft.setdefault(endpoint, TTFT.labels(endpoint))
            child.observe(row["ttft_ms"] / 1000)
        if outcome in ("exact", "semantic"):
            hits[outcome] += 1
        else:
            OVERHEAD.observe(row["overhead_ms"] / 1000)
        if status >= 500 or row["error_code"].startswith("upstream"):
            errors[(providers.get(row["model_used"], "none"), row["error_code"] or str(status))] += 1
        if row["cost"]:
            spend[row["tenant_id"]] += row["cost"]
        if row["saved_cost"]:
            saved[row["tenant_id"]] += row["saved_cost"]
        tokens["input"] += row["input_tokens"]
        tokens["cached"] += row["cached_tokens"]
        tokens["cache_write"] += row.get("cache_write_tokens", 0)
        tokens["output"] += row["output_tokens"]
    for (endpoint, status, outcome, model), count in requests.items():
        REQUESTS.labels(endpoint, str(status), outcome, model).inc(count)
    for outcome, count in hits.items():
        CACHE_HITS.labels(outcome).inc(count)
    for labels, count in errors.items():
        UPSTREAM_ERRORS.labels(*labels).inc(count)
    for tenant_id, amount in spend.items():
        SPEND.labels(tenant_names.get(tenant_id, str(tenant_id))).inc(float(amount))
    for tenant_id, amount in saved.items():
        SAVED.labels(tenant_names.get(tenant_id, str(tenant_id))).inc(float(amount))
    for kind, count in tokens.items():
        if count:
            TOKENS.labels(kind).inc(count)


def allowed(scope, authorization: bytes | None, token: str) -> bool:
    if token:
        expected = f"Bearer {token}".encode()
        return authorization is not None and hmac.compare_digest(authorization, expected)
    client = scope.get("client") or ("", 0)
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except ValueError:  # a Unix socket or no address at all
        return False


def exposition(buffer_depth: int, rows_written: int, *, upstream_in_flight: int = 0, loop_tasks: int = 0,
               circuits: dict[tuple[str, str], bool] | None = None) -> tuple[bytes, bytes]:
    """The exposition; ``circuits``: (provider, model) -> whether its circuit is open or probing."""
    BUFFER_DEPTH.set(buffer_depth)
    ROWS_WRITTEN.set(rows_written)
    UPSTREAM_IN_FLIGHT.set(upstream_in_flight)
    LOOP_TASKS.set(loop_tasks)
    # Only the circuits of the catalog as it is now: a deleted model's or provider's go.
    MODEL_CIRCUIT_OPEN.clear()
    CIRCUIT_OPEN.clear()
    providers: dict[str, bool] = {}
    for (provider, model), tripped in (circuits or {}).items():
        MODEL_CIRCUIT_OPEN.labels(provider, model).set(1 if tripped else 0)
        providers[provider] = providers.get(provider, False) or tripped
    for provider, tripped in providers.items():
        CIRCUIT_OPEN.labels(provider).set(1 if tripped else 0)
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST.encode()
