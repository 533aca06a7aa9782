"""Bodies bound for Django (the admin, the management API) are held to ``GATEWAY_MAX_BODY_BYTES``
as they arrive: Django's handler would read any body whole, to disk, before routing it."""

from __future__ import annotations

import http.client
import json
import socket
from urllib.parse import urlparse

import pytest

from tests.gateway.conftest import gateway_start, gateway_stop

LIMIT = 4096


@pytest.fixture
def small_gateway(world, tmp_path):
    gateway = gateway_start(tmp_path, extra_env={"GATEWAY_MAX_BODY_BYTES": str(LIMIT)})
    yield gateway
    gateway_stop(gateway)


def _post_head(base: str, path: str, secret: str, framing: str) -> socket.socket:
    url = urlparse(base)
    sock = socket.create_connection((url.hostname, url.port), timeout=60)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {url.hostname}:{url.port}\r\nAuthorization: Bearer {secret}\r\n"
                 f"Content-Type: application/x-www-form-urlencoded\r\n{framing}\r\n\r\n".encode())
    return sock


def _answer(sock: socket.socket) -> tuple[int, dict]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, json.loads(response.read())


@pytest.mark.parametrize("path", ["/admin/login/", "/v1/batches", "/account/login/"])
def test_it_refuses_a_chunked_body_for_django_once_it_passes_the_limit(world, small_gateway, path):
    sock = _post_head(small_gateway.base, path, world.key_a, "Transfer-Encoding: chunked")
    try:
        piece = b"x" * 1000
        for _ in range(LIMIT // len(piece) + 2):
            sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        # The body is never ended: only a server that counts it as it comes can answer.
        status, answer = _answer(sock)
    finally:
        sock.close()
    assert status == 413, answer
    assert answer["error"]["code"] == "payload_too_large" and str(LIMIT) in answer["error"]["message"]


def test_it_refuses_a_declared_length_over_the_limit_before_reading_it(world, small_gateway):
    sock = _post_head(small_gateway.base, "/admin/login/", world.key_a, f"Content-Length: {10 ** 12}")
    try:
        status, answer = _answer(sock)  # not a byte of the body was sent
    finally:
        sock.close()
    assert status == 413, answer
    assert answer["error"]["type"] == "invalid_request_error"


def test_it_still_passes_bodies_under_the_limit_to_django(world, small_gateway):
    sock = _post_head(small_gateway.base, "/v1/batches", world.key_a, "Transfer-Encoding: chunked")
    try:
        body = json.dumps({"input_file_id": "file-missing", "endpoint": "/v1/chat/completions",
                           "completion_window": "24h"}).encode()
        sock.sendall(f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
        status, answer = _answer(sock)
    finally:
        sock.close()
    # Django read the whole body and answered for it: the file does not exist.
    assert status in (400, 404), answer
    assert "file-missing" in answer["error"]["message"] or answer["error"]["param"] == "input_file_id", answer
