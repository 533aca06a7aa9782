"""``manage.py run_platform`` (what ``make run`` calls): the whole platform in one terminal.

Applies migrations, seeds the demo, then runs together the ASGI server (uvicorn with uvloop
and httptools), a Celery worker with beat, and the simulated upstream; waits until
``/readyz`` answers, prints where everything is (admin, dashboard, playground, API), the demo
key and a curl example. The worker's and the embedding model's start-up logs would scroll that
away, so it is printed again once the worker says it is ready and the gateway has loaded the
model; the worker's routine lines (beat's schedule, each task received and done) are left out
unless ``--verbose-worker``. ``manage.py demo_credentials`` prints the login and key at any
time. Ctrl-C (or SIGTERM) stops every child cleanly, then the embedded database.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from apps.core.demo import demo_seed
from config import embedded_postgres
from config.env import env_int, env_str


def _interrupt(signum, frame) -> None:
    """SIGTERM stops the platform the same way Ctrl-C does."""
    raise KeyboardInterrupt


class Command(BaseCommand):
    help = "Run the ASGI server, a Celery worker with beat and the simulated upstream together."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--ready-timeout", type=float, default=90.0)
        parser.add_argument("--verbose-worker", action="store_true",
                            help="Show every line the worker logs, its routine task and schedule lines included.")

    def handle(self, *args, ready_timeout: float, verbose_worker: bool, **options) -> None:
        host = env_str("HOST", "127.0.0.1")
        port = env_int("PORT", 8000, minimum=1)
        upstream_port = env_int("UPSTREAM_PORT", 8001, minimum=1)
        upstream_url = f"http://127.0.0.1:{upstream_port}/v1"

        call_command("migrate", interactive=False, verbosity=0)
        credentials = demo_seed(upstream_url=upstream_url, repoint=True)

        python = sys.executable
        var_dir = Path(settings.VAR_DIR)
        var_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "UPSTREAM_PORT": str(upstream_port)}
        commands = {
            "upstream": [python, "-m", "apps.simulator.server", "--host", "127.0.0.1", "--port", str(upstream_port)],
            "web": [
                python, "-m", "uvicorn", "config.asgi:application", "--host", host, "--port", str(port),
                "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--timeout-graceful-shutdown", "10",
            ],
            "worker": [
                python, "-m", "celery", "-A", "config", "worker", "--beat", "--loglevel", "INFO",
                "--schedule", str(var_dir / "celerybeat-schedule"), "--concurrency",
                str(settings.CELERY_WORKER_CONCURRENCY),
            ],
        }
        children: dict[str, subprocess.Popen] = {}
        stopping = False

        def stop_all(*_args) -> None:
            nonlocal stopping
            if stopping:
                return
            stopping = True
            # A second Ctrl-C (or the terminal's SIGINT reaching us after our own) must not cut
            # the clean shutdown short.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self.stdout.write("\nStopping Switchyard…")
            for child in children.values():
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 15
            for name, child in children.items():
                try:
                    child.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    self.stdout.write(f"{name} did not stop in time; killing it")
                    child.kill()
            if settings.EMBEDDED_DATABASE:
                from django.db import connections

                connections.close_all()
                embedded_postgres.stop(settings.EMBEDDED_PGDATA)
            self.stdout.write("Stopped.")

        # Ctrl-C and SIGTERM stop everything the same way, even when this process was started
        # with SIGINT ignored (as a background job of a script).
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)
        worker_ready = threading.Event()
        try:
            for name, command in commands.items():
                if name == "worker":
                    children[name] = subprocess.Popen(command, env=env, cwd=settings.BASE_DIR, stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT)
                    threading.Thread(target=_relay, args=(children[name].stdout, worker_ready),
                                     kwargs={"quiet": not verbose_worker}, daemon=True, name="worker-log").start()
                else:
                    children[name] = subprocess.Popen(command, env=env, cwd=settings.BASE_DIR)
            base = f"http://{host}:{port}"
            self._wait_ready(f"{base}/readyz", children, ready_timeout)
            banner = "\n".join(banner_lines(base, upstream_url, credentials))
            self._say(banner)
            # The worker's and the embedding model's start-up logs follow the first banner: once
            # both are done, it is said again, as the last thing on the screen.
            settle_until = time.monotonic() + ready_timeout
            settled = False
            while True:
                for name, child in children.items():
                    if child.poll() is not None:
                        raise CommandError(f"{name} exited with status {child.returncode}")
                if not settled and ((worker_ready.is_set() and _semantic_ready(base, credentials.api_key))
                                    or time.monotonic() > settle_until):
                    settled = True
                    time.sleep(0.5)  # the lines logged right after
                    self._say("\nStart-up finished.\n" + banner)
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            stop_all()

    def _say(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()  # before the worker's next line, which the relay writes below ours

    def _wait_ready(self, url: str, children: dict[str, subprocess.Popen], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            for name, child in children.items():
                if child.poll() is not None:
                    raise CommandError(f"{name} exited with status {child.returncode} while starting")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310  # nosec B310  # our own URL
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                last = exc.read().decode(errors="replace")[:500]
            except OSError as exc:
                last = str(exc)
            time.sleep(0.5)
        raise CommandError(f"not ready after {timeout:.0f}s: {last}")


READY_MARK = b" ready."  # what a Celery worker logs once it consumes tasks ("celery@host ready.")
# What the worker logs every few seconds when all is well (beat's schedule, each task received
# and succeeded): left out of the terminal unless --verbose-worker, so the banner stays in view.
# Failures, warnings and tracebacks always pass.
ROUTINE = re.compile(rb"INFO/[^\]]*\] (Scheduler: Sending due task |Task \S+ received$|Task \S+ succeeded in )")
# Celery's own advice on a first Ctrl-C: here a single Ctrl-C already stops everything cleanly,
# and a second one would only cut that short.
COLD_SHUTDOWN = re.compile(rb"Hitting Ctrl\+C again will (initiate|terminate)")


def _relay(stream, ready: threading.Event, *, quiet: bool = True, out=None) -> None:
    """Copy the worker's output to ours line by line, and set ``ready`` when it says so."""
    out = out or sys.stdout.buffer
    for line in iter(stream.readline, b""):
        if not ready.is_set() and READY_MARK in line:
            ready.set()
        if (quiet and ROUTINE.search(line.rstrip(b"\r\n"))) or COLD_SHUTDOWN.search(line):
            continue
        out.write(line)
        out.flush()
    stream.close()


def _semantic_ready(base: str, api_key: str) -> bool:
    """The gateway has loaded its embedding model (the semantic cache answers)."""
    request = urllib.request.Request(  # noqa: S310  # our own URL
        f"{base}/v1/cache/stats", headers={"Authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310  # nosec B310  # our own URL
            return bool(json.loads(response.read()).get("semantic_ready"))
    except (OSError, ValueError):
        return False


def banner_lines(base: str, upstream_url: str, credentials) -> list[str]:
    """Where everything is, the demo's login and key, and a request to try."""
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "What is Python?"}]})
    return [
        "",
        "Switchyard is running.",
        f"  Start page:         {base}/",
        f"  Admin:              {base}/admin/   (user {credentials.admin_username}, "
        f"password {credentials.admin_password})",
        f"  Dashboard:          {base}/admin/dashboard/",
        f"  Playground:         {base}/playground/",
        f"  API base URL:       {base}/v1   (the SDK's base_url; OpenAPI document: {base}/v1/openapi.json)",
        f"  Readiness:          {base}/readyz",
        f"  Simulated upstream: {upstream_url}   (SIMULATED: not a real model provider)",
        f"  Demo tenant key:    {credentials.api_key}",
        "",
        "Try:",
        f"  curl -s {base}/v1/chat/completions \\",
        f"    -H 'Authorization: Bearer {credentials.api_key}' -H 'Content-Type: application/json' \\",
        f"    -d '{body}'",
        "",
        "The login and key again, any time: .venv/bin/python manage.py demo_credentials",
        "Ctrl-C stops everything.",
        "",
    ]
