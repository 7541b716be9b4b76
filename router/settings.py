"""The ``[routes.NAME]`` settings section: a routed model name and how it chooses a tier."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.kernel.settings import Section
from router.strategies import ROUTING_MODES


class RouteSettings(Section):
    """A routed model name (e.g. ``auto``): which tier answers each request."""

    mode: str
    """A name in ``router.strategies.ROUTING_MODES``. Built in: ``fixed``: always ``tier``;
    ``prompt``: a prompt verifier decides before generating; ``cascade``: the small model
    answers, an answer verifier accepts it or escalates."""
    small: str
    """The small (cheap, quantized) tier: a configured model."""
    large: str
    """The large tier: a configured model."""
    tier: Literal["small", "large"] = "small"
    """``fixed`` routes: the tier that always answers."""
    verifier: Path | None = None
    """``prompt`` / ``cascade``: a verifier artifact directory (``tiergate verifier train``)."""
    verifier_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """Pins the artifact: the sha256 of its model file (its manifest's ``sha256``). Required
    with a verifier: an artifact swapped for another well-formed one must not load silently."""
    evaluation_data: Path | None = None
    """``prompt`` / ``cascade``: labelled pairs the verifier never trained on (a JSONL as
    ``tiergate collect`` writes it; relative to the config file): what ``GET
    /admin/routes/{route}/curve?source=evaluation`` scores with the route's verifier to draw
    its quality-vs-escalation curve (only the rows :mod:`verifiers.holdout` lets calibrate)."""
    allow_unpinned_verifier: bool = False
    """Load the verifier without ``verifier_sha256`` (development only; warned at start)."""
    threshold: float = 0.5
    """Escalate when the verifier's score >= threshold (changed live by the admin API)."""
    expected_escalation: float | None = Field(default=None, ge=0.0, le=1.0)
    """The escalation share ``threshold`` was calibrated for (``tiergate thresholds suggest``
    prints it): the gateway then watches the live share and alerts on a sustained shift
    (escalation drift, ``canary/escalation.py``)."""
    expected_score_median: float | None = None
    """The median routing score of the calibration rows (``thresholds suggest`` prints it): the
    gateway then watches the share of live scores at or above it (50 % expected)."""

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, mode: str) -> str:
        if mode not in ROUTING_MODES:
            raise ValueError(f"unknown routing mode {mode!r}; known modes: "
                             f"{', '.join(ROUTING_MODES)}")
        return mode

    @model_validator(mode="after")
    def _verifier_needed(self) -> RouteSettings:
        kind = ROUTING_MODES[self.mode].verifier_kind
        if kind is not None and self.verifier is None:
            raise ValueError(f"a {self.mode} route needs a 'verifier' (a {kind} verifier)")
        if kind is not None and self.verifier_sha256 is None \
                and not self.allow_unpinned_verifier:
            raise ValueError(f"a {self.mode} route needs 'verifier_sha256' (the 'sha256' in "
                             "the artifact's manifest.json, printed by `tiergate verifier "
                             "train`), or allow_unpinned_verifier = true")
        return self
