"""Canary sets: frozen task sets that pinned model versions are checked against.

A canary set *is* a task set (:mod:`gateway.evals.tasksets`: one
:class:`~gateway.evals.tasksets.TaskItem` per JSONL line, with its prompt or messages, grader,
slice and token budget), frozen by its sha256: a pin records the digest of the set its golden
outputs were decoded from, and a run refuses a set whose digest differs. Slices matter more here
than anywhere: quantization and runtime changes break the tail first (long inputs, many digits,
structured output), so every figure and every drift test is per slice.

The shipped set, ``canary/sets/reference.jsonl``, is for the reference pair (``ref-small`` /
``ref-large``); regenerate it with ``python -m canary.sets`` (a test checks that the shipped file
is exactly this generator's output).
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.evals.tasksets import TaskItem, by_slice, load_taskset, save_taskset
from gateway.reference.tasks import (
    FAMILIES,
    LEVELS,
    ReferenceItem,
    make_item,
    reference_splits,
    to_task_items,
)

SETS_DIR = Path(__file__).resolve().parent / "sets"
REFERENCE_SET = SETS_DIR / "reference.jsonl"
"""The shipped canary set for the reference models."""
REFERENCE_SEED = 3003
REFERENCE_PER_SLICE = 6
FORMAT_ITEMS = 3
"""Items per extra grader slice (``grader/numeric``, ``grader/regex``, ``grader/json_schema``)."""


@dataclass(frozen=True, slots=True)
class CanarySet:
    """A loaded canary set: its file, its sha256 and its items in file order."""

    path: Path
    sha256: str
    items: tuple[TaskItem, ...]

    def slices(self) -> dict[str, list[TaskItem]]:
        """Items by slice, slices in order of first appearance."""
        return by_slice(self.items)

    def item(self, item_id: str) -> TaskItem | None:
        return next((item for item in self.items if item.id == item_id), None)


def load_canary_set(path: str | Path) -> CanarySet:
    """Read and validate a canary set (:class:`~gateway.evals.tasksets.TaskSetError` when
    invalid)."""
    from gateway.kernel.digests import file_sha256

    file = Path(path)
    items = load_taskset(file)
    return CanarySet(path=file, sha256=file_sha256(file), items=tuple(items))


def reference_items() -> list[TaskItem]:
    """The reference canary set: seeded, disjoint from the shipped held-out and train sets.

    ``REFERENCE_PER_SLICE`` items of every reference slice (``add/1`` … ``sort/10``: the hard
    slices are the tail where quantization shows first), then three small slices that exercise
    the other graders on the same kinds of prompts:

    - ``grader/numeric``: sums graded as numbers (the reversed digits read as a number, so a
      leading zero of the reversed answer is forgiven);
    - ``grader/regex``: sorts graded only on their form (lower-case letters, the right length);
    - ``grader/json_schema``: sorts graded as a JSON array of letters. The reference models never
      learned JSON, so these items fail in every golden output: they are there to show a grader
      that fails steadily, and to catch a swap to a model that suddenly does produce JSON.
    """
    taken = {item.prompt for split in reference_splits().values() for item in split}
    rng = random.Random(REFERENCE_SEED)

    def draw(family: str, level: int) -> ReferenceItem:
        while True:
            item = make_item(family, level, rng)
            if item.prompt not in taken:
                taken.add(item.prompt)
                return item

    drawn = [draw(f, level) for f in FAMILIES for level in LEVELS
             for _ in range(REFERENCE_PER_SLICE)]
    rows = [item.model_copy(update={"id": item.id.replace("ref-canary-", "canary-ref-")})
            for item in to_task_items(drawn, "canary", "completion")]
    extra = [draw("add", 2) for _ in range(FORMAT_ITEMS)]
    regex = [draw("sort", 2) for _ in range(FORMAT_ITEMS)]
    as_json = [draw("sort", 1) for _ in range(FORMAT_ITEMS)]
    for number, item in enumerate(extra):
        rows.append(_extra(item, "numeric", number, {"type": "numeric"}))
    for number, item in enumerate(regex):
        length = len(item.answer)
        rows.append(_extra(item, "regex", number,
                           {"type": "regex", "pattern": f"[a-z]{{{length}}}"}))
    schema = {"type": "array", "items": {"type": "string", "pattern": "^[a-z]$"}}
    for number, item in enumerate(as_json):
        rows.append(_extra(item, "json_schema", number, {"type": "json_schema",
                                                         "schema": schema}))
    return rows


def _extra(item: ReferenceItem, grader: str, number: int, spec: dict[str, object]) -> TaskItem:
    answer = item.answer
    if grader == "json_schema":
        answer = "[" + ",".join(f'"{c}"' for c in item.answer) + "]"
    return TaskItem.model_validate({
        "id": f"canary-ref-{grader.replace('_', '')}-{number:02d}", "kind": "completion",
        "prompt": item.prompt, "answer": answer, "grader": spec, "slice": f"grader/{grader}",
        "max_tokens": item.max_answer_chars + 1,
        "meta": {"family": item.family, "level": item.level, "split": "canary"},
    })


def write_reference_set(path: Path = REFERENCE_SET) -> None:
    save_taskset(path, reference_items())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the reference canary set.")
    parser.add_argument("--out", type=Path, default=REFERENCE_SET)
    write_reference_set(parser.parse_args(argv).out)


if __name__ == "__main__":
    main()
