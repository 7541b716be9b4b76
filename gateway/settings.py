"""The one typed settings object, shared by the CLI, the server and library use.

Sources, later wins: field defaults < the config file (TOML or YAML) < ``TIERGATE_*`` environment
variables (nested fields with ``__``, e.g. ``TIERGATE_SERVER__PORT=9000``). The config file is the
``--config`` argument of the CLI or, failing that, ``TIERGATE_CONFIG`` (the CLI then reads
``deploy/local/tiergate.toml`` if the working directory has one: a checkout). This module is
the only place tiergate reads the environment. Every field is documented in
``docs/configuration.md``.
"""

from __future__ import annotations

import importlib.util
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from canary.settings import CanarySettings, ShadowSettings
from gateway.backends.settings import ModelSettings
from gateway.governance.settings import GovernanceSettings
from gateway.kernel.errors import ConfigError
from gateway.kernel.secrets import redact
from gateway.kernel.settings import Section
from gateway.keys.settings import ClientKey, KeysSettings
from gateway.protocol import LimitsSettings
from gateway.records.settings import RecordsSettings
from gateway.telemetry.settings import TelemetrySettings
from router.settings import RouteSettings


class ServerSettings(Section):
    host: str = "127.0.0.1"
    """Interface to listen on."""
    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port (0: any free port, printed at start)."""
    workers: int = Field(default=1, ge=1)
    """Worker processes sharing the port (``tiergate serve --workers``)."""
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Largest request body accepted; larger bodies get 413."""
    graceful_shutdown_s: float = Field(default=30.0, ge=0)
    """On SIGTERM, how long in-flight requests and streams may take to finish."""
    keep_alive_s: float = Field(default=75.0, gt=0, le=3600)
    """How long an idle client connection is kept open. Longer than the clients' and load
    balancers' own idle timeouts (httpx and the OpenAI SDK: 5 s, aiohttp: 15 s, AWS ALB: 60 s),
    so the client, not the server, ends an idle connection: a server closing it the moment a
    client reuses it fails that request (uvicorn's default is 5 s, the SDK's expiry exactly)."""
    header_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    """How long a request head (request line and headers) may take to arrive, from the
    connection's start for its first request, from the request's first byte for later ones;
    past it: 408 and close (a connection that sent nothing is closed). Stops slowloris."""
    body_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    """How long a request body may take to arrive in full, from the end of its head; past it:
    408 and close. Expiring while the gateway itself is not reading (a pipelined request
    waiting its turn), it starts over. The default lets ``max_body_bytes`` arrive at 1.2 Mbit/s."""
    max_header_count: int = Field(default=100, ge=1)
    """Most header fields a request may carry; more: 431 and close."""
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    """Largest total size of a request's header names and values; more: 431 and close, without
    reading the rest of the head."""
    max_url_bytes: int = Field(default=8 * 1024, ge=256)
    """Longest request target (path and query); longer: 414 and close."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class ApiKey(Section):
    """An admin key, stored as the sha256 of the key (``tiergate keys hash``), never in clear."""

    id: str
    """Shown in logs and records as the caller."""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class AuthSettings(Section):
    api_keys: list[ClientKey] = Field(default_factory=list)
    """Static client keys, each with an optional policy. Empty and no key store
    (``[keys] store``): the OpenAI surface is open (for loopback and development)."""
    admin_keys: list[ApiKey] = Field(default_factory=list)
    """Keys of the admin API (``/admin/...``: thresholds, records), separate from client keys.
    Empty: the admin API is off (403)."""


class Settings(BaseSettings):
    """Everything tiergate is configured with."""

    model_config = SettingsConfigDict(
        env_prefix="TIERGATE_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    config_file: Path | None = None
    """The file these settings were read from (set by :func:`load_settings`)."""
    server: ServerSettings = Field(default_factory=ServerSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    keys: KeysSettings = Field(default_factory=KeysSettings)
    """The key store of client keys made at run time, and how their limits are counted."""
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    """What one request body may hold (nesting, objects, messages, model-name length)."""
    records: RecordsSettings = Field(default_factory=RecordsSettings)
    canary: CanarySettings = Field(default_factory=CanarySettings)
    governance: GovernanceSettings = Field(default_factory=GovernanceSettings)
    """The tuple registry and its gates: what an ungated model gets, tolerances, cadence."""
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    """Served models by the name clients use."""
    routes: dict[str, RouteSettings] = Field(default_factory=dict)
    """Routed model names (``auto``, ...), listed in ``/v1/models`` beside the models."""
    shadow: ShadowSettings = Field(default_factory=ShadowSettings)
    """Shadow traffic: live requests mirrored to pinned versions or the other tier."""
    redis_url: str | None = None
    """Redis shared by the replicas (thresholds hot reload, key limits and spend, the
    ``redis`` key store); none: everything in-process."""
    models_dir: Path = Path("var/models")
    """Where packaged models are converted to (relative paths: to the working directory)."""
    default_seed_draw: bool = True
    """Sampled requests without a ``seed`` get one drawn by the gateway and passed down, so every
    sampled output can be reproduced."""

    @model_validator(mode="after")
    def _routes_name_models(self) -> Settings:
        for name, route in self.routes.items():
            if name in self.models:
                raise ValueError(f"routes.{name}: a model has the same name")
            unknown = [m for m in (route.small, route.large) if m not in self.models]
            if unknown:
                raise ValueError(f"routes.{name}: not configured models: {unknown}")
        return self

    @model_validator(mode="after")
    def _fallbacks_exist(self) -> Settings:
        for name, model in self.models.items():
            unknown = [f for f in model.fallbacks if f not in self.models or f == name]
            if unknown:
                raise ValueError(f"models.{name}.fallbacks: not other configured models: "
                                 f"{unknown}")
        return self

    @model_validator(mode="after")
    def _key_store_reachable(self) -> Settings:
        if self.keys.store == "redis" and self.redis_url is None:
            raise ValueError('keys.store = "redis" needs redis_url')
        return self

    @model_validator(mode="after")
    def _integrations_installed(self) -> Settings:
        """A setting that needs an optional integration names the extra to install, at once
        (rather than an ImportError on the first request)."""
        needs = []
        if (self.redis_url or self.records.sink == "redis") and not _installed("redis"):
            needs.append(("redis", "redis_url / records.sink = \"redis\""))
        if self.telemetry.otlp_endpoint and not _installed(
                "opentelemetry.exporter.otlp.proto.http"):
            needs.append(("otel", "telemetry.otlp_endpoint"))
        if self.records.sink == "postgres" and not _installed("psycopg"):
            needs.append(("postgres", "records.sink = \"postgres\""))
        if needs:
            raise ValueError("; ".join(f"{what} needs pip install 'tiergate[{extra}]'"
                                       for extra, what in needs))
        return self

    @model_validator(mode="after")
    def _teachers_exist(self) -> Settings:
        for name, model in self.models.items():
            if model.teacher is not None and (model.teacher not in self.models
                                              or model.teacher == name):
                raise ValueError(f"models.{name}.teacher: {model.teacher!r} is not another "
                                 "configured model")
        return self

    @model_validator(mode="after")
    def _mirrors_name_models(self) -> Settings:
        for name, mirror in self.shadow.mirrors.items():
            unknown = [m for m in (name, mirror.target) if m not in self.models]
            if unknown or name == mirror.target:
                raise ValueError(f"shadow.mirrors.{name}: needs two different configured "
                                 f"models (unknown: {unknown})")
        return self

    @model_validator(mode="after")
    def _canary_models_exist(self) -> Settings:
        for name, model in self.canary.models.items():
            if name not in self.models:
                raise ValueError(f"canary.models.{name}: not a configured model")
            if model.pinned is not None and (model.pinned not in self.models
                                             or model.pinned == name):
                raise ValueError(f"canary.models.{name}.pinned: {model.pinned!r} is not another "
                                 "configured model")
            if model.rollback and model.pinned is None:
                raise ValueError(f"canary.models.{name}: rollback needs 'pinned'")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file arrives as init kwargs; the environment overrides it.
        return env_settings, init_settings


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


class _ConfigPath(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TIERGATE_", extra="ignore")
    config: Path | None = None


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise ConfigError("YAML config files need PyYAML: pip install pyyaml") from exc
        data = yaml.safe_load(text) or {}
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table")
    return _resolve_paths(data, path.parent)


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative model, adapter, eval, verifier, evaluation-data and canary-set paths in a file are
    relative to it."""
    for model in (data.get("models") or {}).values():
        if isinstance(model, dict):
            for key in ("path", "adapter_path", "chat_template", "eval", "general_eval"):
                if isinstance(model.get(key), str) and not Path(model[key]).is_absolute():
                    model[key] = str((base / model[key]).resolve())
    for route in (data.get("routes") or {}).values():
        for key in ("verifier", "evaluation_data"):
            if isinstance(route, dict) and isinstance(route.get(key), str) \
                    and not Path(route[key]).is_absolute():
                route[key] = str((base / route[key]).resolve())
    canary = data.get("canary")
    if isinstance(canary, dict):
        sets = [(canary, "default_set")] + [
            (model, "canary_set") for model in (canary.get("models") or {}).values()
            if isinstance(model, dict)]
        for table, key in sets:
            if isinstance(table.get(key), str) and not Path(table[key]).is_absolute():
                table[key] = str((base / table[key]).resolve())
    return data


def load_settings(config: Path | None = None, default: Path | None = None) -> Settings:
    """Settings from ``config`` (or ``TIERGATE_CONFIG``, or ``default`` if that file exists)
    and the environment."""
    path = config if config is not None else _ConfigPath().config
    if path is None and default is not None and default.is_file():
        path = default
    data: dict[str, Any] = read_config_file(path) if path is not None else {}
    if path is not None:
        data["config_file"] = path
    try:
        return Settings(**data)
    except ValidationError as exc:
        sources = [str(path)] if path is not None else []
        env = sorted(k for k in os.environ if k.startswith("TIERGATE_") and k != "TIERGATE_CONFIG")
        if env:  # the environment overrides the file: either may hold the bad value
            sources.append("the environment (" + ", ".join(env) + ")")
        where = f" from {' and '.join(sources)}" if sources else ""
        # pydantic quotes the input: a URL's password must not reach the terminal or a log
        raise ConfigError(redact(f"invalid settings{where}:\n{exc}")) from exc
