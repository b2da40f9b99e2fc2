/* The Disk page (admins): images per environment and version, build cache, free space, prune. */
"use strict";

(function () {
  const R = window.TljhR2D;
  const { el } = R;

  const table = document.getElementById("disk-versions");
  const tbody = table.querySelector("tbody");
  const pruneButton = document.getElementById("prune-disk");

  function muted(text) {
    return el("span", { class: "text-body-secondary" }, text);
  }

  function size(bytes) {
    return bytes === null || bytes === undefined ? muted("unknown") : R.formatSize(bytes);
  }

  function days(seconds) {
    const n = Math.round(seconds / 86400);
    return `${n} day${n === 1 ? "" : "s"}`;
  }

  function setText(id, ...children) {
    document.getElementById(id).replaceChildren(...children);
  }

  function badge(text, kind) {
    return el("span", { class: `badge text-bg-${kind} me-1` }, text);
  }

  function versionRows(env) {
    if (!env.versions.length) {
      return [
        el(
          "tr",
          { dataset: { uid: env.uid } },
          el("th", { scope: "row" }, env.name, el("div", { class: "small fw-normal text-body-secondary" }, env.owner || "")),
          el("td", { colspan: "5" }, muted("no version yet"))
        ),
      ];
    }
    return env.versions.map((v, i) =>
      el(
        "tr",
        {
          dataset: { uid: env.uid, version: String(v.id) },
          // One card per environment on a phone (tljh_repo2docker.css .table-cards).
          class: [
            v.removable ? "table-warning" : "",
            i > 0 ? "card-continued" : "",
            i < env.versions.length - 1 ? "card-continues" : "",
          ].join(" ").trim() || null,
        },
        i === 0
          ? el(
              "th",
              { scope: "row", rowspan: String(env.versions.length) },
              env.name,
              el("div", { class: "small fw-normal text-body-secondary" }, `${env.owner || ""} · ${R.formatSize(env.size || 0)} in all`)
            )
          : null,
        el("td", { "data-label": "Version" }, `v${v.number}`),
        el("td", { class: "small text-break", "data-label": "Image" }, v.image_name),
        el("td", { class: "text-end text-nowrap version-size", "data-label": "Size" }, size(v.size)),
        el("td", { class: "version-servers", "data-label": "Servers" }, v.servers === null ? muted("unknown") : String(v.servers)),
        el(
          "td",
          { class: "version-state", "data-label": "State" },
          v.current ? badge("current", "success") : null,
          v.servers ? badge("in use", "info") : null,
          v.removable ? badge("removable", "warning") : null,
          v.present === false ? badge("image missing", "secondary") : null
        )
      )
    );
  }

  function render(data) {
    const disk = data.disk;
    setText(
      "disk-free",
      disk.free === null
        ? muted("unknown")
        : `${R.formatSize(disk.free)} of ${R.formatSize(disk.total)} (${disk.path})`
    );
    setText("disk-min-free", data.min_free_disk ? R.formatSize(data.min_free_disk) : muted("no limit"));
    const cache = data.build_cache;
    setText(
      "disk-build-cache",
      cache.size === null
        ? muted("unknown")
        : `${R.formatSize(cache.size)} in ${cache.count} entries; ${R.formatSize(cache.older_than_max_age)} unused for longer than ${days(cache.max_age)}`
    );
    setText(
      "disk-dangling",
      data.dangling.count === null
        ? muted("unknown")
        : `${data.dangling.count} (${R.formatSize(data.dangling.size)}, of which ${R.formatSize(data.dangling.reclaimable)} their own)`
    );
    setText("disk-reclaimable", R.formatSize(data.reclaimable));
    setText("keep-versions", String(data.keep_versions));
    const notes = document.getElementById("disk-notes");
    notes.textContent = data.notes.join(" ");
    notes.classList.toggle("d-none", !data.notes.length);
    const rows = data.environments.flatMap(versionRows);
    tbody.replaceChildren(
      ...(rows.length
        ? rows
        : [el("tr", { class: "empty" }, el("td", { colspan: "6", class: "text-center text-body-secondary py-4" }, "No environment yet."))])
    );
  }

  /** Prune is offered only when it would remove something; otherwise the page says why not. */
  function setPrunable(data) {
    const removable = data.environments.some((env) => env.versions.some((v) => v.removable));
    const nothing =
      !data.reclaimable &&
      !removable &&
      !data.dangling.count &&
      !(data.build_cache && data.build_cache.older_than_max_age);
    pruneButton.disabled = nothing;
    const why = document.getElementById("prune-why");
    why.textContent = nothing
      ? "Nothing to prune: it would free 0 B (every version is kept, and there are no untagged images or old build cache)."
      : "";
    why.classList.toggle("d-none", !nothing);
  }

  async function load() {
    const box = document.getElementById("page-error");
    try {
      const data = await R.api("GET", "api/disk");
      render(data);
      setPrunable(data);
      box.classList.add("d-none");
    } catch (e) {
      box.textContent = `Could not read the disk use: ${e.message}`;
      box.classList.remove("d-none");
      if (tbody.querySelector("tr.loading")) tbody.replaceChildren();
    } finally {
      table.setAttribute("aria-busy", "false");
      document.getElementById("disk-summary").setAttribute("aria-busy", "false");
    }
  }

  function describe(answer) {
    const removed = answer.removed;
    const items = [];
    for (const v of removed.versions) items.push(`${v.image_name} (v${v.number}, ${R.formatSize(v.size || 0)})`);
    if (removed.dangling_images.length) items.push(`${removed.dangling_images.length} untagged images of this hub`);
    if (removed.build_cache.count) items.push(`${removed.build_cache.count} build cache entries`);
    return items;
  }

  pruneButton.addEventListener("click", async () => {
    R.setBusy(pruneButton, true, "Checking");
    let plan;
    try {
      plan = await R.api("POST", "api/disk/prune", { dry_run: true });
    } catch (e) {
      const box = document.getElementById("page-error");
      box.textContent = `Could not work out what prune would remove: ${e.message}`;
      box.classList.remove("d-none");
      return;
    } finally {
      R.setBusy(pruneButton, false);
    }
    const items = describe(plan);
    R.confirmAction({
      title: "Prune the disk?",
      body: items.length
        ? [
            `This would free ${R.formatSize(plan.freed)}, removing:`,
            el("ul", { class: "mt-2 mb-0 prune-plan" }, ...items.map((t) => el("li", {}, t))),
          ]
        : ["Nothing can be removed now: every version is kept, current or used by a server."],
      confirmLabel: "Prune",
      busyLabel: "Pruning",
      returnTo: () => pruneButton,
      action: async () => {
        const done = await R.api("POST", "api/disk/prune", { dry_run: false });
        R.announce(`Prune freed ${R.formatSize(done.freed)}`);
        await load();
      },
    });
  });

  document.getElementById("refresh-disk").addEventListener("click", load);

  load();
})();
