"""Settings come from the environment and refuse insecure production values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_int

REPO = Path(__file__).resolve().parents[2]


def _load_settings(**env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='config.settings'; "
         "from django.conf import settings; print(settings.DEBUG)"],
        cwd=REPO, env=full, capture_output=True, text=True, timeout=60,
    )


def test_it_refuses_production_without_a_real_secret_key():
    done = _load_settings(SWITCHYARD_ENV="production", SECRET_KEY="", SWITCHYARD_ENCRYPTION_KEY="x" * 44)
    assert done.returncode != 0
    assert "SECRET_KEY" in done.stderr


def test_it_refuses_debug_in_production():
    done = _load_settings(SWITCHYARD_ENV="production", SECRET_KEY="s" * 60, DEBUG="1",
                          SWITCHYARD_ENCRYPTION_KEY="x" * 44)
    assert done.returncode != 0
    assert "DEBUG" in done.stderr


def test_it_starts_production_with_a_strong_secret_and_no_debug():
    done = _load_settings(SWITCHYARD_ENV="production", SECRET_KEY="s" * 60, DEBUG="0",
                          SWITCHYARD_ENCRYPTION_KEY="x" * 44)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_it_fails_loudly_on_a_bad_boolean_or_integer(monkeypatch):
    monkeypatch.setenv("SOME_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="SOME_FLAG"):
        env_bool("SOME_FLAG")
    monkeypatch.setenv("SOME_COUNT", "ten")
    with pytest.raises(ImproperlyConfigured, match="SOME_COUNT"):
        env_int("SOME_COUNT", 1)
    monkeypatch.setenv("SOME_COUNT", "-3")
    with pytest.raises(ImproperlyConfigured, match="minimum"):
        env_int("SOME_COUNT", 1, minimum=0)
