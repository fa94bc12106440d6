// Labels: the account's labels, by status, searched by order number or tracking number, paged.

import { get, query } from "../api.js";
import { h, heading, money, replace, table, when } from "../dom.js";
import { errorBox, orderNumbers, pager, pdfLink, status } from "../ui.js";

const STATUSES = ["", "purchasing", "purchased", "completed", "write_back_failed", "attention", "voided", "failed"];

export function render(main, { params, go, alive }) {
  const chosen = params.get("status") || "";
  const search = (params.get("q") || "").trim();
  const errors = errorBox();
  const select = h("select", { id: "status", name: "status" },
    STATUSES.map((s) => h("option", { value: s, selected: s === chosen }, s || "any status")));
  const input = h("input", { id: "q", name: "q", type: "search", value: search, autocomplete: "off" });
  const form = h("form", { class: "toolbar", role: "search", "aria-label": "Filter the labels" },
    h("div", { class: "field" }, h("label", { for: "status" }, "Status"), select),
    h("div", { class: "field" }, h("label", { for: "q" }, "Order, sale or tracking number"), input),
    h("button", { type: "submit" }, "Show"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    go(`#/labels${query({ status: select.value, q: input.value.trim() })}`);
  });
  const results = h("div", { "aria-live": "polite" }, h("p", { class: "muted" }, "Loading the labels…"));
  main.append(heading("Labels"), form, errors, results);

  async function load() {
    try {
      // the service searches every label (order number, sale id, tracking number)
      const page = await get(`/v1/labels${query({ status: chosen, search, limit: 100, cursor: params.get("cursor") || "" })}`);
      if (!alive()) return;
      const shown = page.labels;
      const errorsOfPdfs = errorBox();
      const rows = shown.map((l) => {
        const order = l.order_number || orderNumbers.get(l.sale_id) || l.sale_id || "—";
        return {
          attrs: { "data-label-id": l.label_id },
          cells: [
            l.sale_id ? h("a", { href: `#/sale/${encodeURIComponent(l.sale_id)}` }, order) : order,
            status(l.status, l.status === "attention" ? "stale" : ""),
            `${l.carrier_code} / ${l.service_code}`,
            h("ul", { class: "plain" }, l.packages.map((p) => h("li", {},
              p.tracking_number ? h("a", { href: p.tracking_url || "#", target: "_blank", rel: "noopener noreferrer" }, p.tracking_number) : p.state,
              " ", p.label_url ? pdfLink(p.label_url, "PDF", `Label PDF of ${p.box} of ${order}`, errorsOfPdfs) : null))),
            money(l.total_cost, l.currency),
            when(l.created_at),
          ],
        };
      });
      const columns = ["Order", "Status", "Service", "Tracking and PDFs", "Cost", "Bought"].map((title) => ({ title, cls: title === "Cost" ? "money" : null }));
      replace(results,
        errorsOfPdfs,
        rows.length ? table(search ? `${rows.length} label(s) match “${search}”` : `${rows.length} label(s)`, columns, rows)
          : h("p", {}, search ? `No label matches “${search}”.` : "No label."),
        pager("#/labels", { status: chosen, q: search }, params, page.next_cursor));
    } catch (error) {
      if (alive()) { errors.show(error); replace(results); }
    }
  }

  load();
}
