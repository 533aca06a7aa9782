"""``manage.py run_platform`` (what ``make run`` runs), as a real process: its banner says where
the admin, dashboard, playground and API are, and says it again once the worker and the
embedding model have started, so that it is the last thing on the screen; the worker's routine
lines do not scroll it away."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import httpx

from tests.live import REPO, database_url_for_tests, free_port, wait_until


def test_it_prints_where_everything_is_again_once_start_up_has_finished(transactional_db, tmp_path):
    from django.conf import settings

    var = tmp_path / "var"
    var.mkdir()
    if (settings.VAR_DIR / "models").exists():  # the embedding model's exported graphs: not made again
        (var / "models").symlink_to((settings.VAR_DIR / "models").resolve())
    port, upstream_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DATABASE_URL": database_url_for_tests(), "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
           "PORT": str(port), "UPSTREAM_PORT": str(upstream_port), "SWITCHYARD_VAR_DIR": str(var),
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "run.log"

    def output() -> str:
        return log_path.read_text(errors="replace")

    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "manage.py", "run_platform"], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            assert wait_until(lambda: "Start-up finished." in output() or proc.poll() is not None, timeout=240)
            assert proc.poll() is None, output()[-3000:]
            before, after = output().split("Start-up finished.", 1)
            assert "Scheduler: Sending due task" not in output()  # beat's every-10-seconds lines
            assert "Switchyard is running." in before
            assert re.search(r"celery@\S+ ready\.", before), "the worker's log is not relayed"
            for line in (f"Start page:         {base}/", f"Dashboard:          {base}/admin/dashboard/",
                         f"Playground:         {base}/playground/", f"API base URL:       {base}/v1 ",
                         f"OpenAPI document: {base}/v1/openapi.json", "manage.py demo_credentials"):
                assert line in after
            key = re.search(r"Demo tenant key:    (sk-sy-\S+)", after).group(1)
            assert httpx.get(base + "/", timeout=30).status_code == 200
            models = httpx.get(base + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
            assert models.status_code == 200
            again = subprocess.run([sys.executable, "manage.py", "demo_credentials"], cwd=REPO, env=env,
                                   capture_output=True, text=True, timeout=120)
            assert again.returncode == 0, again.stderr
            assert f"demo API key:   {key}" in again.stdout
            stats = httpx.get(base + "/v1/cache/stats", headers={"Authorization": f"Bearer {key}"}, timeout=30)
            assert stats.json()["semantic_ready"] is True
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    assert "Stopped." in output()


def test_the_worker_relay_leaves_out_routine_lines_and_celerys_cold_shutdown_advice():
    import io
    import threading

    from apps.devtools.management.commands.run_platform import _relay

    lines = [b"[2026-12-06 10:00:00,000: INFO/MainProcess] celery@host ready.\n",
             b"[2026-12-06 10:00:01,000: INFO/MainProcess] Task reporting.rollup[ab-12] received\n",
             b"[2026-12-06 10:00:02,000: WARNING/MainProcess] worker: Hitting Ctrl+C again will initiate cold "
             b"shutdown, terminating all running tasks!\n",
             b"[2026-12-06 10:00:03,000: ERROR/MainProcess] Task batches.run[cd-34] raised ValueError\n"]
    for quiet, kept in ((True, [0, 3]), (False, [0, 1, 3])):
        out, ready = io.BytesIO(), threading.Event()
        _relay(io.BytesIO(b"".join(lines)), ready, quiet=quiet, out=out)
        assert ready.is_set()
        assert out.getvalue() == b"".join(lines[i] for i in kept)
