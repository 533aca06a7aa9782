"""Files, batch jobs and their lines (OpenAI's Files and Batch API shape).

    File       an uploaded JSONL input, or a job's output or error file, kept in Django's
               storage (a local folder, or S3-compatible storage by setting)
    BatchJob   a batch (``batch_...``) or a map-reduce job (``job_...``): status, counts, the
               lease of the worker running it and its progress cursor
    BatchLine  one answered line: the JSONL line for the output or error file, written once
               (unique per job and line) in the same transaction as the job's counts
"""

from __future__ import annotations

import secrets

from django.db import models
from django.utils import timezone


def public_id_new(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def _file_id() -> str:
    return public_id_new("file-")


class File(models.Model):
    """A tenant's file. ``purpose`` follows OpenAI: ``batch`` for inputs, ``batch_output`` for
    what a job wrote (output and error files)."""

    class Purpose(models.TextChoices):
        BATCH = "batch", "batch"
        BATCH_OUTPUT = "batch_output", "batch output"

    id = models.CharField(primary_key=True, max_length=40, default=_file_id, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="batch_files")
    purpose = models.CharField(max_length=20, choices=Purpose.choices)
    filename = models.CharField(max_length=255)
    bytes = models.BigIntegerField(default=0)
    storage_name = models.CharField(max_length=500, help_text="The name in the files storage.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "-created_at"], name="batch_file_tenant_time")]

    def __str__(self) -> str:
        return f"{self.id} ({self.filename})"


def _job_id() -> str:
    return public_id_new("batch_")


class BatchJob(models.Model):
    """A batch or a map-reduce job, with OpenAI's status machine:

        validating -> in_progress -> finalizing -> completed
                   \\-> failed            \\-> (after completion_window) expired
        any active status -> cancelling -> cancelled
    """

    class Kind(models.TextChoices):
        BATCH = "batch", "Batch"
        MAP_REDUCE = "map_reduce", "Map-reduce"

    class Status(models.TextChoices):
        VALIDATING = "validating"
        IN_PROGRESS = "in_progress"
        FINALIZING = "finalizing"
        COMPLETED = "completed"
        FAILED = "failed"
        EXPIRED = "expired"
        CANCELLING = "cancelling"
        CANCELLED = "cancelled"

    ACTIVE = (Status.VALIDATING, Status.IN_PROGRESS, Status.FINALIZING, Status.CANCELLING)

    id = models.CharField(primary_key=True, max_length=40, default=_job_id, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="batch_jobs")
    api_key = models.ForeignKey("tenants.ApiKey", null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="+", help_text="The key the job's lines run as.")
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.BATCH)
    endpoint = models.CharField(max_length=64)
    completion_window = models.CharField(max_length=16, default="24h")
    metadata = models.JSONField(null=True, blank=True)
    params = models.JSONField(default=dict, blank=True, help_text="A map-reduce job's prompts and model.")
    result = models.JSONField(null=True, blank=True, help_text="A map-reduce job's final answer.")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.VALIDATING, db_index=True)
    errors = models.JSONField(null=True, blank=True)
    # File ids stay on the job after a file is deleted, as OpenAI's batch objects keep them.
    input_file = models.ForeignKey(File, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    output_file = models.ForeignKey(File, null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False,
                                    related_name="+")
    error_file = models.ForeignKey(File, null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False,
                                   related_name="+")
    total = models.PositiveIntegerField(default=0)
    completed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    # Every line before cursor_line is answered; cursor_offset is where it starts in the input.
    cursor_line = models.PositiveIntegerField(default=0)
    cursor_offset = models.BigIntegerField(default=0)
    # A job sent to its provider's Batch API (apps.gateway.upstream_batches): the provider's batch
    # id, saved before any wait so that a resumed worker polls it rather than submitting again,
    # and the provider, files and state it was sent with.
    upstream_batch_id = models.CharField(max_length=100, blank=True, default="")
    upstream = models.JSONField(null=True, blank=True)
    lease_token = models.CharField(max_length=32, blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    in_progress_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    finalizing_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    cancelling_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "batch job"
        indexes = [models.Index(fields=["tenant", "kind", "-created_at"], name="batch_job_tenant_time")]

    def __str__(self) -> str:
        return self.id

    @property
    def done(self) -> int:
        return self.completed + self.failed

    @property
    def percent(self) -> float:
        return round(100.0 * self.done / self.total, 1) if self.total else 0.0

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE


class BatchLine(models.Model):
    """One answered line of a job, as the JSON line of its output or error file."""

    job = models.ForeignKey(BatchJob, on_delete=models.CASCADE, related_name="lines")
    index = models.PositiveIntegerField()
    custom_id = models.CharField(max_length=512, null=True, blank=True)
    is_error = models.BooleanField(default=False)
    line = models.TextField(help_text="The JSON line written to the output or error file.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "index"], name="batch_line_once")]

    def __str__(self) -> str:
        return f"{self.job_id}#{self.index}"
