"""A client cannot choose the address Switchyard sees.

The gateway runs as the deployment files run it: the image's uvicorn command line (parsed out of
``deploy/Dockerfile``, checked equal to the Kubernetes manifest's) and the image's environment,
on the test database. Behind it, a proxy on 127.0.0.1, the address the deployment trusts by
default; either the real nginx with ``deploy/nginx.conf`` (when nginx is installed) or this
test speaking as the proxy would. The attacks: an ``X-Forwarded-For`` that names a loopback
client to read ``/metrics`` without its token, and one whose first entry changes on every try to
slip past the login lockout.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest
import yaml

from tests.live import REPO, database_url_for_tests, free_port, stop_process, wait_http

DEPLOY = REPO / "deploy"
PASSWORD = "a-long-right-password-1"
METRICS_TOKEN = "m3tr1cs-" + "Qx7Lp2Vz9Rk4" * 2
CLIENT = "203.0.113.9"  # the client's real address, as the proxy in front reports it
ATTEMPTS = 20

def _dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")


def image_command() -> list[str]:
    """The image's ``CMD``: the web process."""
    line = next(line for line in _dockerfile().splitlines() if line.startswith("CMD "))
    return json.loads(line.removeprefix("CMD "))


def image_environment() -> dict[str, str]:
    """The runtime stage's ``ENV``."""
    env = {}
    for line in _dockerfile().rsplit("\nFROM ", 1)[1].splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line.removeprefix("ENV ")):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def manifest_command() -> list[str]:
    for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / "web.yaml").read_text()):
        if doc["kind"] == "Deployment":
            return doc["spec"]["template"]["spec"]["containers"][0]["args"]
    raise AssertionError("no Deployment in deploy/kubernetes/web.yaml")


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def gateway_start(tmp_dir: Path, *, argv: list[str] | None = None, port: int | None = None, **env: str) -> Server:
    """The image's web command on a free port of 127.0.0.1 (or ``argv``, serving on ``port``),
    with the image's environment (``SWITCHYARD_ENV=production`` and the rest) plus what a
    deployment adds (``env``)."""
    from cryptography.fernet import Fernet
    from django.conf import settings

    if argv is None:
        command = image_command()
        assert command[:2] == ["uvicorn", "config.asgi:application"], command
        port = free_port()
        args = list(command[2:])
        args[args.index("--host") + 1] = "127.0.0.1"
        args[args.index("--port") + 1] = str(port)
        argv = [sys.executable, "-m", "uvicorn", command[1], *args]
    assert port is not None
    image = image_environment()
    full = {
        **{name: value for name, value in os.environ.items() if name != "FORWARDED_ALLOW_IPS"},
        **{name: value for name, value in image.items() if name not in ("PATH", "SWITCHYARD_VAR_DIR")},
        "DATABASE_URL": database_url_for_tests(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "SECRET_KEY": "k3Y-" + "x7Qp9Lm2Zr5Vt8Wc1Bn4Hd6Jf0Gs3Ka" * 2,
        "SWITCHYARD_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "METRICS_TOKEN": METRICS_TOKEN,
        "DEBUG": "0",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        # TLS ends in front of the proxy; nothing here speaks it.
        "SECURE_SSL_REDIRECT": "0",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    log_path = tmp_dir / f"gateway-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=REPO, env=full, stdout=log, stderr=subprocess.STDOUT)
    server = Server(proc, port, log_path)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=120, proc=proc)
    except RuntimeError:
        stop_process(proc)
        raise AssertionError(server.log()) from None
    return server


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((path for path in ("/usr/sbin/nginx",) if os.access(path, os.X_OK)), None)


def nginx_start(binary: str, tmp_dir: Path, upstream_port: int) -> Server:
    """``deploy/nginx.conf`` with its upstream pointed at one local replica, listening on a free
    port of 127.0.0.1, with its pid, log and temporary files under ``tmp_dir``."""
    port = free_port()
    work = tmp_dir / f"nginx-{port}"
    work.mkdir()
    work.chmod(0o777)  # workers may run as another user and buffer bodies here
    conf = (DEPLOY / "nginx.conf").read_text()
    conf, replicas = re.subn(r"\n\s*server web[12]:8000[^;]*;", "", conf)
    assert replicas == 2, "deploy/nginx.conf no longer lists web1:8000 and web2:8000"
    conf = conf.replace("keepalive 64;", f"server 127.0.0.1:{upstream_port};\n    keepalive 64;", 1)
    conf, listens = re.subn(r"listen 80;", f"listen 127.0.0.1:{port};", conf)
    assert listens == 1, "deploy/nginx.conf no longer listens on port 80"
    temp = [f"{kind}_temp_path {work / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")]
    conf_path = work / "nginx.conf"
    log_path = work / "error.log"
    while True:
        conf_path.write_text(f"pid {work / 'nginx.pid'};\nerror_log {log_path};\n"
                             + conf.replace("http {", "http {\n  " + "\n  ".join(temp), 1))
        test = subprocess.run([binary, "-t", "-p", str(work), "-e", str(log_path), "-c", str(conf_path)],
                              capture_output=True, text=True, timeout=60)
        unknown = [line for line in temp if f'unknown directive "{line.split()[0]}"' in test.stderr]
        if test.returncode == 0 or not unknown:
            break
        temp = [line for line in temp if line not in unknown]  # a build without that module
    assert test.returncode == 0, test.stderr
    proc = subprocess.Popen([binary, "-p", str(work), "-e", str(log_path), "-c", str(conf_path), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    server = Server(proc, port, log_path)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=120, proc=proc)
    except RuntimeError:
        stop_process(proc)
        raise AssertionError(server.log()) from None
    return server


def balancer_start(tmp_dir: Path, argv: list[str], port: int) -> Server:
    """The local cluster's TCP balancer, once it has a ready replica to send a client to."""
    log_path = tmp_dir / f"balancer-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    server = Server(proc, port, log_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if request(port, "GET", "/healthz")[0] == 200:
                return server
        except OSError:
            pass
        time.sleep(0.2)
    stop_process(proc)
    raise AssertionError("the balancer never had a ready replica:\n" + server.log())


def request(port: int, method: str, path: str, *, headers: dict[str, str] | None = None,
            body: bytes | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


class AdminLogin:
    """The admin's login form, posted as a browser would (CSRF cookie and token included)."""

    def __init__(self, port: int) -> None:
        self.port = port
        status, headers, _ = request(port, "GET", "/admin/login/")
        assert status == 200
        cookies = [value.split(";", 1)[0] for value in headers.get_all("Set-Cookie") or []]
        self.token = next(cookie.split("=", 1)[1] for cookie in cookies if cookie.startswith("csrftoken="))

    def post(self, password: str, forwarded_for: str) -> int:
        form = urlencode({"username": "operator", "password": password, "csrfmiddlewaretoken": self.token,
                          "next": "/admin/"}).encode()
        status, _, _ = request(self.port, "POST", "/admin/login/?next=/admin/", body=form, headers={
            "Content-Type": "application/x-www-form-urlencoded", "Cookie": f"csrftoken={self.token}",
            "X-Forwarded-For": forwarded_for})
        return status


def attempt_addresses() -> list[str]:
    from axes.models import AccessAttempt

    return sorted({attempt.ip_address for attempt in AccessAttempt.objects.all()})


@pytest.fixture(scope="module")
def production_gateway(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[Server]:
    gateway = gateway_start(tmp_path_factory.mktemp("forwarded"))
    yield gateway
    stop_process(gateway.proc, timeout=40)


@pytest.fixture
def operator(transactional_db, django_user_model):
    return django_user_model.objects.create_superuser("operator", "operator@example.com", PASSWORD)


def test_it_runs_the_same_web_command_in_the_image_and_the_manifest():
    assert manifest_command() == image_command()
    assert "--proxy-headers" in image_command()


def test_it_refuses_metrics_to_a_client_claiming_to_be_loopback(django_db_setup, tmp_path):
    """Without a token (allowed outside production) /metrics answers loopback clients only: a
    client that puts 127.0.0.1 first in X-Forwarded-For is still the address the proxy saw."""
    gateway = gateway_start(tmp_path, SWITCHYARD_ENV="development", METRICS_TOKEN="")
    try:
        for forwarded_for in ("127.0.0.1, " + CLIENT, "127.0.0.1,::1, " + CLIENT, CLIENT):
            status, _, body = request(gateway.port, "GET", "/metrics", headers={"X-Forwarded-For": forwarded_for})
            assert status == 403, (forwarded_for, status, body[:200])
            assert b"switchyard_spend_usd" not in body
        # The proxy's own scrape (nothing forwarded) is a loopback client.
        status, _, body = request(gateway.port, "GET", "/metrics")
        assert status == 200 and b"switchyard_spend_usd" in body
    finally:
        stop_process(gateway.proc, timeout=40)


def test_it_refuses_metrics_without_the_token_in_production(production_gateway):
    spoofed = {"X-Forwarded-For": "127.0.0.1, " + CLIENT}
    status, _, body = request(production_gateway.port, "GET", "/metrics", headers=spoofed)
    assert status == 403 and b"switchyard_spend_usd" not in body
    status, _, body = request(production_gateway.port, "GET", "/metrics", headers={})
    assert status == 403
    status, _, body = request(production_gateway.port, "GET", "/metrics",
                              headers={**spoofed, "Authorization": f"Bearer {METRICS_TOKEN}"})
    assert status == 200 and b"switchyard_spend_usd" in body


def test_it_keeps_the_login_lockout_when_the_client_rotates_the_first_forwarded_entry(production_gateway, operator):
    """The proxy on 127.0.0.1 reports the client as the last entry; whatever the client wrote
    before it (a proxy that appends) or instead of it (one that sets the header) is not trusted."""
    login = AdminLogin(production_gateway.port)
    statuses = []
    for attempt in range(ATTEMPTS):
        spoof = f"10.{attempt}.0.1, {CLIENT}" if attempt % 2 else CLIENT
        statuses.append(login.post("wrong-password", spoof))
    assert set(statuses) <= {200, 429}, statuses
    assert login.post(PASSWORD, f"10.99.0.1, {CLIENT}") == 429, production_gateway.log()
    assert attempt_addresses() == [CLIENT]
    # The lock holds for that address only: the owner, elsewhere, still gets in.
    assert login.post(PASSWORD, "198.51.100.20") == 302


def test_it_keeps_the_login_lockout_behind_the_shipped_nginx(production_gateway, operator, tmp_path):
    """The real nginx with deploy/nginx.conf: the client, on 127.0.0.1 (an address the gateway
    trusts as a proxy, the case an appended header gets wrong), names a new address each time."""
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed")
    nginx = nginx_start(binary, tmp_path, production_gateway.port)
    try:
        login = AdminLogin(nginx.port)
        for attempt in range(ATTEMPTS):
            assert login.post("wrong-password", f"198.51.100.{attempt + 1}") in (200, 429)
        assert login.post(PASSWORD, "198.51.100.99") == 429, nginx.log()
        assert attempt_addresses() == ["127.0.0.1"]
        status, _, body = request(nginx.port, "GET", "/metrics", headers={"X-Forwarded-For": "127.0.0.1"})
        assert status == 403 and b"switchyard_spend_usd" not in body
    finally:
        stop_process(nginx.proc, timeout=20)


def test_it_keeps_the_login_lockout_behind_the_local_clusters_balancer(operator, tmp_path):
    """``make cluster``'s TCP balancer copies the client's bytes, its own X-Forwarded-For included,
    to replicas that see the balancer's 127.0.0.1: they must not believe the header."""
    from apps.devtools.cluster import ClusterPlan

    plan = ClusterPlan(python=sys.executable, state_dir=tmp_path, port=free_port(), web_ports=(free_port(),),
                       workers=0, upstream_port=None, check_every=0.5)
    commands = plan.commands()
    replica = gateway_start(tmp_path, argv=commands["web1"], port=plan.web_ports[0],
                            SWITCHYARD_ENV="development", METRICS_TOKEN="")
    try:
        balancer = balancer_start(tmp_path, commands["balancer"], plan.port)
        try:
            login = AdminLogin(plan.port)
            for attempt in range(ATTEMPTS):
                assert login.post("wrong-password", f"198.51.100.{attempt + 1}") in (200, 429)
            assert login.post(PASSWORD, "198.51.100.99") == 429, replica.log()
            assert attempt_addresses() == ["127.0.0.1"]
        finally:
            stop_process(balancer.proc)
    finally:
        stop_process(replica.proc, timeout=40)
