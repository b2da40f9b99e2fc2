/* The Homes page (admins): users' home volumes, their size and users, removal. */
"use strict";

(function () {
  const R = window.TljhR2D;
  const { el, icon } = R;

  const table = document.getElementById("homes");
  const tbody = table.querySelector("tbody");
  let homes = [];

  // -- the table -----------------------------------------------------------

  function muted(text) {
    return el("span", { class: "text-body-secondary" }, text);
  }

  function row(home) {
    const inUse = home.in_use_by.length > 0;
    const environment = home.environment_name || home.environment;
    const deleteButton = el(
      "button",
      {
        type: "button",
        class: "btn btn-sm btn-outline-danger",
        dataset: { action: "delete" },
        "aria-label": `Delete the home ${home.name}`,
        title: inUse ? "In use: stop and remove the server first" : null,
      },
      icon("fa-trash"),
      el("span", { class: "ms-1" }, "Delete")
    );
    return el(
      "tr",
      { dataset: { name: home.name } },
      el(
        "th",
        { scope: "row", class: "home-user" },
        home.user || muted("unknown"),
        el("div", { class: "small text-body-secondary fw-normal home-volume" }, home.name)
      ),
      el("td", { class: "home-server", "data-label": "Server" }, home.server || muted("–")),
      el("td", { class: "home-environment", "data-label": "Environment" }, environment || muted("–")),
      el(
        "td",
        { class: "home-size text-end text-nowrap", "data-label": "Size" },
        home.size === null ? muted("unknown") : R.formatSize(home.size)
      ),
      el("td", { class: "home-created", "data-label": "Created" }, R.timeElement(home.created)),
      el(
        "td",
        { class: "home-in-use", "data-label": "In use by" },
        inUse
          ? home.in_use_by.map((name) => el("span", { class: "badge text-bg-info me-1" }, name))
          : muted("–")
      ),
      el("td", { class: "home-actions text-end" }, deleteButton)
    );
  }

  function render() {
    R.renderRows(tbody, homes, {
      keyAttr: "name",
      row,
      empty: () =>
        el(
          "tr",
          { class: "empty" },
          el("td", { colspan: "7", class: "text-center text-body-secondary py-4" }, "No user has a home volume yet.")
        ),
    });
  }

  function showSizesNote(note) {
    const box = document.getElementById("sizes-note");
    box.textContent = note || "";
    box.classList.toggle("d-none", !note);
  }

  async function load() {
    const box = document.getElementById("page-error");
    try {
      const data = await R.api("GET", "api/homes");
      homes = data.homes;
      render();
      showSizesNote(data.sizes_note);
      box.classList.add("d-none");
    } catch (e) {
      box.textContent = `Could not list the homes: ${e.message}`;
      box.classList.remove("d-none");
      if (tbody.querySelector("tr.loading")) tbody.replaceChildren();
    } finally {
      table.setAttribute("aria-busy", "false");
    }
  }

  // -- delete --------------------------------------------------------------

  const dialog = document.getElementById("delete-home-dialog");
  const form = document.getElementById("delete-home-form");
  const input = form.elements.name;
  const submit = document.getElementById("delete-home-submit");
  let target = null;

  function confirmDelete(home, button) {
    target = home;
    R.clearErrors(form);
    form.reset();
    submit.disabled = true;
    const where = home.server ? ` (server ${home.server})` : "";
    dialog.querySelector(".delete-home-body").replaceChildren(
      "Delete the home ",
      el("strong", {}, home.name),
      ` of ${home.user || "an unknown user"}${where}? All files in it are lost.`,
      home.in_use_by.length ? ` It is in use by ${home.in_use_by.join(", ")}: stop and remove that server first.` : ""
    );
    dialog.querySelector(".delete-home-user").textContent = expected(home);
    R.openModal(
      dialog,
      () => {
        const tr = tbody.querySelector(`tr[data-name="${CSS.escape(home.name)}"]`);
        return tr && tr.querySelector('button[data-action="delete"]');
      },
      "#delete-home-confirm"
    );
  }

  /** What the admin types to confirm: the user's name (the volume's, for a home without a user). */
  function expected(home) {
    return home.user || home.name;
  }

  input.addEventListener("input", () => {
    submit.disabled = !target || input.value !== expected(target);
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!target || input.value !== expected(target)) return;
    R.clearErrors(form);
    R.setBusy(submit, true, "Deleting");
    const home = target;
    try {
      await R.api("DELETE", `api/homes/${encodeURIComponent(home.name)}`);
      homes = homes.filter((h) => h.name !== home.name);
      render();
      bootstrap.Modal.getInstance(dialog).hide();
      R.announce(`The home ${home.name} was deleted`);
    } catch (e) {
      R.showError(form, e).focus();
      if (e.status === 404) load();
    } finally {
      R.setBusy(submit, false);
      submit.disabled = input.value !== expected(home);
    }
  });

  tbody.addEventListener("click", (event) => {
    const button = event.target.closest('button[data-action="delete"]');
    if (!button) return;
    const home = homes.find((h) => h.name === button.closest("tr").dataset.name);
    if (home) confirmDelete(home, button);
  });

  document.getElementById("refresh-homes").addEventListener("click", load);

  load();
})();
