// Models: the tuple registry (every served tuple with its digests, quantization, adapter,
// validating eval per slice, gates, owner, last evaluated, stale) and the canaries' pinned
// versions and rollback state.

import { api } from "../api";
import { type Child, badge, digest, facts, h, pct, replaceChildren, table, time } from "../dom";
import type { CanaryStatus, List, Registry, RegistryEntry } from "../types";

function statusBadge(entry: RegistryEntry): HTMLElement {
  const kind = entry.status === "gated" ? "ok" : entry.status === "refused" ? "bad" : "warn";
  return badge(entry.status, kind);
}

function slicesView(entry: RegistryEntry): HTMLElement {
  const ev = entry.tuple?.validating_eval ?? null;
  if (ev === null) return h("p", {}, "No validating eval.");
  const compared = entry.slices.some((row) => row.baseline !== null);
  const rows = entry.slices.map((row) => {
    const bar = h("span", { class: "bar-fill" });
    bar.style.width = `${(row.accuracy * 100).toFixed(1)}%`;
    const cells: Child[] = [row.slice, String(row.items),
      h("span", { class: "bar", role: "img", "aria-label": pct(row.accuracy) }, bar),
      pct(row.accuracy)];
    if (compared) {
      cells.push(pct(row.baseline), `−${pct(row.tolerance)}`,
                 row.within === null ? "—" : row.within ? badge("within", "ok")
                   : badge("below", "bad"));
    }
    return cells;
  });
  const head = ["slice", "items", "", "score"];
  if (compared) head.push("baseline", "tolerance", "verdict");
  return h("div", { class: "slices" },
    h("p", {}, `Eval ${ev.id} (${ev.created}): overall ${pct(ev.score)}`,
      compared ? "" : " — no baseline in the eval (a full-precision tuple)."),
    table(head, rows, compared ? "Per-slice scores against the baseline and tolerance"
      : "Per-slice scores"));
}

function modelCard(entry: RegistryEntry, canary: CanaryStatus | undefined): HTMLElement {
  const t = entry.tuple;
  const q = t?.quantization;
  return h("section", { class: "card", "aria-labelledby": `m-${entry.name}` },
    h("h2", { id: `m-${entry.name}` }, entry.name, " ", statusBadge(entry), " ",
      entry.stale ? badge("stale", "warn") : badge("fresh", "ok")),
    facts([["tuple digest", digest(entry.digest)],
      ["weights sha256", digest(t?.base_weights_sha256)],
      ["quantization", q === undefined ? "—" : q.method === "none" ? "none"
        : `${q.method}${q.bits ? ` (${q.bits} bit)` : ""}`],
      ["adapter", t?.adapter ? (t.adapter.name ?? t.adapter.sha256 ?? "yes") : "none"],
      ["engine", t ? `${t.engine}${t.engine_version ? ` — ${t.engine_version}` : ""}` : "—"],
      ["owner", entry.owner ?? "—"], ["validating eval", entry.eval_id ?? "none"],
      ["last evaluated", `${time(entry.evaluated_at)}${entry.evaluated_by ?
        ` (${entry.evaluated_by})` : ""}`],
      ["re-evaluate every", entry.reevaluate_days ? `${entry.reevaluate_days} days` : "—"],
      ["override", entry.override ?? "none"],
      ["pinned", canary?.pin ? `version ${canary.pin.version} (${time(canary.pin.created_at)})`
        : "not pinned"],
      ["rollback", canary === undefined ? "—" : !canary.rollback_enabled ? "off"
        : canary.rollback_to ? badge(`rolled back to ${canary.rollback_to}`, "bad")
        : `armed (to ${canary.pinned_backend ?? "—"})`]]),
    h("ul", { class: "gates" }, entry.gates.map((g) => h("li", {},
      g.passed ? badge("pass", "ok") : badge("fail", "bad"), ` ${g.gate}: ${g.detail}`))),
    t ? h("details", { open: true }, h("summary", {}, "Validating eval per slice"),
      slicesView(entry)) : null);
}

export async function renderModels(main: HTMLElement): Promise<void> {
  const [registry, canaries] = await Promise.all([
    api.get<Registry>("/admin/registry?tuples=true"),
    api.get<List<CanaryStatus>>("/admin/canary"),
  ]);
  const byModel = new Map(canaries.data.map((c) => [c.model, c]));
  replaceChildren(main, h("h1", {}, "Models"),
    h("section", { class: "card" }, h("h2", {}, "Coverage"),
      facts(Object.entries(registry.coverage).map(([k, v]) => [k, pct(v)]).concat(
        [["stale", registry.stale.join(", ") || "none"],
         ["refused", registry.refused.join(", ") || "none"]]) as [string, string][])),
    h("div", { class: "grid" }, registry.models.map((m) =>
      modelCard(m, byModel.get(m.name)))));
}
