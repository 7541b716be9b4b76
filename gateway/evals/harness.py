"""The shared baseline harness: one task set, one backend, the same figures for every model.

``run_taskset`` sends every item of a task set to a backend greedily (token ids and logprobs
kept), grades each answer and times it; ``summarize`` turns the runs into per-slice accuracy,
latency p50/p99, ms per token and token counts. ``tiergate eval`` prints it and writes the
validating eval a model tuple names; canaries and ``tiergate collect`` reuse the same runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.evals.tasksets import TaskItem, by_slice
from gateway.kernel.backend import Backend
from gateway.kernel.errors import TiergateError
from gateway.kernel.generation import GenerationRequest, GenerationResult, SamplingParams


@dataclass(slots=True)
class ItemRun:
    """One item sent to one model: its answer, grade and cost."""

    item: TaskItem
    text: str
    passed: bool
    detail: str
    latency_s: float
    completion_tokens: int
    prompt_tokens: int
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    finish_reason: str | None = None
    error: str | None = None
    result: GenerationResult | None = field(default=None, repr=False)
    """The backend's whole result (top logprobs included), for ``tiergate collect``."""


def item_request(item: TaskItem, request_id: str, logprobs: int | None = 0,
                 sampling: SamplingParams | None = None,
                 token_ids: bool = False) -> GenerationRequest:
    """The generation request for a task item: greedy, the item's token budget, logprobs on;
    ``token_ids`` asks an HTTP upstream for the generated token ids too (``return_token_ids``,
    a vLLM extension tiergate serves; the in-process engine always has them)."""
    params = sampling or SamplingParams(temperature=0.0, max_tokens=item.max_tokens,
                                        logprobs=logprobs)
    if item.kind == "chat":
        messages = [m.model_dump() for m in item.messages or ()]
        return GenerationRequest(request_id=request_id, kind="chat", sampling=params,
                                 messages=messages, return_token_ids=token_ids)
    return GenerationRequest(request_id=request_id, kind="completion", sampling=params,
                             prompt=item.prompt, return_token_ids=token_ids)


def _run_of(item: TaskItem, result: GenerationResult, latency: float) -> ItemRun:
    choice = result.choices[0]
    grade = item.grade(choice.text)
    return ItemRun(
        item=item, text=choice.text, passed=grade.passed, detail=grade.detail,
        latency_s=latency, completion_tokens=result.usage.completion_tokens,
        prompt_tokens=result.usage.prompt_tokens, token_ids=choice.token_ids,
        logprobs=[lp.logprob for lp in choice.logprobs] if choice.logprobs else None,
        finish_reason=choice.finish_reason, result=result,
    )


async def run_item(backend: Backend, item: TaskItem, request_id: str,
                   logprobs: int | None = 0, token_ids: bool = False) -> ItemRun:
    started = time.perf_counter()
    try:
        result = await backend.generate(item_request(item, request_id, logprobs,
                                                     token_ids=token_ids))
    except TiergateError as exc:
        return ItemRun(item=item, text="", passed=False, detail="error",
                       latency_s=time.perf_counter() - started, completion_tokens=0,
                       prompt_tokens=0, error=exc.message)
    return _run_of(item, result, time.perf_counter() - started)


async def run_taskset(
    backend: Backend,
    items: Sequence[TaskItem],
    concurrency: int = 1,
    logprobs: int | None = 0,
    progress: Callable[[int, int], None] | None = None,
    token_ids: bool = False,
) -> list[ItemRun]:
    """Every item through ``backend``, at most ``concurrency`` at a time, in item order."""
    semaphore = asyncio.Semaphore(concurrency)
    done = 0

    async def one(index: int, item: TaskItem) -> ItemRun:
        nonlocal done
        async with semaphore:
            run = await run_item(backend, item, f"eval-{index:06d}", logprobs, token_ids)
        done += 1
        if progress is not None:
            progress(done, len(items))
        return run

    return list(await asyncio.gather(*(one(i, item) for i, item in enumerate(items))))


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass(slots=True)
class SliceSummary:
    items: int
    accuracy: float
    errors: int
    latency_p50_ms: float
    latency_p99_ms: float
    ms_per_token: float
    completion_tokens: int


def _slice_summary(runs: Sequence[ItemRun]) -> SliceSummary:
    latencies = [r.latency_s * 1000 for r in runs]
    per_token = [r.latency_s * 1000 / r.completion_tokens for r in runs if r.completion_tokens]
    return SliceSummary(
        items=len(runs),
        accuracy=sum(r.passed for r in runs) / len(runs),
        errors=sum(r.error is not None for r in runs),
        latency_p50_ms=_percentile(latencies, 0.5),
        latency_p99_ms=_percentile(latencies, 0.99),
        ms_per_token=statistics.median(per_token) if per_token else 0.0,
        completion_tokens=sum(r.completion_tokens for r in runs),
    )


@dataclass(slots=True)
class EvalReport:
    model: str
    tuple_digest: str
    taskset: str
    taskset_sha256: str
    overall: SliceSummary
    slices: dict[str, SliceSummary]
    peak_rss_mb: float
    wall_s: float
    agreement: dict[str, float] = field(default_factory=dict)
    """Per slice: share of items whose token ids equal a baseline model's (``--baseline``)."""
    created: str = ""
    """When the eval ran (ISO 8601, UTC): the date the registry counts re-evaluation from."""
    model_tuple: dict[str, Any] = field(default_factory=dict)
    """The evaluated tuple as JSON (:class:`~gateway.kernel.modeltuple.ModelTuple`): the gates
    compare its parts (base weights, quantization, adapter) with the baseline's."""

    @property
    def id(self) -> str:
        """Stable id of this eval: which tuple, on which task set."""
        digest = hashlib.sha256(f"{self.tuple_digest}\0{self.taskset_sha256}".encode())
        return f"eval-{digest.hexdigest()[:16]}"

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"id": self.id, **asdict(self)}


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def summarize(model: str, tuple_digest: str, taskset: str, taskset_sha256: str,
              runs: Sequence[ItemRun], wall_s: float,
              model_tuple: dict[str, Any] | None = None) -> EvalReport:
    slices = {name: _slice_summary([r for r in runs if r.item.slice == name])
              for name in by_slice([r.item for r in runs])}
    created = datetime.now(UTC).isoformat(timespec="seconds")
    return EvalReport(model=model, tuple_digest=tuple_digest, taskset=taskset,
                      taskset_sha256=taskset_sha256, overall=_slice_summary(runs),
                      slices=slices, peak_rss_mb=peak_rss_mb(), wall_s=wall_s, created=created,
                      model_tuple=model_tuple or {})


def agreement(runs: Sequence[ItemRun], baseline: Sequence[ItemRun]) -> dict[str, float]:
    """Per slice (and ``all``): share of items with identical token ids (or text, if no ids)."""
    def same(a: ItemRun, b: ItemRun) -> bool:
        if a.token_ids is not None and b.token_ids is not None:
            return a.token_ids == b.token_ids
        return a.text == b.text

    pairs = list(zip(runs, baseline, strict=True))
    out = {"all": sum(same(a, b) for a, b in pairs) / len(pairs)}
    for name in by_slice([r.item for r in runs]):
        chosen = [(a, b) for a, b in pairs if a.item.slice == name]
        out[name] = sum(same(a, b) for a, b in chosen) / len(chosen)
    return out


def format_report(report: EvalReport, baseline: EvalReport | None = None) -> str:
    """The per-slice table ``tiergate eval`` prints."""
    head = f"{'slice':<18}{'items':>6}{'acc':>8}"
    if baseline is not None:
        head += f"{'base acc':>10}{'agree':>8}"
    head += f"{'p50 ms':>9}{'p99 ms':>9}{'ms/tok':>8}{'tokens':>8}"
    lines = [f"model {report.model} ({report.tuple_digest[:19]}) on {report.taskset}", head]
    rows = [*report.slices.items(), ("ALL", report.overall)]
    for name, s in rows:
        line = f"{name:<18}{s.items:>6}{s.accuracy:>8.1%}"
        if baseline is not None:
            b = baseline.overall if name == "ALL" else baseline.slices[name]
            agree = report.agreement.get("all" if name == "ALL" else name, 0.0)
            line += f"{b.accuracy:>10.1%}{agree:>8.1%}"
        line += (f"{s.latency_p50_ms:>9.1f}{s.latency_p99_ms:>9.1f}{s.ms_per_token:>8.1f}"
                 f"{s.completion_tokens:>8}")
        lines.append(line)
    errors = report.overall.errors
    lines.append(f"peak RSS {report.peak_rss_mb:.0f} MB, wall {report.wall_s:.1f} s"
                 + (f", {errors} errors" if errors else "") + f"; eval id {report.id}")
    return "\n".join(lines)
