"""The Kubernetes manifests: each overlay renders offline (``kubectl kustomize``), every object
validates strictly against the Kubernetes schemas (``kubernetes-validate``: unknown fields are
errors), and the objects agree with the gateway and its image — the settings load, probes hit
``/readyz`` and ``/livez``, the grace period outlasts the graceful shutdown, pods run as the
image's user, no ReadWriteMany volume, no untagged image; records go to PostgreSQL through a URL
in a Secret (no password in any ConfigMap), client keys to Redis. The Grafana dashboard ships as
a ConfigMap for Grafana's dashboard sidecar and plots only series a gateway exports."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import kubernetes_validate
import pytest
import yaml

from gateway.settings import load_settings
from tests.conftest import REPO, GatewayFactory, ServerProcess, upstream_model

KUBERNETES = REPO / "deploy" / "kubernetes"
OVERLAYS = sorted(p.parent.name for p in (KUBERNETES / "overlays").glob("*/kustomization.yaml"))
DASHBOARD = KUBERNETES / "components" / "prometheus-operator" / "grafana" / "tiergate.json"
CUSTOM_KINDS = {"ServiceMonitor"}  # a CRD's schema is not in the Kubernetes schemas
IMAGE_UID = int(re.search(r"--uid (\d+)", (REPO / "deploy" / "compose" / "Dockerfile")
                          .read_text()).group(1))  # type: ignore[union-attr]


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) renders the manifests offline"
    done = subprocess.run([kubectl, "kustomize", str(KUBERNETES / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in of_kind(objects, kind) if o["metadata"]["name"] == name)


def test_every_object_validates_strictly(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    version = kubernetes_validate.latest_version()
    for item in objects:
        if item["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(item, version, strict=True)  # raises on any error


def test_the_service_monitor_scrapes_the_gateway_service(
        rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, objects = rendered
    monitors = of_kind(objects, "ServiceMonitor")
    if overlay == "production":
        assert monitors
    service = named(objects, "Service", "tiergate")
    for monitor in monitors:
        labels = monitor["spec"]["selector"]["matchLabels"]
        assert labels.items() <= service["metadata"]["labels"].items()
        ports = {p["name"] for p in service["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
        assert all(e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])


def gateway_settings(objects: list[dict[str, Any]], tmp_path: Path,
                     monkeypatch: pytest.MonkeyPatch) -> Any:
    """The settings a gateway pod loads: its ConfigMap's file and its Secret's environment."""
    config_map = next(o for o in of_kind(objects, "ConfigMap") if "tiergate.toml" in o["data"])
    path = tmp_path / "tiergate.toml"
    path.write_text(config_map["data"]["tiergate.toml"])
    for key, value in secret_values(objects).get("tiergate-secrets", {}).items():
        monkeypatch.setenv(key, value)
    return load_settings(path)


def secret_values(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Each rendered Secret's entries, decoded, by the Secret's name."""
    return {s["metadata"]["name"]: {k: base64.b64decode(v).decode()
                                    for k, v in s.get("data", {}).items()}
            for s in of_kind(objects, "Secret")}


def test_the_gateway_pods_fit_the_gateway_and_its_image(
        rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    overlay, objects = rendered
    settings = gateway_settings(objects, tmp_path, monkeypatch)
    deployment = named(objects, "Deployment", "tiergate")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["ports"][0]["containerPort"] == settings.server.port
    assert pod["terminationGracePeriodSeconds"] > settings.server.graceful_shutdown_s
    assert pod["securityContext"]["runAsUser"] == IMAGE_UID and \
        pod["securityContext"]["runAsNonRoot"]
    assert container["args"][:2] == ["tiergate", "serve"]
    if overlay == "example":  # the generated example keys are the documented ones
        assert settings.auth.api_keys[0].sha256 == hashlib.sha256(
            b"example-client-key").hexdigest()
        assert settings.auth.admin_keys[0].id == "sre"
    # every model the gateway calls is a Service of the manifests
    services = {s["metadata"]["name"] for s in of_kind(objects, "Service")}
    for model in settings.models.values():
        host = re.match(r"https?://([^:/]+)", model.base_url).group(1)  # type: ignore[union-attr]
        assert host in services, host
    assert re.match(r"redis://([^:/]+)", settings.redis_url).group(1) in services  # type: ignore[union-attr]
    # the replicas schedule no canary runs: the CronJob, the store's one writer, does
    assert settings.canary.interval_s == 0
    cron = named(objects, "CronJob", "tiergate-canary")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"


URL_WITH_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]*:[^@\s/]+@")


def test_records_go_to_postgres_through_a_secret_and_keys_to_redis(
        rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    overlay, objects = rendered
    config_maps = of_kind(objects, "ConfigMap")
    [config] = [c for c in config_maps if "tiergate.toml" in c["data"]]
    file = tomllib.loads(config["data"]["tiergate.toml"])
    assert file["records"]["sink"] == "postgres" and "postgres_url" not in file["records"]
    assert file["keys"]["store"] == "redis"  # a key made on one replica works on all
    # the URL reaches the gateway only from its Secret, which the pods cannot start without
    [container] = named(objects, "Deployment", "tiergate")["spec"]["template"]["spec"][
        "containers"]
    [source] = [s["secretRef"] for s in container["envFrom"] if "secretRef" in s]
    assert source["name"] == "tiergate-secrets" and not source.get("optional", False)
    # no ConfigMap holds a password: neither in a URL nor any Secret's password
    secrets = secret_values(objects)
    passwords = [v for entries in secrets.values() for k, v in entries.items() if "PASSWORD" in k]
    passwords += [urlsplit(v).password or "" for entries in secrets.values()
                  for k, v in entries.items() if k.endswith("_URL")]
    for config_map in config_maps:
        for text in config_map["data"].values():
            assert not URL_WITH_PASSWORD.search(text), config_map["metadata"]["name"]
            assert not any(p and p in text for p in passwords), config_map["metadata"]["name"]
    statefulsets = {s["metadata"]["name"]: s for s in of_kind(objects, "StatefulSet")}
    if overlay == "production":  # a managed PostgreSQL; the Secrets are made out of band
        assert "postgres" not in statefulsets and not secrets
        return
    # the example: the postgres component's database, reached with its own credentials
    settings = gateway_settings(objects, tmp_path, monkeypatch)
    assert settings.records.sink == "postgres" and settings.keys.store == "redis"
    url = urlsplit(settings.records.postgres_url)
    service = named(objects, "Service", url.hostname or "")
    assert url.port in [p["port"] for p in service["spec"]["ports"]]
    pod = statefulsets["postgres"]["spec"]["template"]["spec"]
    assert service["spec"]["selector"].items() <= \
        statefulsets["postgres"]["spec"]["template"]["metadata"]["labels"].items()
    [database] = pod["containers"]
    env = {e["name"]: e for e in database["env"]}
    credentials = {name: secrets[ref["name"]][ref["key"]] for name, ref in (
        (n, env[n]["valueFrom"]["secretKeyRef"]) for n in ("POSTGRES_USER", "POSTGRES_PASSWORD",
                                                          "POSTGRES_DB"))}
    assert credentials == {"POSTGRES_USER": url.username, "POSTGRES_PASSWORD": url.password,
                           "POSTGRES_DB": url.path.lstrip("/")}
    assert "pg_isready" in " ".join(database["readinessProbe"]["exec"]["command"])
    assert database["resources"]["requests"] and database["resources"]["limits"]["memory"]
    [data] = [m for m in database["volumeMounts"] if m["name"] == "data"]
    assert env["PGDATA"]["value"].startswith(data["mountPath"] + "/")  # kept on the volume


def test_no_shared_volume_and_every_image_pinned(
        rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, objects = rendered
    claims = of_kind(objects, "PersistentVolumeClaim") + [
        template for s in of_kind(objects, "StatefulSet")
        for template in s["spec"].get("volumeClaimTemplates", [])]
    assert claims and all(c["spec"]["accessModes"] == ["ReadWriteOnce"] for c in claims)
    images = [c["image"] for o in objects if o["kind"] in ("Deployment", "StatefulSet")
              for c in o["spec"]["template"]["spec"]["containers"]]
    images += [c["image"] for o in of_kind(objects, "CronJob")
               for c in o["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]]
    for image in images:
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image
    if overlay == "production":
        assert all(i == "registry.example.com/tiergate:0.1.0" for i in images
                   if "tiergate" in i)
        hpa = named(objects, "HorizontalPodAutoscaler", "tiergate")
        pdb = named(objects, "PodDisruptionBudget", "tiergate")
        assert hpa["spec"]["minReplicas"] - pdb["spec"]["maxUnavailable"] >= 2


def test_gpu_tiers_keep_their_weights_and_wait_for_them(
        rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    for name in ("vllm-small", "vllm-large"):
        pod = named(objects, "Deployment", name)["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        assert container["startupProbe"]["httpGet"]["path"] == "/health"
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/root/.cache/huggingface" in mounts
        assert json.dumps(container["args"]).count("--served-model-name") == 1


def test_the_grafana_dashboard_ships_for_the_sidecar_and_plots_only_exported_series(
        gateway_factory: GatewayFactory, upstream: ServerProcess) -> None:
    [config_map] = [o for o in of_kind(render("production"), "ConfigMap")
                    if o["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    dashboard = json.loads(config_map["data"]["tiergate.json"])
    assert dashboard == json.loads(DASHBOARD.read_text())
    # provisioned as is (no import step): every panel queries the dashboard's data source
    assert "__inputs" not in dashboard
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set(re.findall(r"\btiergate_[a-z_]+", " ".join(exprs)))
    assert len(used) >= 10

    # a gateway with a route and records, after a routed request and a stream
    gateway = gateway_factory({
        "models.echo": upstream_model(upstream, "echo"),
        "routes.auto": {"mode": "fixed", "small": "echo", "large": "echo", "tier": "large"}})
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    assert httpx.post(gateway.url + "/v1/chat/completions", timeout=30,
                      json={"model": "auto", **chat}).status_code == 200
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", timeout=30,
                      json={"model": "echo", "stream": True, **chat}) as streamed:
        assert streamed.status_code == 200
        streamed.read()
    text = httpx.get(gateway.url + "/metrics", timeout=30).text
    exported = set(re.findall(r"^# TYPE (tiergate_[a-z_]+)", text, re.MULTILINE))
    series = {name + suffix for name in exported for suffix in ("", "_bucket", "_count", "_sum")}
    assert used <= series, sorted(used - series)
