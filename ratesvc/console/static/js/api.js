// The /v1 API with the token from sessionStorage; problems become ApiError with their detail.

const TOKEN_KEY = "ratesvc.token";
const BUSY_AFTER_MS = 300;

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.code = problem.code || null;
    this.detail = this.message;
    this.requestId = problem.request_id || null;
    this.problem = problem;
  }
}

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

let inFlight = 0;
let busyTimer = null;
const listeners = new Set();

export function onUnauthorized(listener) {
  listeners.add(listener);
}

function busy(delta) {
  inFlight += delta;
  const indicator = document.getElementById("busy");
  if (inFlight > 0 && busyTimer === null) {
    busyTimer = setTimeout(() => { if (inFlight > 0) indicator.textContent = "Working…"; }, BUSY_AFTER_MS);
  } else if (inFlight === 0) {
    clearTimeout(busyTimer);
    busyTimer = null;
    indicator.textContent = "";
  }
}

/** Calls the API. ``quiet`` calls (background polls) show no busy indicator. */
export async function request(method, path, { body, headers = {}, quiet = false, raw = false, bearer } = {}) {
  const auth = bearer ?? token.get();
  const init = { method, headers: { Accept: "application/json", ...headers }, cache: "no-store" };
  if (auth) init.headers.Authorization = `Bearer ${auth}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (!quiet) busy(+1);
  try {
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, { detail: `the service could not be reached (${err.message}); check the network and try again` });
    }
    if (!response.ok) {
      let problem = {};
      try { problem = await response.json(); } catch { problem = { detail: `HTTP ${response.status} ${response.statusText}` }; }
      const error = new ApiError(response.status, problem);
      if (response.status === 401 && bearer === undefined) listeners.forEach((l) => l(error));
      throw error;
    }
    if (raw) return await response.blob();
    return await response.json();
  } finally {
    if (!quiet) busy(-1);
  }
}

export const get = (path, options) => request("GET", path, options);
export const post = (path, body, options = {}) => request("POST", path, { ...options, body });

export function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") q.set(key, value);
  }
  const text = q.toString();
  return text ? `?${text}` : "";
}

/** A random UUID; crypto.randomUUID exists only in secure contexts (https, localhost). */
export function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
