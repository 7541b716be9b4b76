"""Shadow pairs: a live answer and the same request answered again by a shadow model.

The gateway mirrors a share of live requests, after their response went out, to a shadow
target (a model's pinned version, or the other tier of a route; see ``gateway/shadow.py``).
Each mirrored request gives a :class:`ShadowPair`: the request as applied (every sampling
parameter, the effective seed), both answers with token ids and logprobs, and how they compare.
Pairs are appended to JSONL files, one per UTC day, in the shadow directory; they are evidence
for drift (a pinned version decoding the same request with the same seed must give the same
tokens) and, graded, training data for verifiers (``tiergate collect --from-shadow``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gateway.backends.base import GenerationRequest, GenerationResult

SCHEMA = "tiergate.shadow/1"


@dataclass(slots=True)
class Comparison:
    """How two decodes of one request compare, token by token."""

    identical: bool
    """Token ids equal (texts, where a side has no token ids)."""
    first_divergence: int | None
    """The first position where the tokens differ (None when identical)."""
    logprob_shift: float | None
    """Mean absolute difference of the sampled tokens' logprobs over the common prefix."""


def compare_outputs(tokens_a: Sequence[int] | None, logprobs_a: Sequence[float] | None,
                    tokens_b: Sequence[int] | None, logprobs_b: Sequence[float] | None,
                    text_a: str = "", text_b: str = "") -> Comparison:
    """Compare two decodes (``a``: the reference) by their token ids, else by their text."""
    if tokens_a is None or tokens_b is None:
        same = text_a == text_b
        diverge = None if same else _first_difference(text_a, text_b)
        return Comparison(same, diverge, None)
    diverge = _first_difference(tokens_a, tokens_b)
    prefix = len(tokens_a) if diverge is None else diverge
    shift = None
    if logprobs_a is not None and logprobs_b is not None:
        shared = min(prefix, len(logprobs_a), len(logprobs_b))
        if shared:
            shift = math.fsum(abs(logprobs_a[i] - logprobs_b[i]) for i in range(shared)) / shared
    return Comparison(diverge is None, diverge, shift)


def _first_difference(a: Sequence[Any], b: Sequence[Any]) -> int | None:
    for position, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return position
    return None if len(a) == len(b) else min(len(a), len(b))


@dataclass(slots=True)
class ShadowAnswer:
    """One side of a pair: who answered and what."""

    model: str
    """The configured model name."""
    tuple_digest: str
    """The model tuple that answered (weights, quantization, engine) — pinned versions differ."""
    text: str
    token_ids: list[int] | None
    logprobs: list[float] | None
    finish_reason: str | None
    completion_tokens: int
    latency_s: float

    @classmethod
    def of(cls, result: GenerationResult) -> ShadowAnswer:
        choice = result.choices[0]
        return cls(model=result.model.name, tuple_digest=result.model.digest(),
                   text=choice.text, token_ids=choice.token_ids,
                   logprobs=[lp.logprob for lp in choice.logprobs] if choice.logprobs else None,
                   finish_reason=choice.finish_reason,
                   completion_tokens=result.usage.completion_tokens,
                   latency_s=result.timing.total_s)


@dataclass(slots=True)
class ShadowPair:
    request_id: str
    """The live request's id (its decode record has the same id)."""
    route: str
    """The ``model`` the client asked for (a route or a model)."""
    relation: str
    """``pinned``: the shadow is the live model's pinned version (drift evidence);
    ``tier``: the shadow is a route's other tier (verifier training data)."""
    request: dict[str, Any]
    """kind, messages or prompt, and the sampling parameters as applied (with the seed)."""
    live: ShadowAnswer
    shadow: ShadowAnswer
    comparison: Comparison
    deterministic: bool
    """Greedy or seeded: the two decodes are expected to agree when nothing drifted."""
    at: float = field(default_factory=time.time)
    schema: str = SCHEMA

    @classmethod
    def of(cls, request: GenerationRequest, route: str, relation: str,
           live: GenerationResult, shadow: GenerationResult) -> ShadowPair:
        a, b = ShadowAnswer.of(live), ShadowAnswer.of(shadow)
        sampling = request.sampling
        return cls(
            request_id=request.request_id, route=route, relation=relation,
            request={"kind": request.kind, "messages": request.messages,
                     "prompt": request.prompt, "sampling": sampling.to_dict()},
            live=a, shadow=b,
            comparison=compare_outputs(b.token_ids, b.logprobs, a.token_ids, a.logprobs,
                                       b.text, a.text),
            deterministic=sampling.greedy or sampling.seed is not None)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShadowPair:
        return cls(
            request_id=data["request_id"], route=data["route"], relation=data["relation"],
            request=data["request"], live=ShadowAnswer(**data["live"]),
            shadow=ShadowAnswer(**data["shadow"]), comparison=Comparison(**data["comparison"]),
            deterministic=data["deterministic"], at=data["at"], schema=data["schema"])


class ShadowLog:
    """Append-only JSONL files of shadow pairs, one per UTC day (``YYYY-MM-DD.jsonl``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def append(self, pairs: Sequence[ShadowPair]) -> None:
        """Append pairs (one write per call; the caller batches). Runs in a worker thread."""
        if not pairs:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        by_day: dict[str, list[bytes]] = {}
        for pair in pairs:
            day = time.strftime("%Y-%m-%d", time.gmtime(pair.at))
            by_day.setdefault(day, []).append(pair.to_json() + b"\n")
        for day, lines in by_day.items():
            with (self.directory / f"{day}.jsonl").open("ab") as file:
                file.write(b"".join(lines))

    def read(self, since: float | None = None) -> Iterator[ShadowPair]:
        """Every stored pair (at or after ``since``), oldest file first; a torn last line (a
        crash mid-write) is skipped."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.jsonl")):
            with path.open("rb") as file:
                for line in file:
                    try:
                        pair = ShadowPair.from_dict(orjson.loads(line))
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        continue
                    if since is None or pair.at >= since:
                        yield pair
