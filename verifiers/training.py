"""Training a verifier from examples, and training + saving one from a data file."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from verifiers.artifact import file_sha256, save_artifact
from verifiers.data import Example, read_examples, split_examples
from verifiers.errors import DataFormatError
from verifiers.evaluation import EvalReport, evaluate
from verifiers.features import NumericExtractor
from verifiers.models import Labels, State, extractors_of, fit_state
from verifiers.scoring import Verifier
from verifiers.spec import Kind, Target, VerifierSpec, preset, with_embeddings

SPLIT_RULE = "validation when int(sha256(prompt), 16) % 10 < 2, else train"


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


def train_artifact(data: Path, kind: Kind, out: Path, *, target: Target = "gain",
                   validation_data: Path | None = None, strict: bool = False,
                   recipe: str = "default", embeddings: bool = False) -> TrainResult:
    """Read ``data``, split it by prompt hash (or validate on ``validation_data``), train the
    ``kind`` preset of ``recipe`` (plus the prompt embedding block with ``embeddings``),
    evaluate on the validation rows and write the artifact to ``out``."""
    spec = preset(kind, target, recipe)
    if embeddings:
        spec = with_embeddings(spec)
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
    training = {"data": data.name, "sha256": file_sha256(data), "split": split,
                "rows": {"train": len(train), "validation": len(validation),
                         "skipped": len(problems)}}
    if validation_data is not None:
        training["validation_sha256"] = file_sha256(validation_data)
    saved = save_artifact(out, spec, verifier.state, training=training,
                          validation=summary_json(report) if report else None,
                          extractors=verifier.featurizer.extractors)
    return TrainResult(saved, len(train), report, problems)
