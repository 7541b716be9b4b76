"""What a served model *is*: the model tuple.

A model is not a name. It is (base weights, adapter, quantization, the eval that validated it),
served by some engine at some version. Each part is pinned by digest so that a record can say
exactly what produced an output, a canary can tell when it changed, and replay can refuse to run
on anything else.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field


class AdapterRef(BaseModel):
    """A LoRA (or other) adapter applied on the base weights."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    sha256: str | None = None


class Quantization(BaseModel):
    """How the served weights differ numerically from the base weights."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: str = "none"
    """``none``, ``int8-dynamic`` (torch dynamic quantization of Linear layers), ``gguf-q4_1``, ...
    or whatever an upstream reports (``awq``, ``fp8``, ...)."""
    bits: int | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class EvalRef(BaseModel):
    """The evaluation that validated this tuple (the file ``tiergate eval --out`` writes, named
    by the model's ``eval`` setting and checked by the registry's gates)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    score: float | None = None
    slices: dict[str, float] = Field(default_factory=dict)
    created: str | None = None
    """When the eval ran (ISO 8601, UTC)."""
    sha256: str | None = None
    """sha256 of the eval file."""


class ModelTuple(BaseModel):
    """The identity of one served model. Immutable; compare with :meth:`digest`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    """The registry name clients use (``model`` in requests) and responses report."""
    engine: str
    """``transformers`` (in-process), ``vllm``, ``openai-compatible``, ``tiergate``, ..."""
    engine_version: str | None = None
    upstream_model: str | None = None
    """The model id the engine itself uses (a path, a hub id, an upstream's served name)."""
    base_weights_sha256: str | None = None
    """sha256 over the weight files (see :func:`gateway.kernel.digests.weights_sha256`); for an HTTP
    upstream, the digest the operator pinned for the weights deployed there, if known."""
    adapter: AdapterRef | None = None
    quantization: Quantization = Field(default_factory=Quantization)
    validating_eval: EvalRef | None = None
    source: str | None = None
    """Where it is served from: a directory, or an upstream base URL."""
    teacher_digest: str | None = None
    """A distilled student's teacher: that tuple's digest (provenance, not identity)."""
    takes_seed: bool = True
    """Whether the engine honours a sampling seed (the Anthropic Messages API has none): the
    gateway reports its drawn seed (``x-tiergate-seed``) only for a model that takes it."""

    def identity(self) -> dict[str, Any]:
        """The fields that make two tuples the same model (the name and where it lives do not)."""
        return self.model_dump(
            mode="json", include={"engine", "engine_version", "upstream_model",
                                  "base_weights_sha256", "adapter", "quantization"}
        )

    def digest(self) -> str:
        """sha256 over the canonical JSON of :meth:`identity`."""
        return self._digest

    @cached_property
    def _digest(self) -> str:  # a tuple is immutable: hash it once, not per request
        canonical = orjson.dumps(self.identity(), option=orjson.OPT_SORT_KEYS)
        return "sha256:" + hashlib.sha256(canonical).hexdigest()

    def short_digest(self) -> str:
        return self._digest[7:19]

    @cached_property
    def header_value(self) -> str:
        """``x-tiergate-model``: the name, and the tuple digest that pins what answered."""
        return f"{self.name}@{self.short_digest()}"

