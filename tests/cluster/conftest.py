"""A real cluster for the cluster tests: two web replicas behind the balancer, two Celery
workers and one beat, on the test database and the Redis at ``REDIS_URL``, built from the
same :class:`~apps.devtools.cluster.ClusterPlan` that ``make cluster`` runs."""

from __future__ import annotations

import os
import sys
import time

import pytest

from apps.devtools.cluster import ClusterPlan, ProcessGroup
from tests.batches.conftest import slow_simulator  # noqa: F401 (a fixture for the batch test)
from tests.gateway.conftest import World, usage_quiet, wait_until
from tests.live import REPO, database_url_for_tests, free_port, http_json, wait_http

REDIS_URL = os.environ.get("REDIS_URL", "")
EVICT_EVERY = 1.0



class Cluster:
    def __init__(self, plan: ClusterPlan, group: ProcessGroup, env: dict) -> None:
        self.plan = plan
        self.group = group
        self.env = env
        self.started_at = time.time()

    @property
    def base(self) -> str:
        return self.plan.base

    @property
    def replicas(self) -> list[str]:
        return self.plan.replica_bases()

    def restart(self, name: str) -> None:
        self.group.stop(name)
        self.group.start(name, self.plan.commands()[name], env=self.env, cwd=REPO)


@pytest.fixture(scope="module")
def cluster(django_db_setup, django_db_blocker, simulator_process, tmp_path_factory):
    if not REDIS_URL:
        pytest.skip("the cluster needs Redis (REDIS_URL)")
    state_dir = tmp_path_factory.mktemp("cluster")
    plan = ClusterPlan(python=sys.executable, state_dir=state_dir, port=free_port(),
                       web_ports=(free_port(), free_port()), workers=2, worker_concurrency=2,
                       upstream_port=None, check_every=0.5)
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_tests(),
        "REDIS_URL": REDIS_URL,
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "USAGE_FLUSH_INTERVAL": "0.2",
        "GATEWAY_RETRY_BACKOFF": "0.01",
        # No timed reload: a change reaches a replica by its message alone.
        "GATEWAY_CONFIG_REFRESH": "3600",
        # Beat: eviction every second (what the tests watch), everything else out of the way.
        "CACHE_EVICT_EVERY": str(EVICT_EVERY),
        "CACHE_LIMITS_EVERY": "3600",
        "LIMITS_PURGE_EVERY": "3600",
        "USAGE_ROLLUP_EVERY": "3600",
        "USAGE_PRUNE_EVERY": "3600",
        # Batches: a dead worker's job is picked up by the other within a few seconds.
        "BATCH_LEASE_SECONDS": "2",
        "BATCH_RESUME_EVERY": "1",
        "BATCH_CHUNK_LINES": "25",
        "BATCH_TENANT_CONCURRENCY": "4",
    }
    env.pop("CELERY_BROKER_URL", None)
    group = ProcessGroup(log_dir=state_dir)
    group.start_all(plan.commands(), env=env, cwd=REPO)
    try:
        for base in plan.replica_bases():
            wait_http(base + "/healthz", timeout=90, proc=group.children["web1"])
        wait_http(plan.base + "/healthz", timeout=30, proc=group.children["balancer"])
        yield Cluster(plan, group, env)
    finally:
        group.stop_all()
        _queue_purge()


def _queue_purge() -> None:
    """Leave no task of the cluster's beat in the broker for later tests' workers."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.delete("celery")
    client.close()


@pytest.fixture
def cluster_world(transactional_db, simulator, cluster):
    world = World(simulator)
    world.cluster = cluster

    def sees_catalog(base: str) -> bool:
        status, body = http_json("GET", base + "/v1/models", headers={"Authorization": f"Bearer {world.key_a}"})
        return status == 200 and {"sim-mini", "sim-premium"} <= {m["id"] for m in body["data"]}

    for base in cluster.replicas:
        assert wait_until(lambda base=base: sees_catalog(base)), f"{base} never saw the test catalog"
    yield world
    usage_quiet()
