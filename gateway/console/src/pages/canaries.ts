// Canaries: every pinned model's drift state, its open alarm with an Acknowledge button, its
// shadow agreement; one model's runs over time per slice.

import { api, enc } from "../api";
import { seriesChart } from "../charts";
import { badge, h, pct, replaceChildren, table, time } from "../dom";
import type { Location } from "../main";
import type { CanaryRun, CanaryStatus, DriftAlarm, List } from "../types";

function statusBadge(status: string): HTMLElement {
  return badge(status, status === "ok" ? "ok" : status === "drift" ? "bad" : "warn");
}

function shadowAgreement(c: CanaryStatus): string {
  const stream = c.state?.drift.streams.shadow;
  if (!stream || stream.observations === 0) return "no shadow traffic yet";
  return `${pct(1 - stream.failures / stream.observations)} of ${stream.observations} ` +
    "mirrored requests";
}

function alarmView(c: CanaryStatus, alarm: DriftAlarm, reload: () => void): HTMLElement {
  const open = alarm.acknowledged_at === null;
  const result = h("span", { role: "status" });
  const button = open ? h("button", { type: "button", class: "danger",
                                      "aria-label": `Acknowledge the alarm on ${c.model}` },
                          "Acknowledge") : null;
  button?.addEventListener("click", () => {
    button.disabled = true;
    api.post(`/admin/canary/${enc(c.model)}/ack`, { by: "console" })
      .then(reload)
      .catch((e: unknown) => {
        button.disabled = false;
        result.textContent = e instanceof Error ? e.message : String(e);
      });
  });
  return h("div", { class: `alarm ${open ? "alarm-open" : ""}`, role: open ? "alert" : null },
    h("p", {}, open ? badge("open alarm", "bad") : badge("acknowledged", "info"),
      ` raised ${time(alarm.raised_at)} by ${alarm.source}`,
      alarm.acknowledged_at !== null ? `, acknowledged ${time(alarm.acknowledged_at)} by ` +
        `${alarm.acknowledged_by ?? "—"}` : ""),
    h("p", { class: "evidence" }, alarm.summary), button, result);
}

function overview(statuses: CanaryStatus[], selected: string | undefined,
                  reload: () => void): HTMLElement {
  if (!statuses.length) return h("p", {}, "No model is pinned (tiergate canary pin MODEL).");
  return h("div", { class: "grid" }, statuses.map((c) => {
    const run = c.last_run;
    const alarms = [c.state?.alarm, ...(c.state?.past_alarms ?? []).slice(-3).reverse()]
      .filter((a): a is DriftAlarm => a !== null && a !== undefined);
    return h("section", { class: `card ${c.model === selected ? "selected" : ""}`,
                          "aria-labelledby": `c-${c.model}` },
      h("h2", { id: `c-${c.model}` },
        h("a", { href: `#/canaries/${enc(c.model)}` }, c.model), " ", statusBadge(c.status)),
      h("p", {}, c.pin ? `pin version ${c.pin.version} (${c.pin.items} items, ` +
        `${time(c.pin.created_at)})` : "not pinned",
        " · rollback ", !c.rollback_enabled ? "off" : c.rollback_to
          ? badge(`to ${c.rollback_to}`, "bad") : `armed (${c.pinned_backend ?? "—"})`),
      h("p", {}, `shadow agreement: ${shadowAgreement(c)}`),
      alarms.map((a) => alarmView(c, a, reload)),
      run ? table(["slice", "pass rate", "golden", "agreement", "diverged", "errors"],
        Object.entries(run.slices).map(([name, f]) => [name, pct(f.pass_rate),
          pct(f.golden_pass_rate), pct(f.agreement), f.diverged, f.errors]),
        `Last run ${time(run.started_at)}: ${run.status}`) : h("p", {}, "No run yet."));
  }));
}

function runsView(model: string, runs: CanaryRun[]): HTMLElement {
  const ordered = [...runs].reverse();
  const slices = [...new Set(ordered.flatMap((r) => Object.keys(r.slices)))].sort();
  const metric = (pick: "pass_rate" | "agreement") => slices.map((name) => ({
    name, points: ordered.map((r) => [r.started_at, r.slices[name]?.[pick] ?? null] as
      [number, number | null]) }));
  return h("section", { class: "card wide", "aria-labelledby": "runs-title" },
    h("h2", { id: "runs-title" }, `${model}: ${runs.length} runs over time`),
    runs.length ? h("div", { class: "columns" },
      h("figure", {}, seriesChart(metric("pass_rate"), `${model}: pass rate per slice`),
        h("figcaption", {}, "Pass rate per slice")),
      h("figure", {}, seriesChart(metric("agreement"), `${model}: agreement with the ` +
        "golden tokens per slice"), h("figcaption", {}, "Agreement with the pinned golden " +
        "outputs per slice"))) : h("p", {}, "No run yet."),
    runs.length ? table(["started", "status", "pass rate", "agreement", "alarms"],
      runs.slice(0, 20).map((r) => [time(r.started_at), statusBadge(r.status),
        pct(r.overall.pass_rate), pct(r.overall.agreement),
        String(r.new_alarms.length + r.standing_alarms.length)]), "Latest runs") : null);
}

export async function renderCanaries(main: HTMLElement, where: Location): Promise<void> {
  const model = where.path[1];
  const reload = () => {
    renderCanaries(main, where).catch((e: unknown) => replaceChildren(main,
      h("p", { class: "error", role: "alert" }, e instanceof Error ? e.message : String(e))));
  };
  const [statuses, runs] = await Promise.all([
    api.get<List<CanaryStatus>>("/admin/canary"),
    model === undefined ? Promise.resolve(null)
      : api.get<List<CanaryRun>>(`/admin/canary/${enc(model)}/runs?limit=50`),
  ]);
  replaceChildren(main, h("h1", {}, "Canaries"),
    model === undefined && statuses.data.length
      ? h("p", {}, "Pick a model for its runs over time.") : null,
    overview(statuses.data, model, reload),
    runs !== null && model !== undefined ? runsView(model, runs.data) : null);
}
