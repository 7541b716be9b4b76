from __future__ import annotations

from pathlib import Path

import pytest

from gateway.backends.settings import (
    AnthropicModelSettings,
    EngineModelSettings,
    HTTPModelSettings,
)
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
    from gateway.governance.settings import GovernanceSettings
    from gateway.keys.settings import ClientKey, KeyPolicy, KeysSettings
    from gateway.protocol import LimitsSettings
    from gateway.records.settings import RecordsSettings
    from gateway.settings import AuthSettings, ServerSettings, Settings
    from router.settings import RouteSettings
    from tests.conftest import REPO

    doc = (REPO / "docs" / "configuration.md").read_text()
    sections: list[type[BaseModel]] = [Settings, ServerSettings, AuthSettings,
                                       HTTPModelSettings, AnthropicModelSettings,
                                       EngineModelSettings, CanarySettings,
                                       CanaryModelSettings, ShadowSettings, ShadowMirror,
                                       LimitsSettings, RouteSettings, GovernanceSettings,
                                       RecordsSettings, KeysSettings, KeyPolicy, ClientKey]
    missing = [f"{cls.__name__}.{name}" for cls in sections for name in cls.model_fields
               if f"`{name}`" not in doc]
    assert not missing, f"fields missing from docs/configuration.md: {missing}"


@pytest.mark.parametrize("base_url", ["vllm:8000/v1", "ftp://vllm/v1", "http:///v1",
                                      "http://vllm:99999/v1", "http://vl lm/v1"])
def test_base_url_must_be_an_http_url(tmp_path: Path, base_url: str) -> None:
    config = tmp_path / "t.toml"
    config.write_text(f"[models.a]\nbackend = 'http'\nbase_url = '{base_url}'\n")
    with pytest.raises(ConfigError) as error:
        load_settings(config)
    assert "models.a.http.base_url" in str(error.value)
    assert "http(s) URL" in str(error.value) or "not a URL" in str(error.value)


def route_config(tmp_path: Path, route: str) -> Path:
    from tests.router.test_strategies import REF_AUTO

    config = tmp_path / "t.toml"
    config.write_text(f"""
[models.small]
backend = "http"
base_url = "http://small:8000/v1"
[models.large]
backend = "http"
base_url = "https://large.example/v1"
[routes.auto]
mode = "cascade"
small = "small"
large = "large"
verifier = "{REF_AUTO}"
{route}
""")
    return config


def test_a_scoring_route_needs_a_pinned_verifier(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    from router.loading import build_router
    from tests.router.test_routing import manifest_sha256
    from tests.router.test_strategies import REF_AUTO

    needs_pin = r"routes\.auto\n.*a cascade route needs 'verifier_sha256'"
    with pytest.raises(ConfigError, match=needs_pin):
        load_settings(route_config(tmp_path, ""))
    pin = manifest_sha256(REF_AUTO)
    pinned = load_settings(route_config(tmp_path, f'verifier_sha256 = "{pin}"'))
    assert pinned.routes["auto"].verifier_sha256 == pin
    build_router(pinned.routes, None)
    assert "not pinned" not in caplog.text
    unpinned = load_settings(route_config(tmp_path, "allow_unpinned_verifier = true"))
    build_router(unpinned.routes, None)
    assert "routes.auto: verifier" in caplog.text and "is not pinned" in caplog.text
