// Building the page without innerHTML: every text goes in as a text node, so nothing a record
// or a model name holds can become markup (and the CSP forbids inline script anyway).

export type Child = Node | string | number | null | undefined | false | Child[];
type Attrs = Record<string, string | number | boolean | null | undefined | EventListener>;

function append(parent: Node, children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(parent, child);
    else if (child instanceof Node) parent.appendChild(child);
    else parent.appendChild(document.createTextNode(String(child)));
  }
}

function setAttrs(el: Element, attrs: Attrs): void {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (typeof value === "function") el.addEventListener(name.replace(/^on/, ""), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
}

/** An HTML element: `h("button", {type: "button", onclick: f}, "Apply")`. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K, attrs: Attrs = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** An SVG element (presentation attributes only: the CSP allows no inline style). */
export function s(tag: string, attrs: Attrs = {}, ...children: Child[]): SVGElement {
  const el = document.createElementNS(SVG_NS, tag) as SVGElement;
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

export function replaceChildren(parent: Element, ...children: Child[]): void {
  while (parent.firstChild) parent.removeChild(parent.firstChild);
  append(parent, children);
}

/** UTC, to the second: the same on every screen and in every screenshot. */
export function time(epoch: number | null | undefined): string {
  if (epoch === null || epoch === undefined) return "—";
  return new Date(epoch * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z";
}

export function pct(value: number | null | undefined, digits = 1): string {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  return `${(value * 100).toFixed(digits)} %`;
}

export function num(value: number | null | undefined, digits = 3): string {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  return value.toFixed(digits);
}

/** Dollars, the sign before the symbol; amounts under a cent to three significant digits
 * (a call's cost is often a millionth of a dollar). */
export function usd(value: number | null | undefined): string {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  const sign = value < 0 ? "−" : "";
  const amount = Math.abs(value);
  if (amount !== 0 && amount < 0.01) return `${sign}$${amount.toPrecision(3)}`;
  return `${sign}$${amount.toFixed(2)}`;
}

/** A digest shortened for a table, whole in its tooltip. */
export function digest(value: string | null | undefined): HTMLElement | string {
  if (!value) return "—";
  const bare = value.replace(/^sha256:/, "");
  return h("code", { title: value }, bare.slice(0, 12));
}

export function badge(text: string, kind: "ok" | "warn" | "bad" | "info"): HTMLElement {
  return h("span", { class: `badge badge-${kind}` }, text);
}

/** A two-column table of label/value pairs. */
export function facts(rows: [string, Child][]): HTMLElement {
  return h("dl", { class: "facts" }, rows.map(([label, value]) => [h("dt", {}, label),
    h("dd", {}, value)]));
}

export function table(head: string[], rows: Child[][], caption?: string): HTMLElement {
  return h("table", {},
    caption ? h("caption", {}, caption) : null,
    h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))));
}
