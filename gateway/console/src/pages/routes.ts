// Routes: per route, the quality-vs-escalation curve (accuracy and cost) from the verifier's
// evaluation data and from collected live pairs with the current threshold marked, the live
// escalation share and savings over the last hour and day, a slider that previews another
// threshold and applies it (every replica) after a confirmation, and the audit trail.

import { api, enc, query } from "../api";
import { type CurveChart, curveChart, nearest } from "../charts";
import { badge, facts, h, num, pct, replaceChildren, table, time, usd } from "../dom";
import type { Location } from "../main";
import type { AuditEvent, Curve, List, OperatingPoint, RouteInfo, Savings } from "../types";

function savingsCard(title: string, savings: Savings, route: string): HTMLElement {
  const r = savings.routes[route];
  return h("section", { class: "card", "aria-label": `${route}: ${title}` },
    h("h3", {}, title),
    r === undefined || r.requests === 0 ? h("p", {}, "No request recorded.") : facts([
      ["requests", String(r.requests)],
      ["escalated", `${pct(r.escalation_share)} (${r.escalated} of ${r.decided})`],
      ["cost", usd(r.actual_usd)], ["always large", usd(r.always_large_usd)],
      ["always small", usd(r.always_small_usd)], ["saved vs large", usd(r.saved_usd)],
      ["cost vs always large", r.cost_vs_large === null ? "—" : pct(r.cost_vs_large)]]));
}

function pointText(p: OperatingPoint | null): string {
  if (p === null) return "—";
  return `escalation ${pct(p.escalation)}, accuracy ${pct(p.accuracy)}, cost ${num(p.cost, 3)}`;
}

function curveFigure(curve: Curve, title: string): [HTMLElement, CurveChart | null] {
  if (curve.points.length === 0) {
    return [h("figure", { class: "card" }, h("figcaption", {}, title),
      h("p", { class: "note" }, curve.note ?? "No data.")), null];
  }
  const chart = curveChart(curve, title);
  return [h("figure", { class: "card" }, h("figcaption", {}, `${title} — ${curve.rows} ${curve.rows === 1 ? "row" : "rows"}`,
    curve.note ? h("span", { class: "note" }, ` (${curve.note})`) : null), chart.element,
    h("p", { class: "legend-row" }, h("span", { class: "key key-acc" }), "accuracy ",
      h("span", { class: "key key-cost" }), "cost ", h("span", { class: "key key-current" }),
      "current threshold ", h("span", { class: "key key-preview" }), "preview"),
    h("p", { class: "note" }, `Cost: ${curve.cost_unit}.`)), chart];
}

function thresholdControl(info: RouteInfo, curves: Curve[], charts: (CurveChart | null)[],
                          onApplied: (message: string) => void): HTMLElement {
  const [lo, hi] = info.range;
  const step = (hi - lo) / 1000;
  const slider = h("input", { id: "threshold-slider", type: "range", min: lo, max: hi, step,
                              value: info.threshold });
  const exact = h("input", { id: "threshold-value", type: "number", min: lo, max: hi,
                             step: "any", value: info.threshold });
  const rows = h("tbody", {});
  const apply = h("button", { type: "button", id: "apply-threshold", disabled: true },
                  "Apply…");
  const preview = (value: number) => {
    const cells = curves.map((curve, i) => {
      // the current threshold's own point is exact; another threshold reads the nearest one
      const point = Math.abs(value - info.threshold) < 1e-12 ? curve.current
        : curve.points.length ? nearest(curve.points, value) : null;
      charts[i]?.preview(point);
      return h("tr", {}, h("th", { scope: "row" }, curve.source),
        h("td", {}, pointText(curve.current)),
        h("td", {}, pointText(point)));
    });
    replaceChildren(rows, cells);
    apply.disabled = Math.abs(value - info.threshold) < 1e-12 || Number.isNaN(value);
  };
  slider.addEventListener("input", () => {
    exact.value = slider.value;
    preview(Number(slider.value));
  });
  exact.addEventListener("input", () => {
    slider.value = exact.value;
    preview(Number(exact.value));
  });
  const reason = h("input", { id: "apply-reason", name: "reason", maxlength: 500 });
  const confirmText = h("p", {});
  const dialogError = h("p", { class: "error", role: "alert" });
  const confirm = h("button", { type: "button", id: "confirm-threshold", class: "danger" },
                    "Apply threshold");
  const cancel = h("button", { type: "button", class: "secondary" }, "Cancel");
  const dialog = h("dialog", { "aria-labelledby": "confirm-title" },
    h("h2", { id: "confirm-title" }, `Change the threshold of ${info.route}?`), confirmText,
    h("label", { for: "apply-reason" }, "Reason (kept in the audit trail)"), reason,
    dialogError, h("div", { class: "actions" }, cancel, confirm));
  cancel.addEventListener("click", () => dialog.close());
  apply.addEventListener("click", () => {
    const value = Number(exact.value);
    const shared = info.shared ? "every replica (shared through Redis)" : "this replica only";
    const first = curves.find((c) => c.points.length);
    const p = first ? nearest(first.points, value) : null;
    confirmText.textContent = `From ${num(info.threshold, 4)} to ${num(value, 4)}, applied on ` +
      `${shared}.` + (p && first ? ` On the ${first.source} data: ${pointText(p)}.` : "");
    dialogError.textContent = "";
    dialog.showModal();
    confirm.focus();
  });
  confirm.addEventListener("click", () => {
    const value = Number(exact.value);
    confirm.disabled = true;
    const body: { threshold: number; reason?: string } = { threshold: value };
    if (reason.value.trim()) body.reason = reason.value.trim();
    api.put<RouteInfo>(`/admin/routes/${enc(info.route)}/threshold`, body).then((now) => {
      dialog.close();
      onApplied(`Threshold of ${info.route} is now ${num(now.threshold, 4)}.`);
    }).catch((e: unknown) => {
      dialogError.textContent = e instanceof Error ? e.message : String(e);
    }).finally(() => { confirm.disabled = false; });
  });
  preview(info.threshold);
  return h("section", { class: "card wide", "aria-labelledby": "preview-title" },
    h("h2", { id: "preview-title" }, "Another threshold"),
    h("div", { class: "slider-row" },
      h("label", { for: "threshold-slider" }, "Threshold"), slider,
      h("label", { for: "threshold-value", class: "visually-hidden" }, "Threshold value"),
      exact, apply),
    h("table", { "aria-label": "Preview at the nearest operating point" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "data"),
        h("th", { scope: "col" }, `now (${num(info.threshold, 4)})`),
        h("th", { scope: "col" }, "at the previewed threshold"))), rows),
    dialog);
}

function auditTrail(events: AuditEvent[] | Error): HTMLElement {
  return h("section", { class: "card wide", "aria-labelledby": "trail-title" },
    h("h2", { id: "trail-title" }, "Audit trail"),
    events instanceof Error ? h("p", { class: "error" }, `Audit trail unavailable: ${
      events.message}`) : events.length ? table(["when", "who", "before", "after", "reason", "replica"],
      events.map((e) => [time(e.at), e.actor ?? "—", JSON.stringify(e.before),
        JSON.stringify(e.after), e.reason ?? "—", e.replica ?? "—"]))
      : h("p", {}, "No threshold change recorded."));
}

export async function renderRoutes(main: HTMLElement, where: Location,
                                   message?: string): Promise<void> {
  const name = where.path[1];
  if (name === undefined) {
    const routes = await api.get<List<RouteInfo>>("/admin/routes");
    if (!routes.data.length) {
      replaceChildren(main, h("h1", {}, "Routes"), h("p", {}, "No route is configured."));
      return;
    }
    // the first route, unless the user went elsewhere meanwhile
    if (/^#?\/?routes\/?$/.test(location.hash)) {
      location.replace(`#/routes/${enc(routes.data[0].route)}`);
    }
    return;
  }
  const base = `/admin/routes/${enc(name)}`;
  const [routes, evaluation, live, hour, day, events] = await Promise.all([
    api.get<List<RouteInfo>>("/admin/routes"),
    api.get<Curve>(`${base}/curve?source=evaluation`),
    api.get<Curve>(`${base}/curve?source=live`),
    api.get<Savings>(`/admin/savings${query({ since: "1h", route: name })}`),
    api.get<Savings>(`/admin/savings${query({ since: "1d", route: name })}`),
    api.get<List<AuditEvent>>(`/admin/audit/events${query({ kind: "threshold", route: name,
                                                             limit: 20 })}`)
      .catch((e: unknown) => (e instanceof Error ? e : new Error(String(e)))),
  ]);
  const info = routes.data.find((r) => r.route === name);
  if (info === undefined) throw new Error(`No route ${name}`);
  const [evalFigure, evalChart] = curveFigure(evaluation, "Evaluation data");
  const [liveFigure, liveChart] = curveFigure(live, "Live pairs (agreement with the large model)");
  const reload = (text: string) => {
    renderRoutes(main, where, text).catch((e: unknown) => replaceChildren(main,
      h("p", { class: "error", role: "alert" }, e instanceof Error ? e.message : String(e))));
  };
  replaceChildren(main, h("h1", {}, "Routes"),
    h("nav", { class: "tabs", "aria-label": "Routes" }, routes.data.map((r) => h("a", {
      href: `#/routes/${enc(r.route)}`, "aria-current": r.route === name ? "page" : null },
      r.route))),
    h("p", { id: "route-status", role: "status" }, message ?? ""),
    h("div", { class: "columns" },
      h("section", { class: "card", "aria-labelledby": "route-title" },
        h("h2", { id: "route-title" }, `Route ${info.route}`),
        facts([["mode", info.mode], ["small", info.small ?? "—"], ["large", info.large ?? "—"],
          ["threshold", h("strong", { id: "current-threshold" }, num(info.threshold, 4))],
          ["range", `${info.range[0]} … ${info.range[1]}`],
          ["shared", info.shared ? (info.connected ? badge("shared, Redis connected", "ok")
            : badge("shared, Redis not connected", "bad")) : "this replica only"],
          ["expected escalation", pct(info.expected_escalation)]])),
      savingsCard("Last hour", hour, name), savingsCard("Last day", day, name)),
    h("div", { class: "columns" }, evalFigure, liveFigure),
    thresholdControl(info, [evaluation, live], [evalChart, liveChart], reload),
    auditTrail(events instanceof Error ? events : events.data));
}
