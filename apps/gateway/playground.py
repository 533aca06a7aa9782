"""The playground page: a staff user picks a tenant's key and a model, types a prompt and watches
the answer arrive over the WebSocket door (or the EventSource endpoint), with the model, cost,
cache status and time to first token; "Send again" repeats the prompt to show a cache hit."""

from __future__ import annotations

from django.contrib.admin.views.decorators import staff_member_required
from django.shortcuts import render

from apps.catalog.models import Model
from apps.gateway.playground_auth import playground_keys


@staff_member_required
def playground(request):
    models = Model.objects.filter(is_active=True, mode=Model.Mode.CHAT).order_by("name").values_list("name", flat=True)
    return render(request, "gateway/playground.html", {"keys": playground_keys(), "models": list(models)})
