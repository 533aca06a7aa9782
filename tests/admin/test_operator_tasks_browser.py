"""An operator's eight tasks done through the admin alone, in a real headless Chromium against a
live Switchyard and the simulated upstream, each checked with an API call as a client would
see it: a tenant with a budget and a key, a new provider and its models, a price change, a
routing rule with a fallback, a cache purge, cache settings, the dashboard, and revocation.
Changes reach the running gateway by its config messages alone (no timed reload), so every check
waits for the change to arrive rather than for a fixed time. Screenshots land in
tests/artifacts/ (ignored by git)."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from decimal import ROUND_HALF_UP, Decimal

import httpx
import pytest

from tests.admin.conftest import OPERATOR_PASSWORD
from tests.gateway.conftest import gateway_start, gateway_stop, usage_quiet
from tests.live import REPO, wait_until

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "tests" / "artifacts"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no system Chromium at {CHROMIUM} (apt-get install chromium)")


class Client:
    """A tenant's application calling the API with the key the operator handed over."""

    def __init__(self, base: str, key: str) -> None:
        self.http = httpx.Client(base_url=base + "/v1", headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def models(self) -> set[str]:
        response = self.http.get("/models")
        return {model["id"] for model in response.json()["data"]} if response.status_code == 200 else set()

    def chat(self, model: str, prompt: str) -> httpx.Response:
        return self.http.post("/chat/completions", json={"model": model, "messages": [
            {"role": "user", "content": prompt}]})


class Operator:
    """The operator's browser: the admin's own pages, fields and buttons."""

    def __init__(self, page, base: str) -> None:
        self.page, self.base = page, base

    def open(self, path: str) -> None:
        self.page.goto(self.base + path)

    def save(self, button: str = "_save") -> None:
        """Press a save button (``_continue``: save and keep editing)."""
        self.page.locator(f"input[name={button}]").click()
        self.page.wait_for_load_state()
        errors = self.page.locator(".errornote, .errorlist")
        assert errors.count() == 0, errors.all_inner_texts()

    def autocomplete(self, field_id: str, text: str) -> None:
        """Pick ``text`` in an autocomplete field (the admin's select2 widget), as typed."""
        self.page.locator(f"#{field_id} + .select2").click()
        self.page.locator(".select2-container--open .select2-search__field").fill(text)
        self.page.locator(".select2-results__option", has_text=text).first.click()

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"operator-{name}.png"), full_page=True)


def _off_loop(work):
    """Run database work in a thread of its own: Playwright's sync API keeps an event loop
    running in the test's thread, where Django refuses synchronous queries."""
    from django.db import connections

    def run():
        try:
            return work()
        finally:
            connections.close_all()  # the thread's own connection, or the test database outlives it

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


def _pk(page) -> int:
    """The object id in a change page's address (``.../<pk>/change/``)."""
    return int(page.url.rstrip("/").split("/")[-2])


@pytest.fixture(scope="module")
def admin_server(django_db_setup, django_db_blocker, tmp_path_factory):
    """A server of this module's own: saving in the admin makes a process cache the content types'
    ids, which a later test's database flush renumbers; the session's shared server must not
    carry them into other modules."""
    server = gateway_start(tmp_path_factory.mktemp("operator-server"))
    yield server
    gateway_stop(server)


def test_an_operator_does_the_eight_tasks_in_the_admin_and_clients_see_each(
        transactional_db, admin_server, simulator, django_user_model):
    from playwright.sync_api import expect, sync_playwright

    from apps.reporting.services import usage_rollup

    django_user_model.objects.create_superuser("operator", password=OPERATOR_PASSWORD)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--no-sandbox", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            op = Operator(page, admin_server.base)
            op.open("/admin/login/?next=/admin/")
            page.fill("#id_username", "operator")
            page.fill("#id_password", OPERATOR_PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url("**/admin/")

            # 1. A tenant with a budget, and a key for it from the tenant's own page.
            op.open("/admin/tenants/tenant/add/")
            page.locator("#id_name").press_sequentially("Initech")  # typed: the slug follows
            expect(page.locator("#id_slug")).to_have_value("initech")  # filled in from the name
            page.fill("#id_budget_usd", "5")
            op.save("_continue")
            tenant_url = page.url
            tenant_pk = _pk(page)
            page.get_by_role("link", name="Add an API key").click()
            expect(page.locator("#id_tenant")).to_have_value(str(tenant_pk))
            page.fill("#id_name", "production backend")
            op.save()
            secret = page.locator("#sy-new-key").input_value()
            assert secret.startswith("sk-")
            op.shot("key-created")
            key_url = page.get_by_role("link", name="Go to the key").get_attribute("href")
            client = Client(admin_server.base, secret)
            assert wait_until(lambda: client.http.get("/models").status_code == 200), "the new key never worked"

            # 2. A new provider (the simulated upstream) and two models on it.
            op.open("/admin/catalog/provider/add/")
            page.fill("#id_name", "Sim Cloud")
            page.select_option("#id_kind", "openai")
            page.fill("#id_base_url", simulator.v1)
            page.fill("#id_credential", "sk-sim-upstream")
            op.save()
            for name, upstream in (("ops-fast", "sim-mini"), ("ops-backup", "sim-standard")):
                op.open("/admin/catalog/model/add/")
                page.fill("#id_name", name)
                page.fill("#id_upstream_id", upstream)
                page.select_option("#id_provider", label="Sim Cloud")
                page.fill("#id_input_price_per_million", "1")
                page.fill("#id_output_price_per_million", "2")
                op.save()
            assert wait_until(lambda: {"ops-fast", "ops-backup"} <= client.models()), "the models never appeared"
            answered = client.chat("ops-fast", "Say hello to the new provider.")
            assert answered.status_code == 200, answered.text
            assert answered.headers["x-switchyard-model"] == "ops-fast"
            assert answered.headers["x-switchyard-budget-limit"] == "5"  # the tenant's budget applies

            # 3. A price change: the output price goes from 2 to 20 USD per 1M tokens.
            op.open("/admin/catalog/model/")
            page.get_by_role("link", name="ops-fast", exact=True).click()
            page.fill("#id_output_price_per_million", "20")
            op.save()

            checks = iter(range(1, 1000))

            def priced_at_20() -> bool:
                response = client.chat("ops-fast", f"Price check number {next(checks)}.")
                usage = response.json()["usage"]
                expected = (Decimal(usage["prompt_tokens"]) * 1 + Decimal(usage["completion_tokens"]) * 20) / 10**6
                return Decimal(response.headers["x-switchyard-cost"]) == expected

            assert wait_until(priced_at_20), "requests were never priced at the new price"

            # 4. A routing rule with a fallback: "ops-alias" goes to ops-fast, then to ops-backup.
            op.open("/admin/routing/routingrule/add/")
            page.fill("#id_name", "ops alias")
            page.fill("#id_match_model", "ops-alias")
            op.autocomplete("id_target", "ops-fast")
            page.fill("#id_fallbacks-0-position", "1")
            op.autocomplete("id_fallbacks-0-model", "ops-backup")
            op.save()
            expect(page.locator("#result_list")).to_contain_text("1. ops-backup")
            assert wait_until(lambda: client.chat("ops-alias", "Routed where?").headers.get(
                "x-switchyard-model") == "ops-fast"), "the rule never routed"
            simulator.fault(model="sim-mini", mode="status", status=500, count=-1)
            fell_back = client.chat("ops-alias", "Routed where, with the target down?")
            assert fell_back.status_code == 200 and fell_back.headers["x-switchyard-model"] == "ops-backup"
            simulator.reset()

            # 5. A cache purge of the tenant, with the confirmation page.
            prompt = "What is the boiling point of water at sea level?"
            assert wait_until(lambda: client.chat("ops-fast", prompt).headers["x-switchyard-cache"] == "hit-exact")
            assert client.http.get("/cache/stats").json()["entries"] >= 1
            op.open("/admin/tenants/tenant/")
            page.locator(f"input[name=_selected_action][value='{tenant_pk}']").check()
            page.select_option("select[name=action]", "purge_cache")
            page.locator("button[name=index]").click()
            expect(page.locator("#content")).to_contain_text("Initech")
            op.shot("purge-confirmation")
            page.get_by_role("button", name=re.compile(r"^Yes, I.m sure$")).click()
            expect(page.locator(".messagelist .success")).to_contain_text(
                re.compile(r"Purged \d+ cache entries of 1 tenant\(s\)\."))
            assert client.http.get("/cache/stats").json()["entries"] == 0
            assert client.chat("ops-fast", prompt).headers["x-switchyard-cache"] == "miss"

            # 6. Cache settings: the tenant's cache off, so nothing is answered from it.
            page.goto(tenant_url)
            page.locator("#id_cache_enabled").uncheck()
            op.save()
            assert wait_until(lambda: client.chat("ops-fast", prompt).headers["x-switchyard-cache"] == "bypass"), \
                "the cache was never turned off"
            assert client.chat("ops-fast", prompt).headers["x-switchyard-cache"] == "bypass"

            # 7. The dashboard shows the tenant's spend, as the tenant's own usage API does.
            _off_loop(usage_quiet)
            _off_loop(lambda: [usage_rollup() for _ in range(2)])  # beat's work: the first run sets the mark
            op.open(f"/admin/dashboard/?tenant={tenant_pk}&range=today")
            spent = Decimal(client.http.get("/usage").json()["totals"]["cost"])
            assert spent > 0
            shown = spent.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
            expect(page.locator("#sy-spend .sy-value")).to_have_text(f"${shown}")
            drawn = page.evaluate("id => Chart.getChart(id).data.datasets[0].data.reduce((a, b) => a + b, 0)",
                                  "sy-spend-chart")
            assert drawn == pytest.approx(float(spent), abs=1e-6)
            op.shot("dashboard")

            # 8. Revocation, with its confirmation: the key stops authenticating.
            op.open(key_url)
            page.get_by_role("link", name="Revoke this key…").click()
            page.get_by_role("button", name="Yes, revoke it").click()
            expect(page.locator(".messagelist .success")).to_contain_text("Revoked")
            assert wait_until(lambda: client.http.get("/models").status_code == 401), "the key still works"
            refused = client.chat("ops-fast", "Still there?")
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "key_revoked_or_expired"
        finally:
            browser.close()
    usage_quiet()
