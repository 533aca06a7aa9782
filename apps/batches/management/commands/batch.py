"""``manage.py batch submit FILE`` and ``manage.py batch watch ID``: batch jobs from a terminal.

    batch submit requests.jsonl [--endpoint /v1/chat/completions] [--key sk-sy-...]
                                [--completion-window 24h] [--watch]
    batch watch batch_... [--key sk-sy-...] [--interval 0.5]

``submit`` stores the file and creates the batch as the key's tenant (the key comes from
``--key``, else ``SWITCHYARD_API_KEY``, else the demo key of ``var/demo-credentials.json``),
prints the batch id alone on standard output, and with ``--watch`` follows it. ``watch`` draws a
progress bar until the job ends, then prints its output and error file ids; with a key it sees
only that tenant's jobs, without one (an operator on the server) any job.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.files import File as DjangoFile
from django.core.management.base import BaseCommand, CommandError

from apps.batches.models import BatchJob
from apps.batches.selectors import job_get
from apps.batches.services import ENDPOINTS, batch_create, file_create
from apps.core.errors import GatewayError
from apps.tenants.selectors import key_authenticate

BAR_WIDTH = 30
FINISHED = ("completed", "failed", "expired", "cancelled")


def progress_line(job: BatchJob, elapsed: float) -> str:
    total = job.total
    done = job.completed + job.failed
    filled = int(BAR_WIDTH * done / total) if total else 0
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    rate = f" {done / elapsed:.1f}/s" if elapsed > 0 and done else ""
    return (f"{job.pk} [{bar}] {job.percent:5.1f}% {done}/{total or '?'} "
            f"({job.failed} failed) {job.status}{rate} {elapsed:.0f}s")


class Command(BaseCommand):
    help = "Submit a JSONL batch file, or watch a batch or map-reduce job with a progress bar."

    def add_arguments(self, parser) -> None:
        commands = parser.add_subparsers(dest="action", required=True)
        submit = commands.add_parser("submit", help="upload FILE and create a batch over it")
        submit.add_argument("file")
        submit.add_argument("--endpoint", default="/v1/chat/completions", choices=ENDPOINTS)
        submit.add_argument("--key", help="the tenant's API key (default: $SWITCHYARD_API_KEY, then the demo key)")
        submit.add_argument("--completion-window", default="24h")
        submit.add_argument("--watch", action="store_true", help="follow the batch until it ends")
        submit.add_argument("--interval", type=float, default=0.5)
        watch = commands.add_parser("watch", help="draw a progress bar until the job ends")
        watch.add_argument("job_id")
        watch.add_argument("--key", help="only this key's tenant's jobs")
        watch.add_argument("--interval", type=float, default=0.5)

    def handle(self, *args, action: str, **options) -> None:
        try:
            if action == "submit":
                self.submit(options)
            else:
                key = self._key(options["key"], required=False)
                self.watch(options["job_id"], key, options["interval"])
        except GatewayError as error:
            raise CommandError(error.message) from error

    def _key(self, raw: str | None, *, required: bool = True):
        raw = raw or os.environ.get("SWITCHYARD_API_KEY")
        if not raw and required:
            try:
                raw = json.loads((Path(settings.VAR_DIR) / "demo-credentials.json").read_text()).get("api_key")
            except (OSError, ValueError):
                raw = None
        if not raw:
            if required:
                raise CommandError("No API key: pass --key or set SWITCHYARD_API_KEY.")
            return None
        key = key_authenticate(raw)
        if key is None:
            raise CommandError("The API key is invalid, revoked or expired.")
        return key

    def submit(self, options: dict) -> None:
        key = self._key(options["key"])
        path = Path(options["file"])
        if not path.is_file():
            raise CommandError(f"No such file: {path}")
        with path.open("rb") as handle:
            upload = file_create(tenant=key.tenant, content=DjangoFile(handle, name=path.name), filename=path.name,
                                 purpose="batch")
        job = batch_create(tenant=key.tenant, api_key=key, input_file_id=upload.pk, endpoint=options["endpoint"],
                           completion_window=options["completion_window"])
        self.stdout.write(job.pk)
        self.stderr.write(f"uploaded {upload.pk} ({upload.bytes} bytes); batch {job.pk} is {job.status}")
        if options["watch"]:
            self.watch(job.pk, key, options["interval"])

    def watch(self, job_id: str, key, interval: float) -> None:
        def load() -> BatchJob:
            if key is not None:
                job = BatchJob.objects.filter(tenant_id=key.tenant_id, pk=job_id).first()
                return job or job_get(tenant_id=key.tenant_id, job_id=job_id)
            job = BatchJob.objects.filter(pk=job_id).first()
            if job is None:
                raise CommandError(f"No such job: {job_id}")
            return job

        started = time.monotonic()
        interactive = sys.stderr.isatty()
        last, last_state = "", None
        while True:
            job = load()
            line = progress_line(job, time.monotonic() - started)
            # Not on a terminal, a line is written when the progress or the status changes (never
            # for the rate and time alone), so the last line always says how the job ended.
            state = (job.completed, job.failed, job.total, job.status)
            if interactive:
                self.stderr.write("\r" + line.ljust(len(last)), ending="")
            elif state != last_state:
                self.stderr.write(line)
            last, last_state = line, state
            if job.status in FINISHED:
                break
            time.sleep(interval)
        if interactive:
            self.stderr.write("")
        self.stdout.write(json.dumps({"id": job.pk, "status": job.status, "total": job.total,
                                      "completed": job.completed, "failed": job.failed,
                                      "output_file_id": job.output_file_id, "error_file_id": job.error_file_id,
                                      "errors": job.errors, "result": job.result}))
