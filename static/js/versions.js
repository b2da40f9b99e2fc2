/* An environment's history (its versions) and rollback, in the Environments
 * page's #history-dialog. environments.js opens it:
 * TljhR2DVersions.open(env, {manages, returnTo, onChange}). */
"use strict";

(function () {
  const R = window.TljhR2D;
  const { el, icon } = R;

  const dialog = document.getElementById("history-dialog");
  if (!dialog) return;
  const tbody = dialog.querySelector("tbody");
  const statusEl = dialog.querySelector(".history-status");
  const errorEl = dialog.querySelector(".history-error");
  const confirmEl = dialog.querySelector(".history-confirm");
  let target = null; // {env, manages, onChange}
  let shown = []; // the versions in the table

  function formatDuration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 60) return `${Math.round(seconds)} s`;
    const minutes = Math.floor(seconds / 60);
    return `${minutes} min ${Math.round(seconds - minutes * 60)} s`;
  }

  function describeServers(n) {
    if (n === null || n === undefined) return el("span", { class: "text-body-secondary", title: "Cannot be known here" }, "?");
    return String(n);
  }

  function showError(message) {
    errorEl.textContent = message;
    errorEl.classList.toggle("d-none", !message);
    if (message) errorEl.focus();
  }

  function row(version) {
    const commit = version.commit
      ? el("code", { title: version.commit }, version.commit.slice(0, 8))
      : el("span", { class: "text-body-secondary" }, "–");
    const current = version.current
      ? el("span", { class: "badge text-bg-success version-current" }, "current")
      : null;
    const action =
      target.manages && !version.current
        ? el(
            "button",
            {
              type: "button",
              class: "btn btn-sm btn-outline-primary",
              dataset: { version: String(version.id) },
              "aria-label": `Roll back to version ${version.number}`,
            },
            icon("fa-clock-rotate-left"),
            el("span", { class: "ms-1" }, "Roll back")
          )
        : null;
    return el(
      "tr",
      { dataset: { id: String(version.id) }, class: version.current ? "table-active" : "" },
      el("th", { scope: "row", class: "version-number" }, `v${version.number} `, current),
      el("td", { class: "version-commit" }, commit),
      el("td", { class: "version-built" }, R.timeElement(version.built_at)),
      el("td", { class: "text-end text-nowrap" }, R.formatSize(version.size) || "–"),
      el("td", { class: "text-end text-nowrap" }, formatDuration(version.duration)),
      el("td", { class: "version-by" }, version.built_by || (version.reason && version.reason !== "request" ? version.reason : "–")),
      el("td", { class: "version-servers text-end" }, describeServers(version.servers)),
      el("td", { class: "text-end" }, action)
    );
  }

  async function load() {
    const uid = encodeURIComponent(target.env.uid);
    statusEl.textContent = "Loading…";
    try {
      const data = await R.api("GET", `api/environments/${uid}/versions`);
      shown = data.versions;
      tbody.replaceChildren(...shown.map(row));
      if (!data.versions.length) {
        tbody.append(el("tr", {}, el("td", { colspan: "8", class: "text-center text-body-secondary py-3" }, "No version yet: the environment has not been built.")));
      }
      statusEl.textContent = `${data.versions.length} version${data.versions.length === 1 ? "" : "s"}`;
    } catch (e) {
      statusEl.textContent = "";
      showError(`Could not load the history: ${e.message}`);
    }
  }

  function askRollback(version, button) {
    const ok = el("button", { type: "button", class: "btn btn-sm btn-primary history-confirm-ok" }, "Roll back");
    const keep = el("button", { type: "button", class: "btn btn-sm btn-outline-secondary" }, "Keep the current version");
    confirmEl.replaceChildren(
      el(
        "p",
        { class: "mb-2" },
        `Roll ${target.env.name} back to version ${version.number}? New servers will start from it; `,
        "running servers keep the image they run until they are restarted."
      ),
      el("div", { class: "d-flex gap-2" }, ok, keep)
    );
    confirmEl.classList.remove("d-none");
    ok.focus();
    keep.addEventListener("click", () => {
      confirmEl.classList.add("d-none");
      if (button.isConnected) button.focus();
    });
    ok.addEventListener("click", async () => {
      R.setBusy(ok, true, "Rolling back");
      showError("");
      try {
        const env = await R.api("POST", `api/environments/${encodeURIComponent(target.env.uid)}/rollback`, {
          version: version.id,
        });
        target.env = env;
        if (target.onChange) target.onChange(env);
        confirmEl.classList.add("d-none");
        R.announce(`${env.name} rolled back to version ${version.number}`);
        await load();
        dialog.querySelector(".btn-close").focus();
      } catch (e) {
        showError(`Could not roll back: ${e.message}`);
        R.setBusy(ok, false);
      }
    });
  }

  tbody.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-version]");
    if (!button) return;
    const id = Number(button.dataset.version);
    const version = shown.find((v) => v.id === id);
    if (version) askRollback(version, button);
  });

  function open(env, { manages, returnTo, onChange }) {
    target = { env, manages, onChange };
    shown = [];
    tbody.replaceChildren();
    confirmEl.classList.add("d-none");
    showError("");
    dialog.querySelector(".modal-title").textContent = `History of ${env.name}`;
    R.openModal(dialog, returnTo, ".btn-close");
    load();
  }

  window.TljhR2DVersions = { open };
})();
