/* The Environments page: the table, the Add New dialog, the build logs. */
"use strict";

(function () {
  const R = window.TljhR2D;
  const { el, icon } = R;

  const ACTIVE = new Set(["queued", "building"]);
  const FINAL_PHASES = new Set(["built", "failed", "cancelled"]);
  const POLL_MS = 2500;
  // A log stream silent this long is opened again (see watchLogs).
  const LOG_SILENCE_MS = 35000;

  let environments = R.pageData("environments-data") || [];
  const pageConfig = R.pageData("environments-config") || {};

  /** Whether this user may rebuild, share and remove ``env`` (its owner or an admin). */
  function manages(env) {
    return Boolean(pageConfig.is_admin || (env.owner && env.owner === pageConfig.user));
  }

  function shown(list) {
    const owner = pageConfig.owner_filter;
    return owner ? list.filter((env) => env.owner === owner) : list;
  }

  function describeSharing(sharing) {
    if (!sharing || sharing.everyone) return "everyone";
    const parts = [];
    if (sharing.users.length) parts.push(sharing.users.join(", "));
    if (sharing.groups.length) parts.push(`groups: ${sharing.groups.join(", ")}`);
    return parts.length ? parts.join("; ") : "private";
  }

  const table = document.getElementById("environments");
  const tbody = table.querySelector("tbody");

  // -- the table -----------------------------------------------------------
  //
  // One row per environment, six columns that fit a 1024 px screen: name,
  // source, status, resources, owner and sharing, actions. Each cell holds at
  // most two lines that never wrap (what is too long ends in "…" and is whole
  // in its title). Only Logs and Rebuild (Cancel while building) are buttons;
  // the other actions are in the row's More menu. Below 768 px the rows are
  // cards (tljh_repo2docker.css), each cell labelled by its data-label.

  /** "45 s", "3 min 5 s", "2 h 10 min". */
  function formatDuration(seconds) {
    const total = Math.max(0, Math.round(seconds));
    if (total < 60) return `${total} s`;
    const minutes = Math.floor(total / 60);
    if (minutes < 60) return total % 60 ? `${minutes} min ${total % 60} s` : `${minutes} min`;
    return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
  }

  function secondsBetween(from, to) {
    const start = Date.parse(from);
    const end = to === undefined ? Date.now() : Date.parse(to);
    return Number.isNaN(start) || Number.isNaN(end) ? null : (end - start) / 1000;
  }

  function localTime(iso) {
    const date = iso ? new Date(iso) : null;
    return date && !Number.isNaN(date.getTime()) ? date.toLocaleString() : null;
  }

  /** A line of a cell: never wraps; what does not fit ends in "…" and is whole in the title. */
  function line(attrs, ...children) {
    return el("div", { ...attrs, class: `env-line ${attrs.class || ""}`.trim() }, ...children);
  }

  function cell(label, attrs, ...children) {
    return el("td", { ...attrs, role: "cell", "data-label": label }, ...children);
  }

  function statusBadge(env) {
    const badge = (cls, ...content) => el("span", { class: `badge ${cls}` }, ...content);
    switch (env.status) {
      case "queued":
        return badge(
          "text-bg-warning",
          icon("fa-hourglass-half"),
          " Queued",
          env.position ? ` (position ${env.position})` : ""
        );
      case "building":
        return badge(
          "text-bg-warning",
          el("span", { class: "spinner-border spinner-border-sm me-1", "aria-hidden": "true" }),
          "Building"
        );
      case "built":
        return badge("text-bg-success", icon("fa-check"), " Built");
      case "failed":
        return badge("text-bg-danger", icon("fa-xmark"), " Failed");
      case "cancelled":
        return badge("text-bg-secondary", icon("fa-ban"), " Cancelled");
      default:
        return badge("text-bg-secondary", env.status);
    }
  }

  /** How long the build runs (ticking, see tickElapsed) or ran. */
  function buildTime(env) {
    if (env.status === "building" && env.started) {
      const since = secondsBetween(env.started);
      const timing = el(
        "span",
        { class: "env-timing", dataset: { since: env.started }, title: `Started ${localTime(env.started)}` },
        formatDuration(since || 0)
      );
      // The build's phase (building, checking, pushing...), from its last status event.
      if (!env.phase) return timing;
      return el("span", {}, timing, " · ", el("span", { class: "env-phase" }, env.phase));
    }
    if (ACTIVE.has(env.status) || !env.started || !env.finished) return null;
    const took = secondsBetween(env.started, env.finished);
    if (took === null) return null;
    const title = [`Finished ${localTime(env.finished)}`, env.created ? `added ${localTime(env.created)}` : null];
    return el(
      "span",
      { class: "env-timing", title: title.filter(Boolean).join("; ") },
      `${env.status === "built" ? "in" : "after"} ${formatDuration(took)}`
    );
  }

  function statusCell(env) {
    const td = cell(
      "Status",
      { class: "env-status-cell" },
      line({}, el("span", { class: "env-status" }, statusBadge(env)), " ", buildTime(env))
    );
    if (env.summary) {
      td.append(line({ class: "small text-body-secondary env-summary", title: env.summary }, env.summary));
    }
    if (env.error && !ACTIVE.has(env.status)) {
      // The whole reason, wrapped: failure.py makes it one plain sentence
      // for the common causes, and the log has the rest.
      td.append(el("div", { class: "env-error small text-danger mt-1" }, env.error));
      if (manages(env)) {
        td.append(
          el(
            "button",
            {
              type: "button",
              class: "btn btn-link btn-sm p-0 env-view-log",
              dataset: { action: "view-log" },
              "aria-label": `View log of ${env.name}`,
            },
            icon("fa-file-lines"),
            el("span", { class: "ms-1" }, "View log")
          )
        );
      }
    }
    return td;
  }

  /** The running builds' elapsed time, every second, without redrawing their rows. */
  function tickElapsed() {
    for (const span of tbody.querySelectorAll(".env-timing[data-since]")) {
      const since = secondsBetween(span.dataset.since);
      if (since !== null) span.textContent = formatDuration(since);
    }
  }

  function resourcesCell(env) {
    const parts = [];
    if (env.memory) parts.push(env.memory);
    if (env.cpu !== null && env.cpu !== undefined) parts.push(R.formatCpu(env.cpu));
    const limits = parts.length ? parts.join(" · ") : "no limits";
    const first = env.machine_profile
      ? line(
          { title: `${env.machine_profile}: ${limits}` },
          el("span", { class: "fw-semibold" }, env.machine_profile),
          ` · ${limits}`
        )
      : line({ title: limits }, limits);
    const selectors = Object.entries(env.node_selector || {}).map(([key, value]) => `${key}=${value}`);
    const size = R.formatSize(env.size);
    const second = [];
    if (selectors.length) {
      second.push(el("code", { class: "env-node-selector", title: "Node selector" }, selectors.join(", ")));
    }
    if (size) {
      if (second.length) second.push(" · ");
      second.push(el("span", { class: "env-size", title: "Image size" }, size));
    }
    return cell(
      "Resources",
      { class: "env-resources" },
      first,
      second.length
        ? line({ class: "small text-body-secondary", title: [selectors.join(", "), size].filter(Boolean).join(" · ") }, second)
        : null
    );
  }

  /**
   * A repository URL made short for the table: no scheme, user or ".git";
   * when still long, the host and the last two parts of the path. Parts are
   * left out whole, never cut in the middle.
   */
  function shortRepo(repo) {
    let text = String(repo)
      .replace(/^[a-z][a-z0-9+.-]*:\/\//i, "")
      .replace(/^[^@/]+@/, "")
      .replace(/\/+$/, "")
      .replace(/\.git$/, "");
    const parts = text.split("/");
    for (const keep of [2, 1]) {
      if (text.length <= 40 || parts.length <= keep + 1) break;
      text = `${parts[0]}/…/${parts.slice(-keep).join("/")}`;
    }
    return text;
  }

  // The names of an environment's files, from the answers that carry them
  // (adding or changing it, one environment): the list carries no files.
  const fileNames = new Map();

  /** The source cell of an environment from files: their names when known. */
  function filesText(env) {
    if (env.files) fileNames.set(env.uid, Object.keys(env.files).sort());
    const names = fileNames.get(env.uid) || [];
    return names.length ? `Files: ${names.join(", ")}` : "Files";
  }

  function repoCell(env) {
    const source = env.source || "git";
    if (source === "files") {
      return cell(
        "Source",
        { class: "env-repo", dataset: { source } },
        line({ class: "env-source-files", title: filesText(env) }, icon("fa-file-lines"), " ", filesText(env)),
        line({ class: "small text-body-secondary" }, "written in the page")
      );
    }
    if (source === "image") {
      const reference = env.image || env.repo;
      const id = env.commit ? env.commit.replace(/^sha256:/, "").slice(0, 12) : null;
      return cell(
        "Source",
        { class: "env-repo", dataset: { source } },
        line({ class: "env-source-image", title: `Image: ${reference}` }, icon("fa-box"), " ", `Image: ${reference}`),
        id ? line({ class: "small text-body-secondary font-monospace", title: env.commit }, id) : null
      );
    }
    // Only web URLs become links: a repository is never a javascript: href.
    const web = /^https?:\/\//i.test(env.repo);
    const text = shortRepo(env.repo);
    const attrs = { class: "env-line env-repo-link", title: env.repo };
    const commit = env.commit ? env.commit.slice(0, 7) : null;
    return cell(
      "Source",
      { class: "env-repo", dataset: { source } },
      web
        ? el("a", { ...attrs, href: env.repo, rel: "noopener noreferrer", target: "_blank" }, text)
        : el("span", attrs, text),
      line(
        {
          class: "small text-body-secondary env-ref",
          title: `ref ${env.ref}${env.commit ? `, commit ${env.commit}` : ""}`,
        },
        el("span", { class: "visually-hidden" }, "ref "),
        "@ ",
        env.ref,
        commit ? el("span", { class: "font-monospace ms-1" }, `(${commit})`) : null
      )
    );
  }

  function ownerCell(env) {
    const sharing = describeSharing(env.sharing);
    return cell(
      "Owner",
      { class: "env-owner-cell" },
      line({ class: "env-owner", title: env.owner || "" }, env.owner || "–"),
      line(
        { class: "small text-body-secondary", title: `Shared with: ${sharing}` },
        el("span", { class: "visually-hidden" }, "shared with "),
        icon(sharing === "private" ? "fa-lock" : "fa-users"),
        " ",
        el("span", { class: "env-sharing" }, sharing)
      )
    );
  }

  function hasImage(env) {
    return env.status === "built" || (env.size !== null && env.size !== undefined);
  }

  /** Logs and Rebuild (Cancel while building): buttons whose label hides on narrower screens. */
  function actionButton(env, action, label, cls, iconName) {
    return el(
      "button",
      {
        type: "button",
        class: `btn btn-sm ${cls}`,
        dataset: { action },
        "aria-label": `${label} ${env.name}`,
        title: label,
      },
      icon(iconName),
      el("span", { class: "env-action-label ms-1" }, label)
    );
  }

  /** An item of the More menu; ``attrs`` may change its role and name. */
  function menuItem(env, action, label, iconName, attrs) {
    return el(
      "li",
      { role: "none" },
      el(
        "button",
        {
          type: "button",
          role: "menuitem",
          tabindex: "-1",
          class: "dropdown-item",
          dataset: { action },
          "aria-label": `${label} ${env.name}`,
          ...attrs,
        },
        icon(iconName),
        el("span", { class: "ms-2" }, label)
      )
    );
  }

  function menuItems(env) {
    const items = [];
    if (manages(env) && env.source === "files" && !ACTIVE.has(env.status)) {
      // Its files, saved as the next version (not while a build runs: that one would be refused).
      items.push(menuItem(env, "edit-files", "Edit files", "fa-pen-to-square", { title: "Change its files and build them as the next version" }));
    }
    if (manages(env)) {
      const sharing = describeSharing(env.sharing);
      items.push(menuItem(env, "share", "Share", "fa-share-nodes", { title: `Shared with: ${sharing}` }));
      // The toggle of "rebuild when the repository changes" (autorebuild.js).
      const on = Boolean(env.auto_rebuild);
      items.push(
        menuItem(env, "auto-rebuild", `Auto-rebuild ${on ? "on" : "off"}`, "fa-code-branch", {
          role: "menuitemcheckbox",
          "aria-checked": on ? "true" : "false",
          "aria-label": `${env.name}: rebuild when the repository changes`,
          title: R.autoRebuild.describe(env),
        })
      );
      // The Webhook item says whether the webhook is on (autorebuild.js opens its dialog).
      const state = env.webhook ? "on" : "off";
      items.push(
        menuItem(env, "webhook", `Webhook ${state}`, "fa-bolt", {
          "aria-label": `Webhook ${env.name} (${state})`,
          dataset: { action: "webhook", state },
          title: env.webhook
            ? "The webhook is on: a push to the repository rebuilds this environment"
            : "The webhook is off",
        })
      );
    }
    if (hasImage(env)) {
      // Try it in one click: the launch link starts a server and opens it when ready.
      items.unshift(menuItem(env, "start", "Start a server", "fa-play", { title: "Start a server from it and open it when it is ready" }));
      items.push(menuItem(env, "copy-link", "Copy launch link", "fa-link"));
      items.push(menuItem(env, "history", "History", "fa-clock-rotate-left"));
    }
    if (manages(env)) {
      items.push(el("li", { role: "separator", class: "dropdown-divider" }));
      items.push(menuItem(env, "remove", "Remove", "fa-trash", { class: "dropdown-item text-danger" }));
    }
    return items;
  }

  let menuCount = 0;

  function actionsCell(env) {
    const buttons = [];
    if (manages(env)) {
      buttons.push(actionButton(env, "logs", "Logs", "btn-outline-secondary", "fa-file-lines"));
      buttons.push(
        ACTIVE.has(env.status)
          ? actionButton(env, "cancel", "Cancel", "btn-outline-secondary", "fa-stop")
          : env.source === "image"
            ? actionButton(env, "rebuild", "Pull again", "btn-outline-primary", "fa-cloud-arrow-down")
            : actionButton(env, "rebuild", "Rebuild", "btn-outline-primary", "fa-rotate")
      );
    }
    const items = menuItems(env);
    if (items.length) {
      // Uids of adopted environments may hold any character: ids are counted.
      menuCount += 1;
      const menuId = `env-menu-${menuCount}`;
      buttons.push(
        el(
          "div",
          { class: "env-more-wrap" },
          el(
            "button",
            {
              type: "button",
              class: "btn btn-sm btn-outline-secondary env-more",
              dataset: { action: "more" },
              "aria-haspopup": "menu",
              "aria-expanded": "false",
              "aria-controls": menuId,
              "aria-label": `More actions for ${env.name}`,
              title: "More actions",
            },
            icon("fa-ellipsis-vertical")
          ),
          el(
            "ul",
            { class: "env-menu", id: menuId, role: "menu", "aria-label": `Actions for ${env.name}` },
            items
          )
        )
      );
    }
    return cell("Actions", { class: "env-actions" }, el("div", { class: "env-action-bar" }, buttons));
  }

  function row(env) {
    return el(
      "tr",
      { role: "row", dataset: { uid: env.uid, status: env.status } },
      el(
        "th",
        { scope: "row", role: "rowheader", class: "env-name", title: `${env.name} (${env.image_name})`, "data-label": "Name" },
        env.name
      ),
      repoCell(env),
      statusCell(env),
      resourcesCell(env),
      ownerCell(env),
      actionsCell(env)
    );
  }

  /** Update the table in place: unchanged rows stay, so focus and hover stay too. */
  function render() {
    // A row redrawn while its More menu is open gets it open again, with the
    // same item focused (e.g. after the Auto-rebuild toggle changed the row).
    const open = menu.state();
    R.renderRows(tbody, shown(environments), {
      keyAttr: "uid",
      row,
      empty: () =>
        el(
          "tr",
          { class: "empty", role: "row" },
          el("td", { colspan: "6", role: "cell", class: "text-center text-body-secondary py-4" }, "No environment yet: add one with “Add New”.")
        ),
    });
    menu.restore(open);
  }

  // -- the More menu (the ARIA menu button pattern) --------------------------

  const menu = (function () {
    let current = null; // {button, list, lastAction}

    const items = (list) => [...list.querySelectorAll('[role^="menuitem"]:not([disabled])')];

    /** Below its button, right-aligned; above it when there is no room below. */
    function place() {
      if (!current) return;
      const { button, list } = current;
      const box = button.getBoundingClientRect();
      const width = list.offsetWidth;
      const height = list.offsetHeight;
      const viewWidth = document.documentElement.clientWidth;
      const left = Math.max(8, Math.min(box.right - width, viewWidth - width - 8));
      let top = box.bottom + 2;
      if (top + height > window.innerHeight - 8 && box.top - height - 2 >= 8) top = box.top - height - 2;
      list.style.left = `${left}px`;
      list.style.top = `${top}px`;
    }

    /** Open the menu of ``button``; ``focus``: "first", "last", an item's action, or null. */
    function open(button, focus) {
      close(false);
      const list = button.parentElement.querySelector(".env-menu");
      if (!list) return;
      current = { button, list, lastAction: null };
      list.classList.add("show");
      button.setAttribute("aria-expanded", "true");
      place();
      const all = items(list);
      let target = null;
      if (focus === "first") target = all[0];
      else if (focus === "last") target = all[all.length - 1];
      else if (focus) target = all.find((item) => item.dataset.action === focus) || all[0];
      if (target) target.focus({ preventScroll: true });
    }

    function close(returnFocus) {
      if (!current) return;
      const { button, list } = current;
      current = null;
      list.classList.remove("show");
      button.setAttribute("aria-expanded", "false");
      if (returnFocus && button.isConnected) button.focus();
    }

    function move(from, step) {
      const all = items(current.list);
      if (!all.length) return;
      const index = all.indexOf(from);
      const next = step === "first" ? 0 : step === "last" ? all.length - 1 : (index + step + all.length) % all.length;
      all[next].focus();
    }

    function onButtonKey(event, button) {
      if (event.key === "ArrowDown" || event.key === "ArrowUp") {
        event.preventDefault();
        open(button, event.key === "ArrowDown" ? "first" : "last");
      }
    }

    function onMenuKey(event) {
      if (!current) return;
      const item = event.target.closest('[role^="menuitem"]');
      const keys = { ArrowDown: 1, ArrowUp: -1, Home: "first", End: "last" };
      if (event.key in keys) {
        event.preventDefault();
        move(item, keys[event.key]);
      } else if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation();
        close(true);
      } else if (event.key === "Tab") {
        // Tab leaves the menu: from its button, to the control after it.
        close(true);
      }
    }

    function state() {
      if (!current) return null;
      const tr = current.button.closest("tr");
      const active = document.activeElement;
      const inside = current.list.contains(active) ? active.dataset.action : null;
      return { uid: tr && tr.dataset.uid, action: inside || current.lastAction, list: current.list };
    }

    function restore(was) {
      if (!was || (current && current.list.isConnected)) return;
      current = null;
      const tr = tbody.querySelector(`tr[data-uid="${CSS.escape(was.uid || "")}"]`);
      const button = tr && tr.querySelector(".env-more");
      if (button) open(button, was.action || "first");
    }

    document.addEventListener("click", (event) => {
      if (!current || !event.target.isConnected) return;
      if (current.list.contains(event.target) || current.button.contains(event.target)) return;
      close(false);
    });
    document.addEventListener("focusin", (event) => {
      if (current && current.list.contains(event.target) && event.target.dataset.action) {
        current.lastAction = event.target.dataset.action;
      }
    });
    window.addEventListener("scroll", place, true);
    window.addEventListener("resize", place);

    return {
      open,
      close,
      place,
      state,
      restore,
      onButtonKey,
      onMenuKey,
      isOpen: (button) => Boolean(current && current.button === button),
    };
  })();

  function find(uid) {
    return environments.find((env) => env.uid === uid);
  }

  function upsert(env) {
    const index = environments.findIndex((e) => e.uid === env.uid);
    if (index >= 0) environments[index] = env;
    else environments.push(env);
    render();
    poll.schedule();
  }

  function describeStatus(env) {
    if (env.status === "queued") return `${env.name} is queued${env.position ? ` at position ${env.position}` : ""}`;
    if (env.status === "failed") return `${env.name} failed to build`;
    return `${env.name} is ${env.status}`;
  }

  // Poll while a build is queued or running.
  const poll = R.poller(load, () => environments.some((env) => ACTIVE.has(env.status)), POLL_MS);

  /** One poll: the list again, and what changed said to screen readers. */
  async function load() {
    try {
      const data = await R.api("GET", "api/environments");
      const before = new Map(environments.map((env) => [env.uid, env.status]));
      environments = data.environments;
      render();
      const changes = environments
        .filter((env) => before.has(env.uid) && before.get(env.uid) !== env.status)
        .map(describeStatus);
      if (changes.length) R.announce(changes.join(". "));
      hidePageError();
    } catch (e) {
      showPageError(`Could not refresh the list: ${e.message}`);
    }
  }

  function showPageError(message) {
    const box = document.getElementById("page-error");
    box.textContent = message;
    box.classList.remove("d-none");
  }

  /** A notice above the list, with an optional action button (e.g. "Rebuild anyway"). */
  function showPageNotice(message, action) {
    const box = document.getElementById("page-notice");
    const button = document.getElementById("page-notice-action");
    document.getElementById("page-notice-text").textContent = message;
    button.classList.toggle("d-none", !action);
    button.onclick = null;
    if (action) {
      button.textContent = action.label;
      button.onclick = () => {
        hidePageNotice();
        action.run();
      };
    }
    box.classList.remove("d-none");
  }

  function hidePageNotice() {
    document.getElementById("page-notice").classList.add("d-none");
  }

  document.getElementById("page-notice-close").addEventListener("click", hidePageNotice);

  function hidePageError() {
    document.getElementById("page-error").classList.add("d-none");
  }

  // -- row actions ---------------------------------------------------------

  /**
   * The control of an action in a row as it is now (rows are redrawn when
   * they change): its button, or the More button when the action is an item
   * of the closed menu (where the focus goes back after its dialog).
   */
  function rowControl(uid, action) {
    return () => {
      const tr = tbody.querySelector(`tr[data-uid="${CSS.escape(uid)}"]`);
      if (!tr) return null;
      const control = tr.querySelector(`[data-action="${action}"]`) || tr.querySelector("button");
      const list = control && control.closest(".env-menu");
      if (list && !list.classList.contains("show")) return tr.querySelector(".env-more");
      return control;
    };
  }

  // Actions that keep the menu open: the toggle shows its new state.
  const KEEP_MENU_OPEN = new Set(["auto-rebuild"]);

  tbody.addEventListener("keydown", (event) => {
    const more = event.target.closest(".env-more");
    if (more) menu.onButtonKey(event, more);
    else if (event.target.closest(".env-menu")) menu.onMenuKey(event);
  });

  tbody.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const env = find(button.closest("tr").dataset.uid);
    if (!env) return;
    if (button.dataset.action === "more") {
      if (menu.isOpen(button)) menu.close(false);
      else menu.open(button, "first");
      return;
    }
    if (button.closest(".env-menu") && !KEEP_MENU_OPEN.has(button.dataset.action)) menu.close(true);
    const actions = {
      logs: () => openLogs(env, button),
      "view-log": () => openLogs(env, button),
      rebuild: () => rebuild(env, button),
      cancel: () => cancel(env, button),
      share: () => openShareDialog(env, button),
      "edit-files": () => openFilesDialog(env, button),
      "auto-rebuild": () => R.autoRebuild.toggle(env, button, upsert, showPageError),
      webhook: () => R.autoRebuild.openWebhook(env, rowControl(env.uid, "webhook"), upsert),
      remove: () => remove(env, button),
      "copy-link": () => openLaunchDialog(env, button),
      start: () => window.location.assign(launchLink(env)),
      history: () =>
        window.TljhR2DVersions.open(env, {
          manages: manages(env),
          returnTo: rowControl(env.uid, "history"),
          onChange: upsert,
        }),
    };
    if (actions[button.dataset.action]) actions[button.dataset.action]();
  });

  async function rebuild(env, button, body) {
    R.setBusy(button, true, "Rebuild");
    try {
      const answer = await R.api("POST", `api/environments/${encodeURIComponent(env.uid)}/rebuild`, body || {});
      upsert(answer);
      if (answer.message) {
        // Nothing changed since the current version: say so, and offer to build anyway.
        showPageNotice(`${env.name}: ${answer.message}`, {
          label: env.source === "image" ? "Make a version anyway" : "Rebuild anyway",
          run: () => rebuild(find(env.uid) || env, rowControl(env.uid, "rebuild")() || button, { ...(body || {}), force: true }),
        });
        R.announce(`${env.name}: ${answer.message}`);
      } else {
        hidePageNotice();
        R.announce(`Rebuilding ${env.name}`);
      }
    } catch (e) {
      if (e.status === 400 && e.field === "password") {
        openRebuildDialog(env, button);
      } else {
        showPageError(`Could not rebuild ${env.name}: ${e.message}`);
      }
    } finally {
      if (button.isConnected) R.setBusy(button, false);
    }
  }

  async function cancel(env, button) {
    R.setBusy(button, true, "Cancel");
    try {
      upsert(await R.api("POST", `api/environments/${encodeURIComponent(env.uid)}/cancel`));
      R.announce(`Build of ${env.name} cancelled`);
    } catch (e) {
      showPageError(`Could not cancel ${env.name}: ${e.message}`);
      poll.now();
    } finally {
      if (button.isConnected) R.setBusy(button, false);
    }
  }

  function remove(env, button) {
    R.confirmAction({
      title: "Remove the environment?",
      body: [
        "Remove ",
        el("strong", {}, env.name),
        " and its image? Users can no longer start servers from it. This cannot be undone.",
      ],
      confirmLabel: "Remove",
      busyLabel: "Removing",
      returnTo: rowControl(env.uid, button.dataset.action),
      action: async () => {
        await R.api("DELETE", `api/environments/${encodeURIComponent(env.uid)}`);
        environments = environments.filter((e) => e.uid !== env.uid);
        render();
        R.announce(`${env.name} removed`);
      },
    });
  }

  /**
   * The launch link of ``env``: a server named after it, opened when ready;
   * ``content`` ({content, content_ref, urlpath}, each optional) adds a
   * repository cloned into the home at the start.
   */
  function launchLink(env, content) {
    const params = new URLSearchParams({ name: R.serverSlug(env.name), environment: env.name });
    for (const key of ["content", "content_ref", "urlpath"]) {
      const value = content && content[key] ? String(content[key]).trim() : "";
      if (value) params.set(key, value);
    }
    return `${window.location.origin}${R.baseUrl}servers?${params}`;
  }

  // -- the launch link dialog: optional content, the link and a README badge --

  const launchDialog = document.getElementById("launch-dialog");
  const launchForm = document.getElementById("launch-form");
  let launchTarget = null;

  /** Why a content URL cannot go into a link (as the service checks it), or null. */
  function contentProblem(url) {
    if (!url) return null;
    if (!/^(https?|git):\/\//i.test(url)) return "content: must be an https:// (or http://, git://) URL of a git repository";
    if (/^[a-z+]+:\/\/[^/]*@/i.test(url)) return "content: must not hold a user name or password (links are shared)";
    return null;
  }

  function updateLaunchLink() {
    const content = {
      content: launchForm.elements.content.value,
      content_ref: launchForm.elements.content_ref.value,
      urlpath: launchForm.elements.urlpath.value.trim().replace(/^\/+/, ""),
    };
    R.clearErrors(launchForm);
    const problem = contentProblem(content.content.trim());
    if (problem) R.showError(launchForm, new R.ApiError(400, problem, "content"));
    if (!content.content.trim()) content.content_ref = "";
    const link = launchLink(launchTarget, problem ? {} : content);
    document.getElementById("launch-link").value = link;
    const badge = new URL(launchDialog.dataset.badge, window.location.origin).href;
    const alt = `Launch ${launchTarget.name}`.replace(/[[\]]/g, "");
    document.getElementById("launch-badge").value = `[![${alt}](${badge})](${link})`;
    document.getElementById("launch-badge-preview").href = link;
    return !problem;
  }

  function openLaunchDialog(env, button) {
    launchTarget = env;
    launchForm.reset();
    R.clearErrors(launchForm);
    launchDialog.querySelector(".modal-title").textContent = `Launch link: ${env.name}`;
    updateLaunchLink();
    R.openModal(launchDialog, rowControl(env.uid, button.dataset.action), "#launch-content");
  }

  launchForm.addEventListener("input", updateLaunchLink);
  launchForm.addEventListener("submit", (event) => event.preventDefault());

  for (const [buttonId, fieldId] of [["launch-copy-link", "launch-link"], ["launch-copy-badge", "launch-badge"]]) {
    const button = document.getElementById(buttonId);
    button.addEventListener("click", async () => {
      if (!updateLaunchLink()) {
        launchForm.elements.content.focus();
        return;
      }
      const text = document.getElementById(fieldId).value;
      const ok = await R.copyText(text);
      R.flashButton(button, ok ? "Copied" : "Copy failed", ok);
      if (!ok) {
        const field = document.getElementById(fieldId);
        field.focus();
        field.select();
      }
    });
  }

  // -- sharing -------------------------------------------------------------

  const shareDialog = document.getElementById("share-dialog");
  const shareForm = document.getElementById("share-form");
  let shareTarget = null;

  function openShareDialog(env, button) {
    shareTarget = env;
    shareForm.reset();
    R.clearErrors(shareForm);
    const sharing = env.sharing || { everyone: true, users: [], groups: [] };
    shareDialog.querySelector(".modal-title").textContent = `Share ${env.name}`;
    shareForm.elements.everyone.checked = sharing.everyone;
    shareForm.elements.users.value = sharing.users.join("\n");
    for (const box of shareForm.querySelectorAll(".share-group")) {
      box.checked = sharing.groups.includes(box.value);
    }
    R.openModal(shareDialog, rowControl(env.uid, button.dataset.action), "#share-everyone");
  }

  shareForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const env = shareTarget;
    const submit = shareForm.querySelector("[type=submit]");
    R.clearErrors(shareForm);
    R.setBusy(submit, true, "Saving");
    try {
      const sharing = {
        everyone: shareForm.elements.everyone.checked,
        users: shareForm.elements.users.value.split(/[\s,]+/).filter(Boolean),
        groups: [...shareForm.querySelectorAll(".share-group:checked")].map((box) => box.value),
      };
      upsert(await R.api("PATCH", `api/environments/${encodeURIComponent(env.uid)}`, { sharing }));
      bootstrap.Modal.getInstance(shareDialog).hide();
      R.announce(`${env.name} is shared with ${describeSharing(sharing)}`);
    } catch (e) {
      R.showError(shareForm, e).focus();
    } finally {
      R.setBusy(submit, false);
    }
  });

  // -- rebuild with credentials --------------------------------------------

  const rebuildDialog = document.getElementById("rebuild-dialog");
  const rebuildForm = document.getElementById("rebuild-form");
  let rebuildTarget = null;

  function openRebuildDialog(env, button) {
    rebuildTarget = { env, button };
    rebuildForm.reset();
    R.clearErrors(rebuildForm);
    rebuildDialog.querySelector(".modal-title").textContent = `Rebuild ${env.name}`;
    R.openModal(rebuildDialog, rowControl(env.uid, button.dataset.action), "#rebuild-username");
  }

  rebuildForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const { env } = rebuildTarget;
    const submit = rebuildForm.querySelector("[type=submit]");
    R.clearErrors(rebuildForm);
    R.setBusy(submit, true, "Rebuilding");
    try {
      const body = {
        username: rebuildForm.elements.username.value.trim() || undefined,
        password: rebuildForm.elements.password.value || undefined,
      };
      upsert(await R.api("POST", `api/environments/${encodeURIComponent(env.uid)}/rebuild`, body));
      bootstrap.Modal.getInstance(rebuildDialog).hide();
      R.announce(`Rebuilding ${env.name}`);
    } catch (e) {
      R.showError(rebuildForm, e).focus();
    } finally {
      R.setBusy(submit, false);
    }
  });

  // -- Add New -------------------------------------------------------------
  //
  // One tab per source: a git repository, files written here (with ready-made
  // starting points), an archive of files (read in the browser and sent as
  // base64), or an existing image. Only the fields of the chosen source are
  // sent; the API refuses anything else naming the field.

  const addDialog = document.getElementById("add-dialog");
  const form = document.getElementById("add-form");
  const repoInput = form.elements.repo;
  const nameInput = form.elements.name;
  const imageInput = form.elements.image;
  const archiveInput = form.elements.archive;
  const fileList = document.getElementById("add-file-list");
  let nameEdited = false;
  let source = "git";

  /** The last part of a repository URL or path, without ".git". */
  function nameFromRepo(repo) {
    let path = repo.trim();
    const scp = /^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:(.+)$/.exec(path);
    if (scp) path = scp[1];
    else path = path.replace(/^[a-z][a-z0-9+.-]*:\/\/[^/]*/i, "");
    path = path.replace(/[?#].*$/, "").replace(/\/+$/, "");
    return path.split("/").pop().replace(/\.git$/, "");
  }

  /** "quay.io/jupyter/scipy-notebook:2024-05-27" -> "scipy-notebook". */
  function nameFromImage(reference) {
    const last = reference.trim().split("@")[0].split("/").pop() || "";
    return last.replace(/:[^:]*$/, "");
  }

  function suggestName(text) {
    if (!nameEdited) nameInput.value = text;
  }

  repoInput.addEventListener("input", () => suggestName(nameFromRepo(repoInput.value)));
  imageInput.addEventListener("input", () => suggestName(nameFromImage(imageInput.value)));
  archiveInput.addEventListener("change", () => {
    const file = archiveInput.files[0];
    if (file) suggestName(file.name.replace(/\.(zip|tgz|tar\.gz)$/i, ""));
    const problem = file && archiveProblem(file);
    R.clearErrors(form);
    if (problem) R.showError(form, new R.ApiError(400, problem, "archive"));
  });
  nameInput.addEventListener("input", () => {
    nameEdited = nameInput.value !== "";
  });

  // The tabs (the ARIA tabs pattern, automatic activation).
  const tabs = [...form.querySelectorAll('[role="tab"]')];
  const FIRST_INPUT = { git: "#add-repo", files: ".file-path", archive: "#add-archive", image: "#add-image" };

  function selectSource(name, focusTab) {
    source = name;
    for (const tab of tabs) {
      const on = tab.dataset.source === name;
      tab.classList.toggle("active", on);
      tab.setAttribute("aria-selected", on ? "true" : "false");
      tab.tabIndex = on ? 0 : -1;
      if (on && focusTab) tab.focus();
    }
    for (const panel of form.querySelectorAll('[role="tabpanel"]')) panel.hidden = panel.dataset.source !== name;
    for (const part of form.querySelectorAll("[data-sources]")) {
      part.hidden = !part.dataset.sources.split(" ").includes(name);
    }
    if (name === "files" && !fileList.children.length) addFiles.addFile("", "");
    document.getElementById("add-name-help").textContent =
      name === "git"
        ? "Shown to users; up to 100 characters. Suggested from the repository URL."
        : name === "image"
          ? "Shown to users; up to 100 characters. Suggested from the image reference."
          : name === "archive"
            ? "Shown to users; up to 100 characters. Suggested from the archive's name."
            : "Shown to users; up to 100 characters.";
  }

  for (const tab of tabs) {
    tab.addEventListener("click", () => selectSource(tab.dataset.source, true));
    tab.addEventListener("keydown", (event) => {
      const index = tabs.indexOf(tab);
      const moves = {
        ArrowRight: index + 1,
        ArrowLeft: index - 1,
        ArrowDown: index + 1,
        ArrowUp: index - 1,
        Home: 0,
        End: tabs.length - 1,
      };
      if (!(event.key in moves)) return;
      event.preventDefault();
      const next = tabs[(moves[event.key] + tabs.length) % tabs.length];
      selectSource(next.dataset.source, true);
    });
  }

  // -- the file editor: files written in the page, a path and a text each --
  //
  // Shared by the Add dialog's Files tab and the Edit files dialog.

  /**
   * A file editor in ``list`` (an element that holds one item per file);
   * ``addButton`` adds an empty file, ``prefix`` keeps the ids of the two
   * dialogs' inputs apart. Returns {addFile, setFiles, clear, body}.
   */
  function fileEditor(list, { prefix, addButton }) {
    let count = 0;

    /** Append a file item (its path and text filled in); returns the item. */
    function addFile(path, text) {
      count += 1;
      const id = `${prefix}-${count}`;
      const item = el(
        "div",
        { class: "file-item border rounded p-2 mb-2" },
        el(
          "div",
          { class: "d-flex gap-2 align-items-end mb-1" },
          el(
            "div",
            { class: "flex-grow-1" },
            el("label", { class: "form-label small mb-0", for: `${id}-path` }, `Path of file ${count}`),
            el("input", {
              class: "form-control form-control-sm font-monospace file-path",
              id: `${id}-path`,
              type: "text",
              autocomplete: "off",
              spellcheck: "false",
              placeholder: "requirements.txt",
            })
          ),
          el(
            "button",
            { type: "button", class: "btn btn-sm btn-outline-danger file-remove", "aria-label": `Remove file ${count}` },
            icon("fa-trash"),
            el("span", { class: "ms-1 env-action-label" }, "Remove")
          )
        ),
        el("label", { class: "visually-hidden", for: `${id}-text` }, `Content of file ${count}`),
        el("textarea", { class: "form-control form-control-sm font-monospace file-text", id: `${id}-text`, rows: "5", spellcheck: "false" })
      );
      item.querySelector(".file-path").value = path;
      item.querySelector(".file-text").value = text;
      list.append(item);
      return item;
    }

    function clear() {
      list.replaceChildren();
      count = 0;
    }

    /** Replace the items with ``files`` ({path: text}, in its order). */
    function setFiles(files) {
      clear();
      for (const [path, text] of Object.entries(files)) addFile(path, text);
    }

    /** {path: text} of the items, or throws an ApiError naming "files" (as the API would). */
    function body() {
      const files = {};
      for (const item of list.querySelectorAll(".file-item")) {
        const path = item.querySelector(".file-path").value.trim();
        const text = item.querySelector(".file-text").value;
        if (!path && !text) continue;
        if (!path) throw new R.ApiError(400, "files: every file needs a path", "files");
        if (path in files) throw new R.ApiError(400, `files: ${path} is there twice`, "files");
        files[path] = text;
      }
      if (!Object.keys(files).length) throw new R.ApiError(400, "files: give at least one file", "files");
      return files;
    }

    // Removing a file moves the focus to a neighbour (or to "Add a file").
    list.addEventListener("click", (event) => {
      const button = event.target.closest(".file-remove");
      if (!button) return;
      const item = button.closest(".file-item");
      const next = item.nextElementSibling || item.previousElementSibling;
      item.remove();
      const target = next ? next.querySelector(".file-path") : addButton;
      target.focus();
      R.announce("File removed");
    });

    addButton.addEventListener("click", () => {
      addFile("", "").querySelector(".file-path").focus();
    });

    return { addFile, setFiles, clear, body };
  }

  const addFiles = fileEditor(fileList, { prefix: "add-file", addButton: document.getElementById("add-file") });

  const STARTERS = {
    pip: { "requirements.txt": "numpy\npandas\nmatplotlib\n" },
    conda: {
      "environment.yml":
        "name: example\nchannels:\n  - conda-forge\ndependencies:\n  - python=3.11\n  - numpy\n  - pandas\n  - matplotlib\n",
    },
    r: {
      "runtime.txt": "r-4.3-2024-01-10\n",
      "install.R": 'install.packages(c("tidyverse", "rmarkdown"))\n',
    },
    dockerfile: {
      Dockerfile:
        "FROM quay.io/jupyter/minimal-notebook:latest\n\n# Add what the environment needs, e.g.:\n# RUN pip install --no-cache-dir numpy\n",
    },
  };

  for (const button of form.querySelectorAll("[data-starter]")) {
    button.addEventListener("click", () => {
      addFiles.setFiles(STARTERS[button.dataset.starter]);
      fileList.querySelector(".file-text").focus();
      R.announce(`Started from ${button.textContent.trim()}`);
    });
  }

  /** Why ``file`` cannot be sent (its size), or null. */
  function archiveProblem(file) {
    const max = Number(archiveInput.dataset.maxBytes);
    if (max && file.size > max) {
      return `archive: is ${R.formatSize(file.size)}, more than the ${R.formatSize(max)} allowed`;
    }
    return null;
  }

  /** The chosen archive as base64, or throws an ApiError naming "archive". */
  function archiveBody() {
    const file = archiveInput.files[0];
    if (!file) return Promise.reject(new R.ApiError(400, "archive: choose a .zip or .tar.gz file", "archive"));
    const problem = archiveProblem(file);
    if (problem) return Promise.reject(new R.ApiError(400, problem, "archive"));
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(String(reader.result).replace(/^data:[^,]*,/, ""));
      reader.onerror = () => reject(new R.ApiError(400, `archive: could not be read (${reader.error && reader.error.name})`, "archive"));
      reader.readAsDataURL(file);
    });
  }

  addDialog.addEventListener("shown.bs.modal", () => {
    const target = form.querySelector(FIRST_INPUT[source]);
    if (target) target.focus();
  });

  async function formBody() {
    const body = {};
    const value = (name) => {
      const input = form.elements[name];
      return input && !input.closest("[hidden]") ? input.value.trim() : "";
    };
    const common = ["name", "memory", "cpu", "machine_profile"];
    const bySource = {
      git: ["repo", "ref", "provider", "builder_image", "username"],
      files: ["builder_image"],
      archive: ["builder_image"],
      image: ["image"],
    };
    // builder_image: its first option (the default builder) is empty and not sent.
    for (const name of [...bySource[source], ...common]) {
      if (value(name)) body[name] = value(name);
    }
    if (source === "git" && form.elements.password && form.elements.password.value) {
      body.password = form.elements.password.value;
    }
    if (source !== "image" && value("buildargs")) body.buildargs = form.elements.buildargs.value;
    const autoRebuild = form.elements.auto_rebuild;
    if (autoRebuild && autoRebuild.checked && (source === "git" || source === "image")) body.auto_rebuild = true;
    const selectors = {};
    for (const select of form.querySelectorAll("select.node-selector")) {
      if (select.value) selectors[select.dataset.key] = select.value;
    }
    if (Object.keys(selectors).length) body.node_selector = selectors;
    if (source === "files") body.files = addFiles.body();
    if (source === "archive") body.archive = await archiveBody();
    return body;
  }

  /** The input an error names, in the tab that holds it: that tab is shown first. */
  function showAddError(error) {
    if (error.field && /^files[.[]/.test(error.field)) error.field = "files";
    const named = error.field || (/^([a-z_]+): /.exec(error.message) || [])[1];
    const input = named && form.querySelector(`[data-field="${named}"], [name="${named}"]`);
    const panel = input && input.closest('[role="tabpanel"]');
    if (panel && panel.hidden) selectSource(panel.dataset.source, false);
    return R.showError(form, error);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const submit = document.getElementById("add-submit");
    R.clearErrors(form);
    const required = { git: [repoInput, "repo"], image: [imageInput, "image"] }[source];
    if (required && !required[0].value.trim()) {
      showAddError(new R.ApiError(400, `${required[1]}: is required`, required[1])).focus();
      return;
    }
    const tooLong = R.checkLengths(form);
    if (tooLong) {
      tooLong.focus();
      return;
    }
    R.setBusy(submit, true, "Adding");
    try {
      const env = await R.api("POST", "api/environments", await formBody());
      bootstrap.Modal.getInstance(addDialog).hide();
      form.reset();
      addFiles.clear();
      selectSource("git", false);
      nameEdited = false;
      upsert(env);
      R.announce(`${env.name} added: ${env.status}`);
    } catch (e) {
      showAddError(e).focus();
    } finally {
      R.setBusy(submit, false);
    }
  });

  // -- Edit files: the files of an environment from files, as its next version --

  const filesDialog = document.getElementById("files-dialog");
  const filesForm = document.getElementById("files-form");
  const filesStatus = document.getElementById("files-status");
  const filesSubmit = document.getElementById("files-submit");
  const editFiles = fileEditor(document.getElementById("files-list"), {
    prefix: "edit-file",
    addButton: document.getElementById("files-add"),
  });
  let filesTarget = null;
  let filesLoads = 0; // the dialog may be closed and opened again while its files load

  /** A line above the files: loading, or the API's "nothing changed" (null: none). */
  function setFilesStatus(text) {
    filesStatus.textContent = text || "";
    filesStatus.classList.toggle("d-none", !text);
  }

  async function openFilesDialog(env, button) {
    filesTarget = env;
    const load = ++filesLoads;
    R.clearErrors(filesForm);
    editFiles.clear();
    filesDialog.querySelector(".modal-title").textContent = `Edit files: ${env.name}`;
    setFilesStatus("Loading the files…");
    filesSubmit.disabled = true;
    // The first path gets the focus once the dialog is shown and the files are there.
    const shown = new Promise((resolve) => filesDialog.addEventListener("shown.bs.modal", resolve, { once: true }));
    R.openModal(filesDialog, rowControl(env.uid, button.dataset.action));
    try {
      // The list carries no files: the environment's own answer does.
      const model = await R.api("GET", `api/environments/${encodeURIComponent(env.uid)}`);
      if (load !== filesLoads) return;
      const files = model.files || {};
      const sorted = {};
      for (const path of Object.keys(files).sort()) sorted[path] = files[path];
      editFiles.setFiles(sorted);
      if (!Object.keys(sorted).length) editFiles.addFile("", "");
      setFilesStatus(null);
      filesSubmit.disabled = false;
      await shown;
      if (load === filesLoads) filesForm.querySelector(".file-path").focus();
    } catch (e) {
      if (load !== filesLoads) return;
      setFilesStatus(null);
      R.showError(filesForm, new R.ApiError(e.status, `Could not load the files: ${e.message}`)).focus();
    }
  }

  filesDialog.addEventListener("hidden.bs.modal", () => {
    filesLoads += 1; // a load still running is dropped
    editFiles.clear();
  });

  filesForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const env = filesTarget;
    R.clearErrors(filesForm);
    setFilesStatus(null);
    let files;
    try {
      files = editFiles.body();
    } catch (e) {
      R.showError(filesForm, e).focus();
      return;
    }
    R.setBusy(filesSubmit, true, "Saving");
    try {
      const answer = await R.api("PATCH", `api/environments/${encodeURIComponent(env.uid)}`, { files });
      upsert(answer);
      if (answer.message) {
        // The same files as the current version: stored, nothing built. The dialog stays open.
        setFilesStatus(answer.message);
        R.announce(`${env.name}: ${answer.message}`);
      } else {
        bootstrap.Modal.getInstance(filesDialog).hide();
        R.announce(`${env.name}: new files saved, building the next version`);
      }
    } catch (e) {
      // A refused file names "files" (or "files.<path>"): shown next to the files.
      if (e.field && /^files[.[]/.test(e.field)) e.field = "files";
      R.showError(filesForm, e).focus();
    } finally {
      R.setBusy(filesSubmit, false);
    }
  });

  // -- Logs ----------------------------------------------------------------

  const logsDialog = document.getElementById("logs-dialog");
  const output = document.getElementById("logs-output");
  const logStatus = document.getElementById("logs-status");
  const logs = {
    env: null,
    source: null,
    lastId: 0,
    seen: new Set(), // "phase|message" of the events that carry lastId (see onEvent)
    text: [],
    pending: null,
    traceback: null, // the Python traceback being folded (see addLogLine)
    stick: true,
    failures: 0,
    retryTimer: null,
    silenceTimer: null,
    done: false,
  };

  output.addEventListener("scroll", () => {
    logs.stick = output.scrollTop + output.clientHeight >= output.scrollHeight - 24;
  });

  function setLogStatus(text, live) {
    logStatus.replaceChildren();
    R.append(logStatus, [
      live ? el("span", { class: "spinner-border spinner-border-sm me-2", "aria-hidden": "true" }) : null,
      text,
    ]);
  }

  function openLogs(env, button) {
    stopLogs();
    Object.assign(logs, {
      env,
      lastId: 0,
      seen: new Set(),
      text: [],
      traceback: null,
      stick: true,
      failures: 0,
      done: false,
    });
    output.replaceChildren();
    logsDialog.querySelector(".modal-title").textContent = `Build log: ${env.name}`;
    setLogStatus("Connecting…", true);
    R.openModal(logsDialog, rowControl(env.uid, button.dataset.action), "#logs-output");
    connectLogs();
  }

  function connectLogs() {
    const env = logs.env;
    // EventSource cannot send headers: the XSRF token goes in the query.
    const params = new URLSearchParams({ _xsrf: R.xsrfToken });
    if (logs.lastId) params.set("last_event_id", logs.lastId);
    const url = `${R.baseUrl}api/environments/${encodeURIComponent(env.uid)}/logs?${params}`;
    const source = new EventSource(url);
    logs.source = source;
    watchLogs(source);
    source.onopen = () => {
      watchLogs(source);
      if (!logs.done) setLogStatus(ACTIVE.has((find(env.uid) || env).status) ? "Following the build…" : "Loading the log…", true);
    };
    source.onmessage = (event) => {
      watchLogs(source);
      logs.failures = 0;
      onEvent(event);
    };
    source.onerror = () => onLogError(source);
  }

  /**
   * When the service dies (even SIGKILL), configurable-http-proxy may keep
   * this stream open with nothing coming, and EventSource never shows the
   * service's keep-alive comments (every 25 s): a stream silent for longer
   * is opened again from the last event seen, which repeats nothing.
   */
  function watchLogs(source) {
    window.clearTimeout(logs.silenceTimer);
    logs.silenceTimer = window.setTimeout(() => {
      if (logs.done || source !== logs.source) return;
      source.close();
      connectLogs();
    }, LOG_SILENCE_MS);
  }

  /**
   * One event. Ids only grow, so an id below the last one is a repeat (after
   * a reconnection). An event without an id line (the "lines omitted" marker)
   * keeps the previous id in EventSource: those are told apart by content.
   */
  function onEvent(event) {
    let data;
    try {
      data = JSON.parse(event.data);
    } catch (e) {
      return;
    }
    const id = event.lastEventId ? parseInt(event.lastEventId, 10) : logs.lastId;
    const key = `${data.phase}|${data.message}`;
    if (id < logs.lastId) return;
    if (id > logs.lastId) {
      logs.lastId = id;
      logs.seen = new Set([key]);
    } else if (logs.seen.has(key)) {
      return;
    } else {
      logs.seen.add(key);
    }
    addLogLine(data.phase, data.message);
    if (data.phase === "status") {
      setLogStatus(capitalize(data.message), true);
    } else if (FINAL_PHASES.has(data.phase)) {
      logs.done = true;
      stopLogs();
      flushLog();
      const texts = {
        built: data.message || "Built",
        failed: `Failed: ${data.message || "the build did not finish"}`,
        cancelled: data.message || "Cancelled",
      };
      setLogStatus(texts[data.phase], false);
      poll.now();
    }
  }

  /**
   * The stream broke (network drop, service restart) or ended without a
   * final event. Reconnect from the last event seen, asking the API first
   * whether the environment is still there.
   */
  function onLogError(source) {
    if (logs.done || source !== logs.source) return;
    source.close(); // reconnect ourselves, with last_event_id, not with the browser's timer
    logs.failures += 1;
    const env = find(logs.env.uid) || logs.env;
    if (logs.failures >= 3 && !ACTIVE.has(env.status)) {
      // The build is over and the stream keeps ending without a final
      // event (a log recorded before a crash): stop asking.
      stopLogs();
      setLogStatus(`The log ends here (status: ${env.status}).`, false);
      return;
    }
    setLogStatus("Connection lost: reconnecting…", true);
    const delay = Math.min(500 * 2 ** (logs.failures - 1), 10000);
    R.api("GET", `api/environments/${encodeURIComponent(env.uid)}`).then(
      () => {
        if (source === logs.source) logs.retryTimer = window.setTimeout(connectLogs, delay);
      },
      (e) => {
        if (source !== logs.source) return;
        if (e.status >= 400 && e.status < 500) {
          stopLogs();
          setLogStatus(`The log cannot be shown: ${e.message}`, false);
        } else {
          logs.retryTimer = window.setTimeout(connectLogs, delay);
        }
      }
    );
  }

  function stopLogs() {
    window.clearTimeout(logs.retryTimer);
    window.clearTimeout(logs.silenceTimer);
    if (logs.source) {
      logs.source.close();
      logs.source = null;
    }
  }

  function capitalize(text) {
    return text ? text[0].toUpperCase() + text.slice(1) : text;
  }

  // repo2docker logs some messages without a line end, so that the traceback
  // after them starts on the same line: it gets a line of its own.
  const GLUED_TRACEBACK = /(\S)(Traceback \(most recent call last\):)/g;
  // A traceback's first line, bare or in a Dockerfile step's output ("#7 0.465 ").
  const TRACEBACK_START = /^(?:#(\d+) \d+\.\d+ |(\d+\.\d+ ))?Traceback \(most recent call last\):\s*$/;

  /**
   * The lines of one message. Each message is one line; a carriage return
   * overwrites, as in a terminal; a traceback glued to a line is split off.
   */
  function messageLines(message) {
    return String(message)
      .split(/\r?\n/)
      .map((line) => line.split("\r").pop())
      .flatMap((line) => line.replace(GLUED_TRACEBACK, "$1\n$2").split("\n"));
  }

  /**
   * A Python traceback starting at ``line`` (plain text), or null: a
   * collapsed <details> whose summary counts its lines. The lines that
   * follow go in while they are indented (with the same step prefix); the
   * exception's own line, the first one that is not, stays outside, visible.
   */
  function startTraceback(line) {
    const match = TRACEBACK_START.exec(line);
    if (!match) return null;
    const stamp = match[1] ? new RegExp(`^#${match[1]} \\d+\\.\\d+ `) : match[2] ? /^\d+\.\d+ / : null;
    const summary = el("summary", { class: "log-traceback-summary" });
    const details = el("details", { class: "log-traceback" }, summary);
    return { details, summary, stamp, count: 0 };
  }

  function continuesTraceback(traceback, line) {
    let rest = line;
    if (traceback.stamp) {
      const stamp = traceback.stamp.exec(line);
      if (!stamp) return false;
      rest = line.slice(stamp[0].length);
    }
    return /^[ \t]+\S/.test(rest);
  }

  function addLogLine(phase, message) {
    if (!logs.pending) {
      logs.pending = document.createDocumentFragment();
      window.requestAnimationFrame(flushLog);
    }
    for (const line of messageLines(message)) {
      const prefix = phase === "log" ? "" : phase === "status" ? "» " : `» ${phase}: `;
      const plain = R.stripAnsi(line);
      const span = el("span", { class: `log-line log-${phase}` });
      if (prefix) span.append(prefix);
      span.append(...R.ansiNodes(line), "\n");
      logs.text.push(prefix + plain);

      let traceback = logs.traceback;
      if (traceback && !(phase === "log" && continuesTraceback(traceback, plain))) {
        traceback = logs.traceback = null;
      }
      if (!traceback && phase === "log") {
        traceback = logs.traceback = startTraceback(plain);
        if (traceback) logs.pending.append(traceback.details);
      }
      if (traceback) {
        traceback.details.append(span);
        traceback.count += 1;
        traceback.summary.textContent = `Traceback (${traceback.count} line${traceback.count === 1 ? "" : "s"})`;
      } else {
        logs.pending.append(span);
      }
    }
  }

  function flushLog() {
    if (!logs.pending) return;
    output.append(logs.pending);
    logs.pending = null;
    if (logs.stick) output.scrollTop = output.scrollHeight;
  }

  logsDialog.addEventListener("hidden.bs.modal", () => {
    stopLogs();
    logs.done = true;
  });

  document.getElementById("logs-copy").addEventListener("click", async (event) => {
    const button = event.currentTarget;
    flushLog();
    const ok = await R.copyText(logs.text.join("\n") + "\n");
    R.flashButton(button, ok ? "Copied" : "Copy failed", ok);
  });

  document.getElementById("logs-download").addEventListener("click", () => {
    flushLog();
    const name = logs.env ? R.serverSlug(logs.env.name) : "build";
    R.download(`${name}-build.log`, logs.text.join("\n") + "\n");
  });

  // -- start ---------------------------------------------------------------

  selectSource("git", false);
  render();
  poll.schedule();
  window.setInterval(tickElapsed, 1000);
  window.TljhR2D.environmentsPage = { refresh: poll.now, launchLink, nameFromRepo };
})();
