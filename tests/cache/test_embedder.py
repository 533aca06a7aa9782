"""The local embedder: both backends give the same unit vectors, paraphrases land near each
other, and the micro-batcher gathers concurrent callers into batches."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from apps.cache.embedder import LocalEmbedder, MicroBatcher

TEXTS = ["What is the capital of France?", "Tell me the capital city of France.",
         "How many legs does a spider have?", "Write a haiku about autumn rain in Kyoto."]


@pytest.fixture(scope="module")
def onnx_embedder():
    embedder = LocalEmbedder(backend="onnx")
    embedder.load()
    return embedder


def test_it_gives_the_same_vectors_with_onnx_runtime_as_with_sentence_transformers(onnx_embedder):
    assert onnx_embedder.backend == "onnx"  # not the fallback
    fast = np.array(onnx_embedder.embed_sync(TEXTS))
    reference = np.array(LocalEmbedder(backend="torch").embed_sync(TEXTS))
    assert fast.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(fast * reference, axis=1)) > 0.9999


def test_it_puts_a_paraphrase_nearer_than_an_unrelated_prompt(onnx_embedder):
    france, reworded, spider, _ = onnx_embedder.embed_sync(TEXTS)
    assert float(france @ reworded) > 0.8
    assert float(france @ spider) < 0.3


def test_it_gives_a_text_the_same_vector_alone_and_in_a_padded_batch(onnx_embedder):
    alone = onnx_embedder.embed_sync([TEXTS[0]])[0]
    batched = onnx_embedder.embed_sync([TEXTS[3], TEXTS[0]])[1]  # padded to the longer text
    assert float(alone @ batched) > 0.9999


def test_it_refuses_an_unknown_backend():
    with pytest.raises(ValueError, match="CACHE_EMBED_BACKEND"):
        LocalEmbedder(backend="tensorflow")


def test_it_batches_concurrent_callers(onnx_embedder):
    async def run():
        batcher = MicroBatcher(onnx_embedder, max_batch=64, max_wait_ms=20)
        vectors = await asyncio.gather(*(batcher.embed_one(text) for text in TEXTS * 8))
        return batcher.batch_sizes, vectors

    sizes, vectors = asyncio.run(run())
    assert sum(sizes) == 32 and len(sizes) < 32
    alone = onnx_embedder.embed_sync(TEXTS)
    for index, vector in enumerate(vectors):
        assert float(vector @ alone[index % 4]) > 0.9999


def test_it_sends_a_lone_prompt_at_once_and_batches_what_arrives_while_the_model_runs(onnx_embedder):
    async def run():
        batcher = MicroBatcher(onnx_embedder, max_batch=64)
        lone = await batcher.embed_one(TEXTS[0])
        first = asyncio.ensure_future(batcher.embed_one(TEXTS[1]))
        await asyncio.sleep(0)  # the first goes alone, to an idle model
        rest = [asyncio.ensure_future(batcher.embed_one(text)) for text in TEXTS * 5]
        await asyncio.gather(first, *rest)
        return lone, batcher.batch_sizes

    lone, sizes = asyncio.run(run())
    assert float(lone @ onnx_embedder.embed_sync([TEXTS[0]])[0]) > 0.9999
    # One alone, one alone again (the model was idle), then the twenty that queued behind it.
    assert sizes == [1, 1, 20]
