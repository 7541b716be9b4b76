"""The reference tasks: synthetic, checkable task families with difficulty levels.

Every item is a short character prompt whose reference answer a program computes:

======== ====================== ================ =========================================
family   prompt                 answer           difficulty (slice)
======== ====================== ================ =========================================
``add``  ``rev(4821+377)=``     ``8915``         ``add/N``: both operands have N digits
``mul``  ``rev(4821*7)=``       ``74733``        ``mul/N``: an N-digit number times 1..9
``sort`` ``sort(dbca)=``        ``abcd``         ``sort/L``: L letters a-z (repeats allowed)
======== ====================== ================ =========================================

Arithmetic answers are written **reversed** (least-significant digit first) and the prompt says
so: ``rev(4821+377)=`` asks for the digits of 5198 in reverse, ``8915``. Small transformers learn
carries far more easily in that order, and because the prompt asks for it the text the client
receives *is* the reference answer: graders compare the model's text with ``answer`` as it is,
no post-processing. Each answer is followed by the end-of-sequence token, so generation stops by
itself.

Levels 1..5 are ordered by difficulty; :data:`EASY_LEVELS` are the ones the small reference model
is meant to get right. Item generation is deterministic for a seed (``random.Random``).
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.evals.tasksets import TaskItem

FAMILIES: tuple[str, ...] = ("add", "mul", "sort")
LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)
EASY_LEVELS: frozenset[int] = frozenset({1, 2})
SORT_LENGTHS: Mapping[int, int] = MappingProxyType({1: 3, 2: 4, 3: 6, 4: 8, 5: 10})
"""Letters per ``sort`` item at each level."""
LETTERS = "abcdefghijklmnopqrstuvwxyz"

HELDOUT_SEED = 1001
TRAIN_SEED = 2002
PER_SLICE = 30
TASKSET_DIR = Path(__file__).resolve().parent / "tasksets"
TASKSET_FILES: Mapping[str, str] = MappingProxyType(
    {"heldout": "reference-heldout.jsonl", "train": "reference-train.jsonl"}
)


@dataclass(frozen=True, slots=True)
class ReferenceItem:
    """One reference task: the completion prompt and its reference answer."""

    family: str
    level: int
    prompt: str
    answer: str
    slice: str
    max_answer_chars: int
    meta: dict[str, int | str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def easy(self) -> bool:
        return self.level in EASY_LEVELS


def slice_name(family: str, level: int) -> str:
    """``add/3``: the family and its natural difficulty parameter (digits or letters)."""
    _check(family, level)
    return f"{family}/{SORT_LENGTHS[level] if family == 'sort' else level}"


def all_slices() -> list[str]:
    return [slice_name(f, level) for f in FAMILIES for level in LEVELS]


def _check(family: str, level: int) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown task family {family!r}; known: {', '.join(FAMILIES)}")
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")


def _number(rng: random.Random, digits: int) -> int:
    """A number with exactly ``digits`` digits (0..9 for one digit)."""
    if digits == 1:
        return rng.randint(0, 9)
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def make_item(family: str, level: int, rng: random.Random) -> ReferenceItem:
    """Draw one item of ``family`` at ``level`` from ``rng``."""
    _check(family, level)
    name = slice_name(family, level)
    if family == "add":
        a, b = _number(rng, level), _number(rng, level)
        return ReferenceItem(
            family, level, f"rev({a}+{b})=", str(a + b)[::-1], name, level + 1, {"a": a, "b": b}
        )
    if family == "mul":
        a, b = _number(rng, level), rng.randint(1, 9)
        return ReferenceItem(
            family, level, f"rev({a}*{b})=", str(a * b)[::-1], name, level + 1, {"a": a, "b": b}
        )
    length = SORT_LENGTHS[level]
    word = "".join(rng.choice(LETTERS) for _ in range(length))
    return ReferenceItem(
        family, level, f"sort({word})=", "".join(sorted(word)), name, length, {"word": word}
    )


def answer_for(prompt: str) -> str:
    """The reference answer of a reference prompt (``rev(12+34)=`` → ``64``)."""
    if prompt.startswith("sort(") and prompt.endswith(")="):
        word = prompt[5:-2]
        if word and all(c in LETTERS for c in word):
            return "".join(sorted(word))
    if prompt.startswith("rev(") and prompt.endswith(")="):
        body = prompt[4:-2]
        for op in "+*":
            left, sep, right = body.partition(op)
            if sep and left.isdigit() and right.isdigit():
                value = int(left) + int(right) if op == "+" else int(left) * int(right)
                return str(value)[::-1]
    raise ValueError(f"not a reference task prompt: {prompt!r}")


def generate_split(
    seed: int, per_slice: int = PER_SLICE, exclude: Iterable[str] = ()
) -> list[ReferenceItem]:
    """``per_slice`` distinct items for every (family, level), none of whose prompts is excluded.

    Deterministic for ``seed``; items are ordered by family, level, then draw order.
    """
    rng = random.Random(seed)
    taken = set(exclude)
    items: list[ReferenceItem] = []
    for family in FAMILIES:
        for level in LEVELS:
            found = 0
            attempts = 0
            while found < per_slice:
                attempts += 1
                if attempts > 1000 * per_slice:
                    raise ValueError(f"cannot draw {per_slice} distinct {family}/{level} items")
                item = make_item(family, level, rng)
                if item.prompt in taken:
                    continue
                taken.add(item.prompt)
                items.append(item)
                found += 1
    return items


def reference_splits(per_slice: int = PER_SLICE) -> dict[str, list[ReferenceItem]]:
    """The shipped splits: held-out first, then train drawn disjoint from it."""
    heldout = generate_split(HELDOUT_SEED, per_slice)
    train = generate_split(TRAIN_SEED, per_slice, exclude=(i.prompt for i in heldout))
    return {"heldout": heldout, "train": train}


def sample_training_item(
    rng: random.Random,
    level_weights: Sequence[float],
    exclude: frozenset[str],
    family_weights: Sequence[float] = (1.0, 1.0, 1.0),
) -> ReferenceItem:
    """One training example: family and level drawn by weight, never an excluded prompt."""
    while True:
        family = rng.choices(FAMILIES, weights=family_weights)[0]
        level = rng.choices(LEVELS, weights=level_weights)[0]
        item = make_item(family, level, rng)
        if item.prompt not in exclude:
            return item


def write_tasksets(out_dir: Path, kind: str = "completion", per_slice: int = PER_SLICE) -> None:
    """Write ``reference-heldout.jsonl`` and ``reference-train.jsonl`` in the canary format."""
    from gateway.evals.tasksets import save_taskset

    for split, items in reference_splits(per_slice).items():
        save_taskset(out_dir / TASKSET_FILES[split], to_task_items(items, split, kind))


def to_task_items(items: Sequence[ReferenceItem], split: str, kind: str) -> list[TaskItem]:
    """Reference items as task-set items (exact grader on the text the client receives)."""
    from gateway.evals.tasksets import TaskItem

    rows: list[TaskItem] = []
    for number, item in enumerate(items):
        fields: dict[str, object] = {
            "id": f"ref-{split}-{item.slice.replace('/', '')}-{number:04d}",
            "kind": kind,
            "answer": item.answer,
            "grader": {"type": "exact"},
            "slice": item.slice,
            "max_tokens": item.max_answer_chars + 1,
            "meta": {"family": item.family, "level": item.level, "split": split},
        }
        if kind == "chat":
            fields["messages"] = [{"role": "user", "content": item.prompt}]
        else:
            fields["prompt"] = item.prompt
        rows.append(TaskItem.model_validate(fields))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the reference task sets.")
    parser.add_argument("--out", type=Path, default=TASKSET_DIR)
    parser.add_argument("--kind", choices=("completion", "chat"), default="completion")
    parser.add_argument("--per-slice", type=int, default=PER_SLICE)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    write_tasksets(args.out, args.kind, args.per_slice)


if __name__ == "__main__":
    main()
