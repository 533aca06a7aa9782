"""Job progress in the admin: a progress bar per job, a JSON endpoint for polling pages, the
live WebSocket for staff, and the cancel action."""

from __future__ import annotations

import asyncio

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.admin.utils import quote
from django.contrib.auth.models import AnonymousUser
from django.urls import reverse

from apps.batches import live
from apps.batches.consumers import BatchProgressConsumer
from apps.batches.models import BatchJob, File


@pytest.fixture
def job(tenant_a):
    upload = File.objects.create(tenant=tenant_a, purpose="batch", filename="in.jsonl", bytes=10,
                                 storage_name="x/in.jsonl")
    return BatchJob.objects.create(tenant=tenant_a, endpoint="/v1/chat/completions", input_file=upload,
                                   status="in_progress", total=40, completed=9, failed=1)


def test_it_shows_a_progress_bar_per_job(admin_client, job):
    page = admin_client.get(reverse("admin:batches_batchjob_changelist")).content.decode()
    assert f'data-job="{job.pk}"' in page
    assert '<progress value="10" max="40"' in page
    assert "10 / 40 (25.0%)" in page
    assert "/ws/admin/batches" in page  # the live channel, used when Redis is configured
    change = admin_client.get(reverse("admin:batches_batchjob_change", args=[quote(job.pk)])).content.decode()
    assert '<progress value="10" max="40"' in change


def test_it_serves_progress_to_polling_pages_for_staff_only(admin_client, client, job):
    url = reverse("admin:batches_batchjob_progress") + f"?ids={job.pk}"
    assert admin_client.get(url).json() == {"jobs": [{
        "id": job.pk, "kind": "batch", "status": "in_progress", "total": 40, "completed": 9, "failed": 1,
        "percent": 25.0}]}
    assert client.get(url).status_code == 302  # to the login page


def test_it_cancels_jobs_from_the_admin(admin_client, job):
    admin_client.post(reverse("admin:batches_batchjob_changelist"),
                      {"action": "cancel_jobs", "_selected_action": [job.pk]})
    job.refresh_from_db()
    assert job.status == "cancelling" and job.cancelling_at is not None


def test_it_pushes_progress_to_staff_sockets_only(admin_user, monkeypatch):
    monkeypatch.setattr(live, "live_enabled", lambda: True)

    async def scenario():
        staff = WebsocketCommunicator(BatchProgressConsumer.as_asgi(), "/ws/admin/batches")
        staff.scope["user"] = admin_user
        connected, _ = await staff.connect()
        assert connected
        stranger = WebsocketCommunicator(BatchProgressConsumer.as_asgi(), "/ws/admin/batches")
        stranger.scope["user"] = AnonymousUser()
        connected, code = await stranger.connect()
        assert not connected and code == 4403
        event = {"id": "batch_x", "kind": "batch", "status": "in_progress", "total": 4, "completed": 2,
                 "failed": 0, "percent": 50.0}
        await live.progress_publish(1, event)
        assert await staff.receive_json_from(timeout=5) == {"type": "live", "topic": "batch", "event": event}
        await staff.disconnect()

    asyncio.run(scenario())
