"""The task-set format: typed items, round trip, and file:line errors for bad lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.evals.graders import NumericGrader
from gateway.evals.tasksets import TaskItem, TaskSetError, by_slice, load_taskset, save_taskset

COMPLETION = (
    '{"id": "a1", "kind": "completion", "prompt": "rev(12+34)=", "answer": "64",'
    ' "grader": {"type": "exact"}, "slice": "add/2", "max_tokens": 4}'
)
CHAT = (
    '{"id": "c1", "kind": "chat", "messages": [{"role": "user", "content": "How many?"}],'
    ' "answer": "12", "grader": {"type": "numeric", "abs_tol": 0.5}, "slice": "math",'
    ' "max_tokens": 32, "meta": {"source": "unit"}}'
)


def write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_typed_items(tmp_path: Path) -> None:
    items = load_taskset(write(tmp_path, COMPLETION, "", CHAT))
    assert [i.id for i in items] == ["a1", "c1"]
    completion, chat = items
    assert completion.prompt == "rev(12+34)=" and completion.messages is None
    assert chat.messages is not None and chat.messages[0].content == "How many?"
    assert isinstance(chat.grader, NumericGrader) and chat.grader.abs_tol == 0.5
    assert chat.meta == {"source": "unit"}
    assert completion.grade("64\n").passed and not completion.grade("46").passed
    assert chat.grade("about 12.4 of them").passed
    assert list(by_slice(items)) == ["add/2", "math"]


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    items = load_taskset(write(tmp_path, COMPLETION, CHAT))
    target = tmp_path / "out" / "copy.jsonl"
    save_taskset(target, items)
    assert load_taskset(target) == items
    first = target.read_text().splitlines()[0]
    assert '"grader":{"type":"exact"}' in first and "meta" not in first
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]


def test_json_schema_grader_round_trips_its_schema(tmp_path: Path) -> None:
    item = TaskItem.model_validate(
        {
            "id": "j",
            "kind": "completion",
            "prompt": "json please",
            "answer": "",
            "grader": {"type": "json_schema", "schema": {"type": "object", "required": ["a"]}},
            "slice": "structured",
            "max_tokens": 16,
        }
    )
    save_taskset(tmp_path / "j.jsonl", [item])
    assert '"schema":{"type":"object"' in (tmp_path / "j.jsonl").read_text()
    (loaded,) = load_taskset(tmp_path / "j.jsonl")
    assert loaded.grade('{"a": 1}').passed and not loaded.grade("{}").passed


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", ":2: invalid JSON"),
        ("[1, 2]", ":2: expected a JSON object, got list"),
        (COMPLETION.replace('"answer": "64",', ""), ":2: answer: Field required"),
        (COMPLETION.replace('"max_tokens": 4', '"max_tokens": 0'), ":2: max_tokens: Input should"),
        (COMPLETION.replace('"kind": "completion"', '"kind": "chat"'), ":2: (item): a chat item"),
        (COMPLETION.replace('"prompt": "rev(12+34)=", ', ""), "needs 'prompt'"),
        (COMPLETION.replace('"type": "exact"', '"type": "fuzzy"'), ":2: grader: Input tag 'fuzzy'"),
        (
            COMPLETION.replace('"type": "exact"}', '"type": "regex", "pattern": "("}'),
            "invalid regular",
        ),
        (COMPLETION.replace('"slice": "add/2"', '"slice": ""'), ":2: slice: String should have"),
        (COMPLETION[:-1] + ', "extra": 1}', ":2: extra: Extra inputs"),
        (COMPLETION, ":2: id 'a1' repeats line 1"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path: Path, bad: str, message: str) -> None:
    path = write(tmp_path, COMPLETION, bad)
    with pytest.raises(TaskSetError) as info:
        load_taskset(path)
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(TaskSetError, match="cannot read task set"):
        load_taskset(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(TaskSetError, match="has no items"):
        load_taskset(tmp_path / "empty.jsonl")


def test_save_refuses_duplicate_ids(tmp_path: Path) -> None:
    (item,) = load_taskset(write(tmp_path, COMPLETION))
    with pytest.raises(TaskSetError, match="unique"):
        save_taskset(tmp_path / "dup.jsonl", [item, item])
