// The admin API, with the admin key this tab's login form stored (sessionStorage: gone when
// the tab closes; never in localStorage, a cookie or a URL).

const KEY = "tiergate.adminKey";

export class ApiError extends Error {
  constructor(readonly status: number, message: string, readonly code: string | null) {
    super(message);
  }
}

export function adminKey(): string | null {
  return sessionStorage.getItem(KEY);
}

export function logout(): void {
  sessionStorage.removeItem(KEY);
}

let onUnauthorized: () => void = () => undefined;

/** What to do when a request answers 401 (the key was rotated away): back to the login. */
export function whenUnauthorized(handler: () => void): void {
  onUnauthorized = handler;
}

async function request<T>(method: string, path: string, body?: unknown,
                          key: string | null = adminKey()): Promise<T> {
  const headers: Record<string, string> = { accept: "application/json" };
  if (key !== null) headers.authorization = `Bearer ${key}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const answer = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit", cache: "no-store",
  });
  const text = await answer.text();
  let data: unknown = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!answer.ok) {
    const error = (data as { error?: { message?: string; code?: string } } | null)?.error;
    if (answer.status === 401 && key === adminKey()) onUnauthorized();
    throw new ApiError(answer.status, error?.message ?? `${method} ${path}: HTTP ${answer.status}`,
                       error?.code ?? null);
  }
  return data as T;
}

export const api = {
  get: <T>(path: string): Promise<T> => request<T>("GET", path),
  post: <T>(path: string, body?: unknown): Promise<T> => request<T>("POST", path, body),
  put: <T>(path: string, body: unknown): Promise<T> => request<T>("PUT", path, body),
};

/** Checks `key` against the admin API; keeps it for this tab when it is accepted. */
export async function login(key: string): Promise<void> {
  await request("GET", "/admin/routes", undefined, key);
  sessionStorage.setItem(KEY, key);
}

/** A query string from the set values of `params`. */
export function query(params: Record<string, string | number | null | undefined>): string {
  const parts = Object.entries(params)
    .filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`);
  return parts.length ? `?${parts.join("&")}` : "";
}

export const enc = encodeURIComponent;
