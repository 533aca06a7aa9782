"""A multi-process Switchyard on one machine: web replicas behind a balancer, Celery workers,
one beat, on one Postgres and one Redis.

``manage.py run_cluster`` (what ``make cluster`` calls) and the cluster tests both build their
processes from :class:`ClusterPlan`, so the tests prove the layout the command starts. The
processes are the ones a production deployment runs (``deploy/``); only the balancer is the
small one from :mod:`apps.devtools.balancer` rather than nginx.

Redis is required: it carries the Celery broker, the config-change messages, the rate-limit
and budget counters and the channel layer that moves WebSocket events between replicas.
:func:`redis_for_cluster` takes ``REDIS_URL``, else a Redis answering on 127.0.0.1:6379, else
starts ``redis-server`` when it is installed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

STOP_ORDER = ("balancer", "web", "worker", "beat", "upstream", "redis")


@dataclass(frozen=True)
class ClusterPlan:
    """Which processes a cluster runs, and on which ports."""

    python: str
    state_dir: Path  # logs and the beat schedule
    host: str = "127.0.0.1"
    port: int = 8000  # the balancer
    web_ports: tuple[int, ...] = (8101, 8102)
    workers: int = 2
    worker_concurrency: int = 2
    upstream_port: int | None = 8001  # the simulated upstream; None: not started here
    check_every: float = 2.0

    def commands(self) -> dict[str, list[str]]:
        py = self.python
        commands: dict[str, list[str]] = {}
        if self.upstream_port is not None:
            commands["upstream"] = [py, "-m", "apps.simulator.server", "--host", "127.0.0.1",
                                    "--port", str(self.upstream_port)]
        # The balancer copies bytes and adds no X-Forwarded-For: one arriving through it is the
        # client's own, which the replicas (trusting 127.0.0.1, the balancer) must not believe.
        for number, port in enumerate(self.web_ports, start=1):
            commands[f"web{number}"] = [
                py, "-m", "uvicorn", "config.asgi:application", "--host", self.host, "--port", str(port),
                "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--timeout-graceful-shutdown", "10",
                "--no-proxy-headers",
            ]
        for number in range(1, self.workers + 1):
            commands[f"worker{number}"] = [
                py, "-m", "celery", "-A", "config", "worker", "--hostname", f"worker{number}@%h",
                "--concurrency", str(self.worker_concurrency), "--loglevel", "INFO",
            ]
        commands["beat"] = [py, "-m", "celery", "-A", "config", "beat", "--loglevel", "INFO",
                            "--schedule", str(self.state_dir / "celerybeat-schedule"),
                            "--pidfile", str(self.state_dir / "beat.pid")]
        commands["balancer"] = [py, "-m", "apps.devtools.balancer", "--listen", f"{self.host}:{self.port}",
                                "--check-every", str(self.check_every),
                                *[arg for port in self.web_ports for arg in ("--backend", f"127.0.0.1:{port}")]]
        return commands

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def replica_bases(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.web_ports]


@dataclass
class ProcessGroup:
    """Child processes, each logging to its own file, stopped in a safe order."""

    log_dir: Path
    children: dict[str, subprocess.Popen] = field(default_factory=dict)
    _logs: list = field(default_factory=list)

    def start(self, name: str, command: list[str], *, env: dict[str, str], cwd: Path) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # closed by stop_all()
        self._logs.append(log)
        # Each child leads its own process group: Ctrl-C reaches only this runner, which stops
        # the children in order, and a SIGKILL takes a worker's pool processes with it.
        child = subprocess.Popen(command, env={**env, "REPLICA_NAME": name}, cwd=cwd, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        self.children[name] = child
        return child

    def start_all(self, commands: dict[str, list[str]], *, env: dict[str, str], cwd: Path) -> None:
        for name, command in commands.items():
            self.start(name, command, env=env, cwd=cwd)

    def exited(self) -> dict[str, int]:
        """Children that have stopped, with their status."""
        return {name: child.returncode for name, child in self.children.items() if child.poll() is not None}

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def stop(self, name: str, *, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Stop one child: SIGTERM lets it shut down cleanly; SIGKILL kills its whole group."""
        child = self.children[name]
        if child.poll() is None:
            if sig == signal.SIGKILL:
                os.killpg(child.pid, signal.SIGKILL)
            else:
                child.send_signal(sig)
            try:
                child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=5)
        return child.returncode

    def stop_all(self, *, timeout: float = 20.0) -> dict[str, int | None]:
        """Stop the balancer first (no new connections), then the web replicas (they finish
        in-flight requests and flush usage), then workers and beat, then the rest."""
        groups = [[name for name in self.children if _kind(name) == kind] for kind in STOP_ORDER]
        groups.append([name for name in self.children if _kind(name) not in STOP_ORDER])
        statuses: dict[str, int | None] = {}
        for group in groups:
            for name in group:
                if self.children[name].poll() is None:
                    self.children[name].send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for name in group:
                child = self.children[name]
                try:
                    child.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait(timeout=5)
                statuses[name] = child.returncode
        for child in self.children.values():  # pool processes a killed parent left behind
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
        for log in self._logs:
            log.close()
        return statuses


def _kind(name: str) -> str:
    """``web2`` -> ``web``."""
    return name.rstrip("0123456789")


def redis_answers(host: str = "127.0.0.1", port: int = 6379, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_for_cluster(state_dir: Path, *, port: int = 6390) -> tuple[str, list[str] | None]:
    """The Redis URL the cluster uses, and the command that starts one if none is running."""
    if url := os.environ.get("REDIS_URL"):
        return url, None
    if redis_answers():
        return "redis://127.0.0.1:6379/0", None
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("a cluster needs Redis: set REDIS_URL, run one on 127.0.0.1:6379 or install redis-server")
    return f"redis://127.0.0.1:{port}/0", [server, "--port", str(port), "--bind", "127.0.0.1", "--dir",
                                          str(state_dir), "--save", "", "--appendonly", "no"]
