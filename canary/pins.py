"""Pins: a model version frozen as its model tuple and its golden outputs on a canary set.

``tiergate canary pin MODEL`` decodes every item of the model's canary set greedily (token ids
and logprobs kept), grades the answers, and stores them with the tuple the backend reports and
the set's sha256 as a :class:`Pin`. Later runs compare the live backend with these golden
outputs (:mod:`canary.runs`). A repin replaces the pin (the store keeps the older versions) and
restarts the drift evidence.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from canary.sets import CanarySet
from gateway.evals.harness import ItemRun, run_taskset
from gateway.kernel.backend import Backend
from gateway.kernel.errors import UpstreamError
from gateway.kernel.modeltuple import ModelTuple

PIN_FORMAT = 1


class GoldenOutput(BaseModel):
    """One item's greedy output from the pinned version."""

    model_config = ConfigDict(extra="forbid")

    item_id: str
    slice: str
    text: str
    token_ids: list[int] | None
    logprobs: list[float] | None
    passed: bool
    detail: str = ""
    finish_reason: str | None = None
    latency_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @classmethod
    def of(cls, run: ItemRun) -> GoldenOutput:
        return cls(item_id=run.item.id, slice=run.item.slice, text=run.text,
                   token_ids=run.token_ids, logprobs=run.logprobs, passed=run.passed,
                   detail=run.detail, finish_reason=run.finish_reason,
                   latency_ms=run.latency_s * 1000, prompt_tokens=run.prompt_tokens,
                   completion_tokens=run.completion_tokens)


class Pin(BaseModel):
    """A pinned model version: what it is, on which canary set, and what it answered."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    model: str
    """The configured model name that is pinned (the name clients use)."""
    version: int
    """1 for the first pin of this model, +1 for every repin."""
    created_at: float
    model_tuple: ModelTuple
    """The tuple the backend reported when pinned."""
    tuple_digest: str
    set_path: str
    set_sha256: str
    golden: list[GoldenOutput]

    def golden_by_id(self) -> dict[str, GoldenOutput]:
        return {g.item_id: g for g in self.golden}

    def slice_pass_counts(self) -> dict[str, tuple[int, int]]:
        """slice → (passed, items) of the golden outputs, slices in set order."""
        counts: dict[str, tuple[int, int]] = {}
        for golden in self.golden:
            passed, items = counts.get(golden.slice, (0, 0))
            counts[golden.slice] = (passed + golden.passed, items + 1)
        return counts

    @property
    def pass_rate(self) -> float:
        return sum(g.passed for g in self.golden) / len(self.golden) if self.golden else 0.0


async def decode_golden(backend: Backend, canary_set: CanarySet,
                        concurrency: int = 4) -> list[ItemRun]:
    """Every item of ``canary_set`` through ``backend``, greedily, with logprobs and token ids
    (an HTTP upstream that returns no ids is compared by text, without a logprob shift)."""
    return await run_taskset(backend, canary_set.items, concurrency, logprobs=0,
                             token_ids=True)


def make_pin(model: str, model_tuple: ModelTuple, canary_set: CanarySet,
             runs: Sequence[ItemRun], version: int, now: float | None = None) -> Pin:
    """The pin of ``runs`` (golden outputs). Refuses runs with errors: a golden output must be
    an answer, not a failure of the backend."""
    failed = [run for run in runs if run.error is not None]
    if failed:
        raise UpstreamError(f"cannot pin {model}: {len(failed)} of {len(runs)} canary items "
                            f"failed (first: {failed[0].item.id}: {failed[0].error})")
    return Pin(model=model, version=version, created_at=time.time() if now is None else now,
               model_tuple=model_tuple, tuple_digest=model_tuple.digest(),
               set_path=str(canary_set.path), set_sha256=canary_set.sha256,
               golden=[GoldenOutput.of(run) for run in runs])


def tuple_changes(pinned: ModelTuple, served: ModelTuple) -> dict[str, tuple[object, object]]:
    """The identity fields that differ: field → (pinned, served)."""
    old, new = pinned.identity(), served.identity()
    return {key: (old.get(key), new.get(key)) for key in old if old.get(key) != new.get(key)}
