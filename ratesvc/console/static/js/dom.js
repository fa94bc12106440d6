// DOM building from elements and text nodes (markup is never parsed from data), and formats.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.className = value;
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

/** An amount (a decimal string from the API) with its currency, never through a float. */
export function money(amount, currency) {
  return h("span", { class: "money" }, amount ?? "—", currency ? " " : null, currency ? h("abbr", { class: "cur", title: currency }, currency) : null);
}

/** A moment in the browser's time zone. */
export function when(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  const text = date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
  return h("time", { datetime: iso }, text);
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.round(seconds);
  if (s < 90) return `${s} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

export function weight(w) {
  return w ? `${Number(w.value).toLocaleString(undefined, { maximumFractionDigits: 1 })} ${w.unit}` : "—";
}

export function dimensions(d) {
  return d ? `${d.length} × ${d.width} × ${d.height} ${d.unit}` : "no size";
}

export function place(address) {
  if (!address) return "—";
  return [address.city, address.state, address.postal_code, address.country].filter(Boolean).join(", ");
}

/** A table whose rows turn into labelled cards on narrow screens. */
export function table(caption, columns, rows) {
  return h("table", { class: "cards" },
    caption ? h("caption", { class: "muted" }, caption) : null,
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.cls || null }, c.title)))),
    h("tbody", {}, rows.map((row) => h("tr", row.attrs || {}, columns.map((c, i) =>
      h("td", { "data-label": c.title, class: c.cls || null }, row.cells[i]))))));
}

export function heading(text) {
  return h("h1", { tabindex: "-1" }, text);
}
