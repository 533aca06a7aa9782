"""Outcomes from the admin: an operator grades learned routes' answers, which the tenant's router
learns from and which are kept as feedback; a view-only operator cannot."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from apps.routing.models import RouteOutcome
from apps.usage.models import Feedback

CHANGELIST = "admin:routing_routeoutcome_changelist"


@pytest.fixture
def routes(tenant_a, tenant_b):
    vector = [0.0] * 383 + [1.0]
    return [RouteOutcome.objects.create(tenant=tenant, request_id=f"req-{n}", model_name="sim-mini",
                                        embedding=vector, estimate=0.8)
            for n, tenant in enumerate((tenant_a, tenant_a, tenant_b))]


def test_an_operator_grades_answers_good_or_bad(admin_client, routes):
    first, second, other = routes
    response = admin_client.post(reverse(CHANGELIST), {"action": "grade_bad", "_selected_action": [first.pk]},
                                 follow=True)
    assert "1 answer(s) graded 0" in response.content.decode()
    admin_client.post(reverse(CHANGELIST), {"action": "grade_good", "_selected_action": [second.pk, other.pk]})
    scores = dict(RouteOutcome.objects.values_list("request_id", "score"))
    assert scores == {"req-0": 0.0, "req-1": 1.0, "req-2": 1.0}
    kept = {(f.tenant_id, f.request_id): (f.kind, f.score, f.model_used, f.action) for f in Feedback.objects.all()}
    assert kept == {(first.tenant_id, "req-0"): ("outcome", 0.0, "sim-mini", "admin grade"),
                    (second.tenant_id, "req-1"): ("outcome", 1.0, "sim-mini", "admin grade"),
                    (other.tenant_id, "req-2"): ("outcome", 1.0, "sim-mini", "admin grade")}
    # A second grade replaces the first, for that request only.
    admin_client.post(reverse(CHANGELIST), {"action": "grade_good", "_selected_action": [first.pk]})
    assert Feedback.objects.get(request_id="req-0").score == 1.0
    assert Feedback.objects.count() == 3


def test_a_view_only_operator_cannot_grade(client, django_user_model, routes):
    user = django_user_model.objects.create_user("viewer", password="unused-password", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_routeoutcome"))
    client.force_login(user)
    page = client.get(reverse(CHANGELIST))
    assert page.status_code == 200
    assert "grade_good" not in page.content.decode()
    client.post(reverse(CHANGELIST), {"action": "grade_good", "_selected_action": [routes[0].pk]})
    assert RouteOutcome.objects.get(pk=routes[0].pk).score is None
    assert not Feedback.objects.exists()
