"""Training a verifier from examples, and training + saving one from a data file."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from verifiers.artifact import file_sha256, save_artifact
from verifiers.data import SPLIT_RULE, Example, read_examples, split_examples
from verifiers.errors import DataFormatError
from verifiers.evaluation import EvalReport, evaluate
from verifiers.features import NumericExtractor
from verifiers.metrics import FloatArray
from verifiers.models import Labels, State, extractors_of, fit_state
from verifiers.scoring import Verifier
from verifiers.spec import Kind, Target, VerifierSpec, preset, with_embeddings

CALIBRATION_FILE = "calibration.jsonl"
FOLD_RULE = "fold = int(sha256(prompt), 16) // 10 % folds (independent of the validation split)"


def labels_for(examples: Sequence[Example], spec: VerifierSpec) -> Labels:
    small_wrong = np.array([not e.small_correct for e in examples], dtype=np.float64)
    if spec.target != "gain":
        return Labels(small_wrong, None)
    missing = [e.id for e in examples if e.large_correct is None]
    if missing:
        raise DataFormatError(
            f"target 'gain' needs 'large_correct' on every training row; {len(missing)} rows "
            f"lack it (first: {missing[0]!r}); train with --target small-wrong instead")
    return Labels(small_wrong, np.array([bool(e.large_correct) for e in examples],
                                        dtype=np.float64))


def check_inputs(examples: Sequence[Example], spec: VerifierSpec) -> None:
    if spec.kind == "answer":
        missing = [e.id for e in examples if e.small is None]
        if missing:
            raise DataFormatError(
                f"an answer verifier needs the small model's answer on every row; "
                f"{len(missing)} rows have none (first: {missing[0]!r})")


def fit(examples: Sequence[Example], spec: VerifierSpec,
        extractors: Sequence[NumericExtractor] | None = None) -> Verifier:
    """Train in memory (no artifact): for notebooks, tests and cross-validation.

    ``extractors``: the spec's numeric extractors, when already built (an embedding block
    loads a model once; share it between fits)."""
    check_inputs(examples, spec)
    if extractors is None:
        extractors = extractors_of(spec)
    state: State = fit_state(spec, [e.input for e in examples], labels_for(examples, spec),
                             extractors)
    return Verifier(spec, state, extractors=extractors)


def fold_of(prompt: str, folds: int) -> int:
    return int(hashlib.sha256(prompt.encode("utf-8")).hexdigest(), 16) // 10 % folds


def cross_fit(examples: Sequence[Example], spec: VerifierSpec, folds: int = 5
              ) -> tuple[FloatArray, list[int]]:
    """Out-of-fold routing scores of ``examples``: each fold (by prompt hash) scored by a model
    trained on the others, without slice labels (as the router scores)."""
    if folds < 2:
        raise DataFormatError("cross-fitting needs at least 2 folds")
    assigned = [fold_of(e.prompt, folds) for e in examples]
    scores = np.zeros(len(examples))
    for fold in range(folds):
        held = [i for i, f in enumerate(assigned) if f == fold]
        if not held:
            continue
        rest = [e for e, f in zip(examples, assigned, strict=True) if f != fold]
        model = fit(rest, spec)
        items = [replace(examples[i].input, slice=None) for i in held]
        scores[held] = model.score_batch(items)
    return scores, assigned


def write_calibration(directory: Path, examples: Sequence[Example], scores: FloatArray,
                      assigned: Sequence[int], folds: int, data: Path) -> dict[str, Any]:
    """Write ``calibration.jsonl``; returns the manifest's ``calibration`` entry."""
    path = directory / CALIBRATION_FILE
    directory.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for example, score, fold in zip(examples, scores, assigned, strict=True):
            handle.write(json.dumps({"id": example.id, "fold": fold, "score": float(score),
                                     "small_correct": example.small_correct,
                                     "large_correct": example.large_correct}) + "\n")
    return {"file": CALIBRATION_FILE, "sha256": file_sha256(path), "method": "cross-fitted",
            "folds": folds, "fold_rule": FOLD_RULE, "rows": len(examples),
            "data": data.name, "data_sha256": file_sha256(data)}


def summary_json(report: EvalReport) -> dict[str, Any]:
    def clean(value: Any) -> Any:
        return None if isinstance(value, float) and math.isnan(value) else value

    return {"rows": report.n,
            "routers": [{k: clean(v) for k, v in s.row().items()} for s in report.routers],
            "notes": list(report.notes)}


@dataclass(slots=True)
class TrainResult:
    verifier: Verifier
    train_rows: int
    validation: EvalReport | None
    problems: list[str] = field(default_factory=list)
    refit_rows: int | None = None
    """With a refit: the rows the saved model was refitted on."""


def train_artifact(data: Path, kind: Kind, out: Path, *, target: Target = "gain",
                   validation_data: Path | None = None, strict: bool = False,
                   recipe: str = "default", embeddings: bool = False, refit: bool = False,
                   folds: int = 5) -> TrainResult:
    """Read ``data``, split it by prompt hash (or validate on ``validation_data``), train the
    ``kind`` preset of ``recipe`` (plus the prompt embedding block with ``embeddings``),
    evaluate on the validation rows and write the artifact to ``out``.

    With ``refit`` the validation figures are those of the model trained on the train split, as
    without; then every row of ``data`` is scored out of fold (``folds`` folds by prompt hash,
    :func:`cross_fit`), those scores are written to ``calibration.jsonl`` (what a threshold is
    calibrated on, :mod:`verifiers.holdout`), and the artifact is the model refitted on all
    rows; the manifest records both."""
    spec = preset(kind, target, recipe)
    if embeddings:
        spec = with_embeddings(spec)
    if refit and validation_data is not None:
        raise DataFormatError("--refit refits on the validation split of --data; with "
                              "--validation FILE the verifier already trains on all of --data")
    dataset = read_examples(data, strict=strict)
    problems = list(dataset.problems)
    if validation_data is None:
        train, validation = split_examples(dataset.examples)
        split = SPLIT_RULE
    else:
        held_out = read_examples(validation_data, strict=strict)
        problems += held_out.problems
        train, validation = dataset.examples, held_out.examples
        split = f"validation rows from {validation_data.name}"
    if not train:
        raise DataFormatError(f"{data}: no training rows after the split")
    verifier = fit(train, spec)
    report = evaluate(verifier, validation) if validation else None
    training: dict[str, Any] = {
        "data": data.name, "sha256": file_sha256(data), "split": split,
        "rows": {"train": len(train), "validation": len(validation), "skipped": len(problems)}}
    if validation_data is not None:
        training["validation_sha256"] = file_sha256(validation_data)
    (out / CALIBRATION_FILE).unlink(missing_ok=True)  # a previous refit's, if any
    calibration = None
    if refit:
        rows = dataset.examples
        scores, assigned = cross_fit(rows, spec, folds)
        calibration = write_calibration(out, rows, scores, assigned, folds, data)
        verifier = fit(rows, spec)
        training["refit"] = {
            "rows": len(rows),
            "validation_model": f"the validation figures are those of the model trained on "
                                f"the {len(train)} train rows, before the refit on all rows"}
    saved = save_artifact(out, spec, verifier.state, training=training,
                          validation=summary_json(report) if report else None,
                          extractors=verifier.featurizer.extractors, calibration=calibration)
    return TrainResult(saved, len(train), report, problems,
                       refit_rows=len(dataset.examples) if refit else None)
