// The console's entry: a hash router over the screens, the sign-in guard and the nav.

import { onUnauthorized, token } from "./api.js";
import { forgetAll } from "./ui.js";
import * as attention from "./screens/attention.js";
import * as health from "./screens/health.js";
import * as labels from "./screens/labels.js";
import * as ready from "./screens/ready.js";
import * as sale from "./screens/sale.js";
import * as signin from "./screens/signin.js";

const ROUTES = [
  [/^\/signin$/, signin],
  [/^\/ready$/, ready],
  [/^\/sale\/([^/]+)$/, sale],
  [/^\/attention$/, attention],
  [/^\/labels$/, labels],
  [/^\/health$/, health],
];

let cleanup = null;
let generation = 0;

function parse() {
  const hash = location.hash.replace(/^#/, "") || "/ready";
  const [path, search] = hash.split("?");
  return { path, params: new URLSearchParams(search || "") };
}

export function go(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

async function render() {
  if (cleanup) { cleanup(); cleanup = null; }
  const mine = ++generation;
  let { path, params } = parse();
  if (!token.get() && path !== "/signin") path = "/signin";
  const nav = document.getElementById("nav");
  nav.hidden = !token.get();
  for (const link of nav.querySelectorAll("a")) {
    const current = path === link.getAttribute("href").slice(1) || (path.startsWith("/sale/") && link.getAttribute("href") === "#/ready");
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const main = document.getElementById("main");
  const found = ROUTES.find(([pattern]) => pattern.test(path));
  const [pattern, screen] = found || [/^/, null];
  if (!screen) { go("#/ready"); return; }
  const args = path.match(pattern).slice(1).map(decodeURIComponent);
  main.replaceChildren();
  const alive = () => mine === generation;
  cleanup = screen.render(main, { args, params, go, alive }) || null;
  const title = main.querySelector("h1");
  document.title = `${title ? title.textContent : "console"} · ratesvc`;
  if (title) title.focus({ preventScroll: true });
}

onUnauthorized((error) => {
  token.clear();
  forgetAll();
  sessionStorage.setItem("ratesvc.signin-message", error.detail);
  go("#/signin");
});

document.getElementById("signout").addEventListener("click", () => {
  token.clear();
  forgetAll();
  sessionStorage.removeItem("ratesvc.signin-message");
  go("#/signin");
});

window.addEventListener("hashchange", render);
render();
