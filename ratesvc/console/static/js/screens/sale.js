// Sale: its boxes and what was assumed, the rate table, Buy (once per intent), then the label:
// tracking, PDFs, Print all, the write-back's progress, Void.

import { ApiError, get, newKey, post, query } from "../api.js";
import { dimensions, h, heading, money, place, replace, table, weight, when } from "../dom.js";
import { confirmDialog, errorBox, knownSales, labelOf, openPdf, orderNumbers, pdfLink, remember, retryWriteBackButton, status, writeBackRetryable } from "../ui.js";

const LIVE = new Set(["purchasing", "purchased", "completed", "write_back_failed", "attention"]);
const POLL_MS = 1000;
const WRITE_BACK_WORDS = {
  not_requested: "not asked for",
  pending: "waiting to be written to Cin7 Core…",
  failed: "failing, retrying",
  done: "done: the tracking and labels are on the sale in Cin7 Core",
  cancelled: "cancelled",
};

async function findSale(saleId) {
  if (knownSales.has(saleId)) return knownSales.get(saleId);
  let cursor = "";
  for (let i = 0; i < 4; i++) { // the ready list is short; a sale not on it is not ready
    const page = await get(`/v1/sales${query({ ready: "true", limit: 100, cursor })}`);
    remember(page.sales);
    const found = page.sales.find((s) => s.sale_id === saleId);
    if (found || !page.next_cursor) return found || null;
    cursor = page.next_cursor;
  }
  return null;
}

export function render(main, { args, alive }) {
  const [saleId] = args;
  const order = orderNumbers.get(saleId) || saleId;
  const title = heading(`Sale ${order}`);
  const errors = errorBox();
  const about = h("section", { "aria-labelledby": "boxes-h" }, h("h2", { id: "boxes-h" }, "Boxes"), h("p", { class: "muted" }, "Loading the sale…"));
  const labelSection = h("section", { "aria-labelledby": "label-h", hidden: true });
  const ratesSection = h("section", { "aria-labelledby": "rates-h" });
  main.append(title, errors, about, labelSection, ratesSection);

  let sale = null;
  let poll = null;
  let rates = null;
  let carrier = "";
  let intent = null; // { quote, key } of the purchase being confirmed or sent
  let unsure = null; // { quote_id, key } of a purchase whose answer was lost: retried with its key

  // --- the sale and its boxes -------------------------------------------------------------
  async function loadSale() {
    try {
      sale = await findSale(saleId);
    } catch (error) {
      if (!alive()) return;
      replace(about, h("h2", { id: "boxes-h" }, "Boxes"), h("p", { class: "muted" }, `The boxes could not be read: ${error.detail}`));
      return;
    }
    if (!alive()) return;
    if (sale && sale.order_number) title.textContent = `Sale ${sale.order_number}`;
    showSale();
  }

  function showSale(defaults = []) {
    const assumed = [...new Set([...(sale?.defaults || []), ...defaults])];
    const parts = [h("h2", { id: "boxes-h" }, "Boxes")];
    if (!sale) {
      parts.push(h("p", { class: "muted" }, "This sale is not in the ready-to-ship list; the rates below still read its boxes from Cin7 Core."));
    } else {
      parts.push(h("dl", { class: "facts" },
        h("dt", {}, "Customer"), h("dd", {}, sale.customer || "—"),
        h("dt", {}, "Ship to"), h("dd", {}, sale.ship_to ? [sale.ship_to.name, sale.ship_to.company, sale.ship_to.street1, place(sale.ship_to)].filter(Boolean).join(", ") : "loading…"),
        sale.international ? [h("dt", {}, "International"), h("dd", {}, "yes: customs declared from Cin7 Core's products")] : null));
      if (sale.boxes) {
        parts.push(table(null, [{ title: "Box" }, { title: "Weight", cls: "num" }, { title: "Size", cls: "num" }],
          sale.boxes.map((b) => ({ cells: [b.box, weight(b.weight), dimensions(b.dimensions)] }))));
      } else {
        parts.push(h("p", { class: "muted" }, "loading…"));
      }
    }
    if (assumed.length) {
      parts.push(h("div", { class: "notice" }, h("strong", {}, "What was assumed: "), h("ul", {}, assumed.map((d) => h("li", {}, d)))));
    }
    replace(about, ...parts);
  }

  // --- the label ----------------------------------------------------------------------------
  async function loadLabel() {
    try {
      const list = await get(`/v1/labels${query({ sale_id: saleId, limit: 10 })}`);
      if (!alive()) return;
      const live = list.labels.find((l) => LIVE.has(l.status));
      if (live) showLabel(live);
      else showRates();
    } catch (error) {
      if (alive()) errors.show(error);
    }
  }

  function showLabel(label) {
    clearTimeout(poll);
    labelSection.hidden = false;
    const packageErrors = errorBox();
    const printSlot = h("span");
    const print = h("button", { type: "button", class: "primary", id: "print-all", "data-pdf": `/v1/labels/${label.label_id}/label.pdf` }, "Print all");
    print.addEventListener("click", async () => {
      packageErrors.show(null);
      print.disabled = true;
      try { await openPdf(print.dataset.pdf, printSlot); } catch (error) { packageErrors.show(error); } finally { print.disabled = false; }
    });
    const bought = label.packages.filter((p) => p.state === "bought");
    const customs = label.packages.some((p) => p.customs_form_url);
    const rows = label.packages.map((p) => ({
      attrs: { "data-box": p.box },
      cells: [
        p.box,
        p.tracking_number ? h("a", { href: p.tracking_url || "#", target: "_blank", rel: "noopener noreferrer", class: "tracking", "aria-label": `Track ${p.box}: ${p.tracking_number}` }, p.tracking_number) : h("span", { class: "muted" }, p.state),
        money(p.cost, label.currency),
        p.label_url ? pdfLink(p.label_url, "Label PDF", `Label PDF of ${p.box}`, packageErrors) : "—",
        customs ? (p.customs_form_url ? pdfLink(p.customs_form_url, "Customs PDF", `Customs form of ${p.box}`, packageErrors) : "—") : null,
      ].filter((c) => c !== null),
    }));
    const wb = label.write_back;
    const working = label.status !== "voided" && (wb.state === "pending" || wb.state === "failed");
    const voidable = LIVE.has(label.status) && label.status !== "purchasing";
    const voidButton = h("button", { type: "button", class: "danger", id: "void" }, "Void labels");
    voidButton.addEventListener("click", () => voidLabel(label, voidButton));
    const retry = writeBackRetryable(label)
      ? retryWriteBackButton(label, { id: "retry-write-back", name: "Retry write-back", errors, done: (fresh) => showLabel(fresh) })
      : null;
    replace(labelSection,
      h("h2", { id: "label-h" }, "Label "),
      h("dl", { class: "facts" },
        h("dt", {}, "Status"), h("dd", { id: "label-status" }, status(label.status, label.status === "attention" ? "stale" : "")),
        label.detail ? [h("dt", {}, "Why"), h("dd", {}, label.detail)] : null,
        h("dt", {}, "Service"), h("dd", {}, `${label.carrier_code} / ${label.service_code}${label.test_label ? " (test label)" : ""}`),
        h("dt", {}, "Total"), h("dd", {}, money(label.total_cost, label.currency)),
        h("dt", {}, "Bought"), h("dd", {}, when(label.created_at)),
        label.voided_at ? [h("dt", {}, "Voided"), h("dd", {}, when(label.voided_at))] : null,
        h("dt", {}, "Write-back"), h("dd", { id: "write-back", role: "status", "data-state": wb.state },
          WRITE_BACK_WORDS[wb.state] || wb.state,
          wb.last_error ? ` (attempt ${wb.attempts}: ${wb.last_error})` : "")),
      working ? h("progress", { "aria-label": "Write-back in progress" }) : null,
      table(null, [{ title: "Box" }, { title: "Tracking" }, { title: "Cost", cls: "money" }, { title: "Label" }, customs ? { title: "Customs" } : null].filter(Boolean), rows),
      h("div", { class: "toolbar" }, bought.length ? print : null, printSlot, retry, voidable ? voidButton : null),
      packageErrors);
    labelSection.querySelector("h2").append(h("span", { class: "muted" }, label.label_id));
    if (label.status === "voided" || label.status === "failed") {
      showRates();
    } else {
      replace(ratesSection);
    }
    if (working || label.status === "purchasing") watch(label);
  }

  // Polls the label while work goes on; the section is drawn again only when the label changed
  // (so focus stays put) and never under a retry that is being sent.
  function watch(label) {
    poll = setTimeout(async () => {
      try {
        const fresh = await labelOf(label.label_id, true);
        if (!alive()) return;
        const same = JSON.stringify(fresh) === JSON.stringify(label);
        if (same || labelSection.querySelector("[aria-busy=true]")) watch(label);
        else showLabel(fresh);
      } catch (error) {
        if (alive()) { errors.show(error); poll = setTimeout(() => showLabel(label), POLL_MS * 5); }
      }
    }, POLL_MS);
  }

  async function voidLabel(label, button) {
    const ok = await confirmDialog({
      title: "Void these labels?",
      text: `Void all ${label.packages.length} label(s) of ${title.textContent.replace(/^Sale /, "")} (${label.total_cost} ${label.currency})? The carrier refunds them; the tracking is taken off the sale in Cin7 Core.`,
      ok: "Void labels", danger: true,
    });
    if (!ok || !alive()) { button.focus(); return; }
    button.disabled = true;
    errors.show(null);
    try {
      showLabel(await post(`/v1/labels/${encodeURIComponent(label.label_id)}/void`, {}));
    } catch (error) {
      errors.show(error);
      button.disabled = false;
    }
  }

  // --- the rates ----------------------------------------------------------------------------
  function showRates() {
    const button = h("button", { type: "button", class: "primary", id: "get-rates" }, rates ? "Rate again" : "Get rates");
    button.addEventListener("click", () => rate(button));
    const parts = [h("h2", { id: "rates-h" }, "Rates"), h("div", { class: "toolbar" }, button)];
    if (rates) parts.push(rateTable());
    replace(ratesSection, ...parts);
  }

  async function rate(button) {
    button.disabled = true;
    errors.show(null);
    try {
      const body = { sale_id: saleId };
      if (sale?.task_id) body.task_id = sale.task_id;
      rates = await post("/v1/rates", body);
      if (!alive()) return;
      showSale(rates.defaults);
      showRates();
      const h2 = ratesSection.querySelector("h2");
      h2.setAttribute("tabindex", "-1");
      h2.focus();
    } catch (error) {
      if (!alive()) return;
      errors.show(error);
      button.disabled = false;
    }
  }

  function rateTable() {
    const carriers = [...new Set(rates.quotes.map((q) => q.carrier_code))].sort();
    const filter = h("select", { id: "carrier-filter" },
      h("option", { value: "" }, "All carriers"),
      carriers.map((c) => h("option", { value: c, selected: c === carrier }, c)));
    filter.addEventListener("change", () => { carrier = filter.value; showRates(); document.getElementById("carrier-filter").focus(); });
    const quotes = rates.quotes.filter((q) => !carrier || q.carrier_code === carrier);
    const rows = quotes.map((q) => {
      const buy = h("button", { type: "button", class: "primary buy", "data-quote": q.quote_id, "aria-label": `Buy ${q.service_name} for ${q.total} ${q.currency}` }, "Buy");
      buy.addEventListener("click", () => buyQuote(q, buy));
      const marks = [q.cached ? h("span", { class: "badge" }, "cached") : null,
        q.stale ? h("span", { class: "badge stale", title: "older than the quote's time to live" }, `stale${q.age_s ? `, ${Math.round(q.age_s / 60)} min old` : ""}`) : null];
      return {
        attrs: { "data-carrier": q.carrier_code, "data-service": q.service_code },
        cells: [
          q.carrier_code,
          h("span", {}, q.service_name, " ", marks),
          q.package_code || "—",
          h("span", {}, money(q.shipment_cost, q.currency), " + ", money(q.other_cost, q.currency)),
          money(q.markup, q.currency),
          h("strong", {}, money(q.total, q.currency)),
          buy,
        ],
      };
    });
    const columns = [{ title: "Carrier" }, { title: "Service" }, { title: "Package" },
      { title: "Shipment + other", cls: "money" }, { title: "Markup", cls: "money" }, { title: "Total", cls: "money" }, { title: "Buy" }];
    const failed = rates.errors.map((e) => h("li", {}, h("strong", {}, e.carrier_code), `: ${e.message}${e.box ? ` (${e.box})` : ""}`));
    return h("div", {},
      h("div", { class: "toolbar" }, h("div", { class: "field" }, h("label", { for: "carrier-filter" }, "Carrier"), filter)),
      rates.complete ? null : h("p", { class: "notice" }, "Not every carrier answered: the list may be incomplete."),
      failed.length ? h("div", { class: "error", role: "alert" }, "Some carriers could not rate this sale:", h("ul", {}, failed)) : null,
      quotes.length ? table(`${quotes.length} quote(s), cheapest first`, columns, rows) : h("p", { class: "none" }, "No quote for this carrier."));
  }

  async function buyQuote(quote, button) {
    if (intent) return; // a purchase is being confirmed or sent
    intent = { quote, key: unsure?.quote_id === quote.quote_id ? unsure.key : newKey() };
    try {
      const ok = await confirmDialog({
        title: "Buy these labels?",
        text: `Buy ${quote.service_name} (${quote.carrier_code}) for ${quote.packages} box(es) of ${title.textContent.replace(/^Sale /, "")}: total ${quote.total} ${quote.currency}.`,
        ok: `Buy for ${quote.total} ${quote.currency}`,
      });
      if (!ok || !alive()) { button.focus(); return; }
      for (const b of ratesSection.querySelectorAll("button")) b.disabled = true;
      errors.show(null);
      const label = await post("/v1/labels", { quote_id: quote.quote_id }, { headers: { "Idempotency-Key": intent.key } });
      if (!alive()) return;
      showLabel(label);
      labelSection.querySelector("h2").setAttribute("tabindex", "-1");
      labelSection.querySelector("h2").focus();
    } catch (error) {
      if (!alive()) return;
      errors.show(error);
      unsure = error.status === 0 || error.status >= 500 ? { quote_id: quote.quote_id, key: intent.key } : null;
      if (error instanceof ApiError && error.code === "already_labelled") loadLabel();
      for (const b of ratesSection.querySelectorAll("button")) b.disabled = false;
    } finally {
      intent = null;
    }
  }

  loadSale();
  loadLabel();
  return () => clearTimeout(poll);
}
