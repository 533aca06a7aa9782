"""Providers and models as an operator edits them: one write-only credential field, a connection
test against the provider itself, prices typed with their unit, and a warning when a deactivated
model leaves routing rules' traffic to their other models."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from apps.catalog.models import Model, Provider
from apps.routing.models import RoutingFallback, RoutingRule
from tests.live import REPO, Simulator, free_port, service_account, stop_process, wait_http


@pytest.fixture(scope="module")
def simulator_url():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "apps.simulator.server", "--host", "127.0.0.1", "--port",
                             str(port)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1"
    wait_http(base + "/models", proc=proc)
    yield base
    stop_process(proc)


def _messages(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def test_a_connection_test_reaches_the_provider_or_says_why_not(admin_client, simulator_url):
    live = Provider.objects.create(name="live", kind=Provider.Kind.OPENAI, base_url=simulator_url, credential="sk-x")
    dead = Provider.objects.create(name="dead", kind=Provider.Kind.OPENAI, base_url=f"http://127.0.0.1:{free_port()}/v1")
    response = admin_client.post(reverse("admin:catalog_provider_changelist"), {
        "action": "test_connection", "_selected_action": [live.pk, dead.pk]}, follow=True)
    said = _messages(response)
    assert any(m.startswith(f"live: GET {simulator_url}/models answered 200") and "models listed" in m for m in said)
    assert any(m.startswith("dead: could not reach") for m in said), said


def test_a_provider_has_one_credential_field(admin_client, provider):
    add = admin_client.get(reverse("admin:catalog_provider_add")).content.decode()
    assert 'name="credential"' in add
    assert 'name="clear_credential"' not in add and "Leave blank to keep" not in add
    assert "stored encrypted and never shown again" in add
    change = admin_client.get(reverse("admin:catalog_provider_change", args=[provider.pk])).content.decode()
    assert "A credential is set" in change and 'name="clear_credential"' in change
    assert "sk-upstream-secret" not in change


def test_a_new_models_prices_are_typed_in_with_their_unit(admin_client, provider):
    page = admin_client.get(reverse("admin:catalog_model_add")).content.decode()
    assert "Input price (USD per 1M tokens)" in page and "Output price (USD per 1M tokens)" in page
    form = {"name": "new-model", "upstream_id": "new-model", "provider": provider.pk, "mode": "chat",
            "cached_input_price_per_million": "0", "batch_discount_percent": "0", "context_window": "1000",
            "max_output_tokens": "100", "tier": "simple", "is_active": "on",
            "prices-TOTAL_FORMS": "0", "prices-INITIAL_FORMS": "0", "prices-MIN_NUM_FORMS": "0",
            "prices-MAX_NUM_FORMS": "1000",
            "pool_strategy": "weighted", "deployments-TOTAL_FORMS": "0", "deployments-INITIAL_FORMS": "0",
            "deployments-MIN_NUM_FORMS": "0", "deployments-MAX_NUM_FORMS": "1000"}
    refused = admin_client.post(reverse("admin:catalog_model_add"), form)
    assert refused.status_code == 200 and not Model.objects.filter(name="new-model").exists()
    saved = admin_client.post(reverse("admin:catalog_model_add"), {
        **form, "input_price_per_million": "1.5", "output_price_per_million": "6"})
    assert saved.status_code == 302, saved.content.decode()[:3000]
    assert Model.objects.get(name="new-model").input_price_per_million == 1.5


def test_deactivating_a_model_that_rules_use_warns_which(admin_client, cheap_model, premium_model):
    RoutingRule.objects.create(name="cheap first", target=cheap_model)
    other = RoutingRule.objects.create(name="premium first", target=premium_model)
    RoutingFallback.objects.create(rule=other, model=cheap_model)
    RoutingRule.objects.create(name="retired", target=cheap_model, is_active=False)
    url = reverse("admin:catalog_model_change", args=[cheap_model.pk])
    form = {name: value for name, value in admin_client.get(url).context["adminform"].form.initial.items()
            if value is not None and name not in ("id", "created_at", "updated_at", "is_active")}
    form |= {"provider": cheap_model.provider_id, "prices-TOTAL_FORMS": "0", "prices-INITIAL_FORMS": "0",
             "prices-MIN_NUM_FORMS": "0", "prices-MAX_NUM_FORMS": "1000",
            "pool_strategy": "weighted", "deployments-TOTAL_FORMS": "0", "deployments-INITIAL_FORMS": "0",
            "deployments-MIN_NUM_FORMS": "0", "deployments-MAX_NUM_FORMS": "1000"}
    response = admin_client.post(url, form, follow=True)
    cheap_model.refresh_from_db()
    assert not cheap_model.is_active
    warning = [m for m in _messages(response) if "is deactivated" in m]
    assert warning and "cheap first, premium first" in warning[0] and "retired" not in warning[0]


def test_the_new_kinds_are_offered_with_what_their_fields_mean(admin_client):
    add = admin_client.get(reverse("admin:catalog_provider_add")).content.decode()
    assert '<option value="azure">Azure OpenAI</option>' in add
    assert '<option value="gemini">Google Gemini API</option>' in add
    assert '<option value="bedrock">Amazon Bedrock (Converse API)</option>' in add
    assert "bedrock-runtime.REGION.amazonaws.com" in add and "ACCESS_KEY_ID:SECRET_ACCESS_KEY" in add
    assert "https://RESOURCE.openai.azure.com" in add and "generativelanguage.googleapis.com/v1beta" in add
    assert "x-goog-api-key" in add and "api-version" in add


def test_an_azure_provider_takes_an_endpoint_and_a_version_and_others_no_version(admin_client):
    url = reverse("admin:catalog_provider_add")
    common = {"timeout_seconds": "30", "max_concurrency": "10", "is_active": "on", "credential": "k",
              "models-TOTAL_FORMS": "0", "models-INITIAL_FORMS": "0"}
    with_path = admin_client.post(url, {**common, "name": "az", "kind": "azure",
                                        "base_url": "https://r.openai.azure.com/openai/v1", "api_version": "v1"})
    assert "An Azure OpenAI, Vertex AI or Amazon Bedrock base URL is the endpoint with no path" in \
        with_path.content.decode()
    versioned = admin_client.post(url, {**common, "name": "oa", "kind": "openai",
                                        "base_url": "https://api.openai.com/v1", "api_version": "2024-10-21"})
    assert "Only Azure OpenAI providers take an API version" in versioned.content.decode()
    made = admin_client.post(url, {**common, "name": "az", "kind": "azure", "base_url": "https://r.openai.azure.com",
                                   "api_version": "2024-10-21"})
    assert made.status_code == 302
    assert Provider.objects.get(name="az").api_version == "2024-10-21"


def test_only_an_openai_compatible_provider_is_marked_as_serving_the_responses_api(admin_client):
    url = reverse("admin:catalog_provider_add")
    common = {"timeout_seconds": "30", "max_concurrency": "10", "is_active": "on", "credential": "k",
              "models-TOTAL_FORMS": "0", "models-INITIAL_FORMS": "0", "responses_api": "on"}
    refused = admin_client.post(url, {**common, "name": "an", "kind": "anthropic",
                                      "base_url": "https://api.anthropic.com/v1"})
    assert "Only an OpenAI-compatible (or simulated) provider serves the Responses API" in refused.content.decode()
    made = admin_client.post(url, {**common, "name": "oa", "kind": "openai", "base_url": "https://api.openai.com/v1"})
    assert made.status_code == 302
    assert Provider.objects.get(name="oa").responses_api is True


def test_a_connection_test_lists_azure_and_gemini_models(admin_client, simulator_url):
    root = simulator_url.removesuffix("/v1")
    dated = Provider.objects.create(name="az-dated", kind=Provider.Kind.AZURE, base_url=root, credential="k",
                                    api_version="2024-10-21")
    v1 = Provider.objects.create(name="az-v1", kind=Provider.Kind.AZURE, base_url=root, credential="k")
    gemini = Provider.objects.create(name="gem", kind=Provider.Kind.GEMINI, base_url=root + "/v1beta", credential="k")
    keyless = Provider.objects.create(name="gem-keyless", kind=Provider.Kind.GEMINI, base_url=root + "/v1beta")
    response = admin_client.post(reverse("admin:catalog_provider_changelist"), {
        "action": "test_connection", "_selected_action": [p.pk for p in (dated, v1, gemini, keyless)]}, follow=True)
    said = _messages(response)
    assert any(m.startswith(f"az-dated: GET {root}/openai/models?api-version=2024-10-21 answered 200") for m in said)
    assert any(m.startswith(f"az-v1: GET {root}/openai/v1/models answered 200") for m in said)
    assert any(m.startswith(f"gem: GET {root}/v1beta/models answered 200") and "4 models listed" in m for m in said)
    assert any(m.startswith("gem-keyless:") and "answered 403" in m for m in said), said


def test_a_vertex_provider_takes_a_location_a_project_and_a_service_account_key(admin_client):
    url = reverse("admin:catalog_provider_add")
    add = admin_client.get(url).content.decode()
    assert '<option value="vertex">Google Vertex AI (Gemini models)</option>' in add
    assert 'name="project"' in add and 'name="location"' in add and "service account" in add
    key = service_account(Simulator("http://127.0.0.1:9"), registered=False)
    common = {"timeout_seconds": "30", "max_concurrency": "10", "is_active": "on", "name": "vx", "kind": "vertex",
              "base_url": "https://us-central1-aiplatform.googleapis.com",
              "models-TOTAL_FORMS": "0", "models-INITIAL_FORMS": "0"}
    refusals = [
        ({"credential": json.dumps(key)}, "A Vertex AI provider needs its location"),
        ({"credential": "an API key", "location": "us-central1"}, "A Vertex AI credential is a service account"),
        ({"credential": json.dumps({**key, "project_id": None}), "location": "us-central1"},
         "Name the project: the service-account key gives none."),
        ({"credential": json.dumps(key), "location": "us-central1", "base_url": "https://x.googleapis.com/v1"},
         "base URL is the endpoint with no path"),
        ({"credential": json.dumps(key), "location": "US Central"}, "Lower-case letters, digits and hyphens"),
        ({"credential": "k", "kind": "openai", "base_url": "https://api.openai.com/v1", "project": "p"},
         "Only Vertex AI providers take a project and a location"),
    ]
    for fields, message in refusals:
        assert message in admin_client.post(url, {**common, **fields}).content.decode(), message
    made = admin_client.post(url, {**common, "credential": json.dumps(key), "location": "us-central1",
                                   "project": "my-project"})
    assert made.status_code == 302
    provider = Provider.objects.get(name="vx")
    assert (provider.project, provider.location, json.loads(provider.credential)) == ("my-project", "us-central1", key)
    change = admin_client.get(reverse("admin:catalog_provider_change", args=[provider.pk])).content.decode()
    assert key["private_key"].splitlines()[1] not in change and 'value="us-central1"' in change


def test_a_connection_test_gets_a_vertex_access_token(admin_client, simulator_url):
    simulator = Simulator(simulator_url.removesuffix("/v1"))
    known = service_account(simulator)
    unknown = service_account(simulator, registered=False)
    providers = [Provider.objects.create(name=name, kind=Provider.Kind.VERTEX, base_url=simulator.base,
                                         credential=json.dumps(key), location="us-central1")
                 for name, key in (("vx-known", known), ("vx-unknown", unknown))]
    response = admin_client.post(reverse("admin:catalog_provider_changelist"), {
        "action": "test_connection", "_selected_action": [p.pk for p in providers]}, follow=True)
    said = _messages(response)
    assert any(m.startswith(f"vx-known: {simulator.base}/token granted an access token in") for m in said), said
    assert any(m.startswith("vx-unknown: no access token") and "invalid_grant" in m for m in said), said
