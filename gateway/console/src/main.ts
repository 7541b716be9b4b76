// The console's shell: the login form, the navigation, and the page the location hash names
// (#/routes/NAME, #/models, #/canaries/MODEL, #/records?filters, #/records/ID).

import { adminKey, ApiError, login, logout, whenUnauthorized } from "./api";
import { h, replaceChildren } from "./dom";
import { renderCanaries } from "./pages/canaries";
import { renderModels } from "./pages/models";
import { renderRecord, renderRecords } from "./pages/records";
import { renderRoutes } from "./pages/routes";

export interface Location { path: string[]; params: URLSearchParams }

type Page = (main: HTMLElement, where: Location) => Promise<void>;

const PAGES: [string, string, Page][] = [
  ["routes", "Routes", renderRoutes],
  ["models", "Models", renderModels],
  ["canaries", "Canaries", renderCanaries],
  ["records", "Records", (main, where) =>
    where.path.length > 1 ? renderRecord(main, where.path[1]) : renderRecords(main, where)],
];

function parseHash(): Location {
  const [path, search] = location.hash.replace(/^#\/?/, "").split("?", 2);
  return { path: path.split("/").filter(Boolean).map(decodeURIComponent),
           params: new URLSearchParams(search ?? "") };
}

function loginView(app: HTMLElement, message?: string): void {
  const input = h("input", { id: "admin-key", type: "password", name: "key", required: true,
                             autocomplete: "current-password", spellcheck: "false" });
  const status = h("p", { class: "error", role: "alert" }, message ?? "");
  const form = h("form", { class: "login", "aria-labelledby": "login-title" },
    h("h1", { id: "login-title" }, "tiergate console"),
    h("p", {}, "Sign in with an admin key (auth.admin_keys). It is kept in this tab only " +
      "(sessionStorage) and sent to this gateway's admin API, nowhere else."),
    h("label", { for: "admin-key" }, "Admin key"), input,
    h("button", { type: "submit" }, "Sign in"), status);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    status.textContent = "";
    login(input.value).then(() => {
      if (!location.hash || location.hash === "#/") location.hash = "#/routes";  // shows it
      else show(app);
    }).catch((error: unknown) => {
      status.textContent = error instanceof ApiError && (error.status === 401 ||
        error.status === 403) ? `Not accepted: ${error.message}` : `Failed: ${String(
        error instanceof Error ? error.message : error)}`;
      input.focus();
    });
  });
  replaceChildren(app, h("main", { id: "main" }, form));
  input.focus();
}

function shell(app: HTMLElement, current: string): HTMLElement {
  const main = h("main", { id: "main", tabindex: "-1" });
  const nav = h("nav", { "aria-label": "Console pages" },
    h("ul", {}, PAGES.map(([name, label]) => h("li", {},
      h("a", { href: `#/${name}`, "aria-current": name === current ? "page" : null }, label)))));
  const out = h("button", { type: "button", class: "secondary", onclick: () => {
    logout();
    location.hash = "";
    show(app);
  } }, "Sign out");
  replaceChildren(app,
    h("a", { class: "skip", href: "#main", onclick: (e: Event) => {
      e.preventDefault();
      main.focus();
    } }, "Skip to content"),
    h("header", {}, h("span", { class: "brand" }, "tiergate"), nav, out), main);
  return main;
}

let generation = 0;

function show(app: HTMLElement): void {
  if (adminKey() === null) {
    loginView(app);
    return;
  }
  const where = parseHash();
  const page = PAGES.find(([name]) => name === where.path[0]);
  if (page === undefined) {
    location.replace("#/routes");
    return;
  }
  const main = shell(app, page[0]);
  const mine = ++generation;
  main.setAttribute("aria-busy", "true");
  main.appendChild(h("p", { class: "loading" }, "Loading…"));
  page[2](main, where).catch((error: unknown) => {
    if (mine !== generation) return;
    replaceChildren(main, h("p", { class: "error", role: "alert" },
      error instanceof Error ? error.message : String(error)));
  }).finally(() => {
    if (mine !== generation) return;
    main.setAttribute("aria-busy", "false");
    main.setAttribute("data-loaded", location.hash);  // what the page shows is complete
  });
}

function start(): void {
  const app = document.getElementById("app");
  if (app === null) return;
  whenUnauthorized(() => {
    logout();
    loginView(app, "The admin key was not accepted any more: sign in again.");
  });
  window.addEventListener("hashchange", () => show(app));
  show(app);
}

start();
