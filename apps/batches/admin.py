"""Files and batch jobs in the admin: read-only, with a progress bar per job that moves live
(over the channel layer when Redis is configured, by polling otherwise) and a cancel action."""

from __future__ import annotations

from django.contrib import admin, messages
from django.http import JsonResponse
from django.urls import path
from django.utils.html import format_html

from apps.batches.live import live_enabled, progress_event
from apps.batches.models import BatchJob, File
from apps.batches.services import job_cancel
from apps.core.confirm import TenantCountedDelete
from apps.core.errors import GatewayError


@admin.register(File)
class FileAdmin(TenantCountedDelete, admin.ModelAdmin):
    list_display = ("id", "tenant", "purpose", "filename", "bytes", "created_at")
    list_filter = ("purpose", "tenant")
    list_select_related = ("tenant",)
    search_fields = ("id", "filename")
    readonly_fields = ("id", "tenant", "purpose", "filename", "bytes", "storage_name", "created_at")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


def progress_bar(job: BatchJob):
    return format_html(
        '<span class="batch-progress" data-job="{}" style="display:inline-flex;align-items:center;gap:6px">'
        '<progress value="{}" max="{}" style="width:140px"></progress>'
        '<span class="batch-progress-text">{} / {} ({}%)</span></span>',
        job.pk, job.done, job.total or 1, job.done, job.total, job.percent)


@admin.register(BatchJob)
class BatchJobAdmin(TenantCountedDelete, admin.ModelAdmin):
    list_display = ("id", "tenant", "kind", "status_badge", "progress", "completed", "failed", "endpoint",
                    "created_at")
    list_filter = ("kind", "status", "tenant")
    list_select_related = ("tenant",)
    search_fields = ("id",)
    date_hierarchy = "created_at"
    actions = ["cancel_jobs"]
    change_list_template = "admin/batches/batchjob/change_list.html"
    change_form_template = "admin/batches/batchjob/change_form.html"
    fieldsets = (
        (None, {"fields": ("id", "tenant", "api_key", "kind", "status_badge", "progress", "endpoint",
                           "completion_window", "metadata")}),
        ("Files", {"fields": ("input_file", "output_file", "error_file")}),
        ("Provider batch", {"fields": ("upstream_batch_id", "upstream")}),
        ("Counts", {"fields": ("total", "completed", "failed", "cursor_line", "errors", "params", "result")}),
        ("Times", {"fields": ("created_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at",
                              "expires_at", "expired_at", "cancelling_at", "cancelled_at", "lease_until")}),
    )

    def get_readonly_fields(self, request, obj=None):
        return [name for fieldset in self.fieldsets for name in fieldset[1]["fields"]]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.display(description="progress")
    def progress(self, job: BatchJob):
        return progress_bar(job)

    @admin.display(description="status", ordering="status")
    def status_badge(self, job: BatchJob):
        return format_html('<span class="batch-status" data-job="{}">{}</span>', job.pk, job.status)

    @admin.action(description="Cancel the selected jobs")
    def cancel_jobs(self, request, queryset):
        cancelled = 0
        for job in queryset:
            try:
                job_cancel(job)
                cancelled += 1
            except GatewayError as error:
                self.message_user(request, f"{job.pk}: {error.message}", messages.WARNING)
        self.message_user(request, f"{cancelled} job(s) cancelling.")

    def get_urls(self):
        view = self.admin_site.admin_view(self.progress_view)
        return [path("progress/", view, name="batches_batchjob_progress"), *super().get_urls()]

    def progress_view(self, request):
        """``?ids=a,b``: the jobs' progress, for pages polling when there is no live channel."""
        ids = [value for value in request.GET.get("ids", "").split(",") if value][:200]
        return JsonResponse({"jobs": [progress_event(job) for job in BatchJob.objects.filter(pk__in=ids)]})

    def _live_context(self, extra_context):
        return {**(extra_context or {}), "batch_live": live_enabled(), "batch_poll_seconds": 2}

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, self._live_context(extra_context))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        return super().change_view(request, object_id, form_url, self._live_context(extra_context))
