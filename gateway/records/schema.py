"""The decode record: one per answered request, versioned, and its canonical JSON.

The record is built as plain dicts on the request path (:mod:`gateway.records.builder`, fast) and
validated with these models when read (stores, CLI, admin API, replay). Every field is
documented in ``docs/records.md``; a change to a field's meaning bumps :data:`SCHEMA_VERSION`.

Canonical JSON (what digests are computed over): UTF-8, keys sorted by code point, no whitespace,
floats in their shortest round-trip form, non-finite floats (``-inf`` logprobs) as ``null``.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
"""The version of :class:`DecodeRecord` this code writes (``schema_version`` of every record)."""

_CANONICAL = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def _jsonable(value: Any) -> Any:
    """``value`` with integers orjson cannot hold (beyond 64 bits) as strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not (
            -(2**63) <= value < 2**64):
        return str(value)
    return value


def canonical_json(value: Any) -> bytes:
    """The canonical JSON bytes of ``value`` (see the module docs)."""
    try:
        return orjson.dumps(value, option=_CANONICAL)
    except TypeError:  # an integer past 64 bits in a passthrough field
        return orjson.dumps(_jsonable(value), option=_CANONICAL)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Redacted(_Model):
    """What stands in place of a removed value (``records.redact``)."""

    redacted: Literal[True] = True
    sha256: str
    """sha256 of the canonical JSON of the removed value: whoever holds the original can prove
    it is what was answered."""


class RecordInput(_Model):
    kind: Literal["chat", "completion"]
    messages: list[dict[str, Any]] | Redacted | None = None
    prompt: str | list[int] | list[str] | list[list[int]] | Redacted | None = None
    passthrough: dict[str, Any] = Field(default_factory=dict)
    """Fields tiergate did not interpret, sent to HTTP upstreams verbatim."""
    return_token_ids: bool = False


class RecordSampling(_Model):
    """Every decoding parameter as applied (``gateway.kernel.generation.SamplingParams``)."""

    temperature: float
    top_p: float
    top_k: int | None = None
    min_p: float | None = None
    max_tokens: int | None = None
    min_tokens: int | None = None
    stop: list[str] | Redacted = Field(default_factory=list)
    stop_token_ids: list[int] = Field(default_factory=list)
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float | None = None
    logprobs: int | None = None
    n: int = 1
    ignore_eos: bool = False


class EffectiveSeed(_Model):
    value: int | None
    """The seed the decode ran with (choice ``i`` of an engine call uses ``value + i``)."""
    source: Literal["client", "gateway", "engine", "none"]
    """``client`` sent it; the ``gateway`` drew it; the in-process ``engine`` drew it (the
    gateway's draw was off); ``none``: greedy, no randomness."""


class RecordDecision(_Model):
    """The routing decision (``router.decision.Decision``)."""

    route: str
    mode: str
    tier: str
    model: str
    verifier_id: str | None = None
    verifier_sha256: str | None = None
    feature_digest: str | None = None
    score: float | None = None
    threshold: float | None = None
    escalated: bool = False
    candidates: list[str] = Field(default_factory=list)


class RecordLogprobs(_Model):
    """Per-token logprobs of one choice, in columns: position ``i`` of each list is token ``i``
    (``logprob`` ``None`` where the model gave the token probability 0, ``-inf``)."""

    token: list[str]
    logprob: list[float | None]
    token_id: list[int | None]
    bytes: list[list[int] | None]
    top: list[list[tuple[int | None, float | None, str, list[int] | None]]]
    """The most likely tokens at each position, as ``[token_id, logprob, token, bytes]``."""


class RecordChoice(_Model):
    index: int
    text: str | Redacted
    finish_reason: str | None
    stop_reason: int | str | Redacted | None = None
    token_ids: list[int] | Redacted | None = None
    logprobs: RecordLogprobs | Redacted | None = None
    extra: dict[str, Any] | Redacted = Field(default_factory=dict)


class RecordUsage(_Model):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    extra: dict[str, Any] = Field(default_factory=dict)


class RecordTiming(_Model):
    started_at: float
    """Wall clock (epoch seconds) when the model call began."""
    first_token_s: float | None = None
    total_s: float


class RecordCost(_Model):
    """What one call cost (``gateway.models.cost.CallCost``; docs/cost.md). Records written
    before costs were recorded have none."""

    kind: Literal["tokens", "serving-time", "none"]
    """The cost model of the answering model's ``[models.NAME.cost]`` (``none``: unpriced)."""
    usd: float
    seconds: float
    """The call's measured seconds (what ``serving-time`` prices)."""
    rates: dict[str, float] = Field(default_factory=dict)
    """The prices applied, as configured when the call was made."""
    estimated: bool = False
    """The call's usage was counted by the gateway (a stream cut before the model reported
    it), not by the model."""


class ModelCall(_Model):
    """One call to one model (a cascade has two: the small answer, then the large)."""

    index: int
    model: dict[str, Any]
    """The model tuple (``gateway.kernel.modeltuple.ModelTuple``): name, engine, engine_version,
    upstream_model, base_weights_sha256, adapter, quantization, validating_eval, source."""
    tuple_digest: str
    """``ModelTuple.digest()``: sha256 of the tuple's identity."""
    runtime: dict[str, Any] = Field(default_factory=dict)
    """Device, library versions, threads, dtype, determinism settings, engine-drawn seeds."""
    rendered_prompt: str | Redacted | None = None
    prompt_token_ids: list[int] | Redacted | None = None
    choices: list[RecordChoice]
    usage: RecordUsage
    timing: RecordTiming
    extra: dict[str, Any] = Field(default_factory=dict)
    cost: RecordCost | None = None
    """What the call cost (absent in records written before costs were recorded)."""


class ChainLink(_Model):
    """Where the record sits in its hash chain (set by the store when it is appended)."""

    chain_id: str
    seq: int = Field(ge=1)
    record_id: str
    prev_digest: str
    """The digest of the record before it (the chain's genesis digest for ``seq`` 1)."""
    content_sha256: str
    """sha256 of the record's content: its canonical JSON without ``chain``."""
    stored_at: float
    digest: str
    """sha256 over the canonical JSON of this link without ``digest``."""


class DecodeRecord(_Model):
    schema_version: int = SCHEMA_VERSION
    record_id: str
    """Returned to the client as ``x-tiergate-record-id`` (the request id)."""
    request_id: str
    received_at: float
    finished_at: float
    caller: str | None
    """The API key's id (never the key); ``None`` on an open gateway."""
    route: str
    """The ``model`` the client asked for."""
    operation: str
    stream: bool
    status: int
    client_params: dict[str, Any]
    """What the client sent besides the messages / prompt (unset fields left out)."""
    input: RecordInput
    sampling: RecordSampling
    seed: EffectiveSeed
    decision: RecordDecision | None = None
    calls: list[ModelCall]
    redacted: list[str] = Field(default_factory=list)
    """Paths of the fields replaced by their digest (``records.redact``)."""
    chain: ChainLink | None = None

    @property
    def models(self) -> list[str]:
        return [str(call.model.get("name")) for call in self.calls]

    @property
    def cost_usd(self) -> float | None:
        """What the request cost, every call included; None when no call was priced (a record
        written before costs were recorded)."""
        costs = [call.cost.usd for call in self.calls if call.cost is not None]
        return sum(costs) if costs else None

    @property
    def escalated(self) -> bool:
        return bool(self.decision and self.decision.escalated)


def parse_record(body: bytes | dict[str, Any]) -> DecodeRecord:
    """A stored record (canonical JSON or its dict) as a validated :class:`DecodeRecord`."""
    data = orjson.loads(body) if isinstance(body, bytes | bytearray | memoryview) else body
    return DecodeRecord.model_validate(data)
