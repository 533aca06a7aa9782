"""The admin: every page renders for staff and only for staff; secrets never reach a page;
big tables list in a few bounded queries; logs and prices cannot be edited."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from apps.batches.models import BatchJob, File
from apps.cache.models import CacheEntry
from apps.catalog.models import Model, ModelPrice, Provider
from apps.limits.models import AttributionLimit, BudgetAlert
from apps.reporting.models import TenantMember
from apps.routing.models import ComplexityIndicator, ModelPrior, RouteOutcome, RoutingFallback, RoutingRule
from apps.tenants.models import ApiKey, Tenant
from apps.tenants.selectors import key_authenticate
from apps.tenants.services import key_create
from apps.usage.admin import CappedCountPaginator
from apps.usage.models import Feedback, RequestLog

REGISTERED = sorted(admin.site._registry, key=lambda model: model._meta.label)
EMBEDDING_VALUE = 0.0123456789


@pytest.fixture
def populated(tenant_a, key_a, provider, cheap_model, premium_model, admin_user, django_user_model):
    Group.objects.create(name="operators")
    member = django_user_model.objects.create_user("reader", password="unused-password")
    TenantMember.objects.create(user=member, tenant=tenant_a)
    rule = RoutingRule.objects.create(name="simple", match_tier="simple", target=cheap_model)
    RoutingFallback.objects.create(rule=rule, model=premium_model)
    RouteOutcome.objects.create(tenant=tenant_a, request_id="req-1", rule=rule, model_name="sim-mini",
                                embedding=[EMBEDDING_VALUE] * 384, score=1.0)
    ModelPrior.objects.create(model_name="sim-mini", score=0.8, outcomes=40, tenants=2)
    ComplexityIndicator.objects.create(phrase="what is", tier="simple")
    CacheEntry.objects.create(tenant=tenant_a, request_hash="h" * 64, prompt_text="What is Python?",
                              response={"choices": []}, expires_at=timezone.now() + timedelta(days=1),
                              embedding=[EMBEDDING_VALUE] * 384, model=cheap_model, model_name="sim-mini")
    RequestLog.objects.create(tenant=tenant_a, api_key=key_a.api_key, request_id="req-1", model=cheap_model,
                              model_used="sim-mini", price=cheap_model.prices.get())
    Feedback.objects.create(tenant=tenant_a, api_key=key_a.api_key, request_id="req-1", kind="outcome", score=0.5,
                            model_used="sim-mini")
    BudgetAlert.objects.create(tenant=tenant_a, scope=f"t:{tenant_a.pk}", period_start=timezone.now(),
                               threshold_percent=80, spent_usd=Decimal("8"), budget_usd=Decimal("10"))
    AttributionLimit.objects.create(tenant=tenant_a, kind="tag", value="eval", budget_usd=Decimal("5"))
    upload = File.objects.create(tenant=tenant_a, purpose="batch", filename="in.jsonl", bytes=10,
                                 storage_name="x/in.jsonl")
    BatchJob.objects.create(tenant=tenant_a, endpoint="/v1/chat/completions", input_file=upload, total=10,
                            completed=3)
    login = {"username": "operator", "ip_address": "192.0.2.1", "user_agent": "test", "http_accept": "*/*",
             "path_info": "/admin/login/"}
    AccessAttempt.objects.create(**login, get_data="", post_data="username=operator", failures_since_start=2)
    AccessFailureLog.objects.create(**login, locked_out=False)
    AccessLog.objects.create(**login)


@pytest.fixture
def staff_client(client, django_user_model):
    """A logged-in staff member who holds only the permissions a test grants."""
    user = django_user_model.objects.create_user("operator", password="unused-password", is_staff=True)
    client.force_login(user)

    def grant(*codenames: str):
        user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
        return client

    return grant


def _url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.mark.parametrize("model", REGISTERED, ids=lambda m: m._meta.label)
def test_it_renders_every_changelist_add_and_change_page_for_a_superuser(admin_client, admin_user, rf, populated,
                                                                           model):
    assert admin_client.get(_url(model, "changelist")).status_code == 200
    request = rf.get("/")
    request.user = admin_user
    if admin.site._registry[model].has_add_permission(request):
        assert admin_client.get(_url(model, "add")).status_code == 200
    obj = model.objects.first()
    assert obj is not None, f"no {model.__name__} seeded"
    assert admin_client.get(_url(model, "change", quote(obj.pk))).status_code == 200


@pytest.mark.parametrize("model", REGISTERED, ids=lambda m: m._meta.label)
def test_it_sends_anonymous_users_to_the_login_page(client, populated, model):
    for url in (_url(model, "changelist"), _url(model, "add"), _url(model, "change", quote(model.objects.first().pk))):
        response = client.get(url)
        assert response.status_code == 302
        assert reverse("admin:login") in response["Location"]


# --- Providers: the credential is write-only ---------------------------------------------------

def _stored_credential() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT credential FROM catalog_provider")
        return cursor.fetchone()[0]


def _provider_post(provider, **changes) -> dict:
    data = {"name": provider.name, "kind": provider.kind, "base_url": provider.base_url, "credential": "",
            "timeout_seconds": provider.timeout_seconds, "max_concurrency": provider.max_concurrency,
            "is_active": "on", "models-TOTAL_FORMS": "0", "models-INITIAL_FORMS": "0",
            "models-MIN_NUM_FORMS": "0", "models-MAX_NUM_FORMS": "1000"}
    data.update(changes)
    return data


def test_it_never_shows_the_provider_credential(admin_client, provider):
    pages = [_url(Provider, "changelist"), _url(Provider, "change", provider.pk), _url(Provider, "add"),
             _url(Provider, "history", provider.pk)]
    for url in pages:
        html = admin_client.get(url).content.decode()
        assert "sk-upstream-secret" not in html
    changelist = admin_client.get(_url(Provider, "changelist")).content.decode()
    assert '<td class="field-credential_state">set</td>' in changelist
    change = admin_client.get(_url(Provider, "change", provider.pk)).content.decode()
    assert "A credential is set" in change
    assert "sk-upstream-secret" not in _stored_credential()


def test_it_does_not_echo_a_typed_credential_when_the_form_has_errors(admin_client, provider):
    response = admin_client.post(_url(Provider, "change", provider.pk),
                                 _provider_post(provider, base_url="not a url", credential="sk-typed-secret"))
    assert response.status_code == 200
    assert response.context["adminform"].form.errors
    assert "sk-typed-secret" not in response.content.decode()
    provider.refresh_from_db()
    assert provider.credential == "sk-upstream-secret"


def test_it_keeps_the_credential_on_a_blank_change_and_replaces_it_on_a_new_one(admin_client, provider):
    url = _url(Provider, "change", provider.pk)
    assert admin_client.post(url, _provider_post(provider, timeout_seconds="12")).status_code == 302
    provider.refresh_from_db()
    assert provider.credential == "sk-upstream-secret"
    assert provider.timeout_seconds == 12
    assert LogEntry.objects.latest("action_time").get_change_message() == "Changed Timeout seconds."
    assert admin_client.post(url, _provider_post(provider, credential="sk-new")).status_code == 302
    provider.refresh_from_db()
    assert provider.credential == "sk-new"
    assert LogEntry.objects.latest("action_time").get_change_message() == "Changed credential."
    assert "sk-new" not in _stored_credential()
    assert admin_client.post(url, _provider_post(provider, clear_credential="on")).status_code == 302
    provider.refresh_from_db()
    assert provider.credential == ""
    assert "No credential is set" in admin_client.get(url).content.decode()


def test_it_refuses_a_new_credential_and_clear_together(admin_client, provider):
    response = admin_client.post(_url(Provider, "change", provider.pk),
                                 _provider_post(provider, credential="sk-other", clear_credential="on"))
    assert response.status_code == 200
    assert "not both" in response.content.decode()
    provider.refresh_from_db()
    assert provider.credential == "sk-upstream-secret"


def test_it_encrypts_a_credential_entered_on_the_add_page(admin_client):
    response = admin_client.post(_url(Provider, "add"), _provider_post(
        Provider(name="upstream", kind=Provider.Kind.OPENAI, base_url="https://api.example.com/v1"),
        credential="sk-added-secret"))
    assert response.status_code == 302
    assert Provider.objects.get(name="upstream").credential == "sk-added-secret"
    assert "sk-added-secret" not in _stored_credential()


# --- API keys: the secret is shown once ---------------------------------------------------------

def test_it_shows_a_new_keys_secret_exactly_once(admin_client, tenant_a, cheap_model):
    response = admin_client.post(_url(ApiKey, "add"), {"tenant": tenant_a.pk, "name": "from-admin",
                                                        "allowed_models": [cheap_model.pk]}, follow=True)
    assert response.status_code == 200
    html = response.content.decode()
    key = ApiKey.objects.get(name="from-admin")
    assert response.redirect_chain[-1][0] == reverse("admin:tenants_apikey_created", args=[key.pk])
    secret = html.split('id="sy-new-key" type="text" readonly value="', 1)[1].split('"', 1)[0]
    assert secret.startswith(key.prefix) and len(secret) > 40
    assert "only this once" in html
    authenticated = key_authenticate(secret)
    assert authenticated.tenant == tenant_a
    assert list(authenticated.allowed_models.all()) == [cheap_model]
    assert secret not in admin_client.get(response.request["PATH_INFO"]).content.decode()
    change = admin_client.get(_url(ApiKey, "change", key.pk)).content.decode()
    assert secret not in change
    assert key.key_hash not in change
    assert secret not in admin_client.get(_url(ApiKey, "changelist")).content.decode()


def test_it_shows_a_tenants_keys_without_their_hashes(admin_client, tenant_a, key_a):
    html = admin_client.get(_url(Tenant, "change", tenant_a.pk)).content.decode()
    assert key_a.api_key.prefix in html
    assert key_a.api_key.key_hash not in html
    assert key_a.secret not in html


def test_it_revokes_selected_keys(admin_client, key_a, key_b):
    response = admin_client.post(_url(ApiKey, "changelist"), {
        "action": "revoke_selected", "_selected_action": [key_a.api_key.pk]})
    assert response.status_code == 302
    assert key_authenticate(key_a.secret) is None
    assert key_authenticate(key_b.secret) is not None


def test_it_does_not_let_a_view_only_operator_revoke_keys(staff_client, key_a):
    client = staff_client("view_apikey")
    assert client.get(_url(ApiKey, "changelist")).status_code == 200
    client.post(_url(ApiKey, "changelist"), {"action": "revoke_selected", "_selected_action": [key_a.api_key.pk]})
    assert key_authenticate(key_a.secret) is not None


def test_it_filters_keys_by_status(admin_client, tenant_a):
    active = key_create(tenant=tenant_a, name="active-key").api_key
    expired = key_create(tenant=tenant_a, name="expired-key",
                         expires_at=timezone.now() - timedelta(days=1)).api_key
    revoked = key_create(tenant=tenant_a, name="revoked-key").api_key
    admin_client.post(_url(ApiKey, "changelist"), {"action": "revoke_selected", "_selected_action": [revoked.pk]})
    for status, expected in (("active", active), ("expired", expired), ("revoked", revoked)):
        listed = admin_client.get(_url(ApiKey, "changelist"), {"status": status}).context["cl"].result_list
        assert list(listed) == [expected]


# --- Request logs: read-only, bounded queries on a big table -----------------------------------

def _logs(count: int, tenants, keys, models, *, start: int = 0) -> None:
    now = timezone.now()
    RequestLog.objects.bulk_create([
        RequestLog(tenant=tenants[i % 2], api_key=keys[i % 2], request_id=f"req-{i}", model=models[i % 2],
                   model_used=models[i % 2].name, cost=Decimal("0.0001"), input_tokens=random.randint(1, 500),
                   status_code=(200, 429, 502)[i % 3], created_at=now - timedelta(seconds=i))
        for i in range(start, start + count)
    ], batch_size=5000)


def _log_pages(admin_client, params: list[dict]) -> list[list[str]]:
    """The SQL of each changelist page view."""
    pages = []
    for query in params:
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(_url(RequestLog, "changelist"), query).status_code == 200
        pages.append([q["sql"] for q in queries.captured_queries])
    return pages


def _log_scans(sql: list[str]) -> list[str]:
    """Counts and DISTINCTs over the log without a LIMIT: each may visit every row.

    (The page's rows are fetched without a LIMIT only when the capped count found a page or less.)
    """
    return [q for q in sql if '"usage_requestlog"' in q and " LIMIT " not in q and ("COUNT(" in q or "DISTINCT" in q)]


def test_it_lists_request_logs_in_a_constant_number_of_bounded_queries(admin_client, tenant_a, tenant_b, key_a,
                                                                       key_b, cheap_model, premium_model):
    tenants, keys, models = [tenant_a, tenant_b], [key_a.api_key, key_b.api_key], [cheap_model, premium_model]
    now = timezone.localtime()
    views = [{}, {"tenant__id__exact": tenant_a.pk, "status_code": "5xx", "model_used": "sim-mini"},
             {"created_at__year": now.year}, {"created_at__year": now.year, "created_at__month": now.month},
             {"q": "req-7"}, {"p": 2}, {"key": key_b.api_key.pk, "error_code": "any"},
             {"q": key_a.api_key.prefix}, {"created_at__gte": str(now - timedelta(hours=1))}]
    _logs(100, tenants, keys, models)
    small = _log_pages(admin_client, views)
    _logs(9_900, tenants, keys, models, start=100)
    large = _log_pages(admin_client, views)
    assert [len(page) for page in large] == [len(page) for page in small]
    assert max(len(page) for page in large) <= 12
    for page in large:
        assert _log_scans(page) == []


def test_it_says_more_than_the_cap_instead_of_counting_every_log(admin_client, tenant_a, tenant_b, key_a, key_b,
                                                                 cheap_model, premium_model, monkeypatch):
    monkeypatch.setattr(CappedCountPaginator, "limit", 150)
    _logs(300, [tenant_a, tenant_b], [key_a.api_key, key_b.api_key], [cheap_model, premium_model])
    html = admin_client.get(_url(RequestLog, "changelist")).content.decode()
    assert "more than 150 request logs" in html
    tenant_page = admin_client.get(_url(RequestLog, "changelist"), {"tenant__id__exact": tenant_a.pk})
    assert "more than" not in tenant_page.content.decode()
    assert tenant_page.context["cl"].result_count == 150


def test_it_filters_request_logs_by_status_class_and_code(admin_client, tenant_a, tenant_b, key_a, key_b,
                                                          cheap_model, premium_model):
    _logs(30, [tenant_a, tenant_b], [key_a.api_key, key_b.api_key], [cheap_model, premium_model])
    for value, codes in (("2xx", {200}), ("4xx", {429}), ("5xx", {502}), ("429", {429})):
        rows = admin_client.get(_url(RequestLog, "changelist"), {"status_code": value}).context["cl"].result_list
        assert {row.status_code for row in rows} == codes
        assert len(rows) == 10


def test_it_finds_a_request_log_by_its_exact_id(admin_client, tenant_a, tenant_b, key_a, key_b, cheap_model,
                                                premium_model):
    _logs(30, [tenant_a, tenant_b], [key_a.api_key, key_b.api_key], [cheap_model, premium_model])
    rows = admin_client.get(_url(RequestLog, "changelist"), {"q": " req-1 "}).context["cl"].result_list
    assert [row.request_id for row in rows] == ["req-1"]


def test_it_filters_request_logs_by_key_and_error_code_and_finds_them_by_key_prefix(
        admin_client, tenant_a, tenant_b, key_a, key_b, cheap_model, premium_model):
    _logs(30, [tenant_a, tenant_b], [key_a.api_key, key_b.api_key], [cheap_model, premium_model])
    RequestLog.objects.filter(status_code=429).update(error_code="rate_limit_exceeded")
    RequestLog.objects.filter(status_code=502).update(error_code="upstream_timeout")

    def rows(**params):
        return admin_client.get(_url(RequestLog, "changelist"), params).context["cl"].result_list

    assert {row.api_key_id for row in rows(key=key_b.api_key.pk)} == {key_b.api_key.pk}
    assert len(rows(key=key_b.api_key.pk)) == 15
    assert {row.api_key_id for row in rows(q=key_a.api_key.prefix)} == {key_a.api_key.pk}
    assert {row.error_code for row in rows(error_code="any")} == {"rate_limit_exceeded", "upstream_timeout"}
    assert {row.error_code for row in rows(error_code="none")} == {""}
    assert {row.status_code for row in rows(error_code="upstream_timeout")} == {502}
    page = admin_client.get(_url(RequestLog, "changelist"), {"tenant__id__exact": tenant_a.pk}).content.decode()
    assert f"?key={key_a.api_key.pk}&amp;tenant__id__exact={tenant_a.pk}" in page
    assert f"key={key_b.api_key.pk}" not in page  # the key filter offers the chosen tenant's keys
    assert "An exact request ID" in page


def test_it_shows_model_cache_outcome_cost_latency_and_error_code_columns(admin_client, tenant_a, key_a,
                                                                           cheap_model):
    RequestLog.objects.create(tenant=tenant_a, api_key=key_a.api_key, request_id="req-shown", requested_model="auto",
                              model_used="sim-mini", cache_outcome="semantic", cache_similarity=0.91234,
                              cost=Decimal("0.0000123456"), latency_ms=1234.4, status_code=502,
                              error_code="upstream_timeout")
    RequestLog.objects.create(tenant=tenant_a, api_key=key_a.api_key, request_id="req-tiny", model_used="sim-mini",
                              cost=Decimal("0.0000000042"))
    html = admin_client.get(_url(RequestLog, "changelist")).content.decode()
    for cell in ('<td class="field-model_column">sim-mini (auto)</td>',
                 '<td class="field-cache_column">semantic 0.912</td>', '<td class="field-cost_column">$0.000012</td>',
                 '<td class="field-latency_column">1,234 ms</td>', '<td class="field-status">502</td>',
                 '<td class="field-error_column">upstream_timeout</td>',
                 '<td class="field-cost_column">&lt;$0.000001</td>'):
        assert cell in html


def test_it_drills_down_request_logs_by_year_month_and_day(admin_client, tenant_a, key_a):
    for request_id, moment in (("march-10", datetime(2025, 3, 10, 9, tzinfo=UTC)),
                               ("march-12", datetime(2025, 3, 12, 18, tzinfo=UTC)),
                               ("january", datetime(2026, 1, 5, 12, tzinfo=UTC))):
        RequestLog.objects.create(tenant=tenant_a, api_key=key_a.api_key, request_id=request_id, created_at=moment)

    def page(**params):
        response = admin_client.get(_url(RequestLog, "changelist"),
                                    {f"created_at__{part}": value for part, value in params.items()})
        return response.content.decode(), sorted(row.request_id for row in response.context["cl"].result_list)

    html, rows = page()
    assert ">2025</a>" in html and ">2026</a>" in html
    assert rows == ["january", "march-10", "march-12"]
    html, rows = page(year=2025)
    assert ">March 2025</a>" in html and "January" not in html
    assert rows == ["march-10", "march-12"]
    html, rows = page(year=2025, month=3)
    assert ">March 10</a>" in html and ">March 12</a>" in html and ">March 13</a>" not in html
    html, rows = page(year=2025, month=3, day=12)
    assert rows == ["march-12"]


def test_it_lets_staff_with_view_permission_read_request_logs_but_not_change_them(staff_client, populated):
    log = RequestLog.objects.get(request_id="req-1")
    client = staff_client("view_requestlog")
    assert client.get(_url(RequestLog, "changelist")).status_code == 200
    page = client.get(_url(RequestLog, "change", log.pk))
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    assert client.post(_url(RequestLog, "change", log.pk), {"request_id": "forged"}).status_code == 403
    assert staff_client().get(_url(RequestLog, "changelist")).status_code == 403


def test_it_does_not_let_anyone_edit_a_request_log(admin_client, populated):
    log = RequestLog.objects.get(request_id="req-1")
    response = admin_client.post(_url(RequestLog, "change", log.pk), {"cost": "99", "request_id": "forged"})
    assert response.status_code == 403
    assert admin_client.get(_url(RequestLog, "add")).status_code == 403
    assert admin_client.post(_url(RequestLog, "delete", log.pk), {"post": "yes"}).status_code == 403
    log.refresh_from_db()
    assert log.request_id == "req-1"
    assert log.cost == Decimal("0")


# --- Deleting what the usage history depends on ------------------------------------------------

def test_it_refuses_to_delete_a_tenant_with_usage_without_loading_its_logs(admin_client, tenant_a, tenant_b, key_a,
                                                                          key_b, cheap_model, premium_model):
    _logs(2_000, [tenant_a, tenant_b], [key_a.api_key, key_b.api_key], [cheap_model, premium_model])
    with CaptureQueriesContext(connection) as queries:
        page = admin_client.get(_url(Tenant, "delete", tenant_a.pk))
    assert page.status_code == 200
    assert "deactivate the tenant instead" in page.content.decode()
    assert not [q["sql"] for q in queries.captured_queries if q["sql"].startswith('SELECT "usage_requestlog"')]
    admin_client.post(_url(Tenant, "delete", tenant_a.pk), {"post": "yes"})
    assert Tenant.objects.filter(pk=tenant_a.pk).exists()
    assert RequestLog.objects.filter(tenant=tenant_a).count() == 1_000


def test_it_deletes_a_tenant_without_usage_and_its_keys(admin_client, tenant_a, key_a, tenant_b, key_b):
    assert admin_client.get(_url(Tenant, "delete", tenant_a.pk)).status_code == 200
    assert admin_client.post(_url(Tenant, "delete", tenant_a.pk), {"post": "yes"}).status_code == 302
    assert not Tenant.objects.filter(pk=tenant_a.pk).exists()
    assert key_authenticate(key_a.secret) is None
    assert key_authenticate(key_b.secret) is not None


def test_it_refuses_to_delete_a_model_that_priced_requests(admin_client, populated, cheap_model):
    page = admin_client.get(_url(Model, "delete", cheap_model.pk))
    assert "deactivate the model instead" in page.content.decode()
    admin_client.post(_url(Model, "delete", cheap_model.pk), {"post": "yes"})
    assert Model.objects.filter(pk=cheap_model.pk).exists()


# --- Catalog: price history --------------------------------------------------------------------

def _model_post(model, **changes) -> dict:
    data = {"name": model.name, "upstream_id": model.upstream_id, "provider": model.provider_id, "mode": model.mode,
            "input_price_per_million": model.input_price_per_million,
            "cached_input_price_per_million": model.cached_input_price_per_million,
            "output_price_per_million": model.output_price_per_million,
            "batch_discount_percent": model.batch_discount_percent, "context_window": model.context_window,
            "max_output_tokens": model.max_output_tokens, "tier": model.tier, "is_active": "on",
            "prices-TOTAL_FORMS": str(model.prices.count()), "prices-INITIAL_FORMS": str(model.prices.count()),
            "prices-MIN_NUM_FORMS": "0", "prices-MAX_NUM_FORMS": "1000",
            "pool_strategy": "weighted", "deployments-TOTAL_FORMS": "0", "deployments-INITIAL_FORMS": "0",
            "deployments-MIN_NUM_FORMS": "0", "deployments-MAX_NUM_FORMS": "1000"}
    data.update(changes)
    return data


def test_it_records_a_price_change_and_shows_the_history_newest_first(admin_client, cheap_model):
    url = _url(Model, "change", cheap_model.pk)
    response = admin_client.post(url, _model_post(cheap_model, input_price_per_million="0.30"))
    assert response.status_code == 302
    assert [price.input_price_per_million for price in cheap_model.prices.order_by("-effective_from")] == [
        Decimal("0.30"), Decimal("0.15")]
    html = admin_client.get(url).content.decode()
    history = html[html.index("Price history (newest first)"):]
    assert history.index("0.300000") < history.index("0.150000")


def test_it_versions_a_batch_discount_set_in_the_admin(admin_client, cheap_model):
    response = admin_client.post(_url(Model, "change", cheap_model.pk),
                                 _model_post(cheap_model, batch_discount_percent="50"))
    assert response.status_code == 302
    latest = cheap_model.prices.order_by("-effective_from", "-id").first()
    assert latest.batch_discount_percent == Decimal("50") and cheap_model.prices.count() == 2
    assert latest.cost(input_tokens=1000, cached_tokens=0, output_tokens=500, batch=True) * 2 == latest.cost(
        input_tokens=1000, cached_tokens=0, output_tokens=500)
    response = admin_client.post(_url(Model, "change", cheap_model.pk),
                                 _model_post(cheap_model, batch_discount_percent="150"))
    assert response.status_code == 200  # a form error: at most 100
    assert cheap_model.prices.count() == 2


def test_it_never_adds_edits_or_deletes_a_price_version(admin_client, cheap_model):
    price = cheap_model.prices.get()
    assert admin_client.get(_url(ModelPrice, "add")).status_code == 403
    response = admin_client.post(_url(ModelPrice, "change", price.pk), {"input_price_per_million": "9"})
    assert response.status_code == 403
    assert admin_client.post(_url(ModelPrice, "delete", price.pk), {"post": "yes"}).status_code == 403
    price.refresh_from_db()
    assert price.input_price_per_million == Decimal("0.15")


# --- Routing -----------------------------------------------------------------------------------

def test_it_saves_a_rules_fallbacks_in_order(admin_client, tenant_a, cheap_model, premium_model, provider):
    third = Model.objects.create(name="sim-third", upstream_id="sim-third", provider=provider, is_free=True)
    response = admin_client.post(_url(RoutingRule, "add"), {
        "name": "complex", "tenant": tenant_a.pk, "priority": "10", "is_active": "on", "weight": "100",
        "match_model": "auto", "match_tier": "complex", "match_tags": "[]", "target": premium_model.pk,
        "quality_target": "0.95", "explore_share": "0.05",
        "fallbacks-TOTAL_FORMS": "2", "fallbacks-INITIAL_FORMS": "0", "fallbacks-MIN_NUM_FORMS": "0",
        "fallbacks-MAX_NUM_FORMS": "1000",
        "fallbacks-0-position": "2", "fallbacks-0-model": cheap_model.pk,
        "fallbacks-1-position": "1", "fallbacks-1-model": third.pk,
    })
    assert response.status_code == 302
    rule = RoutingRule.objects.get(name="complex")
    assert [fallback.model for fallback in rule.fallbacks.all()] == [third, cheap_model]
    html = admin_client.get(_url(RoutingRule, "changelist")).content.decode()
    assert '<td class="field-scope">Acme</td>' in html


def test_it_edits_complexity_phrases_from_the_list(admin_client):
    indicator = ComplexityIndicator.objects.create(phrase="what is", tier="simple")
    response = admin_client.post(_url(ComplexityIndicator, "changelist"), {
        "form-TOTAL_FORMS": "1", "form-INITIAL_FORMS": "1", "form-MIN_NUM_FORMS": "0", "form-MAX_NUM_FORMS": "1000",
        "form-0-id": indicator.pk, "form-0-phrase": "prove that", "form-0-tier": "complex", "_save": "Save",
    })
    assert response.status_code == 302
    indicator.refresh_from_db()
    assert (indicator.phrase, indicator.tier, indicator.is_active) == ("prove that", "complex", False)


# --- Cache entries -----------------------------------------------------------------------------

def test_it_shows_cache_entries_read_only_without_their_embedding(admin_client, populated):
    entry = CacheEntry.objects.get()
    page = admin_client.get(_url(CacheEntry, "change", entry.pk))
    html = page.content.decode()
    assert "What is Python?" in html
    assert str(EMBEDDING_VALUE) not in html
    assert 'name="_save"' not in html
    assert admin_client.post(_url(CacheEntry, "change", entry.pk), {"prompt_text": "forged"}).status_code == 403
    entry.refresh_from_db()
    assert entry.prompt_text == "What is Python?"


def test_it_purges_only_the_selected_cache_entries(admin_client, populated, tenant_a):
    kept = CacheEntry.objects.create(tenant=tenant_a, request_hash="k" * 64, prompt_text="Keep me",
                                     response={}, expires_at=timezone.now() + timedelta(days=1))
    purged = CacheEntry.objects.exclude(pk=kept.pk).get()
    response = admin_client.post(_url(CacheEntry, "changelist"), {
        "action": "purge_selected", "_selected_action": [purged.pk], "confirm": "yes"})  # confirmed (test_purges.py)
    assert response.status_code == 302
    assert list(CacheEntry.objects.all()) == [kept]


def _changelist_query_count(admin_client, model) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert admin_client.get(_url(model, "changelist")).status_code == 200
    return len(queries)


def test_it_lists_cache_entries_and_keys_in_a_constant_number_of_queries(admin_client, tenant_a, tenant_b,
                                                                         cheap_model):
    def seed(start: int, entries: int, keys: int) -> None:
        expires = timezone.now() + timedelta(days=1)
        CacheEntry.objects.bulk_create([
            CacheEntry(tenant=(tenant_a, tenant_b)[i % 2], request_hash=f"{i:064d}", prompt_text=f"prompt {i}",
                       response={}, expires_at=expires, model=cheap_model, model_name=cheap_model.name)
            for i in range(start, start + entries)])
        for i in range(keys):
            key_create(tenant=(tenant_a, tenant_b)[i % 2], name=f"key-{start}-{i}")

    seed(0, 4, 2)
    small = [_changelist_query_count(admin_client, model) for model in (CacheEntry, ApiKey)]
    seed(4, 2_000, 30)
    assert [_changelist_query_count(admin_client, model) for model in (CacheEntry, ApiKey)] == small


def test_it_does_not_let_a_view_only_operator_purge_the_cache(staff_client, populated):
    client = staff_client("view_cacheentry")
    assert client.get(_url(CacheEntry, "changelist")).status_code == 200
    entry = CacheEntry.objects.get()
    for action in ("purge_selected", "purge_tenants", "purge_models"):
        client.post(_url(CacheEntry, "changelist"), {"action": action, "_selected_action": [entry.pk]})
    assert CacheEntry.objects.filter(pk=entry.pk).exists()
