"""The ``[governance]`` settings section (see docs/governance.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from gateway.kernel.settings import Section


class GovernanceSettings(Section):
    """What the gates do, and where the registry keeps its history."""

    ungated: Literal["refuse", "warn"] = "refuse"
    """A tuple that fails a gate (no eval, an eval of another tuple, a slice below its
    tolerance, ...) without a ``gate_override`` of its own: ``refuse`` (not served: its requests
    get 503 ``model_not_validated``) or ``warn`` (served, a WARNING line and a metric)."""
    slice_tolerance: float = Field(default=0.05, ge=0, le=1)
    """How far a quantized (or distilled) tuple's accuracy may fall below its baseline's, per
    slice, unless the model sets ``slice_tolerances``: decided in advance, in config."""
    reevaluate_days: float = Field(default=90.0, gt=0)
    """A tuple whose last evaluation (its eval file, or a passing canary run) is older is
    stale: a metric, an alert through the canary alert sinks, a ``/health`` detail."""
    check_interval_s: float = Field(default=3600.0, gt=0)
    """How often a running gateway re-checks staleness (and re-gates a tuple whose identity
    changed, e.g. an HTTP upstream first reached after the start)."""
    history_path: Path | None = Path("var/registry.sqlite3")
    """SQLite file of which tuple served when (and its gate results); none: not kept."""
