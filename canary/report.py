"""Readable canary reports: what ``tiergate canary run`` and ``tiergate canary status`` print."""

from __future__ import annotations

import time

from canary.drift import DriftState
from canary.pins import Pin
from canary.runs import CanaryRun, SliceFigures
from canary.service import ModelStatus


def when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(at)) if at is not None else "-"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def slice_table(run: CanaryRun, indent: str = "  ") -> list[str]:
    """Per slice: pass rate now vs golden, agreement, divergence, logprob shift, latency, tokens."""
    head = (f"{'slice':<20}{'items':>6}{'pass':>8}{'golden':>8}{'agree':>8}{'diverged':>9}"
            f"{'1st div':>8}{'lp shift':>10}{'p50 ms':>8}{'tokens':>8}")
    lines = [indent + head]
    rows: list[tuple[str, SliceFigures]] = [*run.slices.items(), ("ALL", run.overall)]
    for name, s in rows:
        changed = " *" if s.pass_rate != s.golden_pass_rate else ""
        lines.append(
            f"{indent}{name:<20}{s.items:>6}{s.pass_rate:>8.1%}{s.golden_pass_rate:>8.1%}"
            f"{s.agreement:>8.1%}{s.diverged:>9}{_num(s.mean_first_divergence, '.1f'):>8}"
            f"{_num(s.logprob_shift, '+.4f'):>10}{s.latency_p50_ms:>8.1f}"
            f"{s.prompt_tokens + s.completion_tokens:>8}{changed}")
    return lines


def run_report(run: CanaryRun) -> str:
    """The report of one run (``tiergate canary run``)."""
    status = "DRIFT" if run.status == "drift" else "ok"
    lines = [f"{run.model}: {status}  run {run.id} ({when(run.started_at)}, {run.wall_s:.1f} s,"
             f" pin v{run.pin_version})"]
    if run.tuple_changed:
        changes = ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in run.tuple_changes.items())
        lines.append(f"  served tuple {run.served_digest[:19]} differs from the pinned "
                     f"{run.pinned_digest[:19]}: {changes or 'digest'}")
    lines.extend(slice_table(run))
    errors = run.overall.errors
    if errors:
        lines.append(f"  {errors} items failed (not counted as drift evidence)")
    for alarm in run.new_alarms:
        lines.append(f"  NEW ALARM {alarm.evidence}")
    if run.status == "drift" and not run.new_alarms:
        lines.append("  drift alarm standing (see tiergate canary status)")
    return "\n".join(lines)


def _pin_lines(pin: Pin) -> list[str]:
    t = pin.model_tuple
    quant = t.quantization.method + (f" ({t.quantization.bits} bit)" if t.quantization.bits
                                     else "")
    return [
        f"  pinned    v{pin.version} at {when(pin.created_at)}: tuple {pin.tuple_digest[:19]}",
        f"            engine {t.engine}" + (f" ({t.engine_version})" if t.engine_version
                                              else ""),
        f"            weights {t.base_weights_sha256 or '(not pinned)'}, quantization {quant}",
        f"  set       {pin.set_path} (sha256 {pin.set_sha256[:12]}), {len(pin.golden)} items, "
        f"golden pass rate {pin.pass_rate:.1%}",
    ]


def _drift_lines(drift: DriftState) -> list[str]:
    c = drift.config
    lines = [f"  drift     {c.test}, false-alarm rate {c.false_alarm_rate:g}, threshold "
             f"{drift.threshold:.2f} (log-LR), pass-rate drop {c.pass_rate_drop:g}, "
             f"agreement H0 >= {1 - c.agreement_tolerance:.0%}"]
    shown = sorted((s for s in drift.streams.values() if s.observations),
                   key=lambda s: s.statistic / drift.threshold, reverse=True)[:6]
    for s in shown:
        mark = "  ALARM" if s.alarm is not None else ""
        lines.append(f"            {s.name:<20} {s.statistic:>7.2f} / {drift.threshold:.2f}  "
                     f"{s.failures} of {s.observations} failed{mark}")
    return lines


def status_report(status: ModelStatus) -> str:
    """The readable status of one model (``tiergate canary status``)."""
    head = {"drift": "DRIFT", "ok": "ok"}.get(status.status, status.status)
    lines = [f"{status.model}: {head}"]
    if status.pin is None:
        lines.append(f"  not pinned (tiergate canary pin {status.model})")
        return "\n".join(lines)
    lines.extend(_pin_lines(status.pin))
    served = status.pinned_backend or "none configured"
    lines.append(f"  rollback  on drift, to {served}" if status.rollback_enabled
                 else f"  rollback  off (pinned version: {served})")
    run = status.last_run
    if run is None:
        lines.append("  last run  none yet (tiergate canary run)")
    else:
        lines.append(f"  last run  {run.id} at {when(run.started_at)}, {run.wall_s:.1f} s, "
                     f"agreement {run.overall.agreement:.1%}, pass {run.overall.pass_rate:.1%}"
                     f" (golden {run.overall.golden_pass_rate:.1%})")
        if run.tuple_changed:
            lines.append(f"            served tuple {run.served_digest[:19]} differs: "
                         + ", ".join(run.tuple_changes))
        lines.extend(slice_table(run, indent="    "))
    state = status.state
    if state is not None:
        lines.extend(_drift_lines(state.drift))
        alarm = state.alarm
        if alarm is not None:
            lines.append(f"  ALARM     raised {when(alarm.raised_at)} by {alarm.source}"
                         f"{f' (run {alarm.run_id})' if alarm.run_id else ''}:")
            lines.extend(f"            {part}" for part in alarm.summary.split("; ")
                         if not part.startswith("traffic goes to"))
            if status.rollback_to:
                lines.append(f"            traffic of {status.model} goes to "
                             f"{status.rollback_to} until: tiergate canary ack {status.model}")
            else:
                lines.append(f"            acknowledge with: tiergate canary ack {status.model}")
        elif state.past_alarms:
            last = state.past_alarms[-1]
            lines.append(f"  last alarm {when(last.raised_at)}, acknowledged "
                         f"{when(last.acknowledged_at)}"
                         f"{f' by {last.acknowledged_by}' if last.acknowledged_by else ''}")
    return "\n".join(lines)
