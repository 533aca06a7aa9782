"""The files, batches and jobs API: tenant isolation on every endpoint, and clear 4xx answers."""

from __future__ import annotations

import http.client
import json
import socket
from urllib.parse import urlparse

import openai
import pytest

from apps.batches.models import BatchJob, File
from tests.batches.conftest import chat_line, jsonl, sdk
from tests.gateway.conftest import gateway_start, gateway_stop
from tests.live import http_json


def _a_batch(client) -> tuple[str, str]:
    file_id = client.files.create(file=jsonl([chat_line("one", "hi")]), purpose="batch").id
    return file_id, client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                          completion_window="24h").id


def test_it_keeps_each_tenants_files_batches_and_jobs_to_itself(world):
    a, b = sdk(world), sdk(world, world.key_b)
    file_id, batch_id = _a_batch(a)
    status, job = http_json("POST", world.gateway.v1 + "/jobs/map-reduce", {
        "items": ["x"], "map_prompt": "Say {item}", "reduce_prompt": "Join {results}", "model": "sim-mini"},
        headers={"Authorization": f"Bearer {world.key_a}"})
    assert status == 200, job
    job_id = job["id"]
    assert job_id.startswith("job_") and job["object"] == "map_reduce_job"

    for call in (lambda: b.files.retrieve(file_id), lambda: b.files.content(file_id),
                 lambda: b.files.delete(file_id), lambda: b.batches.retrieve(batch_id),
                 lambda: b.batches.cancel(batch_id),
                 lambda: b.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                          completion_window="24h")):
        with pytest.raises(openai.NotFoundError):
            call()
    for method, path in (("GET", f"/jobs/{job_id}"), ("POST", f"/jobs/{job_id}/cancel"),
                         ("GET", f"/batches/{job_id}"), ("GET", f"/jobs/{batch_id}")):
        key = world.key_b if "jobs" in path and job_id in path else world.key_a
        status, body = http_json(method, world.gateway.v1 + path, {} if method == "POST" else None,
                                 headers={"Authorization": f"Bearer {key}"})
        assert status == 404, (path, body)
        assert set(body["error"]) == {"message", "type", "param", "code"}
    assert [f.id for f in b.files.list()] == []
    assert [x.id for x in b.batches.list()] == []
    assert http_json("GET", world.gateway.v1 + "/jobs", headers={"Authorization": f"Bearer {world.key_b}"})[1][
        "data"] == []
    assert file_id in {f.id for f in a.files.list()}
    assert [x.id for x in a.batches.list()] == [batch_id]
    assert File.objects.filter(pk=file_id).exists()
    assert BatchJob.objects.get(pk=batch_id).status == "validating"


def test_it_answers_bad_requests_with_openai_errors(world):
    client = sdk(world)
    file_id = client.files.create(file=jsonl([chat_line("one", "hi")]), purpose="batch").id
    cases = [
        ({"input_file_id": file_id, "endpoint": "/v1/completions", "completion_window": "24h"}, "endpoint"),
        ({"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "forever"},
         "completion_window"),
        ({"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h",
          "metadata": {"k": 1}}, "metadata"),
        ({"endpoint": "/v1/chat/completions", "completion_window": "24h"}, "input_file_id"),
    ]
    for body, param in cases:
        status, answer = http_json("POST", world.gateway.v1 + "/batches", body,
                                   headers={"Authorization": f"Bearer {world.key_a}"})
        assert status == 400, answer
        assert answer["error"]["param"] == param
        assert answer["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=jsonl([chat_line("one", "hi")]), purpose="fine-tune")
    with pytest.raises(openai.AuthenticationError):
        sdk(world, "sk-sy-nope").files.list()
    status, answer = http_json("POST", world.gateway.v1 + "/jobs/map-reduce", {"items": [], "map_prompt": "x",
                                                                              "reduce_prompt": "y"},
                               headers={"Authorization": f"Bearer {world.key_a}"})
    assert status == 400 and answer["error"]["param"] == "items"
    status, answer = http_json("DELETE", world.gateway.v1 + "/batches",
                               headers={"Authorization": f"Bearer {world.key_a}"})
    assert status == 405
    # A running batch's input cannot be deleted; a finished one's can, and the batch keeps its id.
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.ConflictError):
        client.files.delete(file_id)
    BatchJob.objects.filter(pk=batch.id).update(status="completed")
    assert client.files.delete(file_id).deleted is True
    assert client.batches.retrieve(batch.id).input_file_id == file_id
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_it_refuses_an_upload_over_the_size_limit_before_reading_it(world):
    url = urlparse(world.gateway.v1)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    connection.putrequest("POST", "/v1/files")
    connection.putheader("Authorization", f"Bearer {world.key_a}")
    connection.putheader("Content-Type", "multipart/form-data; boundary=x")
    connection.putheader("Content-Length", str(10 * 1024 ** 3))  # 10 GiB announced, never sent
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"]["code"] == "payload_too_large"
    connection.close()


BOUNDARY = "switchyard-chunked"


def _multipart_head(filename: str = "input.jsonl") -> bytes:
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/jsonl\r\n\r\n").encode()


def _chunked_post(base: str, secret: str) -> socket.socket:
    """A socket with the head of ``POST /v1/files`` sent, announcing a chunked body (no length)."""
    url = urlparse(base)
    sock = socket.create_connection((url.hostname, url.port), timeout=60)
    sock.sendall(f"POST /v1/files HTTP/1.1\r\nHost: {url.hostname}:{url.port}\r\n"
                 f"Authorization: Bearer {secret}\r\nTransfer-Encoding: chunked\r\n"
                 f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n".encode())
    return sock


def _chunk(sock: socket.socket, data: bytes) -> None:
    sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")


def _answer(sock: socket.socket) -> tuple[int, dict]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, json.loads(response.read())


def test_it_accepts_a_chunked_upload(world):
    content = json.dumps(chat_line("one", "Say hi")).encode() + b"\n"
    body = _multipart_head() + content + f"\r\n--{BOUNDARY}--\r\n".encode()
    sock = _chunked_post(world.gateway.base, world.key_a)
    try:
        for at in range(0, len(body), 7):  # a body in small chunks, its length never announced
            _chunk(sock, body[at:at + 7])
        sock.sendall(b"0\r\n\r\n")
        status, answer = _answer(sock)
    finally:
        sock.close()
    assert status == 200, answer
    assert (answer["bytes"], answer["filename"], answer["purpose"]) == (len(content), "input.jsonl", "batch")
    assert sdk(world).files.content(answer["id"]).content == content
    # Stored for its tenant only.
    with pytest.raises(openai.NotFoundError):
        sdk(world, world.key_b).files.retrieve(answer["id"])
    assert [f.id for f in sdk(world, world.key_b).files.list()] == []


def test_it_refuses_a_chunked_upload_once_it_passes_the_size_limit(world, tmp_path):
    limit = 4096
    gateway = gateway_start(tmp_path, extra_env={"BATCH_FILE_MAX_BYTES": str(limit)})
    sock = _chunked_post(gateway.base, world.key_a)
    try:
        _chunk(sock, _multipart_head())
        line = json.dumps(chat_line("x", "y" * 900)).encode() + b"\n"
        sent = 0
        while sent <= limit + 65536:  # past the limit and the room left for the multipart framing
            _chunk(sock, line)
            sent += len(line)
        # The body is never ended: the answer can only come from a server that counted it as it came.
        status, answer = _answer(sock)
    finally:
        sock.close()
        gateway_stop(gateway)
    assert status == 413, answer
    assert (answer["error"]["code"], answer["error"]["param"]) == ("payload_too_large", "file")
    assert str(limit) in answer["error"]["message"]
    assert not File.objects.exists()


def test_it_refuses_nul_characters_and_deep_nesting_with_400_not_500(world):
    # Postgres text and jsonb cannot hold a NUL, and orjson cannot write 255 levels of nesting.
    auth = {"Authorization": f"Bearer {world.key_a}"}
    job = {"items": ["x"], "map_prompt": "Say {item}", "reduce_prompt": "Join {results}"}
    deep = json.loads("[" * 300 + "]" * 300)
    for method, path, body, param, code in (
        ("GET", "/files/file-\x00", None, "file_id", "invalid_value"),
        ("GET", "/batches/batch_\x00", None, "batch_id", "invalid_value"),
        ("POST", "/jobs/job_\x00/cancel", {}, "job_id", "invalid_value"),
        ("GET", "/files?after=\x00", None, "after", "invalid_value"),
        ("POST", "/batches", {"input_file_id": "file-\x00", "endpoint": "/v1/chat/completions"}, "input_file_id",
         "invalid_value"),
        ("POST", "/jobs/map-reduce", {**job, "map_prompt": "Say \x00 {item}"}, "map_prompt", "invalid_value"),
        ("POST", "/jobs/map-reduce", {**job, "metadata": {"k\x00": "v"}}, "metadata", "invalid_value"),
        ("POST", "/jobs/map-reduce", {**job, "items": [deep]}, None, "nesting_too_deep"),
    ):
        status, answer = http_json(method, world.gateway.v1 + path.replace("\x00", "%00"), body, headers=auth)
        assert (status, answer["error"]["param"], answer["error"]["code"]) == (400, param, code), (path, answer)
    assert http_json("POST", world.gateway.v1 + "/jobs/map-reduce", job, headers=auth)[0] == 200
