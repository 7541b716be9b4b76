from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateway.http.auth import hash_key
from tests.conftest import REPO, write_config


def tiergate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=60)


def test_models_lists_configured_tuples(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", {"models.big": {
        "backend": "http", "base_url": "http://127.0.0.1:9/v1", "upstream_model": "m",
        "weights_sha256": "cd" * 32}})
    result = tiergate("models", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "big" in result.stdout and "cd" * 32 in result.stdout
    assert "tuple digest  sha256:" in result.stdout
    as_json = tiergate("--config", str(config), "models", "--json")
    assert '"base_weights_sha256": "' + "cd" * 32 in as_json.stdout


def test_keys_hash_matches_auth(tmp_path: Path) -> None:
    result = tiergate("keys", "hash", "sk-123")
    assert hash_key("sk-123") in result.stdout
    new = tiergate("keys", "new")
    key = new.stdout.split()[1]
    assert hash_key(key) in new.stdout


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[server]\nport = 'eighty'\n")
    result = tiergate("models", "--config", str(config))
    assert result.returncode == 2
    assert "server.port" in result.stderr and "Traceback" not in result.stderr


def test_without_config_a_checkout_reads_deploy_local(tmp_path: Path) -> None:
    """`tiergate canary pin ref-large` as the guides write it, in a checkout: no --config, no
    TIERGATE_CONFIG -> deploy/local/tiergate.toml, said on stderr."""
    local = tmp_path / "deploy" / "local"
    local.mkdir(parents=True)
    write_config(local / "tiergate.toml", {"models.here": {
        "backend": "http", "base_url": "http://127.0.0.1:9/v1", "upstream_model": "m"}})
    env = {k: v for k, v in os.environ.items() if k != "TIERGATE_CONFIG"}
    env["PYTHONPATH"] = str(REPO)

    def models(cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", "models", "--pinned"],
                              capture_output=True, text=True, cwd=cwd, env=env, timeout=60)

    found = models(tmp_path)
    assert found.returncode == 0, found.stderr
    assert found.stdout.startswith("here\n")
    assert "settings from deploy/local/tiergate.toml" in found.stderr
    elsewhere = models(local)  # no checkout here: the defaults, no models
    assert elsewhere.stdout == "no models configured\n" and "settings from" not in elsewhere.stderr
