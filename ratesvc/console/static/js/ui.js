// Shared pieces of the screens: error boxes, the confirmation dialog, PDFs opened with the token.

import { get, post, query, request } from "./api.js";
import { h, replace } from "./dom.js";

/** An alert region; ``show(error)`` puts the problem's detail in it, in words. */
export function errorBox() {
  const box = h("div", { class: "error", role: "alert" });
  box.show = (error) => {
    if (!error) { replace(box); return; }
    const extra = [error.code, error.requestId && `request ${error.requestId}`].filter(Boolean).join(", ");
    replace(box, error.detail || String(error), extra ? h("span", { class: "muted" }, ` (${extra})`) : null);
  };
  return box;
}

/** Asks in a modal dialog; resolves true when confirmed. Esc or Cancel resolve false. */
export function confirmDialog({ title, text, ok, danger = false }) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  const button = document.getElementById("confirm-ok");
  button.textContent = ok;
  button.className = danger ? "danger" : "primary";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
    button.focus();
  });
}

/**
 * Opens a PDF of the API: fetched with the token (a plain link would have none), shown from a
 * blob: URL in a new tab. When the browser blocks the tab, ``fallback`` gets a link to click.
 */
export async function openPdf(path, fallback) {
  const blob = await request("GET", path, { raw: true, headers: { Accept: "application/pdf" } });
  const url = URL.createObjectURL(blob);
  setTimeout(() => URL.revokeObjectURL(url), 10 * 60 * 1000);
  const opened = window.open(url, "_blank");
  if (!opened && fallback) {
    replace(fallback, h("a", { href: url, target: "_blank", rel: "noopener" }, "Open the PDF"));
  }
  return url;
}

/** A link to an API PDF that opens it with the token. */
export function pdfLink(path, text, label, errors) {
  const link = h("a", { href: path, class: "pdf", "aria-label": label, "data-pdf": path }, text);
  link.addEventListener("click", async (event) => {
    event.preventDefault();
    errors.show(null);
    try { await openPdf(path, errors); } catch (error) { errors.show(error); }
  });
  return link;
}

/** Sale id → order number, learned from every list the console reads (for events, which carry
 * none; labels carry theirs). Forgotten at sign-out. */
export const orderNumbers = new Map();

/** The ready-to-ship sales last listed, by sale id (the sale screen starts from them). */
export const knownSales = new Map();

/** Forget what the signed-in person was shown (sign-out, or a token refused). */
export function forgetAll() {
  orderNumbers.clear();
  knownSales.clear();
}

export function remember(sales) {
  for (const sale of sales) {
    knownSales.set(sale.sale_id, sale);
    if (sale.order_number) orderNumbers.set(sale.sale_id, sale.order_number);
  }
}

export async function labelOf(labelId, quiet = false) {
  return get(`/v1/labels/${encodeURIComponent(labelId)}`, { quiet });
}

export function status(text, cls) {
  return h("span", { class: `badge ${cls || ""}` }, text);
}

/**
 * Previous/next links of a cursor-paged list. ``trail`` in the hash keeps the cursors of the
 * earlier pages (the first page's is empty), so "Previous page" needs no API support.
 */
export function pager(base, keep, params, nextCursor) {
  const cursor = params.get("cursor") || "";
  const trail = params.get("trail") ? params.get("trail").split(",") : [];
  const nav = h("nav", { class: "pager", "aria-label": "Pages" });
  if (cursor) {
    nav.append(h("a", { href: `${base}${query({ ...keep, cursor: trail.at(-1) ?? "", trail: trail.slice(0, -1).join(",") })}` }, "Previous page"));
  }
  if (nextCursor) {
    nav.append(h("a", { href: `${base}${query({ ...keep, cursor: nextCursor, trail: [...trail, cursor].join(",") })}` }, "Next page"));
  }
  return nav;
}

/** A label whose write-back to Cin7 Core failed and is waiting for its next try. */
export function writeBackRetryable(label) {
  return label.write_back.state === "failed" && (label.status === "attention" || label.status === "write_back_failed");
}

/**
 * "Retry write-back": tries the label's waiting write-back now (``POST …/write-back/retry``).
 * Busy while the call runs; a problem goes to ``errors`` in words; ``done`` gets the label.
 */
export function retryWriteBackButton(label, { name, errors, done, id = null }) {
  const button = h("button", { type: "button", class: "primary", id, "aria-label": name }, "Retry write-back");
  button.addEventListener("click", async () => {
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    button.textContent = "Retrying…";
    errors.show(null);
    try {
      done(await post(`/v1/labels/${encodeURIComponent(label.label_id)}/write-back/retry`, {}));
    } catch (error) {
      errors.show(error);
      button.disabled = false;
      button.removeAttribute("aria-busy");
      button.textContent = "Retry write-back";
    }
  });
  return button;
}
