"""Liveness and readiness probes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from django.conf import settings

from apps.gateway.runtime import runtime
from config import embedded_postgres

REPO = Path(__file__).resolve().parents[2]


def test_it_answers_healthz_without_touching_anything(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "replica": settings.REPLICA_NAME}


def test_it_reports_ready_when_database_migrations_extension_and_broker_are_there(client, db):
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ready"
    assert {name for name, check in body["checks"].items() if check["ok"]} == {
        "database", "migrations", "vector_extension", "broker"
    }


def test_it_reports_a_stopped_database_as_not_ready():
    root = Path(tempfile.mkdtemp(prefix="sy-", dir="/tmp"))
    try:
        server = embedded_postgres.ensure_running(root / "pg")
        embedded_postgres.stop(root / "pg")
        script = (
            "import django, json; django.setup(); from django.test import Client; "
            "r = Client().get('/readyz'); print(r.status_code); print(r.content.decode())"
        )
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "DATABASE_URL": server.url()}
        env.pop("REDIS_URL", None)
        done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        status, body = done.stdout.strip().splitlines()[-2:]
        checks = json.loads(body)["checks"]
        assert status == "503"
        assert checks["database"]["ok"] is False
        assert checks["migrations"]["ok"] is False
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_it_reports_a_process_draining_after_sigterm_as_not_ready(client, db, monkeypatch):
    monkeypatch.setattr(runtime, "draining", True)
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 503, body
    assert body["checks"]["shutdown"] == {"ok": False, "error": "SIGTERM received: finishing the requests in flight"}
    monkeypatch.setattr(runtime, "draining", False)
    assert "shutdown" not in client.get("/readyz").json()["checks"]
