"""The shipped deployment files parse, and the tiergate settings inside them load."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.settings import load_settings
from tests.conftest import REPO

DEPLOY = REPO / "deploy"


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.yaml")), ids=lambda p: p.name)
def test_yaml_parses(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents


def test_compose_and_local_configs_load() -> None:
    for config in (DEPLOY / "compose" / "tiergate.toml", DEPLOY / "local" / "tiergate.toml"):
        assert load_settings(config).models


def test_kubernetes_configmap_settings_load(tmp_path: Path) -> None:
    documents = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "tiergate.yaml").read_text()))
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    config = tmp_path / "tiergate.toml"
    config.write_text(config_map["data"]["tiergate.toml"])
    settings = load_settings(config)
    assert settings.models["small"].fallbacks == ["large"]
    assert settings.telemetry.otlp_endpoint == "http://otel-collector:4318"
