"""Batch tests: the live gateway and simulator of the gateway tests, real Celery workers, and a
slow simulated upstream for timing-sensitive tests."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal

import openai
import pytest

from tests.gateway.conftest import gateway_process, world  # noqa: F401 (fixtures)
from tests.live import REPO, Simulator, database_url_for_tests, free_port, http_json, stop_process, wait_http


@pytest.fixture
def slow_simulator():
    """A simulated upstream answering after 150 ms, for counting requests in flight."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "apps.simulator.server", "--host", "127.0.0.1", "--port",
                             str(port), "--ttft-ms", "150", "--chunks", "8"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/v1/models", proc=proc)
    yield Simulator(base)
    stop_process(proc)


class Workers:
    """Real Celery workers on the test database, started and killed by the test."""

    def __init__(self, tmp_path, env: dict) -> None:
        from django.conf import settings

        self.tmp_path = tmp_path
        self.env = {**os.environ, "DATABASE_URL": database_url_for_tests(),
                    "CELERY_BROKER_URL": settings.CELERY_BROKER_URL, "PYTHONUNBUFFERED": "1",
                    "HF_HUB_OFFLINE": "1", **env}
        self.procs: list[subprocess.Popen] = []

    def start(self, *, beat: bool = False) -> subprocess.Popen:
        args = [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo", "--loglevel", "INFO",
                "--hostname", f"w{len(self.procs)}@%h"]
        if beat:
            args += ["--beat", "--schedule", str(self.tmp_path / f"beat-{len(self.procs)}")]
        log = open(self.tmp_path / f"worker-{len(self.procs)}.log", "wb")
        # Its own process group: a worker started with --beat runs beat as a child process, which
        # must die with it (an orphaned beat would go on sending tasks to later tests' workers).
        proc = subprocess.Popen(args, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.procs:
            stop_process(proc, timeout=20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever it left behind

    def logs(self) -> str:
        return "\n".join((self.tmp_path / f"worker-{n}.log").read_text(errors="replace")
                         for n in range(len(self.procs)))


@pytest.fixture
def workers(transactional_db, tmp_path):
    made: list[Workers] = []

    def make(**env) -> Workers:
        made.append(Workers(tmp_path, {k: str(v) for k, v in env.items()}))
        return made[-1]

    yield make
    for group in made:
        group.stop_all()


def sdk(live_world, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_world.gateway.v1, api_key=key or live_world.key_a, max_retries=0)


def jsonl(lines: list) -> io.BytesIO:
    data = b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)
    buffer = io.BytesIO(data)
    buffer.name = "input.jsonl"
    return buffer


def chat_line(custom_id: str, prompt: str, model: str = "sim-mini") -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": prompt}]}}


# How long a test waits for a job to end: it includes a worker's start, which a loaded machine
# can stretch past a minute. A maximum, never a wait on the way.
JOB_DEADLINE = 300.0


def batch_wait(client: openai.OpenAI, batch_id: str, *, until=("completed", "failed", "expired", "cancelled"),
               timeout: float = JOB_DEADLINE, workers=None):
    deadline = time.monotonic() + timeout
    batch = client.batches.retrieve(batch_id)
    while batch.status not in until and time.monotonic() < deadline:
        for proc in getattr(workers, "procs", [])[-1:]:
            assert proc.poll() is None, "the worker died:\n" + workers.logs()[-3000:]
        time.sleep(0.3)
        batch = client.batches.retrieve(batch_id)
    assert batch.status in until, f"still {batch.status} after {timeout}s"
    return batch


def file_lines(client: openai.OpenAI, file_id: str) -> list[dict]:
    return [json.loads(line) for line in client.files.content(file_id).content.splitlines() if line.strip()]


def sim_batches(live_world, **control) -> dict:
    """The simulated provider's batch controls (``hold``, ``fail_next``, ``expire_next``, ``delay_ms``)
    and counts."""
    status, body = http_json("POST", live_world.simulator.base + "/_sim/batches", control)
    assert status == 200, body
    return body


@pytest.fixture
def batch_world(world):  # noqa: F811 (the gateway tests' fixture)
    """The world with its simulated provider's Batch API on and a 50% batch discount on sim-mini."""
    world.provider.batch_api = True
    world.provider.save()
    world.models["sim-mini"].batch_discount_percent = Decimal("50")
    world.models["sim-mini"].save()
    sim_batches(world, delay_ms=200)
    return world
