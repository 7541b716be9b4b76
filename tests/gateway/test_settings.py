from __future__ import annotations

from pathlib import Path

import pytest

from gateway.backends.settings import EngineModelSettings, HTTPModelSettings
from gateway.kernel.errors import ConfigError
from gateway.settings import load_settings


def test_defaults_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIERGATE_CONFIG", raising=False)
    settings = load_settings()
    assert settings.server.host == "127.0.0.1" and settings.server.port == 8000
    assert settings.models == {}


def test_toml_file_and_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "t.toml"
    config.write_text("""
[server]
port = 9000
[models.small]
backend = "engine"
path = "models/small"
int8 = true
[models.big]
backend = "http"
base_url = "http://vllm:8000/v1"
api_key = "secret"
""")
    monkeypatch.setenv("TIERGATE_SERVER__PORT", "9100")
    settings = load_settings(config)
    assert settings.server.port == 9100
    small, big = settings.models["small"], settings.models["big"]
    assert isinstance(small, EngineModelSettings) and small.int8
    assert small.path == (tmp_path / "models/small").resolve()  # relative to the file
    assert isinstance(big, HTTPModelSettings) and big.api_key is not None
    assert "secret" not in repr(settings)
    assert settings.config_file == config


def test_config_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "t.yaml"
    config.write_text("server:\n  port: 9001\n")
    monkeypatch.setenv("TIERGATE_CONFIG", str(config))
    assert load_settings().server.port == 9001


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[server]\nport = 'x'\n", "server.port"),
        ("[server]\nbogus = 1\n", "bogus"),
        ("[models.a]\nbackend = 'nope'\n", "models.a"),
        ("[models.a]\nbackend = 'http'\n", "base_url"),
        ("[models.a]\nbackend = 'http'\nbase_url = 'x'\nweights_sha256 = 'short'\n",
         "weights_sha256"),
        ("not toml [", "invalid TOML"),
    ],
)
def test_invalid_settings_are_named(tmp_path: Path, text: str, needle: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_settings(config)
    assert needle in str(error.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.toml")


def test_every_field_is_documented() -> None:
    from pydantic import BaseModel

    from canary.settings import CanaryModelSettings, CanarySettings, ShadowMirror, ShadowSettings
    from gateway.settings import AuthSettings, ServerSettings, Settings
    from tests.conftest import REPO

    doc = (REPO / "docs" / "configuration.md").read_text()
    sections: list[type[BaseModel]] = [Settings, ServerSettings, AuthSettings,
                                       HTTPModelSettings, EngineModelSettings, CanarySettings,
                                       CanaryModelSettings, ShadowSettings, ShadowMirror]
    missing = [f"{cls.__name__}.{name}" for cls in sections for name in cls.model_fields
               if f"`{name}`" not in doc]
    assert not missing, f"fields missing from docs/configuration.md: {missing}"
