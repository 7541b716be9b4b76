"""The shipped reference canary set: exactly the generator's output, disjoint from the
reference task sets, every slice present, the extra graders included."""

from __future__ import annotations

from pathlib import Path

import pytest

from canary.sets import REFERENCE_SET, load_canary_set, reference_items
from gateway.evals.tasksets import TaskSetError, load_taskset, save_taskset
from gateway.kernel.digests import file_sha256
from gateway.reference.tasks import TASKSET_DIR, TASKSET_FILES, all_slices


def test_shipped_set_is_the_generators_output(tmp_path: Path) -> None:
    fresh = tmp_path / "reference.jsonl"
    save_taskset(fresh, reference_items())
    assert fresh.read_bytes() == REFERENCE_SET.read_bytes()


def test_reference_set_slices_and_graders() -> None:
    canary_set = load_canary_set(REFERENCE_SET)
    assert canary_set.sha256 == file_sha256(REFERENCE_SET)
    assert 60 <= len(canary_set.items) <= 120
    slices = canary_set.slices()
    assert list(slices)[:15] == all_slices()  # add/1..5, mul/1..5, sort/3..10: tails included
    assert all(len(slices[name]) == 6 for name in all_slices())
    graders = {name: {i.grader.type for i in items} for name, items in slices.items()}
    assert graders["grader/numeric"] == {"numeric"} and graders["grader/regex"] == {"regex"}
    assert graders["grader/json_schema"] == {"json_schema"}
    item = next(iter(slices["grader/json_schema"]))
    assert item.grade(item.answer).passed and not item.grade("abc").passed
    assert canary_set.item(item.id) is item and canary_set.item("nope") is None


def test_reference_set_is_disjoint_from_the_task_sets() -> None:
    prompts = {i.prompt for i in load_canary_set(REFERENCE_SET).items}
    for name in TASKSET_FILES.values():
        assert not prompts & {i.prompt for i in load_taskset(TASKSET_DIR / name)}


def test_bad_set_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "kind": "completion", "prompt": "x", "answer": "y", '
                   '"grader": {"type": "regex", "pattern": "("}, "slice": "s", '
                   '"max_tokens": 3}\n')
    with pytest.raises(TaskSetError, match=r"bad\.jsonl:1: grader.*invalid regular expression"):
        load_canary_set(bad)
