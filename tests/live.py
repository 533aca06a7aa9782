"""Helpers for tests that run real servers: free ports, waiting for a URL or a condition, the
simulator.

Tests wait on the event they need, never for a fixed time: :func:`wait_until` (and its async
twin :func:`await_until`) polls a condition until it holds, up to a deadline that is only a
maximum; the machine running the tests may be loaded, so deadlines are generous.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


DEADLINE = 60.0  # seconds: how long a test waits for something that should happen soon


def wait_until(predicate, *, timeout: float = DEADLINE, interval: float = 0.05):
    """``predicate()``'s first truthy value, polled until ``timeout``; else its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    return predicate()


async def await_until(predicate, *, timeout: float = DEADLINE, interval: float = 0.05):
    """:func:`wait_until` inside an event loop (``predicate`` may be a coroutine function)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result or time.monotonic() >= deadline:
            return result
        await asyncio.sleep(interval)


_ports_given: set[int] = set()
_ports = random.Random()  # seeded from the OS: never in step with another run's choices


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port free on 127.0.0.1 for a server a test starts, never the same one twice in a run.

    It is chosen below the kernel's ephemeral range: a port the kernel hands out for a bind to
    port 0 may be taken as the source port of any outgoing connection on the machine (other
    tests make thousands) before the server gets to bind it.
    """
    low, high = 20000, _ephemeral_low()
    for _ in range(1000 if high - low >= 1000 else 0):
        port = _ports.randrange(low, high)
        if port in _ports_given:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ports_given.add(port)
        return port
    with socket.socket() as sock:  # an unusual port range: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _ports_given.add(port)
    return port


def wait_http(url: str, *, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def http_json(method: str, url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else {}


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


class Simulator:
    def __init__(self, base: str) -> None:
        self.base = base  # http://127.0.0.1:port

    @property
    def v1(self) -> str:
        return self.base + "/v1"

    def fault(self, **spec) -> None:
        status, body = http_json("POST", self.base + "/_sim/faults", spec)
        assert status == 200, body

    def reset(self) -> None:
        http_json("POST", self.base + "/_sim/reset", {})

    def stats(self) -> dict:
        return http_json("GET", self.base + "/_sim/stats")[1]

    def last_messages(self) -> dict | None:
        """The body of the last request the simulated Messages API received."""
        return http_json("GET", self.base + "/_sim/last_messages")[1]




def database_url_for_tests() -> str:
    """A libpq URL for the test database pytest-django created (for servers the tests start)."""
    from django.db import connection

    params = connection.settings_dict
    user = params["USER"] or "postgres"
    auth = user + (f":{params['PASSWORD']}" if params["PASSWORD"] else "")
    host = params["HOST"]
    if host.startswith("/"):
        return f"postgresql://{auth}@/{params['NAME']}?host={host}"
    return f"postgresql://{auth}@{host}:{params['PORT'] or 5432}/{params['NAME']}"


def service_account(simulator: Simulator, *, project: str = "sim-project", expires_in: float = 3600,
                    grant_delay_ms: float = 0, registered: bool = True) -> dict:
    """A Google service-account JSON key made now (an RSA key pair generated for the test), its
    ``token_uri`` the simulator's, its public key registered there (unless ``registered`` is
    False: the simulator then refuses its grants)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    email = f"switchyard-{random.getrandbits(40):010x}@{project}.iam.gserviceaccount.com"
    key = {
        "type": "service_account", "project_id": project, "private_key_id": f"{random.getrandbits(64):016x}",
        "private_key": private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()).decode(),
        "client_email": email, "client_id": str(random.getrandbits(60)), "token_uri": simulator.base + "/token",
    }
    if registered:
        public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        status, body = http_json("POST", simulator.base + "/_sim/vertex/accounts", {
            "client_email": email, "public_key": public, "project_id": project, "expires_in": expires_in,
            "grant_delay_ms": grant_delay_ms})
        assert status == 200, body
    return key


def service_account_stats(simulator: Simulator, key: dict) -> dict:
    """The simulator's counts for a key's account: grants, 401s refused, distinct tokens used."""
    return http_json("GET", simulator.base + "/_sim/vertex/accounts/" + key["client_email"])[1]
