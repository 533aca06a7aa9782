"""The local embedder: both backends give the same unit vectors, the int8 graph vectors close to
them (and refuses a graph that strays), paraphrases land near each other, and the micro-batcher
gathers concurrent callers into batches."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from apps.cache import embedder as embedder_module
from apps.cache.embedder import (
    ONNX_FILES,
    QUANTISED_AGREEMENT,
    LocalEmbedder,
    MicroBatcher,
    _length_groups,
    _quantize_dynamic,
    onnx_quantize,
)
from apps.cache.export import REFERENCE_FILE, REFERENCE_TEXTS

TEXTS = ["What is the capital of France?", "Tell me the capital city of France.",
         "How many legs does a spider have?", "Write a haiku about autumn rain in Kyoto."]


LONG = ("The company said its third-quarter revenue rose 12 percent to $4.2 billion, beating analysts' estimates, "
        "while it kept its forecast for the full year unchanged and announced a new share buyback programme.")


@pytest.fixture(scope="module")
def onnx_embedder():
    embedder = LocalEmbedder(backend="onnx")
    embedder.load()
    return embedder


@pytest.fixture(scope="module")
def fp32_embedder():
    embedder = LocalEmbedder(backend="onnx", precision="fp32")
    embedder.load()
    return embedder


def test_it_gives_the_same_vectors_with_onnx_runtime_as_with_sentence_transformers(fp32_embedder):
    # sentence-transformers' own vectors, written by the export (PyTorch is not in the runtime)
    stored = np.load(fp32_embedder.models_dir / REFERENCE_FILE)
    texts, reference = [str(text) for text in stored["texts"]], stored["vectors"]
    assert texts == REFERENCE_TEXTS and reference.shape == (len(texts), 384)
    assert fp32_embedder.backend == "onnx"  # not the fallback
    fast = np.array(fp32_embedder.embed_sync(texts))
    assert fast.shape == (len(texts), 384)
    assert np.allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(fast * reference, axis=1)) > 0.9999


def test_it_puts_a_paraphrase_nearer_than_an_unrelated_prompt(onnx_embedder):
    france, reworded, spider, _ = onnx_embedder.embed_sync(TEXTS)
    assert float(france @ reworded) > 0.8
    assert float(france @ spider) < 0.3


def test_it_gives_a_text_the_same_vector_alone_and_in_a_padded_batch(fp32_embedder):
    alone = fp32_embedder.embed_sync([TEXTS[0]])[0]
    batched = fp32_embedder.embed_sync([TEXTS[3], TEXTS[0]])[1]  # padded to the longer text
    assert float(alone @ batched) > 0.9999


def test_it_refuses_an_unknown_backend():
    with pytest.raises(ValueError, match="CACHE_EMBED_BACKEND"):
        LocalEmbedder(backend="tensorflow")
    with pytest.raises(ValueError, match="CACHE_EMBED_PRECISION"):
        LocalEmbedder(backend="onnx", precision="int4")


def test_it_embeds_with_the_int8_graph_by_default_close_to_the_fp32_vectors(onnx_embedder, fp32_embedder):
    assert (onnx_embedder.backend, onnx_embedder.precision) == ("onnx", "int8")
    texts = [*TEXTS, LONG]
    quantised = np.array(onnx_embedder.embed_sync(texts))
    reference = np.array(fp32_embedder.embed_sync(texts))
    assert quantised.shape == (len(texts), 384)
    assert np.allclose(np.linalg.norm(quantised, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(quantised * reference, axis=1)) >= QUANTISED_AGREEMENT
    assert not np.allclose(quantised, reference, atol=1e-4)  # it is the quantised graph


def test_it_moves_a_text_s_int8_vector_only_slightly_with_its_batch(onnx_embedder):
    # Activations are scaled per run: the others in a batch move a vector, within the agreement.
    alone = onnx_embedder.embed_sync([TEXTS[0]])[0]
    with_others = onnx_embedder.embed_sync([LONG, TEXTS[3], TEXTS[0], TEXTS[1]])[2]
    assert float(alone @ with_others) >= QUANTISED_AGREEMENT


def test_it_keeps_the_callers_order_when_texts_run_by_length(fp32_embedder):
    texts = [LONG, TEXTS[0], TEXTS[3], LONG[:60], TEXTS[2]]
    together = fp32_embedder.embed_sync(texts)
    for text, vector in zip(texts, together, strict=True):
        assert float(vector @ fp32_embedder.embed_sync([text])[0]) > 0.9999


def test_it_groups_texts_by_length_with_little_padding():
    lengths = [40, 8, 9, 41, 10, 120, 8]
    groups = _length_groups(lengths)
    assert sorted(index for group in groups for index in group) == list(range(len(lengths)))
    for group in groups:
        widest = max(lengths[i] for i in group)
        assert widest * len(group) <= 1.25 * sum(lengths[i] for i in group)
    assert len(groups) == 3  # the short ones share a run, the two of about 40 another, 120 alone


def _damaged(source, target):
    """A quantiser that writes a graph whose word embeddings are noise: it still runs."""
    import onnx
    from onnx import numpy_helper

    _quantize_dynamic(source, target)
    model = onnx.load(str(target))
    table = max(model.graph.initializer, key=lambda tensor: int(np.prod(tensor.dims)))
    noise = np.random.default_rng(0).standard_normal(tuple(table.dims)).astype(np.float32) * 0.05
    table.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(table) + noise, table.name))
    onnx.save(model, str(target))


def test_it_refuses_a_quantised_graph_that_strays_from_the_fp32_graph(fp32_embedder, tmp_path):
    source = fp32_embedder.models_dir / ONNX_FILES["fp32"]
    target = tmp_path / ONNX_FILES["int8"]
    with pytest.raises(RuntimeError, match="disagrees with the fp32 graph"):
        onnx_quantize(source, target, quantizer=_damaged)
    assert list(tmp_path.iterdir()) == []  # neither the graph nor its partial file is left


def test_it_falls_back_to_the_fp32_graph_when_the_int8_graph_is_refused(fp32_embedder, tmp_path, monkeypatch):
    (tmp_path / ONNX_FILES["fp32"]).symlink_to(fp32_embedder.models_dir / ONNX_FILES["fp32"])
    monkeypatch.setattr(embedder_module, "_quantize_dynamic", _damaged)
    embedder = LocalEmbedder(backend="onnx", models_dir=tmp_path)
    vectors = embedder.embed_sync(TEXTS)
    assert (embedder.backend, embedder.precision) == ("onnx", "fp32")
    assert not (tmp_path / ONNX_FILES["int8"]).exists()
    assert np.min(np.sum(np.array(vectors) * np.array(fp32_embedder.embed_sync(TEXTS)), axis=1)) > 0.9999


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


def test_it_says_to_run_the_export_when_the_model_files_are_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("SWITCHYARD_VAR_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"make install.*apps\.cache\.export"):
        embedder_module.tokenizer_dir()
    # without PyTorch (the runtime's case) a missing graph is refused the same way, not exported
    monkeypatch.setattr(embedder_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"make install.*apps\.cache\.export"):
        LocalEmbedder(backend="onnx", precision="fp32").embed_sync(["hello"])
    assert list(tmp_path.iterdir()) in ([], [tmp_path / "models"])


def test_it_exports_nothing_when_every_file_is_there(fp32_embedder, capsys):
    from apps.cache import export

    assert export.missing(fp32_embedder.models_dir) == []
    export.main([])
    assert "files are in" in capsys.readouterr().out
