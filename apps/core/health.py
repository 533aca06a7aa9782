"""Liveness and readiness probes.

``/healthz`` answers while the process runs, touching nothing. ``/readyz`` answers 200 only
when the database answers, every migration is applied, the ``vector`` extension exists and
the Celery broker accepts a connection, and no app's probe (:func:`readiness_probe_add`) says
otherwise (the gateway's: a process draining after SIGTERM); else 503 with the failing checks named.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import JsonResponse
from django.views.decorators.http import require_GET
from kombu import Connection


@require_GET
def healthz(request) -> JsonResponse:
    """The process is up (and which one it is, for a look behind a balancer)."""
    return JsonResponse({"status": "ok", "replica": settings.REPLICA_NAME})


def _check_database() -> dict:
    connection = connections[DEFAULT_DB_ALIAS]
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {"ok": True}


def _check_migrations() -> dict:
    executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    return {"ok": not plan, "pending": len(plan)}


def _check_vector_extension() -> dict:
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        row = cursor.fetchone()
    return {"ok": row is not None, "version": row[0] if row else None}


def _check_broker() -> dict:
    with Connection(settings.CELERY_BROKER_URL, connect_timeout=settings.READINESS_BROKER_TIMEOUT) as conn:
        conn.ensure_connection(max_retries=1, timeout=settings.READINESS_BROKER_TIMEOUT)
    return {"ok": True, "transport": conn.transport_cls if isinstance(conn.transport_cls, str) else "custom"}


_CHECKS = {
    "database": _check_database,
    "migrations": _check_migrations,
    "vector_extension": _check_vector_extension,
    "broker": _check_broker,
}
_NEEDS_DATABASE = {"migrations", "vector_extension"}
# Checks other apps add: each returns its result, or None when it has nothing to say. Core knows
# nothing of the apps built on it; they register here from their AppConfig.ready().
_PROBES: dict[str, Callable[[], dict | None]] = {}


def readiness_probe_add(name: str, probe: Callable[[], dict | None]) -> None:
    """Add a check to ``/readyz``: ``probe()`` returns ``{"ok": bool, ...}``, or None to stay out."""
    _PROBES[name] = probe


@require_GET
def readyz(request) -> JsonResponse:
    """Every dependency a request needs is there."""
    results: dict[str, dict] = {}
    for name, check in _CHECKS.items():
        if name in _NEEDS_DATABASE and not results.get("database", {}).get("ok"):
            results[name] = {"ok": False, "error": "database unavailable"}
            continue
        started = time.perf_counter()
        try:
            results[name] = check()
        except Exception as exc:  # a probe reports failures, it does not raise them
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            if name == "database":
                connections[DEFAULT_DB_ALIAS].close_if_unusable_or_obsolete()
        results[name]["ms"] = round((time.perf_counter() - started) * 1000, 1)
    for name, probe in _PROBES.items():
        result = probe()
        if result is not None:
            results[name] = result
    ready = all(result["ok"] for result in results.values())
    return JsonResponse({"status": "ready" if ready else "not ready", "checks": results}, status=200 if ready else 503)
