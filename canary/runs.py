"""Canary runs: the canary set against the live backend, compared with the golden outputs.

Per item: exact token agreement, the first position where the tokens diverge, the mean logprob
shift over the common prefix (same tokens, different confidence: numerics moved), the grade now
and at pin time, latency and tokens. Per slice (and ``ALL``): pass rate now vs golden, agreement,
divergences, logprob shift, latency p50/p99 and tokens (the cost of the run). The result is a
:class:`CanaryRun`, plain data stored in the run history; the drift decision is added by
:class:`canary.service.CanaryService`.

:func:`compare_tokens` is also what shadow traffic uses (:class:`canary.shadow.ShadowPair`): a
live answer and the pinned version's answer to the same request, turned into a
:class:`ShadowComparison` for the drift tests.
"""

from __future__ import annotations

import secrets
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from canary.drift import StreamAlarm
from canary.pins import GoldenOutput, Pin, tuple_changes
from canary.sets import CanarySet
from gateway.evals.harness import ItemRun, run_taskset
from gateway.kernel.backend import Backend
from gateway.kernel.modeltuple import ModelTuple

RUN_FORMAT = 1


@dataclass(frozen=True, slots=True)
class TokenComparison:
    agree: bool
    first_divergence: int | None
    """Index of the first differing token (None: identical); the shorter length if one output
    is a prefix of the other."""
    logprob_shift: float | None
    """Mean of (now - golden) logprob over the common prefix; None without logprobs or prefix."""
    logprob_abs_shift: float | None


def compare_tokens(now_ids: Sequence[int] | None, now_text: str,
                   golden_ids: Sequence[int] | None, golden_text: str,
                   now_logprobs: Sequence[float] | None = None,
                   golden_logprobs: Sequence[float] | None = None) -> TokenComparison:
    """Compare two greedy outputs by token ids (by text when either side has no ids)."""
    if now_ids is None or golden_ids is None:
        agree = now_text == golden_text
        divergence = None if agree else next(
            (i for i, (a, b) in enumerate(zip(now_text, golden_text, strict=False)) if a != b),
            min(len(now_text), len(golden_text)))
        return TokenComparison(agree, divergence, None, None)
    divergence = next((i for i, (a, b) in enumerate(zip(now_ids, golden_ids, strict=False))
                       if a != b), None)
    if divergence is None and len(now_ids) != len(golden_ids):
        divergence = min(len(now_ids), len(golden_ids))
    prefix = len(now_ids) if divergence is None else divergence
    shift = abs_shift = None
    if now_logprobs is not None and golden_logprobs is not None:
        pairs = list(zip(now_logprobs[:prefix], golden_logprobs[:prefix], strict=False))
        if pairs:
            shift = sum(a - b for a, b in pairs) / len(pairs)
            abs_shift = sum(abs(a - b) for a, b in pairs) / len(pairs)
    return TokenComparison(divergence is None, divergence, shift, abs_shift)


class ItemComparison(BaseModel):
    """One canary item now, against its golden output."""

    model_config = ConfigDict(extra="forbid")

    item_id: str
    slice: str
    passed: bool
    golden_passed: bool
    agree: bool
    first_divergence: int | None = None
    logprob_shift: float | None = None
    logprob_abs_shift: float | None = None
    text: str = ""
    golden_text: str = ""
    latency_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


class SliceFigures(BaseModel):
    """The figures of one slice (or of all items) in one run."""

    model_config = ConfigDict(extra="forbid")

    items: int
    pass_rate: float
    golden_pass_rate: float
    agreement: float
    diverged: int
    mean_first_divergence: float | None
    """Over the items that diverged."""
    logprob_shift: float | None
    """Mean over items of their mean (now - golden) logprob on the common prefix."""
    logprob_abs_shift: float | None
    latency_p50_ms: float
    latency_p99_ms: float
    prompt_tokens: int
    completion_tokens: int
    errors: int


class CanaryRun(BaseModel):
    """One canary run of one pinned model: what was served, per item and per slice figures,
    and (filled in by the service) the drift status after this run's evidence."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    id: str
    model: str
    started_at: float
    wall_s: float
    pin_version: int
    set_sha256: str
    pinned_digest: str
    served_digest: str
    tuple_changes: dict[str, tuple[Any, Any]] = Field(default_factory=dict)
    """Identity fields of the served tuple that differ from the pinned one."""
    items: list[ItemComparison]
    slices: dict[str, SliceFigures]
    overall: SliceFigures
    status: Literal["ok", "drift"] = "ok"
    new_alarms: list[StreamAlarm] = Field(default_factory=list)
    """Alarms this run raised."""
    standing_alarms: list[StreamAlarm] = Field(default_factory=list)
    """Every unacknowledged alarm after this run (including earlier ones)."""

    @property
    def tuple_changed(self) -> bool:
        return self.pinned_digest != self.served_digest


def compare_item(run: ItemRun, golden: GoldenOutput) -> ItemComparison:
    tokens = compare_tokens(run.token_ids, run.text, golden.token_ids, golden.text,
                            run.logprobs, golden.logprobs)
    return ItemComparison(
        item_id=run.item.id, slice=run.item.slice, passed=run.passed,
        golden_passed=golden.passed, agree=tokens.agree and run.error is None,
        first_divergence=tokens.first_divergence, logprob_shift=tokens.logprob_shift,
        logprob_abs_shift=tokens.logprob_abs_shift, text=run.text, golden_text=golden.text,
        latency_ms=run.latency_s * 1000, prompt_tokens=run.prompt_tokens,
        completion_tokens=run.completion_tokens, error=run.error)


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def figures(items: Sequence[ItemComparison]) -> SliceFigures:
    n = len(items)
    latencies = [i.latency_ms for i in items]
    diverged = [i.first_divergence for i in items if i.first_divergence is not None]
    return SliceFigures(
        items=n,
        pass_rate=sum(i.passed for i in items) / n if n else 0.0,
        golden_pass_rate=sum(i.golden_passed for i in items) / n if n else 0.0,
        agreement=sum(i.agree for i in items) / n if n else 0.0,
        diverged=len(diverged),
        mean_first_divergence=statistics.fmean(diverged) if diverged else None,
        logprob_shift=_mean([i.logprob_shift for i in items]),
        logprob_abs_shift=_mean([i.logprob_abs_shift for i in items]),
        latency_p50_ms=_percentile(latencies, 0.5),
        latency_p99_ms=_percentile(latencies, 0.99),
        prompt_tokens=sum(i.prompt_tokens for i in items),
        completion_tokens=sum(i.completion_tokens for i in items),
        errors=sum(i.error is not None for i in items),
    )


def compare_run(pin: Pin, served: ModelTuple, runs: Sequence[ItemRun], started_at: float,
                wall_s: float) -> CanaryRun:
    """The run of ``runs`` (the set's items, decoded now) against ``pin``'s golden outputs."""
    golden = pin.golden_by_id()
    items = [compare_item(run, golden[run.item.id]) for run in runs]
    by_slice: dict[str, list[ItemComparison]] = {}
    for item in items:
        by_slice.setdefault(item.slice, []).append(item)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started_at))
    return CanaryRun(
        id=f"run-{stamp}-{secrets.token_hex(3)}", model=pin.model, started_at=started_at,
        wall_s=wall_s, pin_version=pin.version, set_sha256=pin.set_sha256,
        pinned_digest=pin.tuple_digest, served_digest=served.digest(),
        tuple_changes=tuple_changes(pin.model_tuple, served), items=items,
        slices={name: figures(group) for name, group in by_slice.items()},
        overall=figures(items))


async def execute_run(pin: Pin, backend: Backend, canary_set: CanarySet,
                      concurrency: int = 4) -> CanaryRun:
    """Send the canary set to ``backend`` (greedy, logprobs on) and compare with ``pin``.

    The caller checks that ``canary_set`` is the pinned one (same sha256)."""
    started_at, started = time.time(), time.perf_counter()
    runs = await run_taskset(backend, canary_set.items, concurrency, logprobs=0, token_ids=True)
    return compare_run(pin, backend.describe(), runs, started_at, time.perf_counter() - started)


class ShadowComparison(BaseModel):
    """A live answer and the pinned version's answer to the same (greedy) request."""

    model_config = ConfigDict(extra="forbid")

    request_id: str
    model: str
    shadow_model: str
    agree: bool
    first_divergence: int | None = None
    logprob_shift: float | None = None
    primary_tokens: int = 0
    shadow_tokens: int = 0
    shadow_latency_ms: float = 0.0
