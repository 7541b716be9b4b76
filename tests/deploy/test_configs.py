"""The shipped deployment files parse, and the tiergate settings inside them load (the Kubernetes
manifests as rendered: tests/deploy/test_kubernetes.py)."""

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
    for config in (DEPLOY / "compose" / "tiergate.toml", DEPLOY / "local" / "tiergate.toml",
                   DEPLOY / "kubernetes" / "base" / "tiergate.toml"):
        assert load_settings(config).models
