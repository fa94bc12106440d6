// Health: the upstream budgets, the write-back backlog, the automation queue, the webhook.

import { get } from "../api.js";
import { duration, h, heading, replace, table, when } from "../dom.js";
import { errorBox } from "../ui.js";

const REFRESH_MS = 10000;

function budget(rows, name) {
  return table(null, [{ title: name }, { title: "Limit", cls: "num" }, { title: "Remaining", cls: "num" }, { title: "Resets" }, { title: "Throttled (429s)", cls: "num" }],
    rows.map((r) => ({
      cells: [h("code", {}, r.key ?? r.application), String(r.limit ?? "—"),
        h("span", {}, String(r.remaining ?? "—"), r.limit ? h("meter", { min: "0", max: String(r.limit), value: String(r.remaining ?? 0), low: String(Math.ceil(r.limit / 5)), optimum: String(r.limit), "aria-label": `${r.remaining} of ${r.limit} calls left` }) : null),
        when(r.resets_at), String(r.throttled ?? 0)],
    })));
}

function webhook(w) {
  if (!w) return null;
  if (w.state === "active") return h("p", { class: "ok", id: "webhook" }, `Cin7 Core webhook: active. ${w.detail || ""}`);
  const fix = w.fix ? [h("span", {}, " To fix it, run:"), h("code", {}, w.fix)] : null;
  if (w.state === "inactive") {
    return h("div", { class: "loud", role: "alert", id: "webhook" }, h("strong", {}, "The Cin7 Core webhook is INACTIVE: packed sales are not announced to ratesvc. "), w.detail || "", fix);
  }
  return h("div", { class: "notice", id: "webhook" }, h("strong", {}, `Cin7 Core webhook: ${w.state}. `), w.detail || "", fix);
}

export function render(main, { alive }) {
  const errors = errorBox();
  const body = h("div", { "aria-live": "polite" }, h("p", { class: "muted" }, "Loading…"));
  main.append(heading("Health"), errors, body);

  async function load(quiet) {
    try {
      const s = await get("/v1/status", { quiet });
      if (!alive()) return;
      errors.show(null);
      const wb = s.write_back || {};
      const au = s.automation || {};
      replace(body,
        webhook(s.webhook),
        h("p", { class: "muted" }, "Account ", h("strong", {}, s.account || "—"), " · as of ", when(s.generated_at)),
        h("div", { class: "grid" },
          h("section", { class: "panel", "aria-labelledby": "h-wb" }, h("h2", { id: "h-wb" }, "Write-back to Cin7 Core"),
            h("dl", { class: "facts" }, h("dt", {}, "Backlog"), h("dd", { class: wb.backlog ? "bad" : "ok" }, String(wb.backlog ?? "—")),
              h("dt", {}, "Oldest waiting"), h("dd", {}, duration(wb.oldest_age_s)))),
          h("section", { class: "panel", "aria-labelledby": "h-au" }, h("h2", { id: "h-au" }, "Automation"),
            h("dl", { class: "facts" }, h("dt", {}, "Enabled"), h("dd", {}, au.enabled ? "yes" : "no"),
              h("dt", {}, "Waiting"), h("dd", {}, String(au.waiting ?? "—")),
              h("dt", {}, "Retrying"), h("dd", {}, String(au.retrying ?? "—")),
              h("dt", {}, "Needs attention"), h("dd", { class: au.attention ? "bad" : "" }, String(au.attention ?? "—")))),
          h("section", { class: "panel", "aria-labelledby": "h-lb" }, h("h2", { id: "h-lb" }, "Labels"),
            h("dl", { class: "facts" }, h("dt", {}, "Needs attention"), h("dd", { class: s.labels?.attention ? "bad" : "" }, String(s.labels?.attention ?? "—")),
              h("dt", {}, "Being bought"), h("dd", {}, String(s.labels?.purchasing ?? "—"))))),
        h("h2", {}, "ShipStation budget (per API key)"), budget(s.shipstation || [], "Key"),
        h("h2", {}, "Cin7 Core budget (per application)"), budget(s.cin7 || [], "Application"));
    } catch (error) {
      if (alive()) errors.show(error);
    }
  }

  load(false);
  const timer = setInterval(() => load(true), REFRESH_MS);
  return () => clearInterval(timer);
}
