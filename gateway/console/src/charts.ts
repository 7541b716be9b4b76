// Hand-drawn SVG charts (no chart library): a route's curve with its threshold, a time series
// per slice, and a heat map of token logprobs. Colours and strokes come from console.css.

import { h, num, pct, s } from "./dom";
import type { Curve, Logprobs, OperatingPoint } from "./types";

const W = 560, H = 300, L = 52, R = 56, T = 16, B = 40;

function scale(lo: number, hi: number, from: number, to: number): (v: number) => number {
  const span = hi - lo || 1;
  return (v: number) => from + ((v - lo) / span) * (to - from);
}

/** The operating point whose threshold is nearest to `threshold` (what the route would do). */
export function nearest(points: OperatingPoint[], threshold: number): OperatingPoint | null {
  let best: OperatingPoint | null = null;
  for (const p of points) {
    if (best === null || Math.abs(p.threshold - threshold) < Math.abs(best.threshold - threshold))
      best = p;
  }
  return best;
}

function ticks(lo: number, hi: number, count: number): number[] {
  const out: number[] = [];
  for (let i = 0; i <= count; i++) out.push(lo + ((hi - lo) * i) / count);
  return out;
}

export interface CurveChart {
  element: SVGElement;
  /** Marks the operating point a previewed threshold reads (null: none). */
  preview(point: OperatingPoint | null): void;
}

/** Accuracy (left axis) and cost (right axis) against the escalation share, every reachable
 * operating point; the current threshold's point marked, a preview point movable. */
export function curveChart(curve: Curve, title: string): CurveChart {
  const points = curve.points;
  const accs = points.map((p) => p.accuracy).filter((v): v is number => v !== null);
  for (const v of [curve.acc_small, curve.acc_large]) if (v !== null) accs.push(v);
  const accLo = Math.max(0, Math.floor((Math.min(...accs, 1) - 0.02) * 20) / 20);
  const accHi = Math.min(1, Math.ceil((Math.max(...accs, 0) + 0.02) * 20) / 20);
  const costs = points.map((p) => p.cost).filter((v): v is number => v !== null);
  const costHi = costs.length ? Math.max(...costs) * 1.05 || 1 : 1;
  const x = scale(0, 1, L, W - R);
  const y = scale(accLo, accHi, H - B, T);
  const yc = scale(0, costHi, H - B, T);

  const grid = ticks(0, 1, 5).map((v) => [
    s("line", { class: "grid", x1: x(v), x2: x(v), y1: T, y2: H - B }),
    s("text", { class: "tick", x: x(v), y: H - B + 16, "text-anchor": "middle" }, pct(v, 0)),
  ]);
  const steps = Math.round((accHi - accLo) / 0.05);
  const accTicks = ticks(accLo, accHi, steps >= 2 && steps <= 8 ? steps : 4).map((v) => [
    s("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }),
    s("text", { class: "tick", x: L - 6, y: y(v) + 4, "text-anchor": "end" }, pct(v, 0)),
  ]);
  const costTicks = costs.length ? ticks(0, costHi, 4).map((v) =>
    s("text", { class: "tick tick-cost", x: W - R + 6, y: yc(v) + 4 }, num(v, 2))) : [];
  const line = (pick: (p: OperatingPoint) => number | null, ys: (v: number) => number) =>
    points.filter((p) => pick(p) !== null)
      .map((p) => `${x(p.escalation).toFixed(1)},${ys(pick(p) as number).toFixed(1)}`).join(" ");
  const refs: SVGElement[] = [];
  for (const [label, v] of [["small", curve.acc_small], ["large", curve.acc_large]] as const) {
    if (v === null) continue;
    const right = label === "large";  // the two labels apart even where they meet
    refs.push(s("line", { class: `ref ref-${label}`, x1: L, x2: W - R, y1: y(v), y2: y(v) }),
              s("text", { class: "ref-label", x: right ? W - R - 4 : L + 4, y: y(v) - 4,
                          "text-anchor": right ? "end" : "start" }, `always ${label} ${pct(v)}`));
  }
  const current = curve.current;
  const marks: SVGElement[] = [];
  if (current !== null && current.accuracy !== null) {
    marks.push(
      s("line", { class: "current", x1: x(current.escalation), x2: x(current.escalation), y1: T,
                  y2: H - B }),
      s("circle", { class: "current-dot", cx: x(current.escalation), cy: y(current.accuracy),
                    r: 5 }),
      s("text", { class: "current-label", x: x(current.escalation) + 6, y: T + 12 },
        `threshold ${num(curve.threshold)}`));
  }
  const previewLine = s("line", { class: "preview", y1: T, y2: H - B, visibility: "hidden" });
  const previewDot = s("circle", { class: "preview-dot", r: 6, visibility: "hidden" });
  const label = `${title}: ${points.length} operating points; at the current threshold ` +
    `${num(curve.threshold)} escalation ${pct(current?.escalation)}, accuracy ` +
    `${pct(current?.accuracy)}`;
  const element = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
                             "aria-label": label },
    s("title", {}, label), grid, accTicks, costTicks, refs,
    s("polyline", { class: "cost-line", points: line((p) => p.cost, yc) }),
    s("polyline", { class: "acc-line", points: line((p) => p.accuracy, y) }),
    marks, previewLine, previewDot,
    s("text", { class: "axis", x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle" },
      "escalated to the large model"),
    s("text", { class: "axis", x: 12, y: (T + H - B) / 2, "text-anchor": "middle",
                transform: `rotate(-90 12 ${(T + H - B) / 2})` }, "accuracy"),
    costs.length ? s("text", { class: "axis tick-cost", x: W - 10, y: (T + H - B) / 2,
                               "text-anchor": "middle",
                               transform: `rotate(90 ${W - 10} ${(T + H - B) / 2})` },
                     "cost") : null);
  return {
    element,
    preview(point: OperatingPoint | null) {
      if (point === null || point.accuracy === null) {
        previewLine.setAttribute("visibility", "hidden");
        previewDot.setAttribute("visibility", "hidden");
        return;
      }
      const px = x(point.escalation).toFixed(1);
      previewLine.setAttribute("x1", px);
      previewLine.setAttribute("x2", px);
      previewDot.setAttribute("cx", px);
      previewDot.setAttribute("cy", y(point.accuracy).toFixed(1));
      previewLine.setAttribute("visibility", "visible");
      previewDot.setAttribute("visibility", "visible");
    },
  };
}

export interface Series { name: string; points: [number, number | null][] }

const PALETTE = 8;

/** Values in [0, 1] over time, one line per series (canary runs per slice). */
export function seriesChart(series: Series[], title: string): SVGElement {
  const times = series.flatMap((sr) => sr.points.map((p) => p[0]));
  const t0 = Math.min(...times), t1 = Math.max(...times);
  const x = scale(t0, t1 === t0 ? t0 + 1 : t1, L, W - R);
  const y = scale(0, 1, H - B, T);
  const grid = ticks(0, 1, 4).map((v) => [
    s("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }),
    s("text", { class: "tick", x: L - 6, y: y(v) + 4, "text-anchor": "end" }, pct(v, 0)),
  ]);
  const timeTicks = (t1 > t0 ? ticks(t0, t1, 3) : [t0]).map((t) =>
    s("text", { class: "tick", x: x(t), y: H - B + 16, "text-anchor": "middle" },
      new Date(t * 1000).toISOString().slice(11, 19)));
  const lines = series.map((sr, i) => {
    const pts = sr.points.filter((p) => p[1] !== null);
    const cls = `series series-${i % PALETTE}`;
    return [
      s("polyline", { class: cls, points: pts.map((p) =>
        `${x(p[0]).toFixed(1)},${y(p[1] as number).toFixed(1)}`).join(" ") }),
      pts.map((p) => s("circle", { class: `${cls} dot`, cx: x(p[0]), cy: y(p[1] as number),
                                  r: 3 },
                       s("title", {}, `${sr.name} ${new Date(p[0] * 1000).toISOString()}: ` +
                         pct(p[1])))),
    ];
  });
  const legend = series.map((sr, i) => s("text", {
    class: `legend series-${i % PALETTE}`, x: W - R + 6, y: T + 12 + i * 14 }, sr.name));
  return s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": title },
    s("title", {}, title), grid, timeTicks, lines, legend,
    s("text", { class: "axis", x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle" },
      "run started (UTC)"));
}

/** A token's colour: green (sure) through yellow to red (unlikely), by its probability. */
export function heat(logprob: number | null): string {
  if (logprob === null) return "hsl(0 0% 85%)";
  const p = Math.exp(Math.max(logprob, -20));
  return `hsl(${Math.round(p * 120)} 75% ${Math.round(82 - p * 10)}%)`;
}

/** The tokens of one choice, each coloured by its logprob; its alternatives in the tooltip. */
export function heatmap(logprobs: Logprobs, label: string): HTMLElement {
  const cells = logprobs.token.map((token, i) => {
    const lp = logprobs.logprob[i] ?? null;
    const top = logprobs.top?.[i] ?? [];
    const tip = `#${i} ${JSON.stringify(token)} logprob ${lp === null ? "—" : lp.toFixed(4)}` +
      (top.length ? "\n" + top.map((t) => `${JSON.stringify(t[2])} ${t[1].toFixed(4)}`)
        .join("\n") : "");
    const cell = h("span", { class: "tok", title: tip, "data-logprob": lp ?? "" },
      token.replace(/\n/g, "⏎").replace(/ /g, "·") || "∅");
    cell.style.backgroundColor = heat(lp);  // CSSOM: allowed by the CSP, unlike style=""
    return cell;
  });
  return h("div", { class: "heatmap", role: "group", "aria-label": label }, cells);
}

/** The heat map's key: probability 1 to 0. */
export function heatLegend(): HTMLElement {
  const stops = [0, -0.05, -0.2, -0.7, -1.6, -3, -6].map((lp) => {
    const cell = h("span", { class: "tok" }, `p ${Math.exp(lp).toFixed(2)}`);
    cell.style.backgroundColor = heat(lp);
    return cell;
  });
  return h("div", { class: "heat-legend", "aria-hidden": "true" }, stops);
}
