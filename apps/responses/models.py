"""Responses kept for ``GET /v1/responses/{id}`` and for conversations continued with
``previous_response_id`` (``store: true``, the default). Each is its tenant's alone."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class StoredResponse(models.Model):
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="stored_responses")
    api_key = models.ForeignKey("tenants.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    response_id = models.CharField(max_length=64)
    request_id = models.CharField(max_length=64)
    previous_response_id = models.CharField(max_length=64, blank=True, default="")
    model = models.CharField(max_length=200, blank=True, default="")
    status = models.CharField(max_length=20)
    response = models.JSONField(help_text="The response object as it was answered.")
    input_items = models.JSONField(help_text="This request's own input items, with their ids.")
    context = models.JSONField(
        help_text="The conversation's items (what it continued, this input, this output): what a response "
        "continuing it is given.")
    background = models.BooleanField(default=False, help_text="Created with background: true (run off the request).")
    events = models.JSONField(default=list, blank=True,
                              help_text="A background response's stream events so far, in sequence order.")
    created_at = models.DateTimeField(default=timezone.now)
    stale_at = models.DateTimeField(
        null=True, blank=True, help_text="A background response still running: when its run is taken for dead "
        "if it has not written the row again (each write moves it on).")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "response_id"], name="stored_response_unique")]
        indexes = [models.Index(fields=["tenant", "created_at"], name="stored_response_age")]

    def __str__(self) -> str:
        return self.response_id
