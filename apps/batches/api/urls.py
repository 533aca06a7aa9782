"""Routes of the files, batches and map-reduce jobs API (mounted under ``/v1/``)."""

from __future__ import annotations

from django.urls import path

from apps.batches.api import batches, files, jobs

urlpatterns = [
    path("files", files.files, name="files"),
    path("files/<str:file_id>", files.file_detail, name="file"),
    path("files/<str:file_id>/content", files.file_content, name="file-content"),
    path("batches", batches.batches, name="batches"),
    path("batches/<str:batch_id>", batches.batch_detail, name="batch"),
    path("batches/<str:batch_id>/cancel", batches.batch_cancel, name="batch-cancel"),
    path("jobs/map-reduce", jobs.map_reduce, name="map-reduce"),
    path("jobs", jobs.jobs, name="jobs"),
    path("jobs/<str:job_id>", jobs.job_detail, name="job"),
    path("jobs/<str:job_id>/cancel", jobs.job_cancel_view, name="job-cancel"),
]
