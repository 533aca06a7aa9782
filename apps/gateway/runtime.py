"""Per-process gateway runtime: the config snapshot, the key cache, upstream sessions and the
usage buffer, started by the ASGI lifespan (or lazily by the first request) and closed on
shutdown."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import hashlib
import hmac
import logging
import os
import signal
import socket
import time
from datetime import UTC, datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import close_old_connections

from apps.cache.embedder import LocalEmbedder, MicroBatcher, RemoteEmbedder
from apps.cache.store import CacheStore
from apps.catalog.services import circuit_report, circuits_forget
from apps.core import metrics, tokens
from apps.core.errors import AuthenticationFailed
from apps.gateway.config_changes import config_changes_listen
from apps.gateway.database import conninfo
from apps.gateway.learned_routers import LearnedRouters
from apps.gateway.snapshot import KeyInfo, Snapshot, key_info_load, snapshot_load
from apps.gateway.tracing import Tracing, tracing_open
from apps.limits.enforce import limiter_open
from apps.providers.breaker import OPEN, Breakers
from apps.providers.pool_sync import PoolSync
from apps.providers.pools import Pools
from apps.providers.transport import HttpTransport, Transport
from apps.tenants.selectors import bearer_key
from apps.tenants.services import KEY_PREFIX, key_prefix
from apps.usage.buffer import UsageBuffer

logger = logging.getLogger(__name__)

_MISSING = object()
_NEGATIVE_CACHE_LIMIT = 10_000


class Runtime:
    def __init__(self, *, embed_threads: int | None = None, cache_index_later: bool = False) -> None:
        """``cache_index_later``: saved cache entries are written when the runtime stops (a batch
        worker's runtime: ``CacheStore``'s ``index_later``)."""
        self.embed_threads = embed_threads or settings.CACHE_EMBED_THREADS
        self.cache_index_later = cache_index_later
        self.snapshot: Snapshot | None = None
        self.keys: dict[str, KeyInfo | None] = {}
        self.tenant_slugs: dict[int, str] = {}  # for metric labels; survives key-cache reloads
        self.generation = 0
        self.transport: Transport = HttpTransport()
        self.breakers = Breakers(threshold=settings.CIRCUIT_FAILURES, cooldown=settings.CIRCUIT_COOLDOWN,
                                 on_change=self._circuit_changed)
        self.process_name = f"{socket.gethostname()}:{os.getpid()}"
        self.pools = Pools(cooldown=settings.POOL_COOLDOWN)
        self.transport.pools = self.pools
        self.pool_sync: PoolSync | None = None  # with Redis: the pools shared by every process
        self._circuit_lock: asyncio.Lock | None = None
        self.draining = False  # SIGTERM received: requests cut from here on are the server's doing
        self.socket_runs = 0  # requests in flight on WebSockets
        self.usage = UsageBuffer(interval=settings.USAGE_FLUSH_INTERVAL, max_rows=settings.USAGE_FLUSH_ROWS)
        self.usage.observer = self._rows_observe
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._tasks: list[asyncio.Task] = []
        self._reload_lock: asyncio.Lock | None = None
        self._key_loads: dict[str, asyncio.Future] = {}
        self._reload_watchers: set = set()  # callbacks of open WebSockets, run after each reload
        self.cache = None  # CacheStore, opened at start
        self.routers = LearnedRouters()  # tenants' learned routers, read through the cache store's pool
        self.limiter = None  # apps.limits.enforce.Limiter, opened at start
        self.batcher = None  # MicroBatcher over the local embedder (all-MiniLM-L6-v2)
        self.cache_batcher = None  # the cache's local embedder (CACHE_EMBED_MODEL): the same unless "static"
        self.inflight: dict[tuple, asyncio.Future] = {}
        self.tracing: Tracing | None = None  # on when an OTLP endpoint is set (apps.gateway.tracing)
        self._background: set[asyncio.Task] = set()
        self._embedder_task: asyncio.Future | None = None
        self._cache_embedder_task: asyncio.Future | None = None
        self._remote_batchers: dict = {}
        # Config reads run here: two long-lived threads, so their database connections are
        # reused instead of opened per load.
        self._db_executor = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="gateway-db")

    async def start(self) -> None:
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            self._reload_lock = asyncio.Lock()
            loop = asyncio.get_running_loop()
            self.tracing = tracing_open()
            # The tokenizer takes about a second to import; never let a request pay that on the loop.
            await loop.run_in_executor(self._db_executor, tokens.warm_up)
            await self.reload()
            self.usage.start()
            database = await loop.run_in_executor(self._db_executor, conninfo)
            self.limiter = limiter_open(redis_url=settings.REDIS_URL, conninfo=database,
                                        lease_seconds=settings.LIMITS_LEASE_SECONDS)
            self.cache = CacheStore(database, index_later=self.cache_index_later)
            await self.cache.open()
            self.routers.pool = self.cache.pool
            embedder = _local_embedder("minilm", lambda: LocalEmbedder(
                backend=settings.CACHE_EMBED_BACKEND, threads=self.embed_threads,
                precision=settings.CACHE_EMBED_PRECISION, models_dir=settings.VAR_DIR / "models"))
            self.batcher = MicroBatcher(embedder, max_batch=settings.CACHE_EMBED_BATCH,
                                        max_wait_ms=settings.CACHE_EMBED_WAIT_MS)
            self.cache_batcher = self.batcher
            # The model takes seconds to load: requests never wait for it (semantic lookups start
            # once it is there; exact lookups work from the first request).
            if settings.CACHE_LOCAL_EMBEDDER:
                self._embedder_task = self._embedder_load(embedder)
            self._cache_embedder_task = self._embedder_task
            if settings.CACHE_EMBED_MODEL != "minilm":
                cache_embedder = _local_embedder(settings.CACHE_EMBED_MODEL, lambda: LocalEmbedder(
                    model=settings.CACHE_EMBED_MODEL, threads=self.embed_threads,
                    models_dir=settings.VAR_DIR / "models"))
                self.cache_batcher = MicroBatcher(cache_embedder, max_batch=settings.CACHE_EMBED_BATCH,
                                                  max_wait_ms=settings.CACHE_EMBED_WAIT_MS)
                if settings.CACHE_LOCAL_EMBEDDER:
                    self._cache_embedder_task = self._embedder_load(cache_embedder)
            self._tasks.append(loop.create_task(config_changes_listen(self.reload), name="config-listener"))
            self._tasks.append(loop.create_task(self._refresh_periodically(), name="config-refresh"))
            if settings.REDIS_URL:
                self.pool_sync = PoolSync(self.pools, redis_url=settings.REDIS_URL, process=self.process_name,
                                          interval=settings.POOL_SYNC_INTERVAL, deployments=self._deployments)
                self._tasks.append(loop.create_task(self.pool_sync.run(), name="pool-sync"))
            self.cache.hits_flush_start(1.0)
            _heap_settle(settings.GC_YOUNG_THRESHOLD)
            self._started = True

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: a listener stuck closing its connection must not hold up the shutdown.
            await asyncio.wait(self._tasks, timeout=2)
        self._tasks.clear()
        if self._background:
            await asyncio.wait(self._background, timeout=10)
        await self.usage.close()
        await self.transport.close()
        if self.tracing is not None:
            # Spans still waiting in the batch go out before the process ends.
            tracing, self.tracing = self.tracing, None
            await asyncio.get_running_loop().run_in_executor(self._db_executor, tracing.shutdown)
        if self.breakers.reported:
            await asyncio.get_running_loop().run_in_executor(
                self._db_executor, partial(circuits_forget, process=self.process_name))
        if self.cache is not None:
            await self.cache.close()
        if self.limiter is not None:
            await self.limiter.close()
        if self.pool_sync is not None:
            await self.pool_sync.close()
        self._started = False

    def drain_on_sigterm(self) -> None:
        """On SIGTERM, let WebSocket requests finish before the server's own handler runs.

        The server (uvicorn) stops accepting and waits for HTTP requests, but closes WebSockets
        at once (1012). So the first SIGTERM is noted here: sockets take no new request (an error
        event says to reconnect) and, once those in flight have finished or
        ``WEBSOCKET_DRAIN_SECONDS`` have passed, the server's handler takes over. A second SIGTERM
        goes straight to it. Requests cut short after SIGTERM are logged as the server's doing.
        """
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return
        loop = asyncio.get_running_loop()

        def on_sigterm(signum, frame) -> None:
            if self.draining:
                previous(signum, frame)
                return
            self.draining = True
            loop.call_soon_threadsafe(lambda: self.spawn(self._sockets_drain(previous, signum, frame)))

        try:
            signal.signal(signal.SIGTERM, on_sigterm)
        except ValueError:
            pass  # not the main thread (an embedded server): the server's handler alone

    async def _sockets_drain(self, then, signum, frame) -> None:
        deadline = time.monotonic() + settings.WEBSOCKET_DRAIN_SECONDS
        # Polled: runs start and end in many consumers, and this runs once per process lifetime.
        while self.socket_runs > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        then(signum, frame)

    def _deployments(self) -> list:
        """Every deployment of the snapshot's pooled models (what the pools share)."""
        snapshot = self.snapshot
        if snapshot is None:
            return []
        return [d for m in snapshot.models.values() for d in m.deployments]

    def _circuit_changed(self, model, circuit) -> None:
        """Report a breaker's transition to the database, off the request path and in order.

        A deployment's circuit that opens also cools the deployment down until its probe is due:
        the pools share cooldowns with every process at once (through Redis), so the other
        replicas stop sending to it without each finding the outage for itself."""
        retry_at = None
        if circuit.state == OPEN:
            wait = max(circuit.retry_at - time.monotonic(), 0.0)
            retry_at = datetime.now(UTC) + timedelta(seconds=wait)
            if getattr(model, "deployment_id", None) is not None and wait > 0:
                self.pools.cool(model, wait)
        report = partial(circuit_report, provider_id=model.provider.id, model_id=model.id,
                         deployment_id=getattr(model, "deployment_id", None), process=self.process_name,
                         state=circuit.state, consecutive_failures=circuit.failures,
                         last_failure=circuit.last_failure, retry_at=retry_at, changed_at=datetime.now(UTC))
        logger.warning("circuit for model %s of provider %s is now %s (%s)", model.name, model.provider.name,
                       circuit.state, circuit.last_failure)
        self.spawn(self._circuit_write(report))

    async def _circuit_write(self, report) -> None:
        if self._circuit_lock is None:
            self._circuit_lock = asyncio.Lock()
        async with self._circuit_lock:  # FIFO: the last transition is the one left in the table
            await asyncio.get_running_loop().run_in_executor(self._db_executor, report)

    def spawn(self, coroutine) -> asyncio.Future:
        """Run work off the response path; shutdown waits for it."""
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task failed", exc_info=task.exception())

    def _embedder_load(self, embedder: LocalEmbedder) -> asyncio.Future:
        task = asyncio.get_running_loop().run_in_executor(embedder._executor, embedder.load)
        # What the model's load leaves behind lives as long as the process, like the rest.
        task.add_done_callback(lambda _task: gc.freeze())
        return task

    def batcher_for(self, key, *, cache: bool = False):
        """The tenant's embeddings model when it chose one (and it is active), else the local
        model: for the cache's lookups (``cache``) the one ``CACHE_EMBED_MODEL`` names, for the
        learned router all-MiniLM-L6-v2 (its outcomes were embedded by it)."""
        name = key.cache_embedding_model
        model = self.snapshot.models.get(name) if name else None
        if model is None or model.mode != "embedding":
            return self.cache_batcher if cache else self.batcher
        batcher = self._remote_batchers.get(model)
        if batcher is None:
            batcher = self._remote_batchers[model] = MicroBatcher(RemoteEmbedder(model, self.transport), max_batch=64,
                                                                  max_inflight=4,
                                                                  max_wait_ms=settings.CACHE_EMBED_WAIT_MS)
        return batcher

    def semantic_ready(self, key, *, cache: bool = False) -> bool:
        batcher = self.batcher_for(key, cache=cache)
        if batcher is self.batcher or batcher is self.cache_batcher:
            return self.embedder_ready(cache=cache)
        return True

    def semantic_possible(self, key, *, cache: bool = False) -> bool:
        """Can this key's prompts ever be embedded here: its tenant's own embeddings model, or the
        local model unless ``CACHE_LOCAL_EMBEDDER`` is off (then the cache is exact-only)."""
        batcher = self.batcher_for(key, cache=cache)
        return (batcher is not self.batcher and batcher is not self.cache_batcher) or settings.CACHE_LOCAL_EMBEDDER

    def embedder_ready(self, *, cache: bool = False) -> bool:
        task = self._cache_embedder_task if cache else self._embedder_task
        return task is not None and task.done() and not task.exception()

    async def embedder_loaded(self, *, cache: bool = False) -> None:
        task = self._cache_embedder_task if cache else self._embedder_task
        if task is not None:
            await asyncio.shield(task)

    async def reload(self) -> None:
        """Reload the snapshot and forget cached keys (after a change anywhere)."""
        assert self._reload_lock is not None
        async with self._reload_lock:
            generation = self.generation + 1
            snapshot = await asyncio.get_running_loop().run_in_executor(self._db_executor, _snapshot_load_fresh)
            self.snapshot = snapshot
            self.keys = {}
            self._remote_batchers = {}
            self.generation = generation
        for callback in list(self._reload_watchers):
            try:
                callback()
            except Exception:
                logger.exception("a reload watcher failed")

    async def _refresh_periodically(self) -> None:
        # A safety net for a lost invalidation message; the message is the fast path.
        while True:
            await asyncio.sleep(settings.GATEWAY_CONFIG_REFRESH)
            try:
                await self.reload()
            except Exception:
                logger.exception("timed config refresh failed")

    def _rows_observe(self, rows: list[dict]) -> None:
        # A row being observed is flushed again if a write fails: counted once here regardless.
        tenants = self.tenant_slugs
        models = self.snapshot.models if self.snapshot is not None else {}
        metrics.rows_observe(rows, tenants, {name: model.provider.name for name, model in models.items()})

    async def authenticate(self, authorization: str | None) -> KeyInfo:
        """The key behind an ``Authorization: Bearer`` header, from memory when warm."""
        raw = bearer_key(authorization)
        if not raw.startswith(KEY_PREFIX) or len(raw) > 200:
            raise AuthenticationFailed()
        return await self._key_usable(key_prefix(raw), key_hash=hashlib.sha256(raw.encode()).hexdigest())

    async def key_for_prefix(self, prefix: str) -> KeyInfo:
        """A key by its visible prefix, for a caller authorised another way (a staff user of the
        playground picks a key instead of pasting its secret); unusable keys still fail."""
        return await self._key_usable(prefix, key_hash=None, missing="No such API key.")

    async def key_current(self, key: KeyInfo) -> KeyInfo:
        """``key`` as it stands now, for a connection that authenticated earlier (a WebSocket
        judges each request by it): its limits as they are now, or :class:`AuthenticationFailed`
        once it is revoked, expired, deleted or its tenant deactivated."""
        return await self._key_usable(key.prefix, key_hash=key.key_hash, missing="This API key no longer exists.")

    async def _key_usable(self, prefix: str, *, key_hash: str | None, missing: str | None = None) -> KeyInfo:
        """The one check every door makes: the key (by prefix, and by hash unless the caller was
        authorised another way) exists and is usable now."""
        info = self.keys.get(prefix, _MISSING)
        if info is _MISSING:
            info = await self._key_load(prefix)
        if info is None or (key_hash is not None and not hmac.compare_digest(info.key_hash, key_hash)):
            raise AuthenticationFailed(missing)
        if not info.is_usable(time.time()):
            raise AuthenticationFailed("This API key is revoked or expired, or its tenant is inactive.",
                                       code="key_revoked_or_expired")
        self.usage.keys_used.seen(info.id)  # written by the usage flush, at most once a minute
        return info

    def reload_watch(self, callback) -> None:
        """Call ``callback()`` after each reload (a config change anywhere, or the timed refresh):
        long-lived connections check their key again then."""
        self._reload_watchers.add(callback)

    def reload_unwatch(self, callback) -> None:
        self._reload_watchers.discard(callback)

    async def _key_load(self, prefix: str) -> KeyInfo | None:
        """Load a key once however many requests wait for it (a cold start sees a stampede)."""
        pending = self._key_loads.get(prefix)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._db_executor, _key_load_fresh, prefix)
        self._key_loads[prefix] = future
        generation = self.generation
        try:
            info = await asyncio.shield(future)
        finally:
            self._key_loads.pop(prefix, None)
        if generation == self.generation:  # not invalidated while loading
            if info is None and len(self.keys) > _NEGATIVE_CACHE_LIMIT:
                self.keys = {}
            self.keys[prefix] = info
        if info is not None:
            self.tenant_slugs[info.tenant_id] = info.tenant_slug
        return info


_HEAP_SETTLED = False


def _heap_settle(young_threshold: int) -> None:
    """Keep the garbage collector from pausing the event loop, once per process.

    A full (generation 2) collection walks every tracked object: with Django, the catalog and
    the tokenizer loaded that is some 120,000 objects and 50-170 ms of CPU with the loop
    stopped, and under load one ran about every second (objects of requests in flight
    outlive two young collections and are promoted), which was most of the p99 at
    concurrency 100. What start-up built is never garbage: frozen (``gc.freeze``), full
    collections skip it and take 1-2 ms. A higher young threshold makes young collections
    rare, so fewer short-lived objects are promoted at all; the hot path makes almost no
    cycles (71,000 requests in 30 s left 165 objects for the collector), so memory does not grow.
    """
    global _HEAP_SETTLED
    if _HEAP_SETTLED:
        return
    _HEAP_SETTLED = True
    gc.set_threshold(young_threshold, *gc.get_threshold()[1:])
    gc.collect()
    gc.freeze()


_LOCAL_EMBEDDERS: dict[str, LocalEmbedder] = {}


def _local_embedder(model: str, factory) -> LocalEmbedder:
    """One local model of each kind per process, kept across restarts of the runtime (the
    transformer takes seconds to load)."""
    if model not in _LOCAL_EMBEDDERS:
        _LOCAL_EMBEDDERS[model] = factory()
    return _LOCAL_EMBEDDERS[model]


def _snapshot_load_fresh() -> Snapshot:
    close_old_connections()
    return snapshot_load()


def _key_load_fresh(prefix: str) -> KeyInfo | None:
    close_old_connections()
    return key_info_load(prefix)


runtime = Runtime()


def draining_probe() -> dict | None:
    """``/readyz``'s check of this process: failing once SIGTERM arrived, so a balancer stops
    sending here while the requests in flight finish."""
    if runtime.draining:
        return {"ok": False, "error": "SIGTERM received: finishing the requests in flight"}
    return None
