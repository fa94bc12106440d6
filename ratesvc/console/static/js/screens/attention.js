// Needs attention: labels and automation events a person must look at, with what can be done.

import { get, post, query } from "../api.js";
import { h, heading, money, replace, table, when } from "../dom.js";
import { confirmDialog, errorBox, labelOf, orderNumbers, retryWriteBackButton, writeBackRetryable } from "../ui.js";

const WATCH_MS = 1000;
const WATCH_FOR = 45; // polls of a retried write-back before saying it is still waiting

export function render(main, { alive, go }) {
  const errors = errorBox();
  const labels = h("section", { "aria-labelledby": "att-labels" }, h("h2", { id: "att-labels" }, "Labels"), h("p", { class: "muted" }, "Loading…"));
  const events = h("section", { "aria-labelledby": "att-events" }, h("h2", { id: "att-events" }, "Automation events"), h("p", { class: "muted" }, "Loading…"));
  const news = h("div", { role: "status", id: "attention-news" });
  const refresh = h("button", { type: "button", id: "refresh" }, "Refresh");
  refresh.addEventListener("click", () => load());
  main.append(heading("Needs attention"), h("div", { class: "toolbar" }, refresh), errors, news, labels, events);

  const openSale = (saleId, what) => h("a", { href: `#/sale/${encodeURIComponent(saleId)}`, "aria-label": `Open the sale of ${what}` }, "Open sale");

  // A retried write-back: polled until the label leaves attention, or its next try fails too.
  async function watch(before, order, slot) {
    replace(slot, h("span", { class: "muted" }, "Retried; waiting for Cin7 Core…"));
    for (let i = 0; i < WATCH_FOR; i++) {
      await new Promise((resolve) => setTimeout(resolve, WATCH_MS));
      if (!alive()) return;
      let fresh;
      try { fresh = await labelOf(before.label_id, true); } catch (error) { if (alive()) errors.show(error); return; }
      if (!alive()) return;
      if (fresh.status !== "attention") {
        replace(news, h("p", { class: "ok" }, `The label of ${order} is resolved: ${fresh.status === "completed" ? "written back to Cin7 Core" : fresh.status}.`));
        load(true);
        return;
      }
      if (fresh.write_back.attempts > before.write_back.attempts) {
        errors.show({ detail: `The write-back of ${order} failed again: ${fresh.write_back.last_error || fresh.detail}` });
        load(true);
        return;
      }
    }
    replace(news, h("p", { class: "muted" }, `The write-back of ${order} was retried and has not finished yet; this list refreshes by itself.`));
  }

  function showLabels(list) {
    const rows = list.map((l) => {
      const order = orderNumbers.get(l.sale_id) || l.sale_id || "—";
      const voidButton = h("button", { type: "button", class: "danger", "aria-label": `Void label ${l.label_id}` }, "Void");
      voidButton.addEventListener("click", async () => {
        const ok = await confirmDialog({ title: "Void this label?", text: `Void all ${l.packages.length} label(s) of ${order} (${l.total_cost} ${l.currency})?`, ok: "Void labels", danger: true });
        if (!ok) { voidButton.focus(); return; }
        voidButton.disabled = true;
        try { await post(`/v1/labels/${encodeURIComponent(l.label_id)}/void`, {}); load(); } catch (error) { errors.show(error); voidButton.disabled = false; }
      });
      const actions = h("span", { class: "actions" });
      if (writeBackRetryable(l)) {
        const slot = h("span");
        slot.append(retryWriteBackButton(l, {
          name: `Retry the write-back of ${order}`, errors,
          done: () => { replace(news); watch(l, order, slot); },
        }));
        actions.append(slot);
      }
      actions.append(voidButton, l.sale_id ? openSale(l.sale_id, order) : "");
      return {
        attrs: { "data-label-id": l.label_id },
        cells: [order, l.label_id, l.detail || "needs a person", money(l.total_cost, l.currency), when(l.created_at), actions],
      };
    });
    replace(labels, h("h2", { id: "att-labels" }, "Labels"),
      rows.length ? table(null, ["Order", "Label", "Why", "Cost", "Bought", "What can be done"].map((title) => ({ title, cls: title === "Cost" ? "money" : null })), rows)
        : h("p", { class: "ok" }, "No label needs attention."));
  }

  function showEvents(list) {
    const rows = list.map((e) => {
      if (e.sale_id && e.order_number) orderNumbers.set(e.sale_id, e.order_number);
      const order = e.order_number || e.sale_id || "—";
      const retry = h("button", { type: "button", class: "primary", "aria-label": `Retry the event of ${order}` }, "Retry");
      retry.addEventListener("click", async () => {
        retry.disabled = true;
        errors.show(null);
        try {
          const again = await post(`/v1/automation/events/${encodeURIComponent(e.event_id)}/retry`, {});
          if (!alive()) return;
          replace(retry.parentElement, h("span", { class: "ok", role: "status" }, `Queued again (${again.status}).`));
          setTimeout(() => { if (alive()) load(true); }, 1500);
        } catch (error) {
          errors.show(error);
          retry.disabled = false;
        }
      });
      return {
        attrs: { "data-event-id": e.event_id },
        cells: [order, `${e.event_type} (${e.source})`, e.reason || "—", String(e.attempts), when(e.updated_at),
          h("span", { class: "actions" }, retry, e.sale_id ? openSale(e.sale_id, order) : null)],
      };
    });
    replace(events, h("h2", { id: "att-events" }, "Automation events"),
      rows.length ? table(null, ["Order", "Event", "Why", "Attempts", "Last change", "What can be done"].map((title) => ({ title })), rows)
        : h("p", { class: "ok" }, "No automation event needs attention."));
  }

  async function load(quiet = false) {
    errors.show(null);
    const [l, e] = await Promise.allSettled([
      get(`/v1/labels${query({ status: "attention", limit: 100 })}`, { quiet }),
      get(`/v1/automation/events${query({ status: "attention", limit: 100 })}`, { quiet }),
    ]);
    if (!alive()) return;
    if (l.status === "fulfilled") showLabels(l.value.labels); else errors.show(l.reason);
    if (e.status === "fulfilled") showEvents(e.value.events); else errors.show(e.reason);
  }

  load();
  const timer = setInterval(() => load(true), 10000);
  return () => clearInterval(timer);
}
