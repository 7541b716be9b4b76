"""The ``[canary]`` and ``[shadow]`` settings sections: canaries against pinned versions, and live
traffic mirrored to them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from pydantic import Field, model_validator

from gateway.backends.settings import ModelSettings
from gateway.kernel.settings import Section


class CanaryModelSettings(Section):
    """Canaries of one configured model (``[canary.models.NAME]``)."""

    canary_set: Path | None = None
    """The canary set (JSONL) this model is pinned and checked with; default:
    ``canary.default_set``."""
    pinned: str | None = None
    """A configured model that serves this model's frozen (pinned) version: where its traffic
    goes on rollback, and what shadow traffic is compared with."""
    rollback: bool = False
    """On a drift alarm, send this model's traffic (directly or as a route's tier) to ``pinned``
    until an operator acknowledges (``tiergate canary ack``)."""
    scheduled: bool = True
    """Include this model in the gateway's scheduled canary runs (when it is pinned)."""


class CanarySettings(Section):
    """Shadow canaries against pinned model versions (``[canary]``; see docs/canaries.md)."""

    dir: Path = Path("var/canary")
    """The canary store: pins (golden outputs), run history and drift state, one directory per
    model (relative: to the working directory)."""
    default_set: Path | None = None
    """The canary set for models that name none; default: the shipped reference set
    (``canary/sets/reference.jsonl``, for ``ref-small`` / ``ref-large``)."""
    drift_test: str = "cusum"
    """The sequential test deciding drift: ``cusum`` (Page's CUSUM; false alarms per run bounded)
    or ``sprt`` (open-ended SPRT; false alarms over a pin's whole life bounded)."""
    false_alarm_rate: float = Field(default=0.01, gt=0.0, lt=1.0)
    """alpha: with ``cusum``, the bound on expected false alarms per model per canary run; with
    ``sprt``, on the probability of any false alarm before the next ack or repin."""
    pass_rate_drop: float = Field(default=0.2, gt=0.0, lt=1.0)
    """The drop of a slice's pass rate (from its golden rate) the pass-rate test is tuned to
    detect: H1 is ``p0 - pass_rate_drop``."""
    agreement_tolerance: float = Field(default=0.01, gt=0.0, lt=1.0)
    """H0 of the agreement test: at most this share of items may differ from their golden token
    ids without drift (0.01 for a deterministic engine; raise it for noisy endpoints)."""
    agreement_alternative: float = Field(default=0.2, gt=0.0, lt=1.0)
    """H1 of the agreement test: this share of items differs from golden."""
    interval_s: float = Field(default=3600.0, ge=0.0)
    """Seconds between scheduled canary runs in the gateway (0: none; runs on demand only)."""
    concurrency: int = Field(default=4, ge=1)
    """Canary items in flight to a model at once."""
    leader_ttl_s: float = Field(default=15.0, gt=0.0)
    """With Redis, the canary leader lock's lifetime: the replica running scheduled canaries
    renews it every third of it; if that replica dies another takes over within it."""
    refresh_s: float = Field(default=5.0, gt=0.0)
    """How often a gateway feeds batched shadow evidence to the drift tests and (without Redis)
    re-reads the canary store for alarms and acks made by other processes (the CLI)."""
    history: int = Field(default=100, ge=1)
    """Canary runs kept per model in the store (oldest dropped first)."""
    alert_sinks: list[str] = Field(default_factory=lambda: ["log"])
    """Where drift alerts go: ``log``, ``metric``, ``webhook`` (several allowed)."""
    webhook_url: str | None = None
    """The ``webhook`` sink's URL: each alert is POSTed there as JSON."""
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    """The ``webhook`` sink's timeout per POST (a failed POST is logged, never retried)."""
    escalation_shift: float = Field(default=0.1, gt=0.0, lt=1.0)
    """Escalation drift (routes with ``expected_escalation`` / ``expected_score_median``): the
    shift of the escalation share (and of the share of scores above the calibration median)
    the sequential test is tuned to detect (``canary/escalation.py``)."""
    escalation_false_alarm_every: float = Field(default=100_000.0, ge=1.0)
    """Escalation drift: decisions of a route between false alarms, at least, on average."""
    models: dict[str, CanaryModelSettings] = Field(default_factory=dict)
    """Per model: its set, pinned version, rollback and shadow share (``[canary.models.NAME]``).
    A model not listed uses the defaults above and has no rollback."""

    @model_validator(mode="after")
    def _known_names(self) -> CanarySettings:
        from canary.alerts import ALERT_SINKS
        from canary.drift import DRIFT_TESTS

        if self.drift_test not in DRIFT_TESTS:
            raise ValueError(f"canary.drift_test: unknown test {self.drift_test!r}; "
                             f"known: {', '.join(DRIFT_TESTS)}")
        unknown = [s for s in self.alert_sinks if s not in ALERT_SINKS]
        if unknown:
            raise ValueError(f"canary.alert_sinks: unknown sinks {unknown}; "
                             f"known: {', '.join(ALERT_SINKS)}")
        if "webhook" in self.alert_sinks and not self.webhook_url:
            raise ValueError("canary.alert_sinks has 'webhook' but no canary.webhook_url")
        if self.agreement_alternative <= self.agreement_tolerance:
            raise ValueError("canary.agreement_alternative must exceed agreement_tolerance")
        return self

    def for_model(self, name: str) -> CanaryModelSettings:
        """The canary settings of ``name`` (the defaults when it has no section)."""
        return self.models.get(name) or CanaryModelSettings()


class ShadowMirror(Section):
    """Mirror a share of one model's live requests to a shadow model, after the response."""

    target: str
    """The configured model that answers the mirrored requests. When it is the model's pinned
    version (``canary.models.NAME.pinned``), a greedy or seeded request must decode to the same
    tokens on both: pairs are drift evidence. Otherwise (e.g. a route's other tier), pairs are
    verifier training data (``tiergate collect --from-shadow``)."""
    share: float = Field(default=0.05, gt=0.0, le=1.0)
    """Share of the model's answered requests that are mirrored (drawn per request)."""


class ShadowSettings(Section):
    mirrors: dict[str, ShadowMirror] = Field(default_factory=dict)
    """Per live model name, where its mirrored requests go."""
    queue_size: int = Field(default=256, ge=1)
    """Mirrored requests waiting for a shadow call; when full, new mirror work is dropped
    (counted in ``tiergate_shadow_total{outcome="dropped"}``), never user work."""
    workers: int = Field(default=2, ge=1, le=64)
    """Shadow calls in flight at once."""
    busy_share: float = Field(default=0.5, gt=0.0, le=1.0)
    """A shadow call is skipped (``outcome="busy"``) while its target has at least this share
    of its ``max_in_flight`` taken: mirrors never take a slot user requests need."""
    timeout_s: float = Field(default=120.0, gt=0)
    """A shadow call that takes longer is abandoned (``outcome="error"``)."""
    dir: Path = Path("var/shadow")
    """Where shadow pairs are appended (JSONL, one file per UTC day)."""


class CanaryDeployment(Protocol):
    """What the canaries read of the gateway's settings (:class:`gateway.settings.Settings`
    is one): their own sections, the configured models and the shared Redis."""

    @property
    def canary(self) -> CanarySettings: ...
    @property
    def shadow(self) -> ShadowSettings: ...
    @property
    def models(self) -> Mapping[str, ModelSettings]: ...
    @property
    def redis_url(self) -> str | None: ...
