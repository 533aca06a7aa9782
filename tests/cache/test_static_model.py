"""The static embedding model (``CACHE_EMBED_MODEL=static``): a token table distilled from
all-MiniLM-L6-v2 that gives unit vectors a paraphrase lands near, the same for a text alone or in
a batch; cache entries that record their model, so that a lookup never compares vectors of two
models; and the learned router keeping the transformer while the cache uses the table."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import numpy as np
import pytest

from apps.cache.embedder import INLINE_CHARS, NAMES, LocalEmbedder, MicroBatcher
from apps.cache.models import LOCAL_MODEL, CacheEntry
from apps.cache.store import CacheStore
from apps.gateway import runtime as runtime_module
from apps.gateway.database import conninfo
from tests.batch_executor import with_batch_executor

TEXTS = ["What is the capital of France?", "Tell me the capital city of France.",
         "How many legs does a spider have?", "Write a haiku about autumn rain in Kyoto."]


@pytest.fixture(scope="module")
def static_embedder():
    embedder = LocalEmbedder(model="static")
    embedder.load()
    return embedder


def test_it_gives_unit_vectors_of_the_cache_s_dimensions(static_embedder):
    vectors = np.array(static_embedder.embed_sync(TEXTS))
    assert vectors.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_it_puts_a_paraphrase_nearer_than_an_unrelated_prompt(static_embedder):
    france, reworded, spider, haiku = static_embedder.embed_sync(TEXTS)
    assert float(france @ reworded) > 0.8
    assert float(france @ reworded) > float(france @ spider) + 0.4
    assert float(france @ reworded) > float(france @ haiku) + 0.4


def test_it_gives_a_text_the_same_vector_alone_and_in_a_batch(static_embedder):
    alone = static_embedder.embed_sync([TEXTS[0]])[0]
    batched = static_embedder.embed_sync([TEXTS[2], TEXTS[0], TEXTS[3]])[1]
    assert np.array_equal(alone, batched)


def test_it_embeds_a_short_text_at_once_as_the_embedding_thread_would(static_embedder):
    batcher = MicroBatcher(static_embedder)

    async def embed(texts):
        return [await batcher.embed_one(text) for text in texts]

    for text, vector in zip(TEXTS, asyncio.run(embed(TEXTS)), strict=True):
        assert np.array_equal(vector, static_embedder.embed_sync([text])[0])
    assert batcher.batch_sizes == []  # no batch ran: no hand-off to the embedding thread
    # A long text goes through the embedding thread, and the transformer always does.
    long_text = "word " * (INLINE_CHARS // 5 + 1)
    assert np.array_equal(asyncio.run(embed([long_text]))[0], static_embedder.embed_sync([long_text])[0])
    assert batcher.batch_sizes == [1]
    assert LocalEmbedder(model="minilm").embed_inline(TEXTS[0]) is None


def test_it_gives_a_text_without_a_known_token_a_unit_vector(static_embedder):
    empty, unknown = static_embedder.embed_sync(["", "\u2603\u2603"])
    assert np.isclose(np.linalg.norm(empty), 1.0) and np.isclose(np.linalg.norm(unknown), 1.0)


def test_it_names_its_vectors_apart_from_the_transformer_s(static_embedder):
    assert static_embedder.name == NAMES["static"] != LocalEmbedder().name == NAMES["minilm"] == LOCAL_MODEL


def test_it_refuses_an_unknown_model():
    with pytest.raises(ValueError, match="minilm, static"):
        LocalEmbedder(model="minilm-l3")


@pytest.mark.django_db(transaction=True)
def test_it_compares_a_prompt_only_with_entries_of_its_own_model(tenant_a, static_embedder):
    vector = static_embedder.embed_sync([TEXTS[0]])[0]

    async def run():
        store = CacheStore(conninfo(), max_size=2)
        await store.open()
        try:
            for request_hash, model in (("a" * 64, NAMES["static"]), ("b" * 64, NAMES["minilm"])):
                await store.save(tenant_id=tenant_a.pk, namespace="", request_hash=request_hash, context_hash="",
                                 prompt_text=f"{model} {TEXTS[0]}", vector=vector, embedding_model=model,
                                 response={}, model_id=None, model_name="", input_tokens=0, output_tokens=0,
                                 cost=Decimal(0), ttl_seconds=60)
            return {model: [answer.prompt_text for answer in await store.nearest(
                tenant_id=tenant_a.pk, namespace="", context_hash="", vector=vector, embedding_model=model,
                max_age=None)] for model in (NAMES["static"], NAMES["minilm"], "remote:some-model")}
        finally:
            await store.close()

    found = asyncio.run(run())
    assert found == {NAMES["static"]: [f"{NAMES['static']} {TEXTS[0]}"],
                     NAMES["minilm"]: [f"{NAMES['minilm']} {TEXTS[0]}"], "remote:some-model": []}
    assert set(CacheEntry.objects.values_list("embedding_model", flat=True)) == {NAMES["static"], NAMES["minilm"]}


@pytest.mark.django_db(transaction=True)
def test_it_gives_the_cache_the_static_model_and_the_learned_router_the_transformer(settings, monkeypatch, key_a):
    settings.CACHE_EMBED_MODEL = "static"
    settings.CACHE_LOCAL_EMBEDDER = False  # which model serves whom is checked, not their load
    monkeypatch.setattr(runtime_module, "_LOCAL_EMBEDDERS", {})

    async def models(executor):
        runtime = executor.runtime
        key = await runtime.authenticate(f"Bearer {key_a.secret}")
        return (runtime.batcher_for(key, cache=True).embedder.name, runtime.batcher_for(key).embedder.name,
                runtime.semantic_possible(key, cache=True))

    assert with_batch_executor(models) == (NAMES["static"], NAMES["minilm"], False)
