"""Shadow pairs: a live answer and the same request answered again by a shadow model.

The gateway mirrors a share of live requests, after their response went out, to a shadow
target (a model's pinned version, or the other tier of a route; see ``canary/mirror.py``).
Each mirrored request gives a :class:`ShadowPair`: the request as applied (every sampling
parameter, the effective seed), both answers with token ids and logprobs, and how they compare.
Pairs are appended to JSONL files, one per UTC day, in the shadow directory; they are evidence
for drift (a pinned version decoding the same request with the same seed must give the same
tokens) and, graded, training data for verifiers (``tiergate collect --from-shadow``).
They hold live prompts and answers: files are created ``0600`` in a directory created ``0700``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from canary.runs import ShadowComparison, TokenComparison, compare_tokens
from gateway.kernel.files import FILE_MODE, make_private_dir
from gateway.kernel.generation import GenerationRequest, GenerationResult

SCHEMA = "tiergate.shadow/1"


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
    comparison: TokenComparison
    """Live vs shadow (``logprob_shift``: mean live - shadow logprob over the common prefix)."""
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
            comparison=compare_tokens(a.token_ids, a.text, b.token_ids, b.text,
                                      a.logprobs, b.logprobs),
            deterministic=sampling.greedy or sampling.seed is not None)

    def drift_evidence(self) -> ShadowComparison:
        """The pair as the canary service's shadow stream takes it."""
        return ShadowComparison(
            request_id=self.request_id, model=self.live.model, shadow_model=self.shadow.model,
            agree=self.comparison.agree, first_divergence=self.comparison.first_divergence,
            logprob_shift=self.comparison.logprob_shift,
            primary_tokens=self.live.completion_tokens,
            shadow_tokens=self.shadow.completion_tokens,
            shadow_latency_ms=self.shadow.latency_s * 1000)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShadowPair:
        return cls(
            request_id=data["request_id"], route=data["route"], relation=data["relation"],
            request=data["request"], live=ShadowAnswer(**data["live"]),
            shadow=ShadowAnswer(**data["shadow"]),
            comparison=TokenComparison(**data["comparison"]),
            deterministic=data["deterministic"], at=data["at"], schema=data["schema"])


class ShadowLog:
    """Append-only JSONL files of shadow pairs, one per UTC day (``YYYY-MM-DD.jsonl``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def append(self, pairs: Sequence[ShadowPair]) -> None:
        """Append pairs (one write per call; the caller batches). Runs in a worker thread."""
        if not pairs:
            return
        make_private_dir(self.directory)
        by_day: dict[str, list[bytes]] = {}
        for pair in pairs:
            day = time.strftime("%Y-%m-%d", time.gmtime(pair.at))
            by_day.setdefault(day, []).append(pair.to_json() + b"\n")
        for day, lines in by_day.items():
            fd = os.open(self.directory / f"{day}.jsonl",
                         os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
            with os.fdopen(fd, "ab") as file:
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
