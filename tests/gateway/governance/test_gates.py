"""The gates, in-process, on eval files as ``tiergate eval --out`` writes them: the shipped ones
(deploy/local/evals, real runs of the reference pair and the SmolLM2 tiers), a real run of a
SmolLM2 int8 scheme that fails (evals/) and edited copies."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.backends.settings import EngineModelSettings
from gateway.governance.evidence import EvalEvidence, EvidenceError
from gateway.governance.gates import GateInput, run_gates, slice_table
from gateway.kernel.modeltuple import AdapterRef, ModelTuple, Quantization
from tests.conftest import REPO

EVALS = REPO / "deploy" / "local" / "evals"


def tuple_of(side: dict[str, Any]) -> ModelTuple:
    return ModelTuple.model_validate(side["model_tuple"])


def write(path: Path, payload: dict[str, Any]) -> Path:
    path.write_bytes(orjson.dumps(payload))
    return path


def gate(model: ModelTuple, evidence: EvalEvidence | None, **settings: Any) -> dict[str, Any]:
    """The gates' verdicts by name: (passed, detail)."""
    results = run_gates(GateInput(model, EngineModelSettings(path=Path("x"), **settings),
                                  evidence))
    return {r.gate: (r.passed, r.detail) for r in results}


def test_no_eval_fails_the_evaluated_gate() -> None:
    model = ModelTuple(name="m", engine="transformers")
    verdicts = gate(model, None)
    assert verdicts["evaluated"][0] is False
    assert "tiergate eval --out" in verdicts["evaluated"][1]


def test_the_eval_of_the_served_tuple_passes() -> None:
    evidence = EvalEvidence.load(EVALS / "ref-large.json")
    model = tuple_of(orjson.loads((EVALS / "ref-large.json").read_bytes())["report"])
    assert model.digest() == evidence.report.tuple_digest
    verdicts = gate(model, evidence)
    assert verdicts == {"evaluated": (True, verdicts["evaluated"][1])}
    assert evidence.ref().id == evidence.report.id and evidence.ref().sha256 == evidence.sha256


def test_an_eval_of_another_tuple_fails_naming_what_differs() -> None:
    evidence = EvalEvidence.load(EVALS / "ref-large.json")
    served = tuple_of(orjson.loads((EVALS / "ref-large.json").read_bytes())["report"])
    other = served.model_copy(update={"base_weights_sha256": "0" * 64})
    passed, detail = gate(other, evidence)["evaluated"]
    assert not passed and "base_weights_sha256" in detail


def test_a_changed_or_foreign_eval_file_is_refused_in_one_line(tmp_path: Path) -> None:
    data = (EVALS / "ref-large.json").read_bytes()
    with pytest.raises(EvidenceError, match="changed"):
        EvalEvidence.load(write(tmp_path / "e.json", orjson.loads(data)), pinned_sha256="0" * 64)
    (tmp_path / "bad.json").write_text('{"not": "an eval"}')
    with pytest.raises(EvidenceError, match="not an eval file") as caught:
        EvalEvidence.load(tmp_path / "bad.json")
    assert "\n" not in str(caught.value)
    with pytest.raises(EvidenceError, match="cannot read"):
        EvalEvidence.load(tmp_path / "missing.json")


def test_dynamic_int8_fails_its_gate_in_the_tail() -> None:
    """SmolLM2 under torch dynamic int8 (activations quantized per call, down_proj kept in
    float) against fp32 on the shipped chat set — the small tier's scheme until the weight-only
    one replaced it, its eval file kept as it was written: its eval is its own, but two slices
    fall far below full precision."""
    path = Path(__file__).parent / "evals" / "smollm2-135m-int8-dynamic.json"
    evidence = EvalEvidence.load(path)
    model = tuple_of(orjson.loads(path.read_bytes())["report"])
    assert model.quantization.method == "int8-dynamic"
    verdicts = gate(model, evidence)
    assert verdicts["evaluated"][0], verdicts
    passed, detail = verdicts["quantized"]
    assert not passed and detail.startswith("slices below tolerance: ")
    failing = {part.split(" ")[0] for part in detail.split(": ", 1)[1].split("; ")}
    assert {"copy", "yes-no"} <= failing


def test_the_shipped_int8_tier_passes_its_gate() -> None:
    """The default config's SmolLM2 int8 tier (weight-only, head re-scored) holds every slice."""
    path = EVALS / "smollm2-135m-int8.json"
    evidence = EvalEvidence.load(path)
    model = tuple_of(orjson.loads(path.read_bytes())["report"])
    assert model.quantization.method == "int8-weight-only"
    verdicts = gate(model, evidence, int8=True, int8_activations="float")
    assert verdicts["evaluated"][0] and verdicts["quantized"][0], verdicts


def test_one_collapsed_slice_fails_the_gate_while_the_average_holds(tmp_path: Path) -> None:
    full = ModelTuple(name="fp", engine="transformers", base_weights_sha256="f" * 64)
    int8 = full.model_copy(update={"name": "int8", "quantization": Quantization(
        method="int8-dynamic", bits=8)})
    figures = {"short": 0.90, "medium": 0.85, "long": 0.80, "many-digits": 0.75}
    collapsed = {**figures, "short": 0.94, "medium": 0.89, "long": 0.84, "many-digits": 0.63}
    evidence = EvalEvidence.load(write(tmp_path / "e.json", synthetic(int8, full, collapsed,
                                                                       figures)))
    assert evidence.baseline is not None
    assert evidence.report.overall.accuracy >= evidence.baseline.overall.accuracy - 0.01
    passed, detail = gate(int8, evidence)["quantized"]
    assert not passed and detail == ("slices below tolerance: many-digits 63.0% < full "
                                     "precision 75.0% - 5.0%")
    # a tolerance decided in advance for that slice lets it through
    assert gate(int8, evidence, slice_tolerances={"many-digits": 0.15})["quantized"][0]


def test_the_slice_table_shows_what_the_gate_compared(tmp_path: Path) -> None:
    full = ModelTuple(name="fp", engine="transformers", base_weights_sha256="f" * 64)
    int8 = full.model_copy(update={"name": "int8", "quantization": Quantization(
        method="int8-dynamic", bits=8)})
    baseline = {"short": 0.90, "many-digits": 0.75}
    served = {"short": 0.88, "many-digits": 0.63}
    evidence = EvalEvidence.load(write(tmp_path / "e.json", synthetic(int8, full, served,
                                                                       baseline)))
    given = GateInput(int8, EngineModelSettings(path=Path("x"),
                                                slice_tolerances={"short": 0.01}), evidence)
    rows = {r["slice"]: r for r in slice_table(given)}
    assert rows["short"]["accuracy"] == 0.88 and rows["short"]["baseline"] == 0.90
    assert rows["short"]["tolerance"] == 0.01 and rows["short"]["within"] is False
    assert rows["many-digits"]["tolerance"] == 0.05 and rows["many-digits"]["within"] is False
    assert gate(int8, evidence, slice_tolerances={"short": 0.01})["quantized"][0] is False
    loose = GateInput(int8, EngineModelSettings(path=Path("x"), slice_tolerances={
        "short": 0.05, "many-digits": 0.15}), evidence)
    assert all(r["within"] for r in slice_table(loose))
    # the same verdict as the gate's, slice by slice
    assert gate(int8, evidence, slice_tolerances={"short": 0.05, "many-digits": 0.15})[
        "quantized"][0] is True
    no_baseline = EvalEvidence.load(EVALS / "ref-large.json")
    large = tuple_of(orjson.loads((EVALS / "ref-large.json").read_bytes())["report"])
    rows = slice_table(GateInput(large, EngineModelSettings(path=Path("x")), no_baseline))
    assert rows and all(r["baseline"] is None and r["within"] is None for r in rows)
    assert slice_table(GateInput(large, EngineModelSettings(path=Path("x")), None)) == []


def test_a_quantized_tuple_needs_its_full_precision_baseline(tmp_path: Path) -> None:
    payload = orjson.loads((EVALS / "smollm2-135m-int8.json").read_bytes())
    model = tuple_of(payload["report"])
    alone = write(tmp_path / "alone.json", {**payload, "baseline": None})
    assert not gate(model, EvalEvidence.load(alone))["quantized"][0]
    wrong = copy.deepcopy(payload)
    wrong["baseline"]["model_tuple"]["quantization"] = {"method": "int8-dynamic", "bits": 8,
                                                       "details": {}}
    passed, detail = gate(model, EvalEvidence.load(write(tmp_path / "w.json", wrong)))["quantized"]
    assert not passed and "not this tuple at full precision" in detail


def synthetic(model: ModelTuple, base: ModelTuple, acc: dict[str, float],
              base_acc: dict[str, float]) -> dict[str, Any]:
    def side(t: ModelTuple, figures: dict[str, float]) -> dict[str, Any]:
        overall = sum(figures.values()) / len(figures)
        return {"id": "eval-x", "model": t.name, "tuple_digest": t.digest(), "taskset": "t",
                "taskset_sha256": "s", "created": "2026-12-01T00:00:00+00:00",
                "overall": {"items": 10 * len(figures), "accuracy": overall},
                "slices": {k: {"items": 10, "accuracy": v} for k, v in figures.items()},
                "model_tuple": t.model_dump(mode="json")}
    return {"report": side(model, acc), "baseline": side(base, base_acc)}


BASE = ModelTuple(name="base", engine="transformers", base_weights_sha256="a" * 64)
TUNED = BASE.model_copy(update={"name": "tuned", "adapter": AdapterRef(id="lora", sha256="b" * 64)})


def test_an_adapter_must_raise_its_task_and_hold_general_capability(tmp_path: Path) -> None:
    task = EvalEvidence.load(write(tmp_path / "task.json", synthetic(
        TUNED, BASE, {"task": 0.9}, {"task": 0.5})))
    held = EvalEvidence.load(write(tmp_path / "general.json", synthetic(
        TUNED, BASE, {"qa": 0.80, "math": 0.60}, {"qa": 0.82, "math": 0.61})))
    forgot = EvalEvidence.load(write(tmp_path / "forgot.json", synthetic(
        TUNED, BASE, {"qa": 0.80, "math": 0.30}, {"qa": 0.82, "math": 0.61})))
    flat = EvalEvidence.load(write(tmp_path / "flat.json", synthetic(
        TUNED, BASE, {"task": 0.5}, {"task": 0.5})))

    def adapter_gate(evidence: EvalEvidence, general: EvalEvidence | None) -> tuple[bool, str]:
        results = run_gates(GateInput(TUNED, EngineModelSettings(path=Path("x")), evidence,
                                      general))
        return next((r.passed, r.detail) for r in results if r.gate == "adapter")

    assert adapter_gate(task, held)[0]
    passed, detail = adapter_gate(task, forgot)
    assert not passed and "general capability did not hold" in detail and "math" in detail
    passed, detail = adapter_gate(flat, held)
    assert not passed and "did not rise" in detail
    passed, detail = adapter_gate(task, None)
    assert not passed and "general_eval" in detail


def test_a_student_is_compared_with_its_recorded_teacher(tmp_path: Path) -> None:
    teacher = ModelTuple(name="teacher", engine="transformers", base_weights_sha256="c" * 64)
    student = ModelTuple(name="student", engine="transformers", base_weights_sha256="d" * 64)
    evidence = EvalEvidence.load(write(tmp_path / "s.json", synthetic(
        student, teacher, {"a": 0.70}, {"a": 0.72})))

    def distilled(**settings: Any) -> tuple[bool, str]:
        results = run_gates(GateInput(student, EngineModelSettings(path=Path("x"), **settings),
                                      evidence, teacher=teacher))
        return next((r.passed, r.detail) for r in results if r.gate == "distilled")

    assert distilled(teacher="teacher", teacher_sha256=teacher.digest())[0]
    passed, detail = distilled(teacher="teacher", teacher_sha256="sha256:" + "e" * 64)
    assert not passed and "not the recorded teacher" in detail
    passed, detail = distilled(teacher="teacher")
    assert not passed and "teacher_sha256" in detail
    assert not distilled(teacher="teacher", teacher_sha256=teacher.digest(),
                         slice_tolerances={"a": 0.0})[0]
