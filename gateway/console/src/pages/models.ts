// Models: the tuple registry (every served tuple with its digests, quantization, adapter,
// validating eval per slice, gates, owner, last evaluated, stale) and the canaries' pinned
// versions and rollback state.

import { api, enc } from "../api";
import { badge, digest, facts, h, pct, replaceChildren, table, time } from "../dom";
import type { CanaryStatus, List, Registry, RegistryEntry, RegistryTuple } from "../types";

function statusBadge(entry: RegistryEntry): HTMLElement {
  const kind = entry.status === "gated" ? "ok" : entry.status === "refused" ? "bad" : "warn";
  return badge(entry.status, kind);
}

function slicesView(tuple: RegistryTuple, entry: RegistryEntry): HTMLElement {
  const ev = tuple.tuple.validating_eval;
  if (ev === null) return h("p", {}, "No validating eval.");
  const bars = Object.entries(ev.slices).map(([name, score]) => {
    const bar = h("span", { class: "bar-fill" });
    bar.style.width = `${(score * 100).toFixed(1)}%`;
    return [name, h("span", { class: "bar", role: "img", "aria-label": pct(score) }, bar),
            pct(score)];
  });
  const tolerance = entry.gates.filter((g) => g.gate !== "evaluated");
  return h("div", {},
    h("p", {}, `Eval ${ev.id} (${ev.created}): overall ${pct(ev.score)}`),
    table(["slice", "score", ""], bars, "Per-slice scores"),
    tolerance.length ? h("ul", { class: "gates" }, tolerance.map((g) => h("li", {},
      g.passed ? badge("within tolerance", "ok") : badge("outside tolerance", "bad"),
      ` ${g.gate}: ${g.detail}`))) : null);
}

function modelCard(entry: RegistryEntry, tuple: RegistryTuple | undefined,
                   canary: CanaryStatus | undefined): HTMLElement {
  const t = tuple?.tuple;
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
    tuple ? h("details", { open: true }, h("summary", {}, "Validating eval per slice"),
      slicesView(tuple, entry)) : null);
}

export async function renderModels(main: HTMLElement): Promise<void> {
  const [registry, canaries] = await Promise.all([
    api.get<Registry>("/admin/registry"),
    api.get<List<CanaryStatus>>("/admin/canary"),
  ]);
  // the list carries no tuples: their details in one more parallel burst
  const tuples = await Promise.all(registry.models.map((m) =>
    api.get<RegistryTuple>(`/admin/registry/${enc(m.name)}`).catch(() => undefined)));
  const byModel = new Map(canaries.data.map((c) => [c.model, c]));
  replaceChildren(main, h("h1", {}, "Models"),
    h("section", { class: "card" }, h("h2", {}, "Coverage"),
      facts(Object.entries(registry.coverage).map(([k, v]) => [k, pct(v)]).concat(
        [["stale", registry.stale.join(", ") || "none"],
         ["refused", registry.refused.join(", ") || "none"]]) as [string, string][])),
    h("div", { class: "grid" }, registry.models.map((m, i) =>
      modelCard(m, tuples[i], byModel.get(m.name)))));
}
