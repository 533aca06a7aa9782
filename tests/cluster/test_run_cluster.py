"""``manage.py run_cluster`` (what ``make cluster`` runs), end to end: it starts, serves through
the balancer with the key it prints, and stops every process it started on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from tests.cluster.conftest import REDIS_URL
from tests.live import REPO, database_url_for_tests, free_port

pytestmark = pytest.mark.cluster


def test_it_starts_serves_and_stops_the_whole_cluster(transactional_db, tmp_path):
    if not REDIS_URL:
        pytest.skip("the cluster needs Redis (REDIS_URL)")
    port, upstream_port = free_port(), free_port()
    env = {**os.environ, "DATABASE_URL": database_url_for_tests(), "REDIS_URL": REDIS_URL, "PORT": str(port),
           "UPSTREAM_PORT": str(upstream_port),
           "SWITCHYARD_VAR_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("CELERY_BROKER_URL", None)
    models = REPO / "var" / "models"  # the exported embedder, not exported again in the test's own var folder
    if models.exists():
        (tmp_path / "models").symlink_to(models)
    web_ports = {free_port()}
    while len(web_ports) < 2:
        web_ports.add(free_port())
    log = tmp_path / "run_cluster.log"
    with open(log, "wb") as out:
        runner = subprocess.Popen([sys.executable, "manage.py", "run_cluster", "--web-ports",
                                   ",".join(map(str, web_ports))], cwd=REPO, env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 150
        while "cluster is running" not in log.read_text() and time.monotonic() < deadline:
            assert runner.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        banner = log.read_text()
        assert "cluster is running" in banner, banner[-3000:]
        key = re.search(r"Demo tenant key:\s+(\S+)", banner).group(1)
        children = psutil.Process(runner.pid).children()
        names = " ".join(" ".join(child.cmdline()) for child in children)
        assert names.count("uvicorn") == 2 and names.count("celery -A config worker") == 2
        assert names.count("celery -A config beat") == 1 and "apps.devtools.balancer" in names
        base = f"http://127.0.0.1:{port}"
        answer = httpx.post(base + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                            json={"model": "auto", "messages": [{"role": "user", "content": "What is Python?"}]})
        assert answer.status_code == 200, answer.text
        assert {httpx.get(base + "/healthz", timeout=10).json()["replica"] for _ in range(6)} == {"web1", "web2"}
    finally:
        runner.send_signal(signal.SIGINT)
        try:
            runner.wait(timeout=90)
        except subprocess.TimeoutExpired:
            runner.kill()
    stopped = log.read_text()
    assert "Stopped." in stopped, stopped[-3000:]
    assert not [child for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]
