"""The file store: round trips, versioned pins, bounded run history, atomic writes, the lock."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from canary.drift import DriftConfig, plan_streams
from canary.pins import GoldenOutput, Pin
from canary.runs import CanaryRun, compare_run, figures
from canary.state import CanaryStoreError, FileCanaryStore, ModelState
from gateway.kernel.modeltuple import ModelTuple

TUPLE = ModelTuple(name="m/1", engine="transformers", base_weights_sha256="ab" * 32)


def make_pin(version: int = 1) -> Pin:
    golden = [GoldenOutput(item_id=f"i{n}", slice="s", text="x", token_ids=[1, 2],
                           logprobs=[-0.1, -0.2], passed=n % 2 == 0) for n in range(4)]
    return Pin(model="m/1", version=version, created_at=1.0, model_tuple=TUPLE,
               tuple_digest=TUPLE.digest(), set_path="/s.jsonl", set_sha256="cd" * 32,
               golden=golden)


def make_run(number: int) -> CanaryRun:
    return CanaryRun(id=f"run-{number}", model="m/1", started_at=float(number), wall_s=0.1,
                     pin_version=1, set_sha256="cd" * 32, pinned_digest="a", served_digest="a",
                     items=[], slices={}, overall=figures([]))


async def test_round_trip_and_versions(tmp_path: Path) -> None:
    store = FileCanaryStore(tmp_path / "canary")
    assert await store.models() == [] and await store.get_pin("m/1") is None
    await store.put_pin(make_pin(1))
    await store.put_pin(make_pin(2))
    assert await store.models() == ["m/1"]  # a name with a slash is one directory
    assert (await store.get_pin("m/1")) == make_pin(2)
    assert await store.pin_versions("m/1") == [1, 2]
    state = ModelState(model="m/1", pin_version=2,
                       drift=plan_streams(make_pin().slice_pass_counts(), DriftConfig()))
    state.drift.observe("agreement", [False] * 5, 3.0)
    await store.put_state(state)
    assert await store.get_state("m/1") == state
    for number in range(5):
        await store.append_run(make_run(number), keep=3)
    assert [r.id for r in await store.runs("m/1")] == ["run-2", "run-3", "run-4"]
    assert [r.id for r in await store.runs("m/1", limit=1)] == ["run-4"]
    assert await store.unpin("m/1")
    assert await store.get_pin("m/1") is None and await store.get_state("m/1") is None
    assert await store.pin_versions("m/1") == [1, 2] and len(await store.runs("m/1")) == 3
    assert not await store.unpin("m/1")


async def test_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileCanaryStore(tmp_path)
    await store.put_pin(make_pin(1))
    pin_file = store.model_dir("m/1") / "pin.json"
    before = pin_file.read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(CanaryStoreError, match="No space left"):
        await store.put_pin(make_pin(2))
    assert pin_file.read_bytes() == before  # the old pin is intact
    assert not [p for p in pin_file.parent.iterdir() if p.name.startswith(".pin")]


async def test_corrupt_file_is_named(tmp_path: Path) -> None:
    store = FileCanaryStore(tmp_path)
    await store.put_pin(make_pin(1))
    (store.model_dir("m/1") / "pin.json").write_text("{not json")
    with pytest.raises(CanaryStoreError, match=r"pin\.json: not a valid Pin"):
        await store.get_pin("m/1")


async def test_lock_serialises_writers(tmp_path: Path) -> None:
    store = FileCanaryStore(tmp_path)
    order: list[str] = []

    async def writer(name: str) -> None:
        async with store.lock("m"):
            order.append(f"{name}+")
            await asyncio.sleep(0.05)
            order.append(f"{name}-")

    await asyncio.gather(writer("a"), writer("b"))
    assert order in (["a+", "a-", "b+", "b-"], ["b+", "b-", "a+", "a-"])


def test_compare_run_with_errors_and_tuple_change() -> None:
    from gateway.evals.harness import ItemRun
    from gateway.evals.tasksets import TaskItem

    pin = make_pin()
    items = [TaskItem.model_validate({"id": f"i{n}", "kind": "completion", "prompt": "p",
                                      "answer": "x", "grader": {"type": "exact"}, "slice": "s",
                                      "max_tokens": 2}) for n in range(4)]
    runs = [ItemRun(item=item, text="x", passed=True, detail="", latency_s=0.01,
                    completion_tokens=2, prompt_tokens=1, token_ids=[1, 2],
                    logprobs=[-0.1, -0.2]) for item in items[:3]]
    runs.append(ItemRun(item=items[3], text="", passed=False, detail="error", latency_s=0.0,
                        completion_tokens=0, prompt_tokens=0, error="upstream down"))
    served = ModelTuple.model_validate({**TUPLE.model_dump(), "base_weights_sha256": "ef" * 32})
    run = compare_run(pin, served, runs, 5.0, 0.2)
    assert run.tuple_changed and set(run.tuple_changes) == {"base_weights_sha256"}
    assert run.overall.errors == 1 and run.overall.agreement == 0.75
    assert run.overall.golden_pass_rate == 0.5 and run.overall.pass_rate == 0.75
    assert CanaryRun.model_validate_json(run.model_dump_json()) == run
