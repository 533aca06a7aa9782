"""The deployment files say what the operations guide says: two web replicas behind nginx
with WebSocket upgrades, one beat, readiness on /readyz, secrets from files, a non-root image."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.live import REPO

DEPLOY = REPO / "deploy"


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def _manifests() -> dict[tuple[str, str], dict]:
    found = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def test_it_composes_two_web_replicas_behind_nginx_with_one_beat():
    services = _compose()["services"]
    assert {"postgres", "redis", "migrate", "web1", "web2", "worker", "beat", "nginx"} <= set(services)
    beats = [name for name, spec in services.items() if "beat" in " ".join(spec.get("command", []))]
    assert beats == ["beat"]
    assert services["postgres"]["image"].startswith("pgvector/pgvector")
    for name in ("web1", "web2", "worker", "beat", "migrate"):
        env = services[name]["environment"]
        assert env["SECRET_KEY_FILE"].startswith("/run/secrets/") and "SECRET_KEY" not in env
        assert env["REDIS_URL"].startswith("redis://redis:")
    assert services["web1"]["environment"]["REPLICA_NAME"] == "web1"
    assert services["web2"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert "server web1:8000" in nginx and "server web2:8000" in nginx
    assert "proxy_set_header Upgrade $http_upgrade;" in nginx and "proxy_buffering off;" in nginx


def test_it_validates_the_compose_file_with_docker_compose_when_installed():
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        probe = subprocess.run([*command, "version"], capture_output=True, text=True)
        if probe.returncode != 0:
            continue
        done = subprocess.run([*command, "-f", str(DEPLOY / "docker-compose.yml"), "config", "-q"],
                              capture_output=True, text=True, cwd=DEPLOY)
        assert done.returncode == 0, done.stderr
        return
    pytest.skip("neither `docker compose` nor `docker-compose` is installed")


def test_it_gives_kubernetes_readiness_autoscaling_and_a_single_beat():
    manifests = _manifests()
    web = manifests[("Deployment", "switchyard-web")]["spec"]
    container = web["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert web["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert web["template"]["spec"]["terminationGracePeriodSeconds"] > 30  # uvicorn's graceful timeout
    hpa = manifests[("HorizontalPodAutoscaler", "switchyard-web")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "switchyard-web"
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    beat = manifests[("Deployment", "switchyard-beat")]["spec"]
    assert beat["replicas"] == 1 and beat["strategy"]["type"] == "Recreate"
    assert manifests[("Deployment", "switchyard-worker")]["spec"]["replicas"] >= 1
    assert ("Job", "switchyard-migrate") in manifests
    env = {item["name"] for item in container["env"]}
    assert {"SECRET_KEY_FILE", "SWITCHYARD_ENCRYPTION_KEY_FILE", "DATABASE_URL_FILE"} <= env


def test_it_builds_a_non_root_image_with_cpu_torch():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu" in dockerfile
    assert "\nUSER switchyard\n" in dockerfile
    assert dockerfile.count("FROM ") == 2  # build stage and runtime stage


def test_it_runs_one_beat_and_workers_without_beat_in_the_local_cluster(tmp_path):
    from apps.devtools.cluster import ClusterPlan

    commands = ClusterPlan(python="python", state_dir=tmp_path).commands()
    assert [name for name, argv in commands.items() if "beat" in argv] == ["beat"]
    assert [name for name in commands if name.startswith("web")] == ["web1", "web2"]
    assert [name for name in commands if name.startswith("worker")] == ["worker1", "worker2"]
    balancer = commands["balancer"]
    assert balancer[balancer.index("--listen") + 1] == "127.0.0.1:8000"
    assert [balancer[i + 1] for i, arg in enumerate(balancer) if arg == "--backend"] == [
        "127.0.0.1:8101", "127.0.0.1:8102"]


def test_it_believes_forwarded_addresses_from_the_proxy_alone_and_needs_a_metrics_token():
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in nginx
    assert "$proxy_add_x_forwarded_for" not in nginx
    units = {path.name: path.read_text() for path in (DEPLOY / "systemd").glob("*.service")}
    for text in [(DEPLOY / "Dockerfile").read_text(), (DEPLOY / "kubernetes" / "web.yaml").read_text(),
                 *units.values()]:
        assert "--forwarded-allow-ips" not in text  # FORWARDED_ALLOW_IPS, from the environment
    assert "FORWARDED_ALLOW_IPS=127.0.0.1" in (DEPLOY / "Dockerfile").read_text()
    services = _compose()["services"]
    nginx_address = services["nginx"]["networks"]["default"]["ipv4_address"]
    for name in ("web1", "web2", "worker", "beat", "migrate"):
        env = services[name]["environment"]
        assert env["METRICS_TOKEN_FILE"] == "/run/secrets/metrics_token" and "METRICS_TOKEN" not in env
        assert "metrics_token" in services[name]["secrets"]
    assert services["web1"]["environment"]["FORWARDED_ALLOW_IPS"] == nginx_address
    manifests = _manifests()
    assert manifests[("ConfigMap", "switchyard-config")]["data"]["FORWARDED_ALLOW_IPS"] != "*"
    assert "metrics_token" in manifests[("Secret", "switchyard-secrets")]["stringData"]
    for kind, name in (("Deployment", "switchyard-web"), ("Deployment", "switchyard-worker"),
                       ("Deployment", "switchyard-beat"), ("Job", "switchyard-migrate")):
        container = manifests[(kind, name)]["spec"]["template"]["spec"]["containers"][0]
        assert {"name": "METRICS_TOKEN_FILE", "value": "/run/secrets/switchyard/metrics_token"} in container["env"]
    for name, text in units.items():
        assert "METRICS_TOKEN_FILE=%d/metrics_token" in text, name
    assert "FORWARDED_ALLOW_IPS=127.0.0.1" in (DEPLOY / "switchyard.env.example").read_text()


def test_it_ignores_forwarded_headers_behind_the_local_clusters_tcp_balancer(tmp_path):
    from apps.devtools.cluster import ClusterPlan

    commands = ClusterPlan(python="python", state_dir=tmp_path).commands()
    webs = [argv for name, argv in commands.items() if name.startswith("web")]
    assert webs and all("--no-proxy-headers" in argv for argv in webs)
