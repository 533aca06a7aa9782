"""A provider's credential is a secret the gateway holds for its operators: encrypted in the
database, write-only in the admin, and never echoed in an error body or a log line, however the
upstream fails."""

from __future__ import annotations

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from django.db import connection
from django.urls import reverse

from apps.catalog.models import Model, Provider
from apps.core.fields import EncryptedTextField, fernet
from tests.gateway.conftest import gateway_process, gateway_start, gateway_stop, wait_until, world  # noqa: F401

CANARY = "sk-canary-" + secrets.token_hex(16)


def _column(provider: Provider) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT credential FROM catalog_provider WHERE id = %s", [provider.pk])
        return cursor.fetchone()[0]


@pytest.fixture
def canary_provider(db):
    return Provider.objects.create(name="canary", kind=Provider.Kind.OPENAI, base_url="https://api.example.com/v1",
                                   credential=CANARY)


def test_it_keeps_only_ciphertext_in_the_database_column(canary_provider):
    stored = _column(canary_provider)
    assert CANARY not in stored
    assert stored.startswith(EncryptedTextField.PREFIX)
    assert fernet().decrypt(stored[len(EncryptedTextField.PREFIX):].encode()).decode() == CANARY
    assert Provider.objects.get(pk=canary_provider.pk).credential == CANARY


def test_it_never_renders_the_credential_on_the_admin_pages(admin_client, canary_provider):
    change = admin_client.get(reverse("admin:catalog_provider_change", args=[canary_provider.pk]))
    listing = admin_client.get(reverse("admin:catalog_provider_changelist"))
    assert change.status_code == listing.status_code == 200
    for page in (change, listing):
        html = page.content.decode()
        assert CANARY not in html
        assert CANARY[10:] not in html  # nor any tail of it
    change_html = change.content.decode()
    field = change_html[change_html.index('name="credential"') - 200:change_html.index('name="credential"') + 200]
    assert 'type="password"' in field and "value=" not in field  # write-only: an empty password box
    assert "A credential is set" in change_html


class _RecordingUpstream(BaseHTTPRequestHandler):
    """A provider that notes the credential it was sent and then fails with a 500."""

    seen: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).seen.append(self.headers.get("Authorization", ""))
        body = json.dumps({"error": {"message": "the model is overloaded", "type": "server_error"}}).encode()
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def recording_upstream():
    _RecordingUpstream.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RecordingUpstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.fixture
def debug_gateway(world, tmp_path):  # noqa: F811
    """A gateway of its own logging at DEBUG, so its log file holds everything it says."""
    gateway = gateway_start(tmp_path, extra_env={"LOG_LEVEL": "DEBUG", "LOG_FORMAT": "text"})
    yield gateway
    gateway_stop(gateway)


def _ask(gateway, key: str, model: str, *, stream: bool = False) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "What is Python?"}], "stream": stream}
    return httpx.post(gateway.v1 + "/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {key}", "Cache-Control": "no-store"})


def _serves(gateway, key: str, model: str) -> bool:
    answer = httpx.get(gateway.v1 + "/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    return answer.status_code == 200 and model in {m["id"] for m in answer.json()["data"]}


def test_it_keeps_the_credential_out_of_error_bodies_and_the_log_when_the_upstream_fails(
        world, debug_gateway, recording_upstream):  # noqa: F811
    world.provider.credential = CANARY
    world.provider.save()
    canary = Provider.objects.create(name="canary", kind=Provider.Kind.OPENAI, base_url=recording_upstream,
                                     credential=CANARY, timeout_seconds=5)
    Model.objects.create(name="canary-model", upstream_id="canary-model", provider=canary, is_free=True)
    assert wait_until(lambda: _serves(debug_gateway, world.key_a, "canary-model"))

    answers = [_ask(debug_gateway, world.key_a, "canary-model")]
    # The gateway did send the credential: what it must not do is repeat it.
    assert _RecordingUpstream.seen and set(_RecordingUpstream.seen) == {f"Bearer {CANARY}"}
    for mode, status, stream in (("status", 500, False), ("status", 401, False), ("status", 400, False),
                                 ("status", 429, False), ("invalid_json", 500, False), ("garbage", 500, False),
                                 ("status", 500, True), ("cut", 500, True), ("garbage", 500, True)):
        world.simulator.reset()
        world.simulator.fault(model="*", mode=mode, status=status, count=-1)
        answers.append(_ask(debug_gateway, world.key_a, "sim-mini", stream=stream))
    world.simulator.reset()

    # The garbage stream fails before its first byte (not server-sent events): a 502, not a relay.
    assert [answer.status_code for answer in answers] == [502, 502, 502, 400, 429, 502, 502, 502, 200, 502]
    for answer in answers:
        assert answer.content, "every failure says something"
        assert CANARY not in answer.text
        assert CANARY not in str(answer.headers)
    assert b"error" in answers[-2].content  # the cut stream ended with an error event
    log = debug_gateway.log_path.read_text(errors="replace")
    assert "Application startup complete" in log, "this is the gateway's log"
    assert CANARY not in log


def test_it_leaves_the_credential_out_of_the_gateways_provider_repr():
    from apps.gateway.snapshot import ProviderInfo

    info = ProviderInfo(id=1, name="canary", kind="openai", base_url="https://api.example.com/v1", credential=CANARY,
                        timeout=5.0, max_concurrency=10)
    assert info.credential == CANARY
    assert CANARY not in repr(info)
