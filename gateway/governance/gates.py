"""The gates a model tuple passes before it serves, by name (:data:`GATES`).

Each gate is a pure function of a :class:`GateInput` (the tuple as served, its settings, its
eval files, its teacher's tuple) returning a :class:`GateResult`, or ``None`` when it does not
apply to this tuple:

- ``evaluated``: a validating eval exists and evaluated *this* tuple (same digest);
- ``quantized``: a quantized tuple's eval compares it with its full-precision baseline (same
  base weights and adapter, no quantization) and no slice falls below the baseline by more than
  its tolerance — quantization fails in the tail, so an average that holds is not enough;
- ``adapter``: an adapter's task eval is against its base (the task rises) and its
  ``general_eval`` shows the base's general capability held on every slice;
- ``distilled``: a student's eval is against its recorded teacher, within tolerance per slice.

What a failed gate does (refuse, or serve with a warning or an override) is decided by
:mod:`gateway.governance.registry`, not here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gateway.backends.settings import ModelBaseSettings
from gateway.governance.evidence import EvalEvidence, EvaluatedModel
from gateway.kernel.modeltuple import ModelTuple


@dataclass(frozen=True, slots=True)
class GateResult:
    gate: str
    passed: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"gate": self.gate, "passed": self.passed, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class GateInput:
    """Everything a gate may look at for one served tuple."""

    model: ModelTuple
    settings: ModelBaseSettings
    evidence: EvalEvidence | None
    general: EvalEvidence | None = None
    teacher: ModelTuple | None = None
    default_tolerance: float = 0.05
    problems: dict[str, str] = field(default_factory=dict)
    """Eval files that could not be read (``eval`` / ``general_eval`` → why)."""

    def tolerance(self, slice_name: str) -> float:
        return self.settings.slice_tolerances.get(slice_name, self.default_tolerance)


Gate = Callable[[GateInput], "GateResult | None"]


def _identity(side: EvaluatedModel) -> dict[str, Any]:
    return side.model_tuple


def _same(a: dict[str, Any], b: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    """The keys among ``keys`` where ``a`` and ``b`` differ."""
    return [k for k in keys if a.get(k) != b.get(k)]


def _unquantized(quantization: Any) -> bool:
    return not quantization or (isinstance(quantization, dict)
                                and quantization.get("method", "none") == "none")


def _slices_within(gate: str, report: EvaluatedModel, baseline: EvaluatedModel,
                   tolerance: Callable[[str], float], against: str) -> GateResult:
    """Every slice of ``report`` at most its tolerance below ``baseline``'s."""
    failing = []
    for name, figure in report.slices.items():
        base = baseline.slices.get(name)
        if base is None:
            failing.append(f"{name}: not in the {against}'s eval")
        elif figure.accuracy < base.accuracy - tolerance(name) - 1e-9:
            failing.append(f"{name} {figure.accuracy:.1%} < {against} {base.accuracy:.1%} "
                           f"- {tolerance(name):.1%}")
    if failing:
        return GateResult(gate, False, "slices below tolerance: " + "; ".join(failing))
    return GateResult(gate, True, f"{len(report.slices)} slices within tolerance of the "
                                  f"{against} (overall {report.overall.accuracy:.1%} vs "
                                  f"{baseline.overall.accuracy:.1%})")


def slice_table(gate_input: GateInput) -> list[dict[str, Any]]:
    """The validating eval per slice against its baseline (full precision, base or teacher, as
    the eval file recorded it) with each slice's tolerance and verdict — what the gates
    compared, for people (``/admin/registry``, the console's Models page). Without an eval:
    no rows; without a baseline: each slice's own figure, ``baseline`` and ``within`` null."""
    evidence = gate_input.evidence
    if evidence is None:
        return []
    baseline = evidence.baseline
    rows = []
    for name, figure in evidence.report.slices.items():
        base = baseline.slices.get(name) if baseline is not None else None
        tolerance = gate_input.tolerance(name)
        rows.append({"slice": name, "items": figure.items, "accuracy": figure.accuracy,
                     "baseline": None if base is None else base.accuracy,
                     "tolerance": tolerance,
                     "within": None if base is None
                     else figure.accuracy >= base.accuracy - tolerance - 1e-9})
    return rows


def evaluated(gate_input: GateInput) -> GateResult:
    problem = gate_input.problems.get("eval")
    if problem is not None:
        return GateResult("evaluated", False, problem)
    evidence = gate_input.evidence
    if evidence is None:
        return GateResult("evaluated", False, "no validating eval: run `tiergate eval --out "
                                              "FILE` and set `eval = FILE`")
    served = gate_input.model.digest()
    if evidence.report.tuple_digest != served:
        differs = _same(gate_input.model.identity(), _identity(evidence.report),
                        ("engine", "engine_version", "upstream_model", "base_weights_sha256",
                         "adapter", "quantization"))
        why = f" (differs in {', '.join(differs)})" if differs and evidence.report.model_tuple \
            else ""
        evaluated_digest = evidence.report.tuple_digest[:19]
        return GateResult("evaluated", False, f"{evidence.path.name} evaluated tuple "
                                              f"{evaluated_digest}, this one is {served[:19]}{why}")
    return GateResult("evaluated", True, f"{evidence.report.id} on {evidence.report.taskset} "
                                         f"({evidence.report.overall.accuracy:.1%})")


def quantized(gate_input: GateInput) -> GateResult | None:
    model = gate_input.model
    if model.quantization.method == "none":
        return None
    evidence = gate_input.evidence
    if evidence is None or evidence.baseline is None:
        return GateResult("quantized", False, "a quantized tuple needs an eval against its "
                                              "full-precision baseline (`tiergate eval "
                                              "--baseline`)")
    base = _identity(evidence.baseline)
    mismatch = _same(model.identity(), base, ("base_weights_sha256", "adapter"))
    if not base or mismatch or not _unquantized(base.get("quantization")):
        why = ", ".join(mismatch) if mismatch else "it is quantized too"
        return GateResult("quantized", False, f"the eval's baseline {evidence.baseline.model} "
                                              f"is not this tuple at full precision ({why})")
    return _slices_within("quantized", evidence.report, evidence.baseline,
                          gate_input.tolerance, "full precision")


def adapter(gate_input: GateInput) -> GateResult | None:
    model = gate_input.model
    if model.adapter is None:
        return None
    problem = gate_input.problems.get("general_eval")
    if problem is not None:
        return GateResult("adapter", False, problem)
    evidence, general = gate_input.evidence, gate_input.general
    if evidence is None or evidence.baseline is None or general is None \
            or general.baseline is None:
        return GateResult("adapter", False, "an adapter needs its task eval and a "
                                            "`general_eval`, both against its base model")
    for name, side in (("task eval", evidence), ("general_eval", general)):
        assert side.baseline is not None
        base = _identity(side.baseline)
        if not base or base.get("adapter") is not None or base.get("base_weights_sha256") \
                != model.base_weights_sha256:
            return GateResult("adapter", False, f"the {name}'s baseline is not this adapter's "
                                                f"base model")
    if general.report.tuple_digest != model.digest():
        return GateResult("adapter", False, "the general_eval evaluated another tuple")
    rise = evidence.report.overall.accuracy - evidence.baseline.overall.accuracy
    if rise <= 0:
        return GateResult("adapter", False, f"the task did not rise: "
                                            f"{evidence.report.overall.accuracy:.1%} vs base "
                                            f"{evidence.baseline.overall.accuracy:.1%}")
    held = _slices_within("adapter", general.report, general.baseline, gate_input.tolerance,
                          "base")
    if not held.passed:
        return GateResult("adapter", False, "general capability did not hold: " + held.detail)
    return GateResult("adapter", True, f"task +{rise:.1%} over the base; {held.detail}")


def distilled(gate_input: GateInput) -> GateResult | None:
    settings = gate_input.settings
    if settings.teacher is None:
        return None
    evidence = gate_input.evidence
    if evidence is None or evidence.baseline is None:
        return GateResult("distilled", False, f"a student needs an eval against its teacher "
                                              f"{settings.teacher} (`--baseline`)")
    recorded = settings.teacher_sha256
    if recorded is None:
        return GateResult("distilled", False, "the teacher's tuple digest is not recorded "
                                              "(`teacher_sha256`)")
    if evidence.baseline.tuple_digest != recorded:
        return GateResult("distilled", False, f"the eval's baseline is "
                                              f"{evidence.baseline.tuple_digest[:19]}, not the "
                                              f"recorded teacher {recorded[:19]}")
    teacher = gate_input.teacher
    if teacher is not None and teacher.digest() != recorded:
        return GateResult("distilled", False, f"the configured teacher {settings.teacher} "
                                              f"serves {teacher.digest()[:19]}, not the "
                                              f"recorded {recorded[:19]}")
    return _slices_within("distilled", evidence.report, evidence.baseline,
                          gate_input.tolerance, "teacher")


GATES: Mapping[str, Gate] = MappingProxyType({
    "evaluated": evaluated, "quantized": quantized, "adapter": adapter,
    "distilled": distilled})
"""The registry of gates, run in this order."""


def run_gates(gate_input: GateInput) -> list[GateResult]:
    """The result of every gate that applies to this tuple."""
    results = (gate(gate_input) for gate in GATES.values())
    return [result for result in results if result is not None]
