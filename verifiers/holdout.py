"""Rows a verifier never trained on: which ones may calibrate its threshold, and cross-fitting.

A threshold chosen on the verifier's own training rows promises more than it delivers (on
MMLU: 40.0 % escalated at 83.4 % accuracy promised, 45.8 % at 75.8 % delivered on unseen
prompts). :func:`calibration_rows` decides which labelled rows a threshold may be calibrated on,
from the data file's sha256 and the artifact's manifest:

- the verifier's **training file**: only its prompt-hash **validation split** (the rows the
  verifier was validated on, never trained on); when the verifier was refitted on all rows
  (``verifier train --refit``) the **cross-fitted scores** stored with it instead — each row
  scored by a model that did not see it (:func:`verifiers.training.cross_fit`); anything else
  is in-sample and refused unless explicitly allowed (then with a warning);
- the verifier's **validation file** (``--validation FILE``), or **any other file**: all its rows
  (or its validation split, on request).

Cross-fitted scores are written next to the model as ``calibration.jsonl`` (one row per
training row: id, fold, score as the router computes it — no slice label — and both labels),
pinned by sha256 in the manifest's ``calibration`` entry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from verifiers.artifact import file_sha256
from verifiers.data import SPLIT_RULE, Example, read_examples, split_examples
from verifiers.errors import ArtifactError, DataFormatError, VerifierError
from verifiers.metrics import FloatArray
from verifiers.training import CALIBRATION_FILE

RowChoice = Literal["auto", "validation", "all"]


class InSampleError(VerifierError):
    """Calibrating on rows the verifier trained on (refused unless explicitly allowed)."""


@dataclass(slots=True)
class CalibrationRows:
    """Labelled rows to calibrate on, with their scores when they were stored (cross-fitted)."""

    small: FloatArray
    large: FloatArray
    source: str
    """What the rows are, in words (printed above the suggestion)."""
    examples: list[Example] | None = None
    """Rows to score with the verifier, or ``None`` when ``scores`` are given."""
    scores: FloatArray | None = None
    warning: str | None = None
    """Set when the rows are in-sample (allowed explicitly): the figures are optimistic."""

    @property
    def n(self) -> int:
        return len(self.small)


def _labels(examples: Sequence[Example]) -> tuple[FloatArray, FloatArray]:
    missing = [e.id for e in examples if e.large_correct is None]
    if missing:
        raise DataFormatError(f"calibration needs 'large_correct' on every row; {len(missing)} "
                              f"rows lack it (first: {missing[0]!r})")
    return (np.array([e.small_correct for e in examples], dtype=np.float64),
            np.array([bool(e.large_correct) for e in examples], dtype=np.float64))


def read_calibration(directory: Path, manifest: Mapping[str, Any]) -> CalibrationRows:
    """The cross-fitted scores stored with a refitted verifier (sha256-checked)."""
    entry = manifest.get("calibration")
    if not isinstance(entry, Mapping):
        raise ArtifactError(f"{directory}: the verifier stores no cross-fitted calibration "
                            f"scores (train it with --refit, or give --data)")
    path = directory / str(entry.get("file", CALIBRATION_FILE))
    try:
        actual = file_sha256(path)
    except OSError as exc:
        raise ArtifactError(f"{directory}: cannot read its calibration scores: {exc}") from exc
    if actual != entry.get("sha256"):
        raise ArtifactError(f"{path}: sha256 {actual} differs from the manifest's "
                            f"{entry.get('sha256')}")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    if not rows or any(row.get("large_correct") is None for row in rows):
        raise ArtifactError(f"{path}: calibration rows need both labels")
    return CalibrationRows(
        small=np.array([bool(r["small_correct"]) for r in rows], dtype=np.float64),
        large=np.array([bool(r["large_correct"]) for r in rows], dtype=np.float64),
        scores=np.array([float(r["score"]) for r in rows], dtype=np.float64),
        source=f"the {len(rows)} cross-fitted scores stored with the verifier "
               f"({entry.get('folds')} folds by prompt hash over {entry.get('data')}: each row "
               f"scored by a model that never trained on it)")


def calibration_rows(directory: Path, manifest: Mapping[str, Any], data: Path | None,
                     choice: RowChoice = "auto", allow_in_sample: bool = False
                     ) -> CalibrationRows:
    """The rows of ``data`` (or the stored cross-fitted scores) that may calibrate the verifier
    of ``directory``; see the module docstring. Raises :class:`InSampleError` for in-sample rows
    unless ``allow_in_sample`` (then the result carries a ``warning``)."""
    training = manifest.get("training") or {}
    refit = bool(training.get("refit"))
    if data is None:
        if choice == "all" or choice == "validation":
            raise DataFormatError("--split needs --data")
        return read_calibration(directory, manifest)
    digest = file_sha256(data) if data.is_file() else None
    if digest is None:
        read_examples(data)  # the one-line "cannot read training data" error
    examples = read_examples(data).examples
    is_training = digest == training.get("sha256")
    if is_training:
        if refit and choice == "auto" and isinstance(manifest.get("calibration"), Mapping):
            return read_calibration(directory, manifest)
        hash_split = training.get("split") == SPLIT_RULE and not refit
        if hash_split and choice in ("auto", "validation"):
            _, validation = split_examples(examples)
            if not validation:
                raise DataFormatError(f"{data}: its validation split is empty")
            small, large = _labels(validation)
            return CalibrationRows(small, large, examples=validation, source=(
                f"the {len(validation)} rows of the validation split of {data} (the verifier's "
                f"training file, by sha256: these are the rows it never trained on)"))
        why = ("the verifier was refitted on all of its rows" if refit else
               "every row of it was trained on" if not hash_split else
               "--split all takes the rows it trained on too")
        message = (f"{data} is the verifier's training data (sha256 {str(digest)[:12]}...) and "
                   f"{why}: a threshold chosen there promises more than it delivers")
        if not allow_in_sample:
            hint = ("use its cross-fitted scores (no --data)" if refit else
                    "use --split validation" if hash_split else "give another labelled file")
            raise InSampleError(f"{message}; {hint}, or --allow-in-sample to accept "
                                f"optimistic figures")
        rows = examples
        small, large = _labels(rows)
        return CalibrationRows(small, large, examples=rows, warning=message,
                               source=f"all {len(rows)} rows of {data}, IN-SAMPLE")
    if choice == "validation":
        _, rows = split_examples(examples)
        if not rows:
            raise DataFormatError(f"{data}: its validation split is empty")
        what = f"the {len(rows)} rows of the validation split of {data}"
    else:
        rows = examples
        what = f"all {len(rows)} rows of {data}"
    if digest == training.get("validation_sha256"):
        what += " (the verifier's validation file: never trained on)"
    else:
        what += " (not the verifier's training file, by sha256)"
    small, large = _labels(rows)
    return CalibrationRows(small, large, examples=rows, source=what)
