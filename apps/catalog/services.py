"""Writes to the catalog made by the gateway itself (circuit breaker reports), and the admin's
checks of a provider and of what uses a model."""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

import httpx
from django.db import close_old_connections
from django.db.models import Q

from apps.catalog.models import Model, Provider, ProviderCircuit


def circuit_report(*, provider_id: int, model_id: int, process: str, state: str, consecutive_failures: int,
                   last_failure: str, retry_at: datetime | None, changed_at: datetime,
                   deployment_id: int | None = None) -> None:
    """Record a process's circuit for a model of a provider, or one of its deployments (one
    deleted meanwhile is skipped)."""
    close_old_connections()
    if deployment_id is not None:
        served = Q(deployments__pk=deployment_id, deployments__provider_id=provider_id)
    else:
        served = Q(provider_id=provider_id) | Q(deployments__provider_id=provider_id)  # its own, or a deployment's
    if not Model.objects.filter(served, pk=model_id).exists():
        return
    ProviderCircuit.objects.update_or_create(
        provider_id=provider_id, model_id=model_id, deployment_id=deployment_id, process=process,
        defaults={"state": state, "consecutive_failures": consecutive_failures, "last_failure": last_failure,
                  "retry_at": retry_at, "changed_at": changed_at},
    )


def circuits_forget(*, process: str) -> int:
    """Remove a process's circuit rows (it is shutting down: its breakers go with it)."""
    close_old_connections()
    deleted, _ = ProviderCircuit.objects.filter(process=process).delete()
    return deleted


@dataclass(frozen=True, slots=True)
class ProviderCheck:
    ok: bool
    summary: str


def _check_request(provider: Provider) -> tuple[str, dict[str, str], str]:
    """The URL and headers that list a provider's models, and the answer's key for the list."""
    base = provider.base_url.rstrip("/")
    headers = {"user-agent": "switchyard-admin-check"}
    credential = provider.credential
    if provider.kind == Provider.Kind.ANTHROPIC:
        headers |= {"anthropic-version": "2023-06-01", **({"x-api-key": credential} if credential else {})}
        return base + "/models", headers, "data"
    if provider.kind == Provider.Kind.AZURE:
        version = provider.api_version.strip()
        url = (base + "/openai/v1/models" if version in ("", "v1") else
               base + f"/openai/models?api-version={quote(version, safe='')}")
        return url, headers | ({"api-key": credential} if credential else {}), "data"
    if provider.kind == Provider.Kind.GEMINI:
        return base + "/models", headers | ({"x-goog-api-key": credential} if credential else {}), "models"
    if credential:
        headers["authorization"] = f"Bearer {credential}"
    return base + "/models", headers, "data"


def _vertex_check(provider: Provider, timeout: float) -> ProviderCheck:
    """A Vertex AI provider's key exchanged for an access token at its ``token_uri``."""
    # google-auth is imported here: only an admin checking a Vertex provider pays for loading it.
    import google.auth.exceptions
    from google.auth.transport.requests import Request
    from google.oauth2 import service_account

    started = time.perf_counter()
    try:
        key = json.loads(provider.credential)
        credentials = service_account.Credentials.from_service_account_info(
            key, scopes=["https://www.googleapis.com/auth/cloud-platform"])
        credentials.refresh(functools.partial(Request(), timeout=min(timeout, float(provider.timeout_seconds))))
    except (google.auth.exceptions.GoogleAuthError, ValueError, TypeError, AttributeError) as exc:
        return ProviderCheck(False, f"no access token from the service-account key: {type(exc).__name__} "
                                    f"{str(exc)[:200]}".strip())
    elapsed = (time.perf_counter() - started) * 1000
    return ProviderCheck(True, f"{key['token_uri']} granted an access token in {elapsed:.0f} ms.")


def provider_check(provider: Provider, *, timeout: float = 5.0) -> ProviderCheck:
    """List the provider's models with its own credential: is it reachable, and does it take the key?
    (Vertex AI: does the key's token endpoint grant it an access token?)"""
    if provider.kind == Provider.Kind.VERTEX:
        return _vertex_check(provider, timeout)
    url, headers, listing = _check_request(provider)
    started = time.perf_counter()
    try:
        response = httpx.get(url, headers=headers, timeout=min(timeout, float(provider.timeout_seconds)))
    except httpx.HTTPError as exc:
        return ProviderCheck(False, f"could not reach {url}: {type(exc).__name__} {exc}".strip())
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        return ProviderCheck(False, f"GET {url} answered {response.status_code} in {elapsed:.0f} ms: "
                                    f"{response.text[:200]}")
    try:
        listed = response.json().get(listing)
    except ValueError:
        listed = None
    count = f"{len(listed)} models listed" if isinstance(listed, list) else "no model list in the answer"
    return ProviderCheck(True, f"GET {url} answered 200 in {elapsed:.0f} ms, {count}.")


def rules_using(model: Model) -> list[str]:
    """The names of active routing rules whose target or fallback is ``model``."""
    from apps.routing.models import RoutingRule  # routing depends on the catalog, not the other way round

    return list(RoutingRule.objects.filter(Q(target=model) | Q(fallbacks__model=model), is_active=True)
                .distinct().order_by("name").values_list("name", flat=True))
