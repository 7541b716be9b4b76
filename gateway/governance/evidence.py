"""Eval files as evidence: what ``tiergate eval --out FILE`` wrote, read back and checked.

A file holds the evaluated tuple's report and, when the eval ran with ``--baseline``, the
baseline's: per-slice accuracy, the task set's digest, when it ran and both tuples. The gates
(:mod:`gateway.governance.gates`) read only what is here; a file that cannot be read, is not an
eval, or does not match its pinned sha256 is refused with one line that says why.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.kernel.modeltuple import EvalRef


class EvidenceError(Exception):
    """An eval file that cannot serve as evidence (unreadable, not an eval, changed)."""


class SliceFigure(BaseModel):
    model_config = ConfigDict(extra="ignore")

    items: int = Field(ge=0)
    accuracy: float = Field(ge=0, le=1)


class EvaluatedModel(BaseModel):
    """One side of an eval file: a model's figures on a task set."""

    model_config = ConfigDict(extra="ignore")

    id: str
    model: str
    tuple_digest: str
    taskset: str
    taskset_sha256: str
    created: str = ""
    overall: SliceFigure
    slices: dict[str, SliceFigure]
    model_tuple: dict[str, Any] = Field(default_factory=dict)

    @property
    def created_at(self) -> datetime | None:
        try:
            when = datetime.fromisoformat(self.created)
        except ValueError:
            return None
        return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


class _EvalFile(BaseModel):
    model_config = ConfigDict(extra="ignore")

    report: EvaluatedModel
    baseline: EvaluatedModel | None = None


@dataclass(frozen=True, slots=True)
class EvalEvidence:
    """An eval file, read: its path, its sha256, the report and the baseline's."""

    path: Path
    sha256: str
    report: EvaluatedModel
    baseline: EvaluatedModel | None

    @classmethod
    def load(cls, path: Path, pinned_sha256: str | None = None) -> EvalEvidence:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise EvidenceError(f"cannot read eval file {path}: {exc.strerror or exc}") from exc
        digest = hashlib.sha256(raw).hexdigest()
        if pinned_sha256 is not None and digest != pinned_sha256:
            raise EvidenceError(f"eval file {path} changed: sha256 {digest[:12]}…, pinned "
                                f"{pinned_sha256[:12]}…")
        try:
            parsed = _EvalFile.model_validate(orjson.loads(raw))
        except (orjson.JSONDecodeError, ValidationError) as exc:
            raise EvidenceError(f"{path} is not an eval file written by `tiergate eval "
                                f"--out`: {str(exc).splitlines()[0]}") from exc
        return cls(path, digest, parsed.report, parsed.baseline)

    @property
    def evaluated_at(self) -> datetime | None:
        return self.report.created_at

    def ref(self) -> EvalRef:
        """What the tuple's ``validating_eval`` shows (cards, records)."""
        return EvalRef(id=self.report.id, score=round(self.report.overall.accuracy, 4),
                       slices={k: round(v.accuracy, 4) for k, v in self.report.slices.items()},
                       created=self.report.created or None, sha256=self.sha256)
