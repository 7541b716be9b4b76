"""The baseline harness against a real backend (the scriptable upstream over HTTP)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import orjson

from gateway.backends.http import HTTPBackend
from gateway.backends.settings import HTTPModelSettings
from gateway.evals.harness import agreement, run_taskset, summarize
from gateway.evals.tasksets import TaskItem, load_taskset
from tests.conftest import REPO, ServerProcess, upstream_model, write_config

ITEMS = [
    {"id": "a", "kind": "completion", "prompt": "hello", "answer": "echo: hello",
     "grader": {"type": "exact"}, "slice": "greet", "max_tokens": 50},
    {"id": "b", "kind": "chat", "messages": [{"role": "user", "content": "42"}],
     "answer": "42", "grader": {"type": "numeric"}, "slice": "math", "max_tokens": 50},
    {"id": "c", "kind": "completion", "prompt": "7", "answer": "8",
     "grader": {"type": "numeric"}, "slice": "math", "max_tokens": 50},
]


def write_taskset(path: Path) -> Path:
    path.write_bytes(b"".join(orjson.dumps(i) + b"\n" for i in ITEMS))
    return path


async def test_run_and_summarize(upstream: ServerProcess) -> None:
    backend = HTTPBackend("echo", HTTPModelSettings.model_validate(
        upstream_model(upstream, "echo")))
    await backend.start()
    try:
        items = [TaskItem.model_validate(i) for i in ITEMS]
        runs = await run_taskset(backend, items, concurrency=2)
    finally:
        await backend.aclose()
    assert [r.item.id for r in runs] == ["a", "b", "c"]
    assert [r.passed for r in runs] == [True, True, False]
    assert runs[0].logprobs is not None and runs[0].completion_tokens > 0
    report = summarize("echo", "sha256:x", "t", "y", runs, 1.0)
    assert report.slices["greet"].accuracy == 1.0
    assert report.slices["math"].accuracy == 0.5 and report.slices["math"].items == 2
    assert abs(report.overall.accuracy - 2 / 3) < 1e-9
    assert report.id.startswith("eval-")
    assert agreement(runs, runs)["all"] == 1.0


def test_eval_command_prints_slices_and_writes_report(tmp_path: Path,
                                                      upstream: ServerProcess) -> None:
    config = write_config(tmp_path / "c.toml", {
        "models.echo": upstream_model(upstream, "echo"),
        "models.twin": upstream_model(upstream, "echo")})
    taskset = write_taskset(tmp_path / "t.jsonl")
    out = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "eval", "--config", str(config), "--model", "echo",
         "--baseline", "twin", "--task-set", str(taskset), "--out", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("math") and "50.0%" in line for line in lines)
    assert any(line.startswith("ALL") for line in lines)
    sha256 = hashlib.sha256(out.read_bytes()).hexdigest()
    assert f'eval = "{out}"' in result.stdout and f'eval_sha256 = "{sha256}"' in result.stdout
    report = orjson.loads(out.read_bytes())
    assert report["report"]["model_tuple"]["name"] == "echo"
    assert report["baseline"]["model_tuple"]["name"] == "twin"
    assert report["report"]["created"].endswith("+00:00")
    assert report["report"]["slices"]["greet"]["accuracy"] == 1.0
    assert report["report"]["agreement"]["all"] == 1.0
    assert len(load_taskset(taskset)) == 3
