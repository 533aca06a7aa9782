"""Each tenant's learned router, held by a gateway process and kept fresh from Postgres.

A tenant's router is its scored :class:`apps.routing.models.RouteOutcome` rows (the newest
``max_rows``: the estimate reads every vector once per request, and 5,000 of them keep it under
a millisecond; ``bench/routing.py`` measures it), read into an
:class:`apps.routing.learned.NeighbourRouter`. A process loads it on the tenant's first learned
request and reloads it in the background once it is ``refresh``
seconds old, so feedback given through any replica reaches every replica within seconds; a
request never waits for a reload, only for the first load. The global priors
(:class:`apps.routing.models.ModelPrior`, written by the ``routing.priors_refresh`` task) come
with it. There is nothing else to train: the outcomes are the model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import numpy as np

from apps.cache.embedder import DIMENSIONS as EMBEDDING_DIMENSIONS
from apps.routing.learned import NeighbourRouter, Outcomes

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TenantRouter:
    router: NeighbourRouter
    counts: dict[str, int]  # scored outcomes per model
    loaded_at: float
    priors: dict[str, float]  # the global prior per model (apps.routing.models.ModelPrior)


def _array(value) -> np.ndarray:
    return value.to_numpy() if hasattr(value, "to_numpy") else np.asarray(value)


class LearnedRouters:
    def __init__(self, *, refresh: float = 5.0, max_rows: int = 5_000) -> None:
        self.refresh = refresh
        self.max_rows = max_rows
        self.pool = None  # the gateway's async Postgres pool, set at start
        self._routers: dict[int, TenantRouter] = {}
        self._loading: dict[int, asyncio.Task] = {}

    async def router_for(self, tenant_id: int) -> TenantRouter:
        current = self._routers.get(tenant_id)
        if current is not None:
            if time.monotonic() - current.loaded_at > self.refresh and tenant_id not in self._loading:
                self._load_start(tenant_id)
            return current
        task = self._loading.get(tenant_id) or self._load_start(tenant_id)
        return await asyncio.shield(task)

    def _load_start(self, tenant_id: int) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(self._load(tenant_id))
        self._loading[tenant_id] = task
        task.add_done_callback(lambda _t: self._loading.pop(tenant_id, None))
        return task

    async def _load(self, tenant_id: int) -> TenantRouter:
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(
                "SELECT embedding, model_name, score FROM routing_routeoutcome WHERE tenant_id = %s "
                "AND score IS NOT NULL ORDER BY created_at DESC LIMIT %s", [tenant_id, self.max_rows])).fetchall()
            priors = dict(await (await conn.execute(
                "SELECT model_name, score FROM routing_modelprior")).fetchall())
        models = tuple(sorted({row[1] for row in rows}))
        column = {name: i for i, name in enumerate(models)}
        vectors = (np.stack([_array(row[0]) for row in rows]).astype(np.float32) if rows
                   else np.zeros((0, EMBEDDING_DIMENSIONS), dtype=np.float32))
        scores = np.full((len(rows), len(models)), np.nan, dtype=np.float32)
        counts: dict[str, int] = {}
        for i, (_vector, name, score) in enumerate(rows):
            scores[i, column[name]] = score
            counts[name] = counts.get(name, 0) + 1
        loaded = TenantRouter(NeighbourRouter(Outcomes(vectors, scores, models)), counts, time.monotonic(), priors)
        self._routers[tenant_id] = loaded
        return loaded

    async def record(self, *, tenant_id: int, request_id: str, rule_id: int | None, model_name: str,
                     vector: np.ndarray, explored: bool, estimate: float | None = None, best_model: str = "",
                     best_estimate: float | None = None) -> None:
        """Keep a learned request's prompt vector, model and what the router expected of it, for
        its feedback to score."""
        try:
            async with self.pool.connection() as conn:
                await conn.execute(
                    "INSERT INTO routing_routeoutcome (tenant_id, request_id, rule_id, model_name, embedding, "
                    "explored, estimate, best_model, best_estimate, created_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, now()) "
                    "ON CONFLICT (tenant_id, request_id) DO NOTHING",
                    [tenant_id, request_id, rule_id, model_name, vector, explored, estimate, best_model,
                     best_estimate])
        except Exception:
            logger.exception("route outcome of %s not recorded", request_id)

    async def score(self, *, tenant_id: int, request_id: str, model_name: str, score: float) -> bool:
        """Feedback on a learned request: its outcome, for the model that actually answered."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE routing_routeoutcome SET score = %s, model_name = coalesce(nullif(%s, ''), model_name) "
                "WHERE tenant_id = %s AND request_id = %s", [score, model_name, tenant_id, request_id])
            return cursor.rowcount > 0
