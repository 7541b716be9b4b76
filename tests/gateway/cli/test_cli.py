from __future__ import annotations

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
