"""Verifier training data from served models: ``tiergate collect``.

It sits above the canaries and the router and owned by neither: it runs the eval harness
(:mod:`gateway.evals`) on both tiers, reads shadow pairs the canaries' mirror logged
(:mod:`canary.shadow`), and builds rows exactly as the router reads a request
(:mod:`router.policy`).

A task set (:mod:`gateway.evals.tasksets`) is sent to the small model and, optionally, to the large
one with the shared harness (:func:`gateway.evals.harness.run_taskset`: greedy, the item's token
budget, logprobs kept); each pair of answers becomes one row of the verifier training format
(:mod:`verifiers.data`): the request, the small answer with its token logprobs, the large
answer, the grader's verdict on each (``small_correct`` / ``large_correct``) and the slice.

Rows are built by :func:`pair_row` from ``(request, small result, large result, grade)``, the
same conversion the router applies when serving (:func:`router.policy.verifier_input`), so a
verifier is trained on exactly what it sees at decision time. The harness is one source of
pairs (:func:`collect_taskset`); another source — e.g. shadow pairs stored by canaries — only
has to produce :class:`Pair` objects and call :func:`rows_of`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from canary.shadow import ShadowAnswer, ShadowPair
from gateway.evals.graders import AnyGrader, GradeResult
from gateway.evals.harness import ItemRun, item_request, run_taskset
from gateway.evals.tasksets import TaskItem
from gateway.kernel.backend import Backend
from gateway.kernel.generation import GenerationRequest, GenerationResult, SamplingParams
from router.policy import answer_of, request_body
from verifiers.data import Answer, Example

Grade = Callable[[str], GradeResult]
"""Grades a model's output text (a task item's grader bound to its reference answer)."""


@dataclass(frozen=True, slots=True)
class Pair:
    """One request answered by the small model and (optionally) the large one, gradable."""

    id: str
    request: GenerationRequest
    small: GenerationResult
    large: GenerationResult | None
    grade: Grade
    slice: str | None = None


def pair_row(pair: Pair) -> Example:
    """One training row: the request as the router sees it, both answers, both verdicts."""
    small = answer_of(pair.small)
    large = None if pair.large is None else answer_of(pair.large)
    return Example(
        id=pair.id, request=request_body(pair.request),
        small_correct=pair.grade(small.text).passed,
        large_correct=None if large is None else pair.grade(large.text).passed,
        small=small, large=large, slice=pair.slice)


def rows_of(pairs: Iterable[Pair]) -> list[Example]:
    return [pair_row(pair) for pair in pairs]


@dataclass(slots=True)
class Collected:
    """What :func:`collect_taskset` produced: rows, and the items no row could be made of."""

    rows: list[Example]
    failed: list[str]
    """``item id: error`` for items a model answered with an error (no row written)."""


def pairs_of_runs(items: Sequence[TaskItem], small: Sequence[ItemRun],
                  large: Sequence[ItemRun] | None, logprobs: int | None) -> tuple[list[Pair],
                                                                                  list[str]]:
    """Harness runs (same items, same order) as pairs; an errored run drops its item."""
    pairs: list[Pair] = []
    failed: list[str] = []
    for index, item in enumerate(items):
        small_run = small[index]
        large_run = None if large is None else large[index]
        errors = [run.error for run in (small_run, large_run)
                  if run is not None and (run.error is not None or run.result is None)]
        if errors:
            failed.append(f"{item.id}: {errors[0] or 'no result'}")
            continue
        assert small_run.result is not None
        pairs.append(Pair(
            id=item.id, request=item_request(item, item.id, logprobs),
            small=small_run.result, large=None if large_run is None else large_run.result,
            grade=item.grade, slice=item.slice))
    return pairs, failed


async def collect_taskset(items: Sequence[TaskItem], small: Backend, large: Backend | None,
                          concurrency: int = 1, logprobs: int | None = 0,
                          progress: Callable[[int, int], None] | None = None) -> Collected:
    """Run ``items`` on the small (and large) backend and turn each pair into a row.

    ``logprobs`` is the number of top logprobs per token to keep (0: only the sampled token's,
    which is what a cascade route asks for when the client does not)."""
    small_runs = await run_taskset(small, items, concurrency, logprobs, progress)
    large_runs = (None if large is None
                  else await run_taskset(large, items, concurrency, logprobs, progress))
    pairs, failed = pairs_of_runs(items, small_runs, large_runs, logprobs)
    return Collected(rows_of(pairs), failed)


def shadow_rows(pairs: Iterable[ShadowPair], small: str, large: str,
                grader: AnyGrader) -> list[Example]:
    """Shadow pairs of a route's two tiers (one answered live, the other mirrored) as rows.

    Live traffic has no reference answer, so the large model's answer is the reference:
    ``small_correct`` says the small answer passes ``grader`` against it ("good enough" means
    "as good as escalating would have been"); ``large_correct`` is left unknown, so these rows
    train ``small-wrong`` verifiers. Pairs of other models are skipped."""
    rows: list[Example] = []
    for pair in pairs:
        sides = {pair.live.model: pair.live, pair.shadow.model: pair.shadow}
        if set(sides) != {small, large}:
            continue
        small_answer, large_answer = sides[small], sides[large]
        request = GenerationRequest(
            request_id=pair.request_id, kind=pair.request["kind"],
            sampling=SamplingParams(**pair.request["sampling"]),
            messages=pair.request.get("messages"), prompt=pair.request.get("prompt"))
        rows.append(Example(
            id=pair.request_id, request=request_body(request),
            small_correct=grader.grade(small_answer.text, large_answer.text).passed,
            small=_answer(small_answer), large=_answer(large_answer),
            slice=f"shadow:{pair.route}"))
    return rows


def _answer(side: ShadowAnswer) -> Answer:
    return Answer(side.text, tuple(side.logprobs) if side.logprobs is not None else None)


def format_summary(rows: Sequence[Example]) -> str:
    """Per-slice accuracy of both models and the share where escalating would help."""
    slices: dict[str, list[Example]] = {}
    for row in rows:
        slices.setdefault(row.slice or "-", []).append(row)
    has_large = all(row.large_correct is not None for row in rows)
    head = f"{'slice':<18}{'rows':>6}{'small':>8}"
    if has_large:
        head += f"{'large':>8}{'helps':>8}"
    lines = [head]
    for name, group in [*slices.items(), ("ALL", list(rows))]:
        line = f"{name:<18}{len(group):>6}{_share(r.small_correct for r in group):>8.1%}"
        if has_large:
            helps = _share(bool(r.large_correct) and not r.small_correct for r in group)
            line += f"{_share(bool(r.large_correct) for r in group):>8.1%}{helps:>8.1%}"
        lines.append(line)
    if has_large:
        lines.append("helps: large right where small is wrong (what escalating can gain)")
    return "\n".join(lines)


def _share(values: Iterable[bool]) -> float:
    flags = list(values)
    return sum(flags) / len(flags) if flags else 0.0
