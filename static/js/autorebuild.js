/* "Rebuild when the repository changes" in the Environments page: the
   per-environment toggle and the Webhook dialog. environments.js draws the
   buttons and calls these (window.TljhR2D.autoRebuild). */
"use strict";

(function () {
  const R = window.TljhR2D;

  const path = (env, rest) => `api/environments/${encodeURIComponent(env.uid)}${rest || ""}`;

  /** The toggle's tooltip: what the last check of the ref saw. */
  function describe(env) {
    if (!env.auto_rebuild) return "Rebuild when the repository changes: off";
    if (env.remote_error) return `Rebuild when the repository changes: on. ${env.remote_error}`;
    if (env.remote_checked) {
      const at = new Date(env.remote_checked).toLocaleString();
      const commit = env.remote_commit ? env.remote_commit.slice(0, 12) : "?";
      return `Rebuild when the repository changes: on. Checked ${at}: ${commit}`;
    }
    return "Rebuild when the repository changes: on (not checked yet)";
  }

  /** Turn auto-rebuild of ``env`` on or off; ``done(env)`` gets the new model. */
  async function toggle(env, button, done, fail) {
    R.setBusy(button, true);
    try {
      const changed = await R.api("PATCH", path(env), { auto_rebuild: !env.auto_rebuild });
      done(changed);
      R.announce(`${env.name}: rebuild when the repository changes ${changed.auto_rebuild ? "on" : "off"}`);
    } catch (e) {
      fail(`Could not change ${env.name}: ${e.message}`);
    } finally {
      if (button.isConnected) R.setBusy(button, false);
    }
  }

  // -- the Webhook dialog ----------------------------------------------------

  const dialog = document.getElementById("webhook-dialog");
  let target = null;
  let onChange = () => {};

  function show(part) {
    for (const name of ["off", "on", "result"]) {
      dialog.querySelector(`.webhook-${name}`).classList.toggle("d-none", name !== part);
    }
    // Disabling is offered only when there is something to disable.
    dialog.querySelector(".webhook-disable").classList.toggle("d-none", part === "off");
    dialog.querySelector(".webhook-state").textContent = part === "off" ? "off" : "on";
  }

  function error(message) {
    const box = dialog.querySelector(".form-error");
    box.textContent = message || "";
    box.classList.toggle("d-none", !message);
    if (message) box.focus();
  }

  /** Open the dialog for ``env``; ``done(env)`` is told when the webhook changes. */
  function openWebhook(env, returnTo, done) {
    target = env;
    onChange = done;
    error("");
    dialog.querySelector(".webhook-env").textContent = env.name;
    dialog.querySelector("#webhook-url").value = "";
    dialog.querySelector("#webhook-secret").value = "";
    show(env.webhook ? "on" : "off");
    R.openModal(dialog, returnTo, env.webhook ? ".webhook-renew" : ".webhook-enable");
  }

  async function enable(button) {
    R.setBusy(button, true, "Enabling");
    error("");
    try {
      const { url, secret } = await R.api("PUT", path(target, "/webhook"));
      dialog.querySelector("#webhook-url").value = url;
      dialog.querySelector("#webhook-secret").value = secret;
      show("result");
      dialog.querySelector("#webhook-secret").focus();
      onChange({ ...target, webhook: true });
      R.announce(`Webhook of ${target.name} enabled: copy its secret now, it is shown once`);
    } catch (e) {
      error(e.message);
    } finally {
      R.setBusy(button, false);
    }
  }

  async function disable(button) {
    R.setBusy(button, true, "Disabling");
    error("");
    try {
      await R.api("DELETE", path(target, "/webhook"));
      onChange({ ...target, webhook: false });
      bootstrap.Modal.getInstance(dialog).hide();
      R.announce(`Webhook of ${target.name} disabled`);
    } catch (e) {
      error(e.message);
    } finally {
      R.setBusy(button, false);
    }
  }

  if (dialog) {
    for (const button of dialog.querySelectorAll(".webhook-enable, .webhook-renew")) {
      button.addEventListener("click", () => enable(button));
    }
    const off = dialog.querySelector(".webhook-disable");
    off.addEventListener("click", () => disable(off));
    for (const button of dialog.querySelectorAll("[data-copy]")) {
      button.addEventListener("click", async () => {
        const ok = await R.copyText(dialog.querySelector(button.dataset.copy).value);
        R.flashButton(button, ok ? "Copied" : "Select and copy", ok);
      });
    }
    dialog.addEventListener("hidden.bs.modal", () => {
      // the secret is shown once: not kept in the page
      dialog.querySelector("#webhook-secret").value = "";
    });
  }

  R.autoRebuild = { describe, toggle, openWebhook };
})();
