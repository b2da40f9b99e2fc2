/* An environment's history (its versions) and rollback, in the Environments
 * page's #history-dialog. environments.js opens it:
 * TljhR2DVersions.open(env, {manages, returnTo, onChange}).
 * Under each version: what is inside (build pack, Python/R, builder, package
 * count; the package list on demand) and what changed since the version
 * before it (api/environments/{uid}/versions/{id}/diff, on demand). */
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

  const COLUMNS = "8";

  function versionsPath(id) {
    return `api/environments/${encodeURIComponent(target.env.uid)}/versions/${encodeURIComponent(id)}`;
  }

  function packageName(p) {
    return `${p.name}${p.version ? ` ${p.version}` : ""}${p.manager ? ` (${p.manager})` : ""}`;
  }

  function list(items, text, className) {
    return el("ul", { class: `list-unstyled small mb-1 ${className || ""}` }, items.map((item) => el("li", {}, text(item))));
  }

  /* A <details> whose body is loaded the first time it opens. */
  function lazyDetails(summaryText, loadBody) {
    const body = el("div", { class: "mt-1" }, el("span", { class: "text-body-secondary small" }, "Loading…"));
    const details = el("details", { class: "small" }, el("summary", {}, summaryText), body);
    let loaded = false;
    details.addEventListener("toggle", async () => {
      if (!details.open || loaded) return;
      loaded = true;
      try {
        body.replaceChildren(...[].concat(await loadBody()));
      } catch (e) {
        loaded = false;
        body.replaceChildren(el("span", { class: "text-danger" }, `Could not load: ${e.message}`));
      }
    });
    return details;
  }

  function insideFacts(version) {
    const inside = version.inside || {};
    const facts = [];
    if (inside.build_pack) facts.push(`Build pack: ${inside.build_pack}`);
    if (inside.python) facts.push(`Python ${inside.python}`);
    if (inside.r) facts.push(`R ${inside.r}`);
    const builder = version.builder && version.builder.image;
    if (builder) facts.push(`Builder: ${builder}`);
    else if (inside.repo2docker) facts.push(`repo2docker ${inside.repo2docker}`);
    if (version.package_count !== null && version.package_count !== undefined) {
      facts.push(`${version.package_count} package${version.package_count === 1 ? "" : "s"}`);
    }
    return facts;
  }

  function packagesDetails(version) {
    return lazyDetails("Packages", async () => {
      const data = await R.api("GET", `${versionsPath(version.id)}/packages`);
      if (!data.known) return el("span", { class: "text-body-secondary" }, data.message || "Not known.");
      if (!data.packages.length) return el("span", { class: "text-body-secondary" }, "No packages recorded.");
      return list(data.packages, packageName, "version-packages");
    });
  }

  function diffDetails(version, previous) {
    return lazyDetails(`Changes since v${previous.number}`, async () => {
      const data = await R.api("GET", `${versionsPath(version.id)}/diff?from=${encodeURIComponent(previous.id)}`);
      const parts = [];
      if (data.known === false && data.message) parts.push(el("p", { class: "text-body-secondary mb-1" }, data.message));
      if ((data.added || []).length) parts.push(el("div", {}, el("strong", {}, `Added (${data.added.length})`), list(data.added, packageName)));
      if ((data.removed || []).length) parts.push(el("div", {}, el("strong", {}, `Removed (${data.removed.length})`), list(data.removed, packageName)));
      if ((data.changed || []).length) {
        parts.push(
          el(
            "div",
            {},
            el("strong", {}, `Changed (${data.changed.length})`),
            list(data.changed, (c) => `${c.name}${c.manager ? ` (${c.manager})` : ""}: ${c.from || "?"} → ${c.to || "?"}`)
          )
        );
      }
      const files = data.files ? filesChanges(data.files) : [];
      if (!parts.length && !files.length) {
        parts.push(el("span", { class: "text-body-secondary" }, data.files ? "No package or file changed." : "No package changed."));
      }
      return [...files, ...parts];
    });
  }

  /* What changed in the files of a files environment: paths added and removed, and each changed file's diff. */
  function filesChanges(files) {
    const parts = [];
    const added = files.added || [];
    const removed = files.removed || [];
    const changed = files.changed || [];
    if (added.length) parts.push(el("div", { class: "files-added" }, el("strong", {}, `Files added (${added.length})`), list(added, (p) => p)));
    if (removed.length) parts.push(el("div", { class: "files-removed" }, el("strong", {}, `Files removed (${removed.length})`), list(removed, (p) => p)));
    if (changed.length) {
      parts.push(
        el(
          "div",
          { class: "files-changed" },
          el("strong", {}, `Files changed (${changed.length})`),
          changed.map((c) =>
            el(
              "details",
              { class: "small" },
              el("summary", {}, c.path),
              el("pre", { class: "file-diff small mb-1" }, String(c.diff || "").split("\n").map((l) =>
                el("span", { class: l.startsWith("+") && !l.startsWith("+++") ? "diff-add" : l.startsWith("-") && !l.startsWith("---") ? "diff-del" : "" }, `${l}\n`)
              ))
            )
          )
        )
      );
    }
    if (!parts.length) parts.push(el("span", { class: "text-body-secondary" }, "No file changed."));
    return parts;
  }

  /* The row under a version: what is inside, and the change since the one before. */
  function detailsRow(version, previous) {
    const facts = insideFacts(version);
    const cell = el(
      "td",
      { colspan: COLUMNS, class: "pt-0 border-top-0 version-inside" },
      el(
        "div",
        { class: "small text-body-secondary" },
        el("span", { class: "fw-semibold" }, "What's inside: "),
        facts.length ? facts.join(" · ") : "not recorded for this version"
      )
    );
    const more = el("div", { class: "d-flex flex-wrap gap-3" });
    if (version.package_count) more.append(packagesDetails(version));
    if (previous) more.append(diffDetails(version, previous));
    if (more.childElementCount) cell.append(more);
    return el("tr", { class: `version-details card-continued ${version.current ? "table-active" : ""}`, dataset: { detailsOf: String(version.id) } }, cell);
  }

  function row(version) {
    const commit = version.commit
      ? el("code", { title: version.commit }, version.commit.slice(0, 8))
      : el("span", { class: "text-body-secondary" }, "–");
    const current = version.current
      ? el("span", { class: "badge text-bg-success version-current" }, "current")
      : null;
    const failed = version.check && version.check.status === "failed";
    const rollback =
      target.manages && !version.current && !failed
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
    // The same commit with the same builder: reproduces this version's build.
    // (An image environment's version is pulled, not built: rolling back is the way back.)
    const rebuild =
      target.manages && version.commit && target.env.source !== "image"
        ? el(
            "button",
            {
              type: "button",
              class: "btn btn-sm btn-outline-secondary ms-1",
              dataset: { rebuildVersion: String(version.id) },
              "aria-label": `Rebuild version ${version.number} (same commit, same builder)`,
              title: "Build this version's commit again, with the builder that made it",
            },
            icon("fa-rotate"),
            el("span", { class: "ms-1" }, "Rebuild")
          )
        : null;
    const checkFailed = failed
      ? el("span", { class: "badge text-bg-danger ms-1 version-check-failed", title: version.check.message || "" }, "check failed")
      : null;
    const action = rollback || rebuild ? el("span", { class: "text-nowrap" }, rollback, rebuild) : null;
    return el(
      "tr",
      { dataset: { id: String(version.id) }, class: `card-continues ${version.current ? "table-active" : ""}`.trim() },
      el("th", { scope: "row", class: "version-number" }, `v${version.number} `, current, checkFailed),
      el("td", { class: "version-commit", "data-label": "Commit" }, commit),
      el("td", { class: "version-built", "data-label": "Built" }, R.timeElement(version.built_at)),
      el("td", { class: "text-end text-nowrap", "data-label": "Size" }, R.formatSize(version.size) || "–"),
      el("td", { class: "text-end text-nowrap", "data-label": "Duration" }, formatDuration(version.duration)),
      el("td", { class: "version-by", "data-label": "Built by" }, version.built_by || (version.reason && version.reason !== "request" ? version.reason : "–")),
      el("td", { class: "version-servers text-end", "data-label": "Servers" }, describeServers(version.servers)),
      el("td", { class: "text-end" }, action)
    );
  }

  async function load() {
    const uid = encodeURIComponent(target.env.uid);
    statusEl.textContent = "Loading…";
    try {
      const data = await R.api("GET", `api/environments/${uid}/versions`);
      shown = data.versions;
      // Newest first: the version before shown[i] is shown[i + 1].
      tbody.replaceChildren(...shown.flatMap((v, i) => [row(v), detailsRow(v, shown[i + 1])]));
      if (!data.versions.length) {
        tbody.append(el("tr", {}, el("td", { colspan: COLUMNS, class: "text-center text-body-secondary py-3" }, "No version yet: the environment has not been built.")));
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

  async function rebuildVersion(version, button) {
    R.setBusy(button, true, "Rebuild");
    showError("");
    try {
      const env = await R.api("POST", `api/environments/${encodeURIComponent(target.env.uid)}/rebuild`, {
        version: version.id,
        force: true,
      });
      target.env = env;
      if (target.onChange) target.onChange(env);
      R.announce(`Rebuilding ${env.name} at version ${version.number}'s commit`);
      dialog.querySelector(".btn-close").click();
    } catch (e) {
      showError(`Could not rebuild version ${version.number}: ${e.message}`);
      if (button.isConnected) R.setBusy(button, false);
    }
  }

  tbody.addEventListener("click", (event) => {
    const again = event.target.closest("button[data-rebuild-version]");
    if (again) {
      const version = shown.find((v) => v.id === Number(again.dataset.rebuildVersion));
      if (version) rebuildVersion(version, again);
      return;
    }
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
