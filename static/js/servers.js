/* The Servers page: the user's servers, the New Server dialog, direct launch links. */
"use strict";

(function () {
  const R = window.TljhR2D;
  const { el, icon } = R;

  const POLL_MS = 2000;
  const PENDING = new Set(["spawn", "stop"]);
  const STATUS_TEXT = { running: "Running", spawn: "Starting", stop: "Stopping", stopped: "Stopped" };

  let servers = R.pageData("servers-data") || [];
  const environments = R.pageData("environments-data") || [];
  // Servers started from this page: followed until they run (or fail).
  const starting = new Map();
  // The server whose failure the box above the list explains: its row shows
  // the Failed badge and points up, rather than saying the reason twice.
  let explainedAbove = null;

  const tbody = document.querySelector("#servers tbody");

  // -- the table -----------------------------------------------------------

  function statusBadge(server) {
    const status = server.status;
    const text = STATUS_TEXT[status] || status;
    if (server.error && status !== "stopped") {
      // The hub still says starting (or running), but the container exited.
      return el("span", { class: "badge text-bg-danger" }, icon("fa-xmark"), " Failed");
    }
    if (PENDING.has(status)) {
      return el(
        "span",
        { class: "badge text-bg-warning" },
        el("span", { class: "spinner-border spinner-border-sm me-1", "aria-hidden": "true" }),
        text
      );
    }
    const cls = status === "running" ? "text-bg-success" : "text-bg-secondary";
    return el("span", { class: `badge ${cls}` }, text);
  }

  function actions(server) {
    const running = server.status === "running";
    const button = (action, label, cls, iconName) =>
      el(
        "button",
        { type: "button", class: `btn btn-sm ${cls}`, dataset: { action }, "aria-label": `${label} ${server.name}` },
        icon(iconName),
        el("span", { class: "ms-1" }, label)
      );
    const open = running
      ? el(
          "a",
          { class: "btn btn-sm btn-primary", href: server.url, dataset: { action: "open" }, "aria-label": `Open ${server.name}` },
          icon("fa-arrow-up-right-from-square"),
          el("span", { class: "ms-1" }, "Open")
        )
      : el(
          "a",
          { class: "btn btn-sm btn-primary disabled", role: "link", "aria-disabled": "true", dataset: { action: "open" } },
          icon("fa-arrow-up-right-from-square"),
          el("span", { class: "ms-1" }, "Open")
        );
    const canStart = server.status === "stopped" && server.environment_uid;
    return el(
      "td",
      { class: "server-actions" },
      el(
        "div",
        { class: "d-flex flex-wrap gap-1 justify-content-end" },
        open,
        canStart ? button("start", "Start", "btn-outline-primary", "fa-play") : null,
        running || server.status === "spawn" ? button("stop", "Stop", "btn-outline-secondary", "fa-stop") : null,
        button("remove", "Remove", "btn-outline-danger", "fa-trash")
      )
    );
  }

  function environmentCell(server) {
    return el(
      "td",
      { class: "server-environment", "data-label": "Environment" },
      server.environment || el("span", { class: "text-body-secondary" }, "unknown"),
      versionHint(server)
    );
  }

  // What the server runs compared with its environment's versions: outdated
  // (not the current version: rebuilt, or rolled back, since it started) and
  // newer_version (a newer version than the one it runs exists).
  function versionHint(server) {
    let text, title, cls;
    const on = server.version ? ` (it runs version ${server.version})` : "";
    if (server.outdated && server.newer_version !== false) {
      [text, cls] = [" newer build available — restart to use it", "text-bg-warning"];
      title = "The environment was rebuilt since this server started" + on;
    } else if (server.outdated) {
      [text, cls] = [" not on the current version — restart to use it", "text-bg-warning"];
      title = "The environment was rolled back since this server started" + on;
    } else if (server.newer_version) {
      [text, cls] = [" a newer version of this environment exists", "text-bg-info"];
      title = "The environment was rolled back to an earlier version" + on;
    } else {
      return null;
    }
    return el(
      "div",
      { class: "mt-1" },
      el("span", { class: `badge ${cls} server-outdated`, title }, icon("fa-arrows-rotate"), text)
    );
  }

  function statusCell(server) {
    return el(
      "td",
      { class: "server-status", "data-label": "Status" },
      statusBadge(server),
      server.error && server.name === explainedAbove
        ? el("div", { class: "server-error small text-danger mt-1" }, "Why: see the message above.")
        : server.error
        ? el(
            "div",
            { class: "server-error small text-danger mt-1", title: server.error },
            server.status === "stopped" ? "Last start failed: " : "",
            server.error
          )
        : null
    );
  }

  function row(server) {
    const name = server.status === "running" ? el("a", { href: server.url }, server.name) : server.name;
    return el(
      "tr",
      { dataset: { name: server.name, status: server.status, failed: server.error ? "true" : null } },
      el("th", { scope: "row", class: "server-name" }, name),
      environmentCell(server),
      statusCell(server),
      el("td", { class: "server-activity", "data-label": "Last activity" }, R.timeElement(server.last_activity)),
      actions(server)
    );
  }

  function render() {
    R.renderRows(tbody, servers, {
      keyAttr: "name",
      row,
      empty: () =>
        el(
          "tr",
          { class: "empty" },
          el("td", { colspan: "5", class: "text-center text-body-secondary py-4" }, "You have no server yet: start one with “New Server”.")
        ),
    });
  }

  function find(name) {
    return servers.find((server) => server.name === name);
  }

  // Poll while a server starts or stops.
  const poll = R.poller(load, () => starting.size || servers.some((s) => PENDING.has(s.status)), POLL_MS);

  /** One poll: the servers again, what changed said, starts that failed shown. */
  async function load() {
    try {
      const data = await R.api("GET", "api/servers");
      const before = new Map(servers.map((s) => [s.name, s.status]));
      servers = data.servers;
      render();
      const said = [];
      for (const server of servers) {
        const was = before.get(server.name);
        if (was !== undefined && was !== server.status && !PENDING.has(server.status)) {
          said.push(`${server.name} is ${STATUS_TEXT[server.status] || server.status}`.toLowerCase());
        }
        if (starting.has(server.name)) {
          const since = starting.get(server.name);
          if (server.error) {
            starting.delete(server.name);
            // The reason is in the server's row: the box says which and where to read more.
            showPageError(`${server.name} could not be started (the reason is in its row).`, server.server_name || server.name);
          } else if (server.status === "running") starting.delete(server.name);
          else if (server.status === "stopped" && Date.now() - since > 4000) {
            starting.delete(server.name);
            showPageError(
              `${server.name} stopped while starting: it could not be started.`,
              server.server_name || server.name
            );
          }
        }
      }
      if (said.length) R.announce(said.join(". "));
      hidePageError();
    } catch (e) {
      showPageError(`Could not refresh your servers: ${e.message}`);
    }
  }

  /** An error above the list; with the hub's name of a server, a link to the hub's message. */
  function showPageError(message, serverName) {
    const box = document.getElementById("page-error");
    box.replaceChildren(message);
    if (serverName) {
      const href = `${R.hubPrefix}spawn-pending/${encodeURIComponent(R.userName)}/${encodeURIComponent(serverName)}`;
      box.append(
        " ",
        el(
          "a",
          { class: "alert-link", href },
          "See JupyterHub's message"
        )
      );
    }
    box.classList.remove("d-none");
    box.dataset.sticky = serverName ? "1" : "";
  }

  function hidePageError() {
    const box = document.getElementById("page-error");
    if (!box.dataset.sticky) box.classList.add("d-none");
  }

  // -- row actions ---------------------------------------------------------

  /** The button of a row as it is now (rows are redrawn when they change). */
  function rowControl(name, action) {
    return () => {
      const tr = tbody.querySelector(`tr[data-name="${CSS.escape(name)}"]`);
      return tr && (tr.querySelector(`button[data-action="${action}"]`) || tr.querySelector("button"));
    };
  }

  tbody.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const server = find(button.closest("tr").dataset.name);
    if (!server) return;
    if (button.dataset.action === "stop") stop(server, button);
    else if (button.dataset.action === "remove") remove(server, button);
    else if (button.dataset.action === "start") start(server.name, server.environment_uid, button);
  });

  async function start(name, environment, button) {
    R.setBusy(button, true, "Starting");
    try {
      await launch(name, environment);
    } catch (e) {
      showPageError(`Could not start ${name}: ${e.message}`);
    } finally {
      if (button.isConnected) R.setBusy(button, false);
    }
  }

  /** POST api/servers, then follow the server until it runs (``follow``:
   * in the banner, which opens it when it is ready; else in the list). */
  async function launch(name, environment, follow = false) {
    let result;
    try {
      result = await R.api("POST", "api/servers", { name, environment });
    } catch (e) {
      // The answer was lost (the connection dropped while the hub started
      // the server): if the server is starting anyway, carry on.
      if (e.status !== 0) throw e;
      const data = await R.api("GET", "api/servers");
      const server = data.servers.find((s) => s.name === name && s.status !== "stopped");
      if (!server) throw e;
      result = server;
    }
    if (!follow) starting.set(name, Date.now());
    const server = find(name);
    const env = environments.find((e) => e.uid === environment);
    const model = {
      name,
      server_name: result.server_name,
      environment: result.environment || (env && env.name),
      environment_uid: environment,
      status: "spawn",
      outdated: false,
      error: null,
      url: result.url,
      last_activity: server ? server.last_activity : null,
    };
    servers = servers.filter((s) => s.name !== name).concat([model]);
    servers.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    render();
    R.announce(`Starting ${name}`);
    if (follow) showLaunch(name, result.server_name, result.url);
    else poll.schedule();
    return result;
  }

  async function stop(server, button) {
    R.setBusy(button, true, "Stopping");
    try {
      await R.api("DELETE", `api/servers/${encodeURIComponent(server.name)}`);
      server.status = "stop";
      render();
      R.announce(`Stopping ${server.name}`);
      poll.schedule();
      poll.now();
    } catch (e) {
      showPageError(`Could not stop ${server.name}: ${e.message}`);
    } finally {
      if (button.isConnected) R.setBusy(button, false);
    }
  }

  function remove(server, button) {
    R.confirmAction({
      title: "Remove the server?",
      body: [
        "Remove ",
        el("strong", {}, server.name),
        server.status === "stopped" ? "?" : "? It is stopped first.",
        " Files in your home directory are kept; anything else in the server is lost.",
      ],
      confirmLabel: "Remove",
      busyLabel: "Removing",
      returnTo: rowControl(server.name, button.dataset.action),
      action: async () => {
        await R.api("DELETE", `api/servers/${encodeURIComponent(server.name)}?remove=true`);
        servers = servers.filter((s) => s.name !== server.name);
        starting.delete(server.name);
        render();
        R.announce(`${server.name} removed`);
      },
    });
  }

  // -- New Server ----------------------------------------------------------

  const dialog = document.getElementById("new-server-dialog");
  const form = document.getElementById("new-server-form");
  const envSelect = form.elements.environment;
  const envHelp = document.getElementById("server-environment-help");

  function describeEnvironment() {
    if (!envSelect) return;
    const env = environments.find((e) => e.uid === envSelect.value);
    if (!env) return;
    const source = env.ref ? `${env.repo} @ ${env.ref}` : env.repo;
    const memory = env.memory || "no limit";
    const cpus = env.cpu !== null && env.cpu !== undefined ? String(env.cpu) : "no limit";
    const inside = env.summary ? ` · ${env.summary}` : "";
    envHelp.textContent = `${source} · Memory: ${memory} · CPUs: ${cpus}${inside}`;
  }

  function suggestName() {
    const env = envSelect && environments.find((e) => e.uid === envSelect.value);
    if (!env) return "";
    const base = R.serverSlug(env.name);
    let name = base;
    for (let n = 2; find(name); n++) name = `${base}-${n}`;
    return name;
  }

  let nameEdited = false;
  form.elements.name.addEventListener("input", () => {
    nameEdited = form.elements.name.value !== "";
  });
  if (envSelect) {
    envSelect.addEventListener("change", () => {
      describeEnvironment();
      if (!nameEdited) form.elements.name.value = suggestName();
    });
  }

  dialog.addEventListener("show.bs.modal", () => {
    if (!nameEdited) form.elements.name.value = suggestName();
    describeEnvironment();
  });
  dialog.addEventListener("shown.bs.modal", () => {
    form.elements.name.focus();
    form.elements.name.select();
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const submit = document.getElementById("new-server-submit");
    R.clearErrors(form);
    const name = form.elements.name.value.trim();
    if (!name) {
      R.showError(form, new R.ApiError(400, "name: is required", "name")).focus();
      return;
    }
    const tooLong = R.checkLengths(form);
    if (tooLong) {
      tooLong.focus();
      return;
    }
    R.setBusy(submit, true, "Starting");
    const open = form.elements.open ? form.elements.open.checked : false;
    try {
      await launch(name, envSelect.value, open);
      bootstrap.Modal.getInstance(dialog).hide();
      form.reset();
      nameEdited = false;
    } catch (e) {
      R.showError(form, e).focus();
    } finally {
      R.setBusy(submit, false);
    }
  });

  // -- direct launch links (servers?name=…&environment=…) ------------------

  /** Show the banner for ``name`` (started from the dialog) and follow it. */
  function showLaunch(name, serverName, url) {
    let box = document.getElementById("launching");
    if (!box) {
      box = el(
        "div",
        { class: "alert alert-info", role: "status", id: "launching" },
        el(
          "div",
          { class: "d-flex align-items-center gap-2" },
          el("span", { class: "spinner-border spinner-border-sm", "aria-hidden": "true" }),
          el("span", {}, "Starting ", el("strong", { class: "launch-name" }), "… you will be taken to it when it is ready.")
        ),
        el("p", { class: "small mb-0 mt-2 launch-progress", "aria-live": "off" })
      );
      document.getElementById("launch-error").before(box);
    }
    box.dataset.name = name;
    box.dataset.url = url;
    box.dataset.spawnPending = `${R.hubPrefix}spawn-pending/${encodeURIComponent(R.userName)}/${encodeURIComponent(serverName || name)}`;
    box.querySelector(".launch-name").textContent = name;
    box.querySelector(".launch-progress").textContent = "Asking JupyterHub to start it.";
    document.getElementById("launch-error").classList.add("d-none");
    box.classList.remove("d-none");
    followLaunch(box);
  }

  let following = 0;

  /**
   * A server is being started (a direct launch link, or "New Server" with
   * "open it when it is ready"): follow it with the API and go to it, in
   * this tab, when it runs. Everything needed is in the banner (data-name,
   * data-url), so a reload simply asks the service again. The banner says
   * what the list says: both come from the same answer.
   */
  function followLaunch(box) {
    const name = box.dataset.name;
    const target = box.dataset.url;
    const progress = box.querySelector(".launch-progress");
    const started = Date.now();
    const mine = ++following; // a newer launch takes the banner over
    let stoppedSeen = 0;

    const fail = (reason) => {
      box.classList.add("d-none");
      explainedAbove = name;
      render();
      const server = find(name);
      const again =
        server && server.status === "stopped"
          ? " Fix the cause, then start it again with its Start button in the list below."
          : " Fix the cause, then try again with “New Server”.";
      const error = document.getElementById("launch-error");
      error.replaceChildren(
        el("p", { class: "mb-1 fw-semibold" }, `${name} could not be started: ${reason}`),
        el(
          "p",
          { class: "mb-0 small" },
          el("a", { class: "alert-link", href: box.dataset.spawnPending }, "See JupyterHub's message."),
          again
        )
      );
      error.classList.remove("d-none");
      error.focus();
      R.announce(`${name} could not be started`);
    };

    /** One look at the server; true when following is over. */
    const step = (server) => {
      const seconds = Math.round((Date.now() - started) / 1000);
      if (server && server.error) {
        fail(server.error);
        return true;
      }
      if (server && server.status === "running") {
        progress.textContent = "The server is ready: opening it…";
        R.announce(`${name} is ready`);
        window.location.replace(target);
        return true;
      }
      if (!server || server.status === "stopped") {
        stoppedSeen += 1;
        if (stoppedSeen >= 2 && seconds > 3) {
          fail("it stopped before it was ready.");
          return true;
        }
        progress.textContent = `Asking JupyterHub to start it… (${seconds} s)`;
      } else {
        stoppedSeen = 0;
        const phase = server.status === "spawn" ? "JupyterHub is starting it" : STATUS_TEXT[server.status] || server.status;
        progress.textContent = `${phase}… (${seconds} s)`;
      }
      return false;
    };

    const poll = async () => {
      if (mine !== following) return;
      let server;
      try {
        const data = await R.api("GET", "api/servers");
        servers = data.servers;
        render();
        server = find(name);
      } catch (e) {
        progress.textContent = `Could not ask for the server's status (${e.message}); trying again…`;
        window.setTimeout(poll, POLL_MS);
        return;
      }
      if (!step(server)) window.setTimeout(poll, POLL_MS);
    };
    // What the page already knows (the list was rendered from it).
    const known = find(name);
    if (known && (known.status === "running" || known.status === "spawn")) {
      if (step(known)) return;
    }
    window.setTimeout(poll, 500);
  }

  // -- start ---------------------------------------------------------------

  render();
  poll.schedule();
  const launching = document.getElementById("launching");
  if (launching && launching.dataset.name) followLaunch(launching);
})();
