"""The registry of served tuples, as a running gateway keeps it.

At start every model is **admitted**: its eval files are read (:mod:`.evidence`), the gates run
on the tuple it actually serves (:mod:`.gates`), and the outcome is one of

- ``gated``: every gate passed;
- ``overridden``: a gate failed and the model's ``gate_override`` says why it serves anyway
  (a WARNING line with the reason at every start);
- ``warned``: a gate failed and ``governance.ungated = "warn"`` (a WARNING line);
- ``refused``: a gate failed: the model does not serve (503 ``model_not_validated``; a route or
  fallback moves on to the next model) until a start where it passes.

Then the registry tracks **staleness**: a tuple whose last evaluation — its eval file, or a
scheduled canary run that passed on it — is older than its re-evaluation period is stale (a
metric, an alert through the canary alert sinks, a ``/health`` detail). Every start, heartbeat
and evaluation goes to the history (:mod:`.history`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from canary.alerts import Alert, AlertSettings, build_sinks, deliver
from canary.runs import CanaryRun
from gateway.backends.settings import EmbeddingModelSettings, ModelSettings
from gateway.governance.evidence import EvalEvidence, EvidenceError
from gateway.governance.gates import GateInput, GateResult, run_gates, slice_table
from gateway.governance.history import ServingHistory
from gateway.governance.settings import GovernanceSettings
from gateway.models.registry import ModelRegistry
from gateway.telemetry.instruments import Telemetry

log = logging.getLogger("tiergate.governance")

Status = Literal["gated", "overridden", "warned", "refused"]
STATUS_VALUES: Mapping[Status, float] = {"gated": 0, "overridden": 1, "warned": 2, "refused": 3}
DAY_S = 86_400.0


class GovernanceDeployment(Protocol):
    """What the registry reads of the settings (:class:`gateway.settings.Settings` is one)."""

    @property
    def governance(self) -> GovernanceSettings: ...
    @property
    def models(self) -> Mapping[str, ModelSettings]: ...
    @property
    def canary(self) -> AlertSettings: ...


@dataclass(slots=True)
class TupleEntry:
    """One served model as the registry sees it."""

    name: str
    digest: str
    status: Status
    gates: list[GateResult]
    owner: str | None
    eval_id: str | None
    override: str | None
    reevaluate_days: float
    evaluated_at: float | None = None
    """When it was last evaluated (eval file or passing canary run), epoch seconds."""
    evaluated_by: str | None = None
    slices: list[dict[str, Any]] = field(default_factory=list)
    """The validating eval per slice against its baseline and tolerance
    (:func:`gateway.governance.gates.slice_table`)."""
    history_row: int | None = field(default=None, repr=False)

    def stale(self, now: float) -> bool:
        """Served, and not evaluated within its period (or never: served on an override or a
        warning). A refused tuple does not serve: it is not stale, it is refused."""
        if self.status == "refused":
            return False
        return self.evaluated_at is None or \
            now - self.evaluated_at > self.reevaluate_days * DAY_S

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        return {"name": self.name, "digest": self.digest, "status": self.status,
                "gates": [g.to_json() for g in self.gates], "owner": self.owner,
                "eval_id": self.eval_id, "override": self.override,
                "evaluated_at": self.evaluated_at, "evaluated_by": self.evaluated_by,
                "reevaluate_days": self.reevaluate_days, "stale": self.stale(now),
                "slices": self.slices}


def governed(settings: GovernanceDeployment, name: str) -> bool:
    """Whether ``name`` passes gates: generation models (embedding models have no eval harness
    yet: docs/governance.md)."""
    return not isinstance(settings.models[name], EmbeddingModelSettings)


def gate_input(settings: GovernanceDeployment, models: ModelRegistry, name: str) -> GateInput:
    """What the gates look at for ``name``: the tuple its backend serves, its eval files."""
    model = settings.models[name]
    problems: dict[str, str] = {}
    evidence = general = None
    if model.eval is not None:
        try:
            evidence = EvalEvidence.load(model.eval, model.eval_sha256)
        except EvidenceError as exc:
            problems["eval"] = str(exc)
    if model.general_eval is not None:
        try:
            general = EvalEvidence.load(model.general_eval)
        except EvidenceError as exc:
            problems["general_eval"] = str(exc)
    teacher = None
    if model.teacher is not None and model.teacher in models.backends:
        teacher = models.get(model.teacher).describe()
    return GateInput(models.get(name).describe(), model, evidence, general, teacher,
                     settings.governance.slice_tolerance, problems)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the gates say of one model's served tuple, and the status that gives it."""

    name: str
    status: Status
    results: list[GateResult]
    override: str | None
    gate_input: GateInput = field(repr=False)

    @property
    def failed(self) -> list[GateResult]:
        return [r for r in self.results if not r.passed]

    @property
    def why(self) -> str:
        """The failed gates and their details, on one line."""
        return "; ".join(f"{r.gate}: {r.detail}" for r in self.failed).replace("\n", " ")

    @property
    def digest(self) -> str:
        return self.gate_input.model.digest()


def judge(settings: GovernanceDeployment, models: ModelRegistry, name: str) -> Verdict | None:
    """The gates on the tuple ``name`` serves now and the status they give it, without side
    effects (nothing logged, recorded or refused): ``None`` for a model that is not governed.
    The gateway admits with it at start; a canary pin checks with it
    (:func:`gateway.governance.pinning.check_pin`)."""
    if not governed(settings, name):
        return None
    model = settings.models[name]
    given = gate_input(settings, models, name)
    results = run_gates(given)
    status: Status = "gated"
    if any(not r.passed for r in results):
        status = ("overridden" if model.gate_override else
                  "warned" if settings.governance.ungated == "warn" else "refused")
    return Verdict(name, status, results, model.gate_override, given)


class TupleRegistry:
    """Admits the gateway's models, keeps their entries and history, watches staleness."""

    def __init__(self, settings: GovernanceDeployment, models: ModelRegistry,
                 telemetry: Telemetry) -> None:
        self.settings = settings
        self.config = settings.governance
        self.models = models
        self.telemetry = telemetry
        self.entries: dict[str, TupleEntry] = {}
        self.history = (ServingHistory(self.config.history_path)
                        if self.config.history_path is not None else None)
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        self._alerted_stale: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._sinks = build_sinks(settings.canary, self._count_alert)
        telemetry.gauge("tiergate_tuple_gate_status",
                        lambda: {n: STATUS_VALUES[e.status] for n, e in self.entries.items()})
        telemetry.gauge("tiergate_tuple_stale",
                        lambda: {n: float(e.stale(time.time())) for n, e in self.entries.items()})
        telemetry.gauge("tiergate_governance_coverage", self.coverage)
        models.loaded_hooks.append(self.admit)  # a model loaded in the background: before it serves

    def _count_alert(self, alert: Alert) -> None:
        self.telemetry.count_canary_alert(alert.model, alert.kind, alert.source)

    # -- admission ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Admit the models already started (the others as they load), watch staleness."""
        for name, backend in self.models.backends.items():
            if backend.started and name not in self.entries:
                await self.admit(name)
        await self.check()
        self._task = asyncio.create_task(self._check_periodically(), name="governance-check")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        rows = [e.history_row for e in self.entries.values() if e.history_row is not None]
        if self.history is not None and rows:
            await asyncio.to_thread(self.history.seen, rows)

    async def admit(self, name: str) -> TupleEntry | None:
        """Run the gates on ``name``'s served tuple and apply the outcome (``None``: a model
        that is not governed)."""
        verdict = judge(self.settings, self.models, name)
        if verdict is None:
            return None
        settings = self.settings.models[name]
        given, results, status, why = (verdict.gate_input, verdict.results, verdict.status,
                                       verdict.why)
        backend = self.models.get(name)
        evidence = given.evidence
        backend.validating_eval = evidence.ref() if evidence is not None else None
        if status == "refused":
            backend.refusal = (f"model {name} is not served: it did not pass its gates ({why})")
            log.error("model %s refused: %s", name, why)
        else:
            backend.refusal = None
            if status == "overridden":
                log.warning("model %s serves despite failed gates (%s): override: %s", name, why,
                            settings.gate_override)
            elif status == "warned":
                log.warning("model %s serves ungated (governance.ungated = warn): %s", name, why)
        model = given.model
        entry = TupleEntry(name, model.digest(), status, results, settings.owner,
                           evidence.report.id if evidence is not None else None,
                           settings.gate_override,
                           settings.reevaluate_days or self.config.reevaluate_days,
                           slices=slice_table(given))
        if evidence is not None and evidence.report.tuple_digest == entry.digest \
                and evidence.evaluated_at is not None:
            entry.evaluated_at, entry.evaluated_by = evidence.evaluated_at.timestamp(), "eval"
        self.entries[name] = entry
        if self.history is not None:
            try:
                await self._record_start(entry, model.model_dump(mode="json"))
            except Exception:  # the history is for later: it never stops a model serving
                log.exception("registry history: the start of %s was not recorded", name)
        await self._alert_if_stale(name, time.time())
        return entry

    async def _record_start(self, entry: TupleEntry, model: dict[str, Any]) -> None:
        assert self.history is not None
        entry.history_row = await asyncio.to_thread(
            self.history.started, entry.name, model, entry.digest, self.replica, entry.status,
            [r.to_json() for r in entry.gates], entry.owner, entry.eval_id, entry.override)
        if entry.evaluated_by == "eval" and entry.evaluated_at is not None:
            await asyncio.to_thread(self.history.evaluated, entry.digest, entry.evaluated_at,
                                    "eval", entry.eval_id or "")
        last = await asyncio.to_thread(self.history.last_evaluated, entry.digest)
        if last is not None and (entry.evaluated_at is None or last[0] > entry.evaluated_at):
            entry.evaluated_at, entry.evaluated_by = last

    def refused(self) -> list[str]:
        return [n for n, e in self.entries.items() if e.status == "refused"]

    # -- staleness ---------------------------------------------------------------------------

    async def _check_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.config.check_interval_s)
            try:
                await self.check()
            except Exception:
                log.exception("governance check failed")

    async def check(self, now: float | None = None) -> list[str]:
        """Re-gate a tuple whose identity changed, alert on tuples newly stale; the stale."""
        now = time.time() if now is None else now
        for name, entry in list(self.entries.items()):
            if self.models.get(name).describe().digest() != entry.digest:
                log.warning("model %s now serves another tuple: gating it again", name)
                await self.admit(name)
        stale = [n for n, e in self.entries.items() if e.stale(now)]
        self._alerted_stale &= set(stale)  # fresh again: a later turn to stale alerts again
        for name in stale:
            await self._alert_if_stale(name, now)
        rows = [e.history_row for e in self.entries.values() if e.history_row is not None]
        if self.history is not None and rows:
            await asyncio.to_thread(self.history.seen, rows, now)
        return stale

    async def _alert_if_stale(self, name: str, now: float) -> None:
        """One ``stale`` alert when ``name`` turns stale (through the canary alert sinks)."""
        entry = self.entries[name]
        if not entry.stale(now) or name in self._alerted_stale:
            return
        self._alerted_stale.add(name)
        when = (time.strftime("%Y-%m-%d", time.gmtime(entry.evaluated_at))
                if entry.evaluated_at is not None else "never")
        await deliver(Alert(
            kind="stale", model=name, raised_at=now, source="registry",
            summary=f"model {name} ({entry.digest[:19]}) was last evaluated {when}; its period "
                    f"is {entry.reevaluate_days:g} days: re-evaluate it (tiergate eval, or a "
                    "scheduled canary run)"), self._sinks)

    async def on_canary_run(self, model: str, run: CanaryRun) -> None:
        """A scheduled canary run that passed on the tuple now served re-evaluates it."""
        entry = self.entries.get(model)
        if entry is None or run.status != "ok" or run.served_digest != entry.digest:
            return
        at = run.started_at + run.wall_s
        entry.evaluated_at, entry.evaluated_by = at, "canary"
        self._alerted_stale.discard(model)
        if self.history is not None:
            await asyncio.to_thread(self.history.evaluated, entry.digest, at, "canary",
                                    f"{run.id}: pass rate {run.overall.pass_rate:.4f}")

    # -- the team's numbers ------------------------------------------------------------------

    def coverage(self, now: float | None = None) -> dict[str, float]:
        """Shares of served tuples with a current eval (``tuples``), of requests answered by
        them since start (``traffic``), and of tuples with an owner (``owners``)."""
        now = time.time() if now is None else now
        entries = self.entries.values()
        if not entries:
            return {}
        current = {e.name for e in entries if e.status == "gated" and not e.stale(now)}
        served = self.telemetry.requests_by_model()
        total = sum(served.values())
        return {"tuples": len(current) / len(self.entries),
                "traffic": (sum(v for m, v in served.items() if m in current) / total
                            if total else 0.0),
                "owners": sum(e.owner is not None for e in entries) / len(self.entries)}

    def summary(self, now: float | None = None) -> dict[str, Any]:
        """The registry as ``/admin/registry`` and ``/health`` show it."""
        now = time.time() if now is None else now
        return {"models": [e.to_json(now) for e in self.entries.values()],
                "coverage": self.coverage(now),
                "stale": [n for n, e in self.entries.items() if e.stale(now)],
                "refused": self.refused()}
