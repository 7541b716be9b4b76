// What the admin API answers (docs/console.md lists the endpoints), as far as the console reads.

export interface RouteInfo {
  route: string; mode: string; small: string | null; large: string | null;
  threshold: number; range: [number, number]; shared: boolean; connected: boolean | null;
  expected_escalation: number | null; evaluation: boolean;
}

export interface OperatingPoint {
  threshold: number; escalation: number; accuracy: number | null; cost: number | null;
}

export interface Curve {
  route: string; source: "evaluation" | "live"; rows: number; threshold: number;
  acc_small: number | null; acc_large: number | null; points: OperatingPoint[];
  current: OperatingPoint | null; cost_unit: string; note: string | null;
}

export interface RouteSavings {
  requests: number; decided: number; escalated: number; escalation_share: number | null;
  actual_usd: number; always_large_usd: number | null; always_small_usd: number | null;
  saved_usd: number | null; cost_vs_large: number | null; mode: string;
  quality?: { shadow: unknown; canary: unknown; graded: unknown };
}

export interface Savings {
  routes: Record<string, RouteSavings>;
  window: { since: number; until: number };
}

export interface AuditEvent {
  id: string; at: number; kind: string; target: string; actor: string | null;
  before: unknown; after: unknown; reason: string | null; replica: string | null;
}

export interface List<T> { object: "list"; data: T[] }

export interface Gate { gate: string; passed: boolean; detail: string }

export interface RegistryEntry {
  name: string; digest: string; status: string; gates: Gate[]; owner: string | null;
  eval_id: string | null; override: string | null; evaluated_at: number | null;
  evaluated_by: string | null; reevaluate_days: number | null; stale: boolean;
  slices: SliceRow[];
  /** With `?tuples=true`. */
  tuple?: ModelTuple;
}

/** The validating eval of one slice against its baseline and tolerance (what the gates compared). */
export interface SliceRow {
  slice: string; items: number; accuracy: number; baseline: number | null; tolerance: number;
  within: boolean | null;
}

export interface Registry {
  models: RegistryEntry[]; coverage: Record<string, number>; stale: string[]; refused: string[];
}

export interface ModelTuple {
  name: string; engine: string; engine_version: string | null; upstream_model: string | null;
  base_weights_sha256: string | null;
  adapter: { sha256?: string; name?: string; path?: string } | null;
  quantization: { method: string; bits: number | null; details: Record<string, unknown> };
  validating_eval: { id: string; score: number; slices: Record<string, number>;
                     created: string; sha256: string } | null;
  source: string | null; teacher_digest: string | null;
}

export interface DriftAlarm {
  raised_at: number; source: string; run_id: string | null; summary: string;
  acknowledged_at: number | null; acknowledged_by: string | null;
}

export interface DriftStream {
  name: string; slice: string | null; kind: string; statistic: number; observations: number;
  failures: number; alarm: unknown;
}

export interface SliceFigures {
  items: number; pass_rate: number | null; golden_pass_rate: number | null;
  agreement: number | null; diverged: number; logprob_shift: number | null; errors: number;
}

export interface CanaryRun {
  id: string; model: string; started_at: number; status: string;
  slices: Record<string, SliceFigures>; overall: SliceFigures;
  new_alarms: unknown[]; standing_alarms: unknown[]; rollback_to?: string | null;
}

export interface CanaryStatus {
  model: string; status: string;
  pin: { version: number; created_at: number; tuple_digest: string; items: number } | null;
  state: { alarm: DriftAlarm | null; past_alarms: DriftAlarm[]; runs: number;
           last_run_at: number | null;
           drift: { streams: Record<string, DriftStream>; threshold: number } } | null;
  last_run: CanaryRun | null; pinned_backend: string | null; rollback_enabled: boolean;
  rollback_to: string | null;
}

export interface RecordSummary {
  record_id: string; chain_id: string; seq: number; received_at: number; route: string | null;
  models: string[]; escalated: boolean | null; caller: string | null; digest: string;
}

export interface Logprobs {
  token: string[]; logprob: (number | null)[]; token_id: number[];
  top?: [number, number, string, number[]][][];
}

export interface RecordedChoice {
  index: number; text: string | null; finish_reason: string | null;
  token_ids: number[] | null; logprobs: Logprobs | null;
  message?: { content?: string | null } | null;
}

export interface RecordedCall {
  index: number; model: ModelTuple & { name: string }; tuple_digest: string;
  choices: RecordedChoice[]; cost?: { usd: number | null; kind: string } | null;
  usage?: { prompt_tokens: number; completion_tokens: number } | null;
  timing?: { total_s: number; first_token_s: number | null } | null;
  rendered_prompt?: string | null; runtime?: Record<string, unknown>;
}

export interface Decision {
  route: string; mode: string; model: string; tier: string | null; escalated: boolean;
  score: number | null; threshold: number | null; candidates: string[];
  verifier_id: string | null; verifier_sha256: string | null;
}

export interface DecodeRecord {
  record_id: string; request_id: string; received_at: number; finished_at: number;
  route: string | null; caller: string | null; operation: string; status: number;
  stream: boolean; input: { kind: string; prompt: unknown; messages: unknown };
  sampling: Record<string, unknown>; client_params: Record<string, unknown>;
  seed: { source: string; value: number | null }; decision: Decision | null;
  calls: RecordedCall[];
  chain: { chain_id: string; seq: number; digest: string; prev_digest: string | null;
           stored_at: number } | null;
  redacted: string[];
}

export interface ChainReport {
  chain_id: string; ok: boolean; first_seq: number | null; last_seq: number | null;
  records: number; checkpoints: number; signed: boolean; broken: unknown; warnings: string[];
}

export interface AuditVerify { ok: boolean; chains: ChainReport[] }

export interface TokenAt { token_id: number | null; token: string | null; logprob: number | null }

export interface ReplayChoice {
  index: number; status: "identical" | "diverged"; compared: "token_ids" | "text";
  recorded_length: number; replayed_length: number; position: number | null;
  recorded: TokenAt | null; replayed: TokenAt | null;
}

export interface ReplayReport {
  record_id: string; status: "identical" | "diverged" | "refused"; reason: string | null;
  chain: Record<string, unknown> | null;
  decision: { status: string; reason: string } | null;
  calls: { index: number; model: string; tuple_digest: string; status: string;
           choices: ReplayChoice[] }[];
  warnings: string[];
}
