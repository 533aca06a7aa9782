"""The playground in a real headless Chromium (Playwright driving the system browser) against a
live Switchyard: a prompt streams in over the WebSocket, and sending it again shows a cache hit.
A screenshot lands in tests/artifacts/ (ignored by git)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.gateway.conftest import REPO, http_json, wait_until
from tests.gateway.test_eventsource import key_id, session_cookie

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "tests" / "artifacts"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no system Chromium at {CHROMIUM} (apt-get install chromium)")


def test_it_streams_a_prompt_and_shows_the_cache_hit_on_resend(world):
    from playwright.sync_api import expect, sync_playwright

    from apps.cache.models import CacheEntry

    prompt = "Tell me about lighthouses"
    status, expected = http_json("POST", world.gateway.v1 + "/chat/completions",
                                 {"model": "sim-mini", "messages": [{"role": "user", "content": prompt}]},
                                 headers={"Authorization": f"Bearer {world.key_a}", "Cache-Control": "no-store"})
    assert status == 200
    expected_text = expected["choices"][0]["message"]["content"]
    cookie = session_cookie()
    key_a = key_id(world.tenant_a)

    def cache_saved() -> bool:
        # Playwright's sync API runs an event loop in this thread, so the ORM runs in another.
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(lambda: wait_until(
                lambda: CacheEntry.objects.filter(tenant=world.tenant_a).exists())).result()

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--no-sandbox", "--disable-background-networking"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.add_cookies([{"name": "sessionid", "value": cookie, "url": world.gateway.base}])
            page = context.new_page()
            elsewhere: list[str] = []
            page.on("request", lambda request: None if request.url.startswith(
                (world.gateway.base, world.gateway.base.replace("http", "ws"))) else elsewhere.append(request.url))
            page.goto(world.gateway.base + "/playground/")
            page.select_option("#key", str(key_a))
            page.select_option("#model", "sim-mini")
            page.fill("#prompt", prompt)
            page.click("#send")
            expect(page.locator("#stat-cache")).to_have_text("miss", timeout=15_000)
            assert page.locator("#answer").inner_text() == expected_text
            assert page.locator("#sentence-list li").count() >= 2
            assert page.locator("#stat-model").inner_text() == "sim-mini"
            assert float(page.locator("#stat-cost").inner_text()) > 0
            assert "ms" in page.locator("#stat-ttft").inner_text()

            assert cache_saved()
            page.click("#resend")
            expect(page.locator("#stat-cache")).to_have_text("hit-exact", timeout=15_000)
            assert page.locator("#answer").inner_text() == expected_text
            assert page.locator("#stat-cost").inner_text().startswith("0 (saved ")
            page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)

            page.select_option("#transport", "eventsource")
            page.fill("#prompt", "Explain how tides work")
            page.click("#send")
            expect(page.locator("#stat-cache")).to_have_text("miss", timeout=15_000)
            assert page.locator("#answer").inner_text()
            assert elsewhere == []  # nothing loads from anywhere but the gateway
        finally:
            browser.close()
    assert (ARTIFACTS / "playground.png").stat().st_size > 10_000
