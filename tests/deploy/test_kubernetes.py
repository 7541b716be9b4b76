"""The Kubernetes manifests: each overlay renders offline (``kubectl kustomize``), every object
validates strictly against the Kubernetes schemas (``kubernetes-validate``: unknown fields are
errors), and the objects agree with the gateway and its image — the settings load, probes hit
``/readyz`` and ``/livez``, the grace period outlasts the graceful shutdown, pods run as the
image's user, no ReadWriteMany volume, no untagged image. The Grafana dashboard ships as a
ConfigMap for Grafana's dashboard sidecar and plots only series a gateway exports."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

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
    for secret in of_kind(objects, "Secret"):
        for key, value in secret.get("data", {}).items():
            import base64

            monkeypatch.setenv(key, base64.b64decode(value).decode())
    return load_settings(path)


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
