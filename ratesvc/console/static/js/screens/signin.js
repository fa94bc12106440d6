// Sign-in: the API token, checked against the API, kept in sessionStorage only.

import { get, token } from "../api.js";
import { h, heading } from "../dom.js";
import { errorBox } from "../ui.js";

export function render(main, { go }) {
  const errors = errorBox();
  const input = h("input", {
    id: "token", name: "token", type: "password", autocomplete: "off", required: true,
    spellcheck: "false", "aria-describedby": "token-help",
  });
  const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h("form", { class: "signin stack", "aria-label": "Sign in" },
    h("label", { for: "token" }, "API token"),
    input,
    h("p", { id: "token-help", class: "muted" },
      "Paste the API token of your account (ratesvc demo prints one). It is kept in this tab only, until you sign out or close it."),
    submit, errors);
  const message = sessionStorage.getItem("ratesvc.signin-message");
  if (message) {
    errors.show({ detail: `Signed out: ${message}` });
    sessionStorage.removeItem("ratesvc.signin-message");
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (!value) return;
    submit.disabled = true;
    errors.show(null);
    try {
      await get("/v1/labels?limit=1", { bearer: value });
      token.set(value);
      go("#/ready");
    } catch (error) {
      errors.show(error.status === 401 ? { ...error, detail: `That token was refused: ${error.detail}` } : error);
      input.focus();
    } finally {
      submit.disabled = false;
    }
  });
  main.append(heading("Sign in"), form);
  setTimeout(() => input.focus(), 0);
}
