"""The semantic cache inside the gateway, against live servers and the real embedder."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import httpx
import openai
import pytest
from django.utils import timezone

from apps.cache.models import CachePurge
from tests.gateway.conftest import cache_stats as stats
from tests.gateway.conftest import request_logs, wait_until


def sdk(world, key=None, **headers) -> openai.OpenAI:
    return openai.OpenAI(base_url=world.gateway.v1, api_key=key or world.key_a, max_retries=0,
                         default_headers=headers or None)


def ask(world, prompt: str, *, key=None, model="sim-mini", headers=None, **extra):
    raw = sdk(world, key, **(headers or {})).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}], **extra)
    return raw.headers, raw.parse()


def entries(tenant) -> int:
    from apps.cache.models import CacheEntry

    return CacheEntry.objects.filter(tenant=tenant).count()


def test_it_serves_an_identical_request_from_the_cache_at_no_cost(world):
    first_headers, first = ask(world, "What is the boiling point of water?")
    assert first_headers["x-switchyard-cache"] == "miss"
    assert wait_until(lambda: entries(world.tenant_a) == 1)
    headers, again = ask(world, "What is the boiling point of water?")
    assert headers["x-switchyard-cache"] == "hit-exact"
    assert again.choices[0].message.content == first.choices[0].message.content
    assert Decimal(headers["x-switchyard-cost"]) == 0
    assert int(headers["age"]) >= 0
    miss, hit = request_logs(2, tenant=world.tenant_a)
    assert (miss.cache_outcome, hit.cache_outcome) == ("miss", "exact")
    assert hit.cost == 0
    assert hit.saved_cost == miss.cost > 0
    assert world.simulator.stats()["requests"] == 1


def test_it_never_serves_one_tenants_answer_to_another(semantic):
    from apps.cache.models import CacheEntry

    world = semantic
    ask(world, "Explain how a hash map works")
    assert wait_until(lambda: entries(world.tenant_a) == 1)
    # B has nothing cached: neither a paraphrase nor the identical prompt may come from A's entry
    assert ask(world, "explain how a hash map works please", key=world.key_b)[0]["x-switchyard-cache"] == "miss"
    assert wait_until(lambda: entries(world.tenant_b) == 1)
    CacheEntry.objects.filter(tenant=world.tenant_b).delete()
    assert ask(world, "Explain how a hash map works", key=world.key_b)[0]["x-switchyard-cache"] == "miss"
    assert wait_until(lambda: entries(world.tenant_b) == 1)
    CacheEntry.objects.filter(tenant=world.tenant_b).delete()
    body = {"model": "sim-mini", "stream": True,
            "messages": [{"role": "user", "content": "Explain how a hash map works"}]}
    with httpx.stream("POST", world.gateway.v1 + "/chat/completions",
                      headers={"Authorization": f"Bearer {world.key_b}"}, json=body) as response:
        assert response.headers["x-switchyard-cache"] == "miss"
        response.read()
    assert CacheEntry.objects.get(tenant=world.tenant_a).hit_count == 0
    # and A itself does hit its own entry
    assert ask(world, "Explain how a hash map works")[0]["x-switchyard-cache"] == "hit-exact"


def test_it_serves_a_paraphrase_and_refuses_near_misses(semantic):
    world = semantic
    ask(world, "Train times from Paris to Rome tomorrow")
    assert wait_until(lambda: entries(world.tenant_a) == 1)
    headers, _ = ask(world, "Hey, train times from Paris to Rome tomorrow?")
    assert headers["x-switchyard-cache"] == "hit-semantic"
    assert float(headers["x-switchyard-cache-similarity"]) >= 0.8
    for near_miss in ("Train times from Rome to Paris tomorrow", "Train times from Paris to Milan tomorrow",
                      "How do I bake sourdough bread?"):
        headers, _ = ask(world, near_miss)
        assert headers["x-switchyard-cache"] == "miss", near_miss
    (row,) = request_logs(1, tenant=world.tenant_a, cache_outcome="semantic")
    assert row.cache_similarity >= 0.8


def test_it_keys_a_conversation_on_all_its_turns(world):
    def converse(first_turn: str):
        return sdk(world).chat.completions.with_raw_response.create(model="sim-mini", messages=[
            {"role": "user", "content": first_turn}, {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": "And what about the second one?"}]).headers

    converse("Tell me about the first Star Wars film")
    assert wait_until(lambda: entries(world.tenant_a) == 1)
    assert converse("Tell me about the first Star Wars film")["x-switchyard-cache"] == "hit-exact"
    assert converse("Tell me about the first Harry Potter film")["x-switchyard-cache"] == "miss"


def test_it_honours_cache_control(world):
    prompt = "List three prime numbers"
    headers, _ = ask(world, prompt, headers={"Cache-Control": "no-store"})
    assert headers["x-switchyard-cache"] == "bypass"
    assert entries(world.tenant_a) == 0
    headers, _ = ask(world, prompt, headers={"Cache-Control": "no-cache"})
    assert headers["x-switchyard-cache"] == "miss"  # not looked up...
    assert wait_until(lambda: entries(world.tenant_a) == 1)  # ...but stored
    assert ask(world, prompt, headers={"Cache-Control": "no-cache"})[0]["x-switchyard-cache"] == "miss"
    assert ask(world, prompt)[0]["x-switchyard-cache"] == "hit-exact"
    from apps.cache.models import CacheEntry

    older = "List three even numbers"
    ask(world, older)
    assert wait_until(lambda: CacheEntry.objects.filter(prompt_text=older).exists())
    CacheEntry.objects.filter(prompt_text=older).update(created_at=timezone.now() - timedelta(seconds=120))
    assert ask(world, older, headers={"Cache-Control": "max-age=600"})[0]["x-switchyard-cache"] == "hit-exact"
    assert ask(world, older, headers={"Cache-Control": "max-age=60"})[0]["x-switchyard-cache"] == "miss"


def test_it_reads_any_max_age_without_failing_and_logs_every_request(world):
    """A max-age too large for a date is capped (any age will do); one that is no count of
    seconds reads as 0 (nothing cached is fresh enough). Over HTTP, the Messages API and a
    WebSocket, each request is answered and leaves its usage row."""
    import json

    from websockets.asyncio.client import connect

    from apps.usage.models import RequestLog

    prompt = "Name the largest planet"
    body = {"model": "sim-mini", "messages": [{"role": "user", "content": prompt}]}
    ask(world, prompt)
    assert wait_until(lambda: entries(world.tenant_a) == 1)
    huge = "max-age=99999999999999999999999"
    auth = {"Authorization": f"Bearer {world.key_a}"}
    for control, outcome in ((huge, "hit-exact"), ("max-age=" + "9" * 5000, "hit-exact"),
                             ("max-age=\"600\"", "hit-exact"), ("max-age=-5", "miss"), ("max-age=abc", "miss"),
                             ("max-age=\u00b2", "miss"), ("max-age=", "miss")):
        answer = httpx.post(world.gateway.v1 + "/chat/completions", timeout=30,
                            headers={**auth, "Cache-Control": control.encode("latin-1")}, json=body)
        assert answer.status_code == 200, (control[:40], answer.text)
        assert answer.headers["x-switchyard-cache"] == outcome, control[:40]
    message = httpx.post(world.gateway.v1 + "/messages", timeout=30,
                         headers={**auth, "Cache-Control": huge, "anthropic-version": "2023-06-01"},
                         json={"model": "sim-mini", "max_tokens": 64,
                               "messages": [{"role": "user", "content": prompt}]})
    assert message.status_code == 200, message.text

    async def over_a_socket(control: str) -> dict:
        url = world.gateway.base.replace("http://", "ws://") + "/ws/v1/chat"
        async with connect(url, additional_headers=auth) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(json.dumps({"type": "chat.request", "id": "r1", "cache_control": control,
                                      "body": body}))
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if event["type"] in ("done", "error"):
                    return event

    done = asyncio.run(over_a_socket(huge))
    assert (done["type"], done.get("cache")) == ("done", "hit-exact"), done
    done = asyncio.run(over_a_socket("max-age=-1"))
    assert (done["type"], done.get("cache")) == ("done", "miss"), done
    # The first request, seven over HTTP, one on the Messages API and two on the socket.
    assert wait_until(lambda: RequestLog.objects.filter(tenant=world.tenant_a).count() == 11)
    assert set(RequestLog.objects.filter(tenant=world.tenant_a).values_list("status_code", flat=True)) == {200}


def test_it_does_not_cache_by_policy(world):
    assert ask(world, "Roll a die", temperature=0.9)[0]["x-switchyard-cache"] == "bypass"
    assert ask(world, "Roll a die", n=2)[0]["x-switchyard-cache"] == "bypass"
    tools = [{"type": "function", "function": {"name": "roll", "parameters": {"type": "object"}}}]
    assert ask(world, "Roll a die", tools=tools)[0]["x-switchyard-cache"] == "bypass"
    assert ask(world, "Roll a die", temperature=0)[0]["x-switchyard-cache"] == "miss"


def test_it_never_serves_expired_entries(world):
    from apps.cache.models import CacheEntry

    ask(world, "Name a large ocean")
    assert wait_until(lambda: entries(world.tenant_a) == 1)
    CacheEntry.objects.filter(tenant=world.tenant_a).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert ask(world, "Name a large ocean")[0]["x-switchyard-cache"] == "miss"


def test_it_replays_a_cached_stream_as_valid_sse(world):
    client = sdk(world)
    messages = [{"role": "user", "content": "Stream a short story"}]
    live = list(client.chat.completions.create(model="sim-mini", messages=messages, stream=True))
    live_text = "".join(c.choices[0].delta.content or "" for c in live if c.choices)
    assert wait_until(lambda: entries(world.tenant_a) == 1)
    raw = client.chat.completions.with_raw_response.create(model="sim-mini", messages=messages, stream=True,
                                                           stream_options={"include_usage": True})
    assert raw.headers["x-switchyard-cache"] == "hit-exact"
    replayed = list(raw.parse())
    assert len([c for c in replayed if c.choices and c.choices[0].delta.content]) > 2
    assert "".join(c.choices[0].delta.content or "" for c in replayed if c.choices) == live_text
    assert replayed[-1].usage.completion_tokens > 0
    # the stored stream also answers the same request asked without streaming
    assert ask(world, "Stream a short story")[1].choices[0].message.content == live_text


def test_it_does_not_store_a_truncated_stream(world):
    world.simulator.fault(model="sim-mini", mode="cut", count=1)
    with pytest.raises(openai.APIError):
        list(sdk(world).chat.completions.create(model="sim-mini", stream=True,
                                                messages=[{"role": "user", "content": "cut short"}]))
    assert ask(world, "cut short")[0]["x-switchyard-cache"] == "miss"


def test_it_sends_ten_identical_concurrent_requests_upstream_once(world):
    world.simulator.reset()

    async def run():
        client = openai.AsyncOpenAI(base_url=world.gateway.v1, api_key=world.key_a, max_retries=0)
        answers = await asyncio.gather(*[client.chat.completions.with_raw_response.create(
            model="sim-mini", messages=[{"role": "user", "content": "Coalesce me"}]) for _ in range(10)])
        await client.close()
        return answers

    answers = asyncio.run(run())
    assert world.simulator.stats()["by_model"].get("sim-mini") == 1
    contents = {a.parse().choices[0].message.content for a in answers}
    assert len(contents) == 1
    assert sorted(a.headers["x-switchyard-cache"] for a in answers).count("miss") == 1


def test_it_shares_an_answer_whose_save_has_not_committed_yet(world):
    """A request that arrives after the first one answered but before its cache row committed
    finds no row and no request upstream: it must still share the answer, not pay again."""
    import psycopg

    from apps.gateway.database import conninfo

    world.simulator.reset()
    with psycopg.connect(conninfo()) as blocker:
        # Writes to the cache table wait for this transaction; reads go on.
        blocker.execute("LOCK TABLE cache_cacheentry IN EXCLUSIVE MODE")
        first_headers, first = ask(world, "Share me before the save")
        second_headers, second = ask(world, "Share me before the save")
        assert entries(world.tenant_a) == 0  # the first answer's row is still waiting to be written
        blocker.rollback()
    assert (first_headers["x-switchyard-cache"], second_headers["x-switchyard-cache"]) == ("miss", "hit-exact")
    assert second.choices[0].message.content == first.choices[0].message.content
    assert world.simulator.stats()["by_model"].get("sim-mini") == 1
    assert wait_until(lambda: entries(world.tenant_a) == 1)
    third_headers, _ = ask(world, "Share me before the save")
    assert third_headers["x-switchyard-cache"] == "hit-exact"
    assert world.simulator.stats()["by_model"].get("sim-mini") == 1


def test_it_reports_and_clears_only_the_callers_cache(world):
    ask(world, "Stats for tenant A")
    # The answer is saved after the response, off its path: wait for it before asking again.
    assert wait_until(lambda: entries(world.tenant_a) == 1)
    ask(world, "Stats for tenant A")
    ask(world, "Stats for tenant B", key=world.key_b)
    assert wait_until(lambda: entries(world.tenant_a) == 1 and entries(world.tenant_b) == 1)
    assert wait_until(lambda: stats(world, world.key_a)["hits_exact"] == 1)
    mine = stats(world, world.key_a)
    assert (mine["entries"], mine["valid"], mine["misses"], mine["hits"]) == (1, 1, 1, 1)
    assert Decimal(mine["saved_cost"]) > 0
    theirs = stats(world, world.key_b)
    assert (theirs["entries"], theirs["hits"]) == (1, 0)
    cleared = httpx.post(world.gateway.v1 + "/cache/clear", headers={"Authorization": f"Bearer {world.key_a}"})
    assert cleared.json()["deleted"] == 1
    assert entries(world.tenant_a) == 0
    assert entries(world.tenant_b) == 1
    # Recorded for batch workers' waiting entries: tenant A's whole cache, nothing of B's.
    assert list(CachePurge.objects.values_list("tenant_id", "model_name")) == [(world.tenant_a.pk, None)]


def test_it_does_not_cache_an_answer_a_purge_came_during(world):
    """The upstream is still answering when the tenant's cache is cleared: that answer is not saved."""
    world.simulator.fault(model="sim-mini", mode="slow", delay=1.0, count=1)
    with ThreadPoolExecutor(1) as pool:
        asking = pool.submit(ask, world, "What is a monad?")
        assert wait_until(lambda: world.simulator.stats()["in_flight"] == 1)
        cleared = httpx.post(world.gateway.v1 + "/cache/clear", headers={"Authorization": f"Bearer {world.key_a}"})
        assert cleared.status_code == 200
        headers, _ = asking.result(timeout=30)
    assert headers["x-switchyard-cache"] == "miss"
    ask(world, "What is a functor?")  # asked after the purge: saved
    assert wait_until(lambda: entries(world.tenant_a) == 1)
    from apps.cache.models import CacheEntry

    assert list(CacheEntry.objects.filter(tenant=world.tenant_a).values_list("prompt_text", flat=True)) == [
        "What is a functor?"]
    assert ask(world, "What is a monad?")[0]["x-switchyard-cache"] == "miss"


def test_it_shares_an_unsaved_answer_only_within_the_max_age_asked(world):
    """An identical request's answer, not yet saved (its save waits on the tenant's purge lock,
    held here as by a purge in progress), answers the same prompt, but not one asking max-age=0."""
    import psycopg

    from apps.cache import purges
    from apps.gateway.database import conninfo

    prompt = "Name the smallest planet"
    with psycopg.connect(conninfo()) as purge:
        purge.execute(purges.LOCK, [purges.LOCK_CLASS, purges.lock_key(world.tenant_a.pk)])
        assert ask(world, prompt)[0]["x-switchyard-cache"] == "miss"
        assert ask(world, prompt)[0]["x-switchyard-cache"] == "hit-exact"
        assert ask(world, prompt, headers={"Cache-Control": "max-age=0"})[0]["x-switchyard-cache"] == "miss"
        assert entries(world.tenant_a) == 0
        purge.rollback()
    assert wait_until(lambda: entries(world.tenant_a) == 1)
    assert world.simulator.stats()["requests"] == 2


def test_it_answers_the_simple_complete_endpoint_from_the_cache(world):
    def complete(**extra):
        return httpx.post(world.gateway.base + "/v1/complete", headers={"Authorization": f"Bearer {world.key_a}"},
                          json={"prompt": "What is a closure?", "model": "sim-mini", **extra}, timeout=30).json()

    first = complete()
    assert first["cached"] is False
    assert wait_until(lambda: entries(world.tenant_a) == 1)
    again = complete()
    assert again["cached"] is True
    assert again["content"] == first["content"]
    assert Decimal(again["cost"]) == 0
    assert complete(use_cache=False)["cached"] is False
    other = httpx.post(world.gateway.base + "/v1/complete", headers={"Authorization": f"Bearer {world.key_b}"},
                       json={"prompt": "What is a closure?", "model": "sim-mini"}, timeout=30).json()
    assert other["cached"] is False


def test_it_embeds_with_the_tenants_own_embeddings_model(world):
    from apps.cache.models import CacheEntry

    world.tenant_a.cache_embedding_model = world.models["sim-embed"]
    world.tenant_a.save()
    assert wait_until(lambda: stats(world, world.key_a).get("semantic_ready"))
    world.simulator.reset()
    ask(world, "Embed me with the tenant's model")
    assert wait_until(lambda: CacheEntry.objects.filter(tenant=world.tenant_a, embedding__isnull=False).exists())
    assert world.simulator.stats()["by_model"].get("sim-embed", 0) >= 1
    # another tenant still embeds locally
    ask(world, "Embed me locally", key=world.key_b)
    assert wait_until(lambda: entries(world.tenant_b) == 1)
    assert world.simulator.stats()["by_model"].get("sim-embed", 0) == 1


def test_each_tenant_gets_the_verifier_precision_it_chose(world):
    """A rewording the verifier serves at a 0.90 precision target but not at 0.99: one tenant at
    each target, each with the same prompt cached, sees its own choice applied."""
    from apps.cache.verify import candidate_verify

    base = "Train times from Paris to Rome tomorrow"
    rewordings = ["Hey, train times from Paris to Rome tomorrow?",
                  "What are the train times from Paris to Rome tomorrow?",
                  "Show me tomorrow's train times from Paris to Rome",
                  "When do trains leave Paris for Rome tomorrow?"]
    between = [q for q in rewordings
               if candidate_verify(q, base, precision=0.90).ok and not candidate_verify(q, base, precision=0.99).ok]
    assert between, "no rewording lies between the two operating points: pick others"
    world.tenant_a.cache_verify_precision = 0.99
    world.tenant_a.save()
    world.tenant_b.cache_verify_precision = 0.90
    world.tenant_b.save()
    assert wait_until(lambda: stats(world, world.key_a).get("semantic_ready"), timeout=120, interval=0.5)
    for key, tenant in ((world.key_a, world.tenant_a), (world.key_b, world.tenant_b)):
        ask(world, base, key=key)
        assert wait_until(lambda tenant=tenant: entries(tenant) == 1)
    assert ask(world, between[0], key=world.key_a)[0]["x-switchyard-cache"] == "miss"
    headers, _ = ask(world, between[0], key=world.key_b)
    assert headers["x-switchyard-cache"] == "hit-semantic"


def test_a_tenant_can_keep_exact_hits_and_turn_semantic_hits_off(semantic):
    """Semantic hits off: the same prompt cached for both tenants, a rewording hits for the tenant
    that keeps them and misses for the one that turned them off, whose exact repeats still hit and
    whose entry is saved without an embedding."""
    from apps.cache.models import CacheEntry

    world = semantic
    world.tenant_a.cache_semantic = False
    world.tenant_a.save()
    base, reworded = "Train times from Paris to Rome tomorrow", "Hey, train times from Paris to Rome tomorrow?"
    for key, tenant in ((world.key_a, world.tenant_a), (world.key_b, world.tenant_b)):
        ask(world, base, key=key)
        assert wait_until(lambda tenant=tenant: entries(tenant) == 1)
    assert wait_until(lambda: CacheEntry.objects.filter(tenant=world.tenant_b, embedding__isnull=False).exists())
    assert ask(world, reworded, key=world.key_b)[0]["x-switchyard-cache"] == "hit-semantic"
    assert ask(world, reworded, key=world.key_a)[0]["x-switchyard-cache"] == "miss"
    assert ask(world, base, key=world.key_a)[0]["x-switchyard-cache"] == "hit-exact"
    assert CacheEntry.objects.filter(tenant=world.tenant_a, embedding__isnull=False).count() == 0
