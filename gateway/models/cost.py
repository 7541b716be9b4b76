"""What a model call costs: the cost models by name, and the price book of the configured models.

Each configured model may carry a ``[models.NAME.cost]`` section
(:data:`gateway.backends.settings.CostSettings`); its ``kind`` names the cost model here
(:data:`COST_MODELS`):

- ``tokens`` — a hosted upstream's prices: ``input_usd_per_mtok`` per million prompt tokens,
  ``cached_input_usd_per_mtok`` per million of those read from the upstream's prompt cache
  (``prompt_tokens_details.cached_tokens`` of its usage), ``output_usd_per_mtok`` per million
  completion tokens;
- ``serving-time`` — a self-hosted model: the call's measured seconds (its
  :class:`~gateway.kernel.generation.Timing` ``total_s``) at ``usd_per_hour`` of the device,
  shared by the ``concurrency`` requests it serves at once on average.

A model without a section costs 0 and is reported *unpriced*. The serving object prices every
call of a request (:class:`PriceBook`, :class:`CallCost`); the listeners get the costs on the
:class:`~gateway.listener.CompletedRequest`, the records keep them per call (docs/cost.md).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from gateway.backends.settings import (
    CostSettings,
    ModelSettings,
    ServingTimeCostSettings,
    TokenCostSettings,
)
from gateway.kernel.generation import GenerationRequest, GenerationResult, Usage

MILLION = 1_000_000
HOUR_S = 3600.0
BYTES_PER_TOKEN = 4
"""The estimate of a prompt's tokens when no model counted them (a stream cut before its usage
came): one token per four bytes of UTF-8 text, the usual rule for English under BPE."""


@dataclass(slots=True)
class TokenCounts:
    """The tokens a call is priced on. (Not ``frozen``, as :class:`CallCost`.)"""

    prompt: int = 0
    """Every prompt token, cached ones included (``usage.prompt_tokens``)."""
    completion: int = 0
    cached: int = 0
    """Of ``prompt``, those read from the upstream's prompt cache."""

    @classmethod
    def of(cls, usage: Usage) -> TokenCounts:
        return cls(usage.prompt_tokens, usage.completion_tokens, cached_tokens(usage))


def cached_tokens(usage: Usage | dict[str, Any]) -> int:
    """The cached prompt tokens of a usage (OpenAI's ``prompt_tokens_details.cached_tokens``;
    the Anthropic backend maps ``cache_read_input_tokens`` there), 0 when not reported. Takes a
    :class:`Usage` or a record's usage dict (its ``extra``)."""
    extra = usage.extra if isinstance(usage, Usage) else usage.get("extra") or {}
    details = extra.get("prompt_tokens_details")
    value = details.get("cached_tokens") if isinstance(details, dict) else None
    return value if isinstance(value, int) and value > 0 else 0


class CostModel(ABC):
    """How one model's calls are priced."""

    kind: ClassVar[str]

    @abstractmethod
    def usd(self, tokens: TokenCounts, seconds: float) -> float:
        """The cost of a call with these tokens that took ``seconds``."""

    @abstractmethod
    def rates(self) -> dict[str, float]:
        """The prices applied (kept in each record, so a record says how it was priced)."""


COST_MODELS: dict[str, Callable[[Any], CostModel]] = {}
"""The cost models by the ``kind`` of a model's cost section."""


def register(kind: str) -> Callable[[type[CostModel]], type[CostModel]]:
    def add(cls: type[CostModel]) -> type[CostModel]:
        cls.kind = kind
        COST_MODELS[kind] = cls
        return cls
    return add


@register("tokens")
class TokenCost(CostModel):
    def __init__(self, settings: TokenCostSettings) -> None:
        self.input = settings.input_usd_per_mtok
        self.output = settings.output_usd_per_mtok
        self.cached = (settings.input_usd_per_mtok if settings.cached_input_usd_per_mtok is None
                       else settings.cached_input_usd_per_mtok)

    def usd(self, tokens: TokenCounts, seconds: float) -> float:
        cached = min(tokens.cached, tokens.prompt)
        return ((tokens.prompt - cached) * self.input + cached * self.cached
                + tokens.completion * self.output) / MILLION

    def rates(self) -> dict[str, float]:
        return {"input_usd_per_mtok": self.input, "cached_input_usd_per_mtok": self.cached,
                "output_usd_per_mtok": self.output}


@register("serving-time")
class ServingTimeCost(CostModel):
    def __init__(self, settings: ServingTimeCostSettings) -> None:
        self.usd_per_hour = settings.usd_per_hour
        self.concurrency = settings.concurrency

    def usd(self, tokens: TokenCounts, seconds: float) -> float:
        return max(seconds, 0.0) * self.usd_per_hour / HOUR_S / self.concurrency

    def rates(self) -> dict[str, float]:
        return {"usd_per_hour": self.usd_per_hour, "concurrency": self.concurrency}


class Unpriced(CostModel):
    """A model without a cost section: its calls cost 0 (and say so: ``kind = "none"``)."""

    kind = "none"

    def usd(self, tokens: TokenCounts, seconds: float) -> float:
        return 0.0

    def rates(self) -> dict[str, float]:
        return {}


def cost_model(settings: CostSettings | None) -> CostModel:
    """The cost model a model's cost section names (``None``: :class:`Unpriced`)."""
    return Unpriced() if settings is None else COST_MODELS[settings.kind](settings)


_NO_RATES: dict[str, float] = {}
"""An unpriced call's rates (shared, read-only)."""


@dataclass(slots=True)
class CallCost:
    """What one model call of a request cost, and what it was priced on. Treat it as a value:
    it is not ``frozen`` only because a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``, about three times the work, and every answered call builds one."""

    model: str
    kind: str
    """The cost model: ``tokens``, ``serving-time`` or ``none`` (unpriced)."""
    usd: float
    tokens: TokenCounts
    seconds: float
    rates: dict[str, float]
    estimated: bool = False
    """The tokens were counted by the gateway, not reported by the model: a stream that ended
    before its usage came (a client that went away mid-answer; :func:`usage_so_far`)."""

    def to_record(self) -> dict[str, Any]:
        """The call's ``cost`` in its decode record (the tokens are in the call's ``usage``)."""
        return {"kind": self.kind, "usd": self.usd, "seconds": self.seconds,
                "rates": self.rates, "estimated": self.estimated}


class PriceBook:
    """The cost model of every configured model, by name."""

    def __init__(self, models: Mapping[str, ModelSettings]) -> None:
        self.models = {name: cost_model(m.cost) for name, m in models.items()}
        self._rates = {name: model.rates() for name, model in self.models.items()}
        """Built once: every call's cost shares its model's (read-only) dict."""
        self._priced = {name: model for name, model in self.models.items()
                        if model.kind != Unpriced.kind}
        """The models with a price: any other call costs 0 without asking a cost model."""

    def model(self, name: str) -> CostModel:
        return self.models.get(name) or Unpriced()

    def call(self, result: GenerationResult, estimated: bool = False) -> CallCost:
        """The cost of one call (priced by the model that answered it)."""
        name, usage, seconds = result.model.name, result.usage, result.timing.total_s
        model = self._priced.get(name)
        if model is None:  # unpriced: nothing to read or compute
            return CallCost(name, "none", 0.0,
                            TokenCounts(usage.prompt_tokens, usage.completion_tokens), seconds,
                            _NO_RATES, estimated)
        tokens = TokenCounts.of(usage)
        return CallCost(name, model.kind, model.usd(tokens, seconds), tokens, seconds,
                        self._rates[name], estimated)


def prompt_tokens_estimate(request: GenerationRequest) -> int:
    """The prompt's tokens, estimated from its text (:data:`BYTES_PER_TOKEN`): for a stream
    whose model never reported them."""
    if request.messages is not None:
        text = "".join(_texts(request.messages))
    elif isinstance(request.prompt, str):
        text = request.prompt
    elif isinstance(request.prompt, list) and request.prompt \
            and all(isinstance(t, int) for t in request.prompt):
        return len(request.prompt)
    else:
        text = "".join(p for p in request.prompt or [] if isinstance(p, str))
    return math.ceil(len(text.encode()) / BYTES_PER_TOKEN)


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _texts(v)]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    return []


def usage_so_far(reported: Usage | None, result: GenerationResult, pieces: list[int],
                 request: GenerationRequest) -> tuple[Usage, bool]:
    """The usage of a stream that may have ended early: the model's own when it reported it;
    else counted here (``True``): completion tokens by token ids where the stream carried them,
    else one per streamed piece of text (an OpenAI-compatible server sends a token per chunk),
    prompt tokens by the prompt's ids when known, else estimated from its text."""
    if reported is not None:
        return reported, False
    completion = sum(len(c.token_ids) if c.token_ids else count
                     for c, count in zip(result.choices, pieces, strict=False))
    prompt = (len(result.prompt_token_ids) if result.prompt_token_ids is not None
              else prompt_tokens_estimate(request))
    return Usage(prompt, completion), True
