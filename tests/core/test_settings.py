"""Settings come from the environment and refuse insecure production values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_int, env_str

REPO = Path(__file__).resolve().parents[2]


METRICS_TOKEN = "m3tr1cs-" + "Qx7Lp2Vz9Rk4" * 2


def _load_settings(**env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "METRICS_TOKEN": METRICS_TOKEN, **env}
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


def test_it_refuses_production_without_a_metrics_token():
    for token in ("", "short"):
        done = _load_settings(SWITCHYARD_ENV="production", SECRET_KEY="s" * 60, DEBUG="0",
                              SWITCHYARD_ENCRYPTION_KEY="x" * 44, METRICS_TOKEN=token)
        assert done.returncode != 0
        assert "production needs METRICS_TOKEN" in done.stderr


def test_it_refuses_production_that_trusts_every_clients_forwarded_for():
    done = _load_settings(SWITCHYARD_ENV="production", SECRET_KEY="s" * 60, DEBUG="0",
                          SWITCHYARD_ENCRYPTION_KEY="x" * 44, FORWARDED_ALLOW_IPS="10.0.0.2, *")
    assert done.returncode != 0
    assert "FORWARDED_ALLOW_IPS='*'" in done.stderr
    done = _load_settings(SWITCHYARD_ENV="production", SECRET_KEY="s" * 60, DEBUG="0",
                          SWITCHYARD_ENCRYPTION_KEY="x" * 44, FORWARDED_ALLOW_IPS="10.0.0.2,10.1.0.0/16")
    assert done.returncode == 0, done.stderr


def _installed_apps(**env: str) -> list[str]:
    full = {**os.environ, "METRICS_TOKEN": METRICS_TOKEN, **env}
    done = subprocess.run(
        [sys.executable, "-c", "import django, json, os; os.environ['DJANGO_SETTINGS_MODULE']='config.settings'; "
         "django.setup(); from django.apps import apps; print(json.dumps([a.name for a in apps.get_app_configs()]))"],
        cwd=REPO, env=full, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_it_leaves_the_development_tools_out_of_production():
    production = _installed_apps(SWITCHYARD_ENV="production", SECRET_KEY="s" * 60, DEBUG="0",
                                 SWITCHYARD_ENCRYPTION_KEY="x" * 44)
    assert "apps.gateway" in production and "apps.batches" in production
    assert "apps.simulator" not in production
    assert "apps.devtools" not in production
    development = _installed_apps(SWITCHYARD_ENV="development")
    assert {"apps.simulator", "apps.devtools"} <= set(development)


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
    monkeypatch.setenv("SOME_COUNT", "1001")
    with pytest.raises(ImproperlyConfigured, match="maximum"):
        env_int("SOME_COUNT", 1, maximum=1000)


def test_it_reads_a_secret_from_the_file_a_name_file_variable_names(monkeypatch, tmp_path):
    secret = tmp_path / "secret_key"
    secret.write_text("from-the-file\n")
    monkeypatch.delenv("SOME_SECRET", raising=False)
    monkeypatch.setenv("SOME_SECRET_FILE", str(secret))
    assert env_str("SOME_SECRET") == "from-the-file"
    monkeypatch.setenv("SOME_SECRET", "from-the-environment")
    assert env_str("SOME_SECRET") == "from-the-environment"
    monkeypatch.delenv("SOME_SECRET")
    monkeypatch.setenv("SOME_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ImproperlyConfigured, match="SOME_SECRET_FILE"):
        env_str("SOME_SECRET")


def test_it_starts_production_with_secrets_from_files(tmp_path):
    (tmp_path / "secret_key").write_text("s" * 60)
    (tmp_path / "fernet").write_text("x" * 44)
    done = _load_settings(SWITCHYARD_ENV="production", SECRET_KEY="", DEBUG="0",
                          SECRET_KEY_FILE=str(tmp_path / "secret_key"),
                          SWITCHYARD_ENCRYPTION_KEY_FILE=str(tmp_path / "fernet"))
    assert done.returncode != 0  # an empty SECRET_KEY in the environment wins over the file
    (tmp_path / "metrics_token").write_text(METRICS_TOKEN)
    env = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "SWITCHYARD_ENCRYPTION_KEY",
                                                            "METRICS_TOKEN")}
    done = subprocess.run(
        [sys.executable, "-c", "import os; os.environ['DJANGO_SETTINGS_MODULE']='config.settings'; "
         "from django.conf import settings; print(len(settings.SECRET_KEY), settings.DEBUG)"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
        env={**env, "SWITCHYARD_ENV": "production", "DEBUG": "0", "SECRET_KEY_FILE": str(tmp_path / "secret_key"),
             "SWITCHYARD_ENCRYPTION_KEY_FILE": str(tmp_path / "fernet"),
             "METRICS_TOKEN_FILE": str(tmp_path / "metrics_token")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["60", "False"]


# --- manage.py check --deploy ----------------------------------------------------------------

def _deploy_check(**env: str) -> subprocess.CompletedProcess:
    """``manage.py check --deploy --fail-level WARNING`` with production settings (a real
    secret, a Fernet key, a host name) plus ``env``; no database is needed for it."""
    from cryptography.fernet import Fernet

    full = {**os.environ, "SWITCHYARD_ENV": "production", "DEBUG": "0",
            "SECRET_KEY": "k3Y-" + "x7Qp9Lm2Zr5Vt8Wc1Bn4Hd6Jf0Gs3Ka" * 2,
            "SWITCHYARD_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "ALLOWED_HOSTS": "gateway.example.com", "METRICS_TOKEN": METRICS_TOKEN,
            # check --deploy never connects; an address nothing listens on keeps it that way.
            "DATABASE_URL": "postgresql://switchyard@127.0.0.1:9/switchyard", **env}
    for name in ("SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS",
                 "SECURE_HSTS_PRELOAD", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_PROXY_SSL_HEADER"):
        if name not in env:
            full.pop(name, None)  # the production defaults, not whatever the caller's shell has
    return subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                          cwd=REPO, env=full, capture_output=True, text=True, timeout=120)


def test_it_passes_the_deploy_check_with_production_defaults():
    done = _deploy_check()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues (0 silenced)." in done.stdout
    assert "WARNING" not in done.stdout + done.stderr


def test_it_fails_the_deploy_check_when_production_turns_the_https_settings_off():
    done = _deploy_check(SECURE_HSTS_SECONDS="0", SECURE_SSL_REDIRECT="0", SESSION_COOKIE_SECURE="0")
    assert done.returncode != 0
    for check in ("security.W004", "security.W008", "security.W012"):
        assert check in done.stderr


def test_it_reads_the_https_settings_from_the_environment():
    done = subprocess.run(
        [sys.executable, "-c", "import os; os.environ['DJANGO_SETTINGS_MODULE']='config.settings'; "
         "from django.conf import settings as s; print(s.SECURE_HSTS_SECONDS, s.SECURE_SSL_REDIRECT, "
         "s.CSRF_COOKIE_SECURE, s.SECURE_PROXY_SSL_HEADER)"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
        env={**os.environ, "SWITCHYARD_ENV": "development", "SECURE_HSTS_SECONDS": "600", "SECURE_SSL_REDIRECT": "1",
             "CSRF_COOKIE_SECURE": "yes", "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Scheme",
             "DATABASE_URL": "postgresql://switchyard@127.0.0.1:9/switchyard"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().split(maxsplit=3) == ["600", "True", "True", "('HTTP_X_FORWARDED_SCHEME', 'https')"]


def test_it_does_not_redirect_the_probes_to_https(client, settings, db):
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/account/login/").status_code == 301
    assert client.get("/healthz").status_code == 200
