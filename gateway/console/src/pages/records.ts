// Records: search by time, route, model, escalated and caller; one record in full (decision,
// tuples, parameters, tokens as a logprob heat map, a cascade's rejected small answer), the
// chain's audit status, and a replay on this gateway's own models.

import { api, ApiError, enc, query } from "../api";
import { heatLegend, heatmap } from "../charts";
import { badge, digest, facts, h, num, pct, replaceChildren, table, time, usd } from "../dom";
import type { Location } from "../main";
import type {
  AuditVerify, ChainReport, DecodeRecord, List, Logprobs, RecordedCall, RecordSummary,
  ReplayReport,
} from "../types";

const FILTERS: [string, string, string][] = [
  ["since", "Since", "e.g. 1h, 7d, 2026-06-01"], ["until", "Until", "e.g. 2026-06-02T12:00:00Z"],
  ["route", "Route", ""], ["model", "Model", ""], ["caller", "Caller (key id)", ""],
];

function chainBadge(report: ChainReport | undefined): HTMLElement {
  if (report === undefined) return badge("not verified", "info");
  return report.ok ? badge(`chain ${report.chain_id} verified`, "ok")
    : badge(`chain ${report.chain_id} BROKEN`, "bad");
}

function auditSummary(audit: AuditVerify): HTMLElement {
  return h("section", { class: "card", "aria-labelledby": "audit-title" },
    h("h2", { id: "audit-title" }, "Chain audit"),
    h("p", {}, audit.ok ? badge("every chain verifies", "ok") : badge("a chain is broken", "bad")),
    table(["chain", "status", "records", "seq", "checkpoints", "signed", "warnings"],
      audit.chains.map((c) => [c.chain_id, chainBadge(c), c.records,
        `${c.first_seq ?? "—"}–${c.last_seq ?? "—"}`, c.checkpoints, c.signed ? "yes" : "no",
        c.warnings.join("; ") || "—"])));
}

export async function renderRecords(main: HTMLElement, where: Location): Promise<void> {
  const p = where.params;
  const filters: Record<string, string> = {};
  for (const [name] of FILTERS) filters[name] = p.get(name) ?? "";
  filters.escalated = p.get("escalated") ?? "";
  filters.limit = p.get("limit") ?? "50";
  const [found, audit] = await Promise.all([
    // a filter the API refuses (400) is said beside the form, which stays to correct it
    api.get<List<RecordSummary>>(`/admin/records${query(filters)}`).catch((e: unknown) => {
      if (e instanceof ApiError && e.status === 400) return e;
      throw e;
    }),
    // the chains over the searched window (all of them without a "since"); a "since" the API
    // refuses is said once, by the search
    api.get<AuditVerify>(`/admin/audit/verify${query({ since: filters.since })}`)
      .catch((e: unknown) => {
        if (e instanceof ApiError && e.status === 400) return null;
        throw e;
      }),
  ]);
  const records = found instanceof ApiError ? { object: "list", data: [] } : found;
  const form = h("form", { class: "filters", "aria-label": "Search records" },
    FILTERS.map(([name, label, hint]) => h("div", { class: "field" },
      h("label", { for: `f-${name}` }, label),
      h("input", { id: `f-${name}`, name, value: filters[name], placeholder: hint }))),
    h("div", { class: "field" }, h("label", { for: "f-escalated" }, "Escalated"),
      h("select", { id: "f-escalated", name: "escalated" },
        [["", "any"], ["true", "yes"], ["false", "no"]].map(([v, label]) =>
          h("option", { value: v, selected: v === filters.escalated }, label)))),
    h("div", { class: "field" }, h("label", { for: "f-limit" }, "Limit"),
      h("input", { id: "f-limit", name: "limit", type: "number", min: 1, max: 1000,
                   value: filters.limit })),
    h("button", { type: "submit" }, "Search"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const next: Record<string, string> = {};
    data.forEach((value, key) => { next[key] = String(value); });
    location.hash = `#/records${query(next)}`;
  });
  const chains = new Map((audit?.chains ?? []).map((c) => [c.chain_id, c]));
  const rows = records.data.map((r) => [
    h("a", { href: `#/records/${enc(r.record_id)}` }, h("code", {}, r.record_id)),
    time(r.received_at), r.route ?? "—", r.models.join(" → "),
    r.escalated === null ? "—" : r.escalated ? badge("escalated", "warn") : "no",
    r.caller ?? "—", `${r.chain_id} #${r.seq}`, chainBadge(chains.get(r.chain_id))]);
  replaceChildren(main, h("h1", {}, "Records"), form,
    h("section", { class: "card", "aria-labelledby": "found-title" },
      h("h2", { id: "found-title" }, `${records.data.length} records, newest first`),
      found instanceof ApiError ? h("p", { class: "error", role: "alert" }, found.message)
        : rows.length ? table(["record", "received", "route", "models", "escalated", "caller",
                           "chain", "audit"], rows)
        : h("p", {}, "No record matches.")),
    audit === null ? null : auditSummary(audit));
}

function decisionView(record: DecodeRecord): HTMLElement {
  const d = record.decision;
  if (d === null) return h("p", {}, "No routing decision: the request named a model.");
  const scoreText = d.score === null ? "—" : num(d.score, 4);
  const verdict = d.escalated ? badge("escalated", "warn") : badge("kept the small answer", "ok");
  return h("div", {}, h("p", { class: "decision" }, verdict, " ",
    d.score !== null && d.threshold !== null
      ? `score ${scoreText} ${d.score > d.threshold ? ">" : "≤"} threshold ${num(d.threshold, 4)}`
      : ""),
  facts([["route", d.route], ["mode", d.mode], ["answered by", `${d.model} (${d.tier ?? "—"})`],
    ["candidates", d.candidates.join(" → ")], ["score", scoreText],
    ["threshold", num(d.threshold, 4)], ["verifier", d.verifier_id ?? "—"],
    ["verifier sha256", digest(d.verifier_sha256)]]));
}

function callView(record: DecodeRecord, call: RecordedCall): HTMLElement {
  const d = record.decision;
  const rejected = d !== null && d.escalated && call.model.name !== d.model;
  const m = call.model;
  const q = m.quantization;
  return h("section", { class: "card call", "aria-label": `Call ${call.index}: ${m.name}` },
    h("h3", {}, `Call ${call.index}: ${m.name} `,
      rejected ? badge("rejected small answer", "warn") : null),
    facts([["tuple digest", digest(call.tuple_digest)], ["weights sha256",
      digest(m.base_weights_sha256)], ["quantization", q.method === "none" ? "none"
      : `${q.method}${q.bits ? ` (${q.bits} bit)` : ""}`],
    ["adapter", m.adapter ? (m.adapter.name ?? m.adapter.sha256 ?? "yes") : "none"],
    ["engine", `${m.engine}${m.engine_version ? ` — ${m.engine_version}` : ""}`],
    ["cost", call.cost ? `${usd(call.cost.usd)} (${call.cost.kind})` : "—"],
    ["tokens", call.usage ? `${call.usage.prompt_tokens} in, ${call.usage.completion_tokens} out`
      : "—"],
    ["time", call.timing ? `${num(call.timing.total_s, 3)} s` : "—"]]),
    call.choices.map((c) => h("div", { class: "choice" },
      h("h4", {}, `Choice ${c.index}`, c.finish_reason ? ` — finished: ${c.finish_reason}` : ""),
      h("pre", { class: "answer" }, c.text ?? c.message?.content ?? ""),
      c.logprobs ? [heatmap(c.logprobs, `Tokens of call ${call.index} choice ${c.index} ` +
        "coloured by logprob"), tokenTable(c.logprobs)] : h("p", {}, "No logprobs recorded."))));
}

/** The heat map's figures for a keyboard or a screen reader: one row per token. */
function tokenTable(lp: Logprobs): HTMLElement {
  return h("details", {}, h("summary", {}, "Tokens as a table"),
    table(["#", "token", "id", "logprob", "probability", "alternatives recorded"],
      lp.token.map((token, i) => {
        const value = lp.logprob[i] ?? null;
        return [i, h("code", {}, JSON.stringify(token)), lp.token_id[i] ?? "—", num(value, 4),
          value === null ? "—" : pct(Math.exp(value)),
          (lp.top?.[i] ?? []).map((t) => `${JSON.stringify(t[2])} ${t[1].toFixed(3)}`)
            .join(", ") || "—"];
      })));
}

function paramsView(record: DecodeRecord): HTMLElement {
  const rows = (o: Record<string, unknown>) => Object.entries(o)
    .filter(([, v]) => v !== null && !(Array.isArray(v) && v.length === 0))
    .map(([k, v]) => [k, h("code", {}, JSON.stringify(v))]);
  return h("div", { class: "columns" },
    table(["sampling", "value"], rows(record.sampling), "Applied parameters"),
    table(["client sent", "value"], rows(record.client_params), "Client parameters"));
}

function replayView(report: ReplayReport): HTMLElement {
  const status = report.status === "identical" ? badge("identical", "ok")
    : report.status === "diverged" ? badge("diverged", "bad") : badge("refused", "warn");
  const divergences = report.calls.flatMap((call) => call.choices
    .filter((c) => c.status === "diverged")
    .map((c) => [`call ${call.index} (${call.model})`, `choice ${c.index}`,
      `${c.compared === "text" ? "character" : "token"} ${c.position ?? "—"}`,
      c.recorded ? `${JSON.stringify(c.recorded.token)} (${c.recorded.token_id ?? "—"})` : "—",
      c.replayed ? `${JSON.stringify(c.replayed.token)} (${c.replayed.token_id ?? "—"})` : "—"]));
  return h("div", { class: "replay-result" },
    h("p", {}, "Replay: ", status, report.reason ? ` ${report.reason}` : ""),
    report.calls.length ? table(["call", "model", "status", "choices"], report.calls.map((c) => [
      c.index, c.model, c.status, c.choices.map((x) => `${x.index}: ${x.status} ` +
        `(${x.recorded_length} recorded, ${x.replayed_length} replayed)`).join("; ")])) : null,
    divergences.length ? table(["call", "choice", "first divergence", "recorded", "replayed"],
      divergences, "First divergence") : null,
    report.decision ? h("p", {}, `Routing decision: ${report.decision.status}` +
      (report.decision.reason ? ` — ${report.decision.reason}` : "")) : null,
    report.warnings.length ? h("ul", {}, report.warnings.map((w) => h("li", {}, w))) : null);
}

export async function renderRecord(main: HTMLElement, id: string): Promise<void> {
  const [record, audit] = await Promise.all([
    api.get<DecodeRecord>(`/admin/records/${enc(id)}`),
    api.get<AuditVerify>(`/admin/audit/verify${query({ record: id })}`),  // its chain, to it
  ]);
  const chain = record.chain;
  const report = chain ? audit.chains.find((c) => c.chain_id === chain.chain_id) : undefined;
  const result = h("div", { id: "replay-result", "aria-live": "polite" });
  const button = h("button", { type: "button", id: "replay" }, "Replay");
  button.addEventListener("click", () => {
    button.disabled = true;
    replaceChildren(result, h("p", { class: "loading" }, "Replaying…"));
    api.post<ReplayReport>(`/admin/records/${enc(id)}/replay`)
      .then((r) => replaceChildren(result, replayView(r)))
      .catch((e: unknown) => replaceChildren(result, h("p", { class: "error", role: "alert" },
        e instanceof Error ? e.message : String(e))))
      .finally(() => { button.disabled = false; });
  });
  const prompt = record.input.prompt ?? record.input.messages;
  replaceChildren(main,
    h("p", {}, h("a", { href: "#/records" }, "← Records")),
    h("h1", {}, "Record ", h("code", {}, record.record_id)),
    h("div", { class: "columns" },
      h("section", { class: "card", "aria-labelledby": "req-title" },
        h("h2", { id: "req-title" }, "Request"),
        facts([["received", time(record.received_at)], ["finished", time(record.finished_at)],
          ["operation", record.operation], ["status", String(record.status)],
          ["route", record.route ?? "—"], ["caller", record.caller ?? "—"],
          ["seed", `${record.seed.source}${record.seed.value !== null ? ` ${record.seed.value}`
            : ""}`], ["redacted", record.redacted.length ? record.redacted.join(", ") : "none"]]),
        h("h3", {}, "Input"),
        h("pre", { class: "answer" }, typeof prompt === "string" ? prompt
          : JSON.stringify(prompt, null, 1))),
      h("section", { class: "card", "aria-labelledby": "dec-title" },
        h("h2", { id: "dec-title" }, "Decision"), decisionView(record)),
      h("section", { class: "card", "aria-labelledby": "chain-title" },
        h("h2", { id: "chain-title" }, "Chain and replay"),
        chain ? facts([["chain", chain.chain_id], ["seq", String(chain.seq)],
          ["digest", digest(chain.digest)], ["previous", digest(chain.prev_digest)],
          ["stored", time(chain.stored_at)], ["audit", chainBadge(report)]])
          : h("p", {}, "Not chained yet."),
        button, result)),
    h("h2", {}, "Calls"), heatLegend(),
    h("div", { class: "calls" }, record.calls.map((c) => callView(record, c))),
    h("section", { class: "card", "aria-labelledby": "par-title" },
      h("h2", { id: "par-title" }, "Parameters"), paramsView(record)));
}
