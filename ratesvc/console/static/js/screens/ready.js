// Ready to ship: packed, unshipped sales of Cin7 Core, searchable by order number, paged.

import { get, query } from "../api.js";
import { h, heading, place, replace, table, weight } from "../dom.js";
import { errorBox, pager, remember, status } from "../ui.js";

const PAGE = 25;
const PENDING_REFETCH_MS = 2000;

function boxes(sale) {
  if (sale.details === "pending" || sale.boxes === null) return h("span", { class: "muted" }, "loading…");
  if (!sale.boxes.length) return "no boxes";
  return h("ul", { class: "plain" }, sale.boxes.map((b) => h("li", {}, `${b.box}: ${weight(b.weight)}`)));
}

function automation(sale) {
  const a = sale.automation;
  if (!a) return h("span", { class: "muted" }, "—");
  return h("span", {}, status(a.status, a.status === "attention" ? "stale" : ""), a.reason ? ` ${a.reason}` : "");
}

function label(sale) {
  if (!sale.label_id) return h("span", { class: "muted" }, "none");
  return status(sale.label_status || "labelled");
}

export function render(main, { params, go, alive }) {
  const search = params.get("search") || "";
  const cursor = params.get("cursor") || "";
  const errors = errorBox();
  const results = h("div", { "aria-live": "polite" }, h("p", { class: "muted" }, "Loading the ready sales…"));
  const input = h("input", { id: "search", type: "search", name: "search", value: search, maxlength: "100", autocomplete: "off" });
  const form = h("form", { class: "toolbar", role: "search", "aria-label": "Search the ready sales" },
    h("div", { class: "field" }, h("label", { for: "search" }, "Order number or customer"), input),
    h("button", { type: "submit" }, "Search"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    go(`#/ready${query({ search: input.value.trim() })}`);
  });
  main.append(heading("Ready to ship"), form, errors, results);

  let timer = null;
  async function load(quiet) {
    try {
      const page = await get(`/v1/sales${query({ ready: "true", search, limit: PAGE, cursor })}`, { quiet });
      if (!alive()) return;
      remember(page.sales);
      errors.show(null);
      show(page);
      if (page.sales.some((s) => s.details === "pending")) timer = setTimeout(() => load(true), PENDING_REFETCH_MS);
    } catch (error) {
      if (!alive()) return;
      errors.show(error);
      replace(results);
    }
  }

  function show(page) {
    const rows = page.sales.map((sale) => ({
      attrs: { "data-sale": sale.sale_id },
      cells: [
        h("a", { href: `#/sale/${encodeURIComponent(sale.sale_id)}`, "aria-label": `Open sale ${sale.order_number || sale.sale_id}` }, sale.order_number || sale.sale_id),
        sale.customer || "—",
        sale.details === "pending" ? h("span", { class: "muted" }, "loading…") : place(sale.ship_to),
        boxes(sale),
        automation(sale),
        label(sale),
      ],
    }));
    const columns = ["Order", "Customer", "Destination", "Boxes", "Automation", "Label"].map((title) => ({ title }));
    replace(results,
      page.sales.length
        ? table(`${page.sales.length} sale(s) packed and not shipped${search ? ` matching “${search}”` : ""}`, columns, rows)
        : h("p", {}, search ? `No ready sale matches “${search}”.` : "No sale is packed and waiting."),
      pager("#/ready", { search }, params, page.next_cursor));
  }

  load(false);
  return () => clearTimeout(timer);
}
