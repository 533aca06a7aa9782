"""``manage.py run_cluster`` (what ``make cluster`` calls): Switchyard as several processes on
one machine.

Two web replicas (uvicorn) behind the small balancer, two Celery workers and one beat on
Redis, the embedded Postgres (or ``DATABASE_URL``) and the simulated upstream. Each process
logs to ``var/cluster/<name>.log``. Ctrl-C (or SIGTERM) stops the balancer first, then the
replicas (which finish their requests and write their usage rows), the workers, beat, the
simulator and a Redis this command started, and last the embedded database.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from apps.core.demo import demo_seed
from apps.devtools.cluster import ClusterPlan, ProcessGroup, redis_for_cluster
from config import embedded_postgres
from config.env import env_int, env_str


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


class Command(BaseCommand):
    help = "Run two web replicas behind a balancer, two Celery workers and beat on Redis."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--web", type=int, default=2, help="web replicas")
        parser.add_argument("--web-ports", default="", help="the replicas' ports, comma-separated (overrides "
                            "--web; default: from CLUSTER_WEB_PORT, PORT + 101, on)")
        parser.add_argument("--workers", type=int, default=2, help="Celery workers")
        parser.add_argument("--ready-timeout", type=float, default=120.0)

    def handle(self, *args, web: int, web_ports: str, workers: int, ready_timeout: float, **options) -> None:
        try:
            ports = tuple(int(port) for port in web_ports.split(",") if port.strip())
        except ValueError as exc:
            raise CommandError(f"--web-ports must be port numbers separated by commas, not {web_ports!r}") from exc
        if (web < 1 and not ports) or workers < 1:
            raise CommandError("--web and --workers must be at least 1")
        port = env_int("PORT", 8000, minimum=1)
        upstream_port = env_int("UPSTREAM_PORT", 8001, minimum=1)
        first_web = env_int("CLUSTER_WEB_PORT", port + 101, minimum=1)
        state_dir = Path(settings.VAR_DIR) / "cluster"
        state_dir.mkdir(parents=True, exist_ok=True)
        try:
            redis_url, redis_command = redis_for_cluster(state_dir)
        except RuntimeError as exc:
            raise CommandError(str(exc)) from exc

        plan = ClusterPlan(python=sys.executable, state_dir=state_dir, host=env_str("HOST", "127.0.0.1"),
                           port=port, web_ports=ports or tuple(first_web + n for n in range(web)), workers=workers,
                           worker_concurrency=settings.CELERY_WORKER_CONCURRENCY, upstream_port=upstream_port)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "REDIS_URL": redis_url,
               "UPSTREAM_PORT": str(upstream_port)}
        env.pop("CELERY_BROKER_URL", None)  # the broker follows REDIS_URL
        group = ProcessGroup(log_dir=state_dir)
        # Ctrl-C and SIGTERM stop everything the same way, even when this process was started
        # with SIGINT ignored (as a background job of a script).
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)
        try:
            if redis_command:
                group.start("redis", redis_command, env=env, cwd=settings.BASE_DIR)
            call_command("migrate", interactive=False, verbosity=0)
            credentials = demo_seed(upstream_url=f"http://127.0.0.1:{upstream_port}/v1", repoint=True)
            group.start_all(plan.commands(), env=env, cwd=settings.BASE_DIR)
            self._wait_ready(plan, group, ready_timeout)
            self._banner(plan, redis_url, credentials, state_dir)
            while True:
                if exited := group.exited():
                    name, status = next(iter(exited.items()))
                    raise CommandError(f"{name} exited with status {status}; see {group.log_path(name)}")
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self.stdout.write("\nStopping the cluster…")
            for name, status in group.stop_all().items():
                self.stdout.write(f"  {name}: exit status {status}")
            if settings.EMBEDDED_DATABASE:
                from django.db import connections

                connections.close_all()
                embedded_postgres.stop(settings.EMBEDDED_PGDATA)
            self.stdout.write("Stopped.")

    def _wait_ready(self, plan: ClusterPlan, group: ProcessGroup, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = [*plan.replica_bases(), plan.base]
        while waiting and time.monotonic() < deadline:
            if exited := group.exited():
                name, status = next(iter(exited.items()))
                raise CommandError(f"{name} exited with status {status} while starting; see {group.log_path(name)}")
            try:
                with urllib.request.urlopen(waiting[0] + "/readyz", timeout=5) as response:  # noqa: S310  # nosec B310  # our own URL
                    if response.status == 200:
                        waiting.pop(0)
                        continue
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        if waiting:
            raise CommandError(f"not ready after {timeout:.0f}s: {waiting[0]}")
        # The balancer checks its replicas on its own clock: the cluster is running once every
        # replica answers through it, not merely the first.
        names = {name for name in plan.commands() if name.startswith("web")}
        seen: set[str] = set()
        while seen != names and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(plan.base + "/healthz", timeout=5) as response:  # noqa: S310  # nosec B310  # our own URL
                    seen.add(json.loads(response.read())["replica"])
            except (urllib.error.URLError, OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        if seen != names:
            raise CommandError(f"the balancer did not reach {', '.join(sorted(names - seen))} within {timeout:.0f}s")

    def _banner(self, plan: ClusterPlan, redis_url: str, credentials, state_dir: Path) -> None:
        workers = [name for name in plan.commands() if name.startswith("worker")]
        lines = [
            "",
            "Switchyard cluster is running.",
            f"  Balancer:           {plan.base}   (admin at {plan.base}/admin/, user "
            f"{credentials.admin_username}, password {credentials.admin_password})",
            f"  Web replicas:       {', '.join(plan.replica_bases())}",
            f"  Celery:             {', '.join(workers)} and one beat, broker {redis_url}",
            f"  Simulated upstream: http://127.0.0.1:{plan.upstream_port}/v1   (SIMULATED)",
            f"  Demo tenant key:    {credentials.api_key}",
            f"  Logs:               {state_dir}/<process>.log",
            "",
            "Ctrl-C stops everything.",
            "",
        ]
        self.stdout.write("\n".join(lines))

