/* Helpers shared by the service's pages: API calls, DOM building, dialogs,
 * formatting and the ANSI colour parser of build logs.
 *
 * No framework and no bundler: every page loads this file, then its own.
 * Data from the API only ever reaches the page through textContent or
 * attribute setters, never as HTML.
 */
"use strict";

(function () {
  const meta = (name) => {
    const tag = document.querySelector(`meta[name="${name}"]`);
    return tag ? tag.getAttribute("content") : "";
  };

  const baseUrl = meta("base-url") || "/";
  const xsrfToken = meta("xsrf-token");
  const hubPrefix = meta("hub-prefix") || "/hub/";
  const userName = meta("user-name");

  /** An error answered by the service: {status, message, field}. */
  class ApiError extends Error {
    constructor(status, message, field) {
      super(message);
      this.status = status;
      this.field = field || null;
    }
  }

  /** Call the service's JSON API; resolves to the parsed body (or null). */
  async function api(method, path, body) {
    // JupyterHub's HubOAuth wants the XSRF token with every cookie-authenticated
    // request that is not a page view, GETs included.
    const options = {
      method,
      credentials: "same-origin",
      headers: { Accept: "application/json", "X-XSRFToken": xsrfToken },
    };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(baseUrl + path, options);
    } catch (e) {
      throw new ApiError(0, "The service cannot be reached. Check your connection and try again.");
    }
    let data = null;
    const text = await response.text();
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (e) {
        data = null;
      }
    }
    if (!response.ok) {
      const message =
        (data && data.message) || `${response.status} ${response.statusText || "error"}`;
      throw new ApiError(response.status, message, data && data.field);
    }
    return data;
  }

  /**
   * Build an element: el("a", {href: url, class: "x", dataset: {uid}}, "text", child).
   * Strings become text nodes; null and false children are skipped.
   */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** A Font Awesome icon hidden from screen readers. */
  function icon(name) {
    return el("i", { class: `fa ${name}`, "aria-hidden": "true" });
  }

  /** Say something to screen readers through the page's polite live region. */
  function announce(message) {
    const region = document.getElementById("announcer");
    if (!region) return;
    // Clearing first makes the same message be read again.
    region.textContent = "";
    window.setTimeout(() => {
      region.textContent = message;
    }, 50);
  }

  // -- formatting --------------------------------------------------------

  function formatSize(bytes) {
    if (bytes === null || bytes === undefined || bytes === "") return "";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let value = Number(bytes);
    let unit = 0;
    while (value >= 1000 && unit < units.length - 1) {
      value /= 1000;
      unit += 1;
    }
    const digits = unit === 0 || value >= 100 ? 0 : 1;
    return `${value.toFixed(digits)} ${units[unit]}`;
  }

  function formatCpu(cpu) {
    if (cpu === null || cpu === undefined || cpu === "") return "";
    const n = Number(cpu);
    return `${Number.isInteger(n) ? n : n.toFixed(2).replace(/0+$/, "")} CPU`;
  }

  /** A date for a table cell: the <time> element shows local time, its title the full date. */
  function timeElement(iso) {
    if (!iso) return el("span", { class: "text-body-secondary" }, "–");
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return el("span", {}, iso);
    return el("time", { datetime: iso, title: date.toLocaleString() }, relativeTime(date));
  }

  function relativeTime(date) {
    const seconds = Math.round((Date.now() - date.getTime()) / 1000);
    if (seconds < 45) return "just now";
    if (seconds < 60 * 60) return plural(Math.round(seconds / 60), "minute") + " ago";
    if (seconds < 60 * 60 * 24) return plural(Math.round(seconds / 3600), "hour") + " ago";
    if (seconds < 60 * 60 * 24 * 7) return plural(Math.round(seconds / 86400), "day") + " ago";
    return date.toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
  }

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? "" : "s"}`;
  }

  /** A server name made from an environment's display name (see the API's name rules). */
  function serverSlug(name) {
    const slug = String(name)
      .toLowerCase()
      .replace(/[^a-z0-9]+/g, "-")
      .replace(/^-+|-+$/g, "")
      .slice(0, 63)
      .replace(/-+$/g, "");
    return slug || "server";
  }

  // -- polling ---------------------------------------------------------------

  /**
   * Run `task` (async) every `ms` milliseconds while `wanted()` is true, one
   * run at a time. `schedule()` after a change that `wanted()` looks at;
   * `now()` to run at once (ignored while a run is going on).
   */
  function poller(task, wanted, ms) {
    let timer = null;
    let running = false;
    function schedule() {
      window.clearTimeout(timer);
      timer = wanted() ? window.setTimeout(now, ms) : null;
    }
    async function now() {
      if (running) return;
      running = true;
      try {
        await task();
      } finally {
        running = false;
        schedule();
      }
    }
    return { schedule, now };
  }

  // -- clipboard and downloads --------------------------------------------

  async function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(text);
        return true;
      } catch (e) {
        // fall through to the old way (permission refused, document not focused)
      }
    }
    const area = el("textarea", { class: "visually-hidden", readonly: true, "aria-hidden": "true" });
    area.value = text;
    document.body.append(area);
    area.select();
    let ok = false;
    try {
      ok = document.execCommand("copy");
    } catch (e) {
      ok = false;
    }
    area.remove();
    return ok;
  }

  /** Show short feedback ("Copied") on a button, then restore its content. */
  function flashButton(button, message, ok = true) {
    if (!button._original) button._original = Array.from(button.childNodes);
    window.clearTimeout(button._flashTimer);
    button.replaceChildren(icon(ok ? "fa-check" : "fa-xmark"), " ", message);
    button._flashTimer = window.setTimeout(() => {
      button.replaceChildren(...button._original);
      button._original = null;
    }, 2000);
    announce(message);
  }

  function download(filename, text) {
    const blob = new Blob([text], { type: "text/plain;charset=utf-8" });
    const url = URL.createObjectURL(blob);
    const link = el("a", { href: url, download: filename, class: "d-none" });
    document.body.append(link);
    link.click();
    link.remove();
    window.setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // -- forms ---------------------------------------------------------------

  function clearErrors(form) {
    for (const input of form.querySelectorAll("[aria-invalid]")) {
      input.removeAttribute("aria-invalid");
      input.classList.remove("is-invalid");
      const describedBy = (input.getAttribute("aria-describedby") || "")
        .split(" ")
        .filter((id) => id && !id.endsWith("-error"));
      if (describedBy.length) input.setAttribute("aria-describedby", describedBy.join(" "));
      else input.removeAttribute("aria-describedby");
    }
    for (const feedback of form.querySelectorAll(".invalid-feedback.js-error")) feedback.remove();
    const alert = form.querySelector(".form-error");
    if (alert) {
      alert.textContent = "";
      alert.classList.add("d-none");
    }
  }

  /**
   * Show an API error in a form: next to the field it names (``field`` in
   * the JSON, or a ``field: `` prefix of the message), else at the top.
   * Returns the element that should get the focus.
   */
  function showError(form, error) {
    let field = error.field;
    let message = error.message;
    if (!field) {
      const match = /^([a-z_]+): (.*)$/s.exec(message);
      if (match) field = match[1];
    }
    const input = field && form.querySelector(`[data-field="${field}"], [name="${field}"]`);
    if (field && message.startsWith(`${field}: `)) {
      // "name: is required" -> "Name is required.": a sentence that says
      // which field, in the words of the form's own label.
      message = fieldSentence(input ? fieldLabel(input) : humanise(field), message.slice(field.length + 2));
    }
    if (!input) {
      const alert = form.querySelector(".form-error");
      alert.textContent = message;
      alert.classList.remove("d-none");
      return alert;
    }
    const details = input.closest("details");
    if (details) details.open = true;
    const feedbackId = `${input.id}-error`;
    const feedback = el("div", { class: "invalid-feedback js-error", id: feedbackId }, message);
    input.classList.add("is-invalid");
    input.setAttribute("aria-invalid", "true");
    const describedBy = (input.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
    input.setAttribute("aria-describedby", [...describedBy, feedbackId].join(" "));
    const group = input.closest(".input-group") || input;
    group.after(feedback);
    if (group !== input) group.classList.add("has-validation", "is-invalid");
    return input;
  }

  /** "machine_profile" -> "Machine profile". */
  function humanise(field) {
    const words = String(field).replace(/_/g, " ");
    return words.charAt(0).toUpperCase() + words.slice(1);
  }

  /** What a form's input is called on the page: its label (or legend), without hints in brackets. */
  function fieldLabel(input) {
    let text = "";
    if (input.id) {
      const label = document.querySelector(`label[for="${CSS.escape(input.id)}"]`);
      if (label) text = label.textContent;
    }
    if (!text) {
      const legend = input.closest("fieldset") && input.closest("fieldset").querySelector("legend");
      text = (legend && legend.textContent) || input.getAttribute("aria-label") || humanise(input.name || "");
    }
    return text.replace(/\s*\(.*\)\s*$/s, "").replace(/\s+/g, " ").trim() || humanise(input.name || "");
  }

  /**
   * One sentence naming the field: a reason that starts without a subject
   * ("is required", "must not contain spaces") gets the field's name in
   * front; a reason that is a sentence of its own is kept, with a capital
   * and a full stop.
   */
  function fieldSentence(subject, reason) {
    let text = String(reason).trim();
    if (/^(is|are|must|should|has|have|contains|cannot|can't|needs|may)\b/.test(text)) {
      text = `${subject} ${text}`;
    } else if (/^[a-z]/.test(text) && !text.toLowerCase().includes(subject.toLowerCase())) {
      text = `${subject}: ${text}`;
    }
    text = text.charAt(0).toUpperCase() + text.slice(1);
    return /[.!?…]$/.test(text) ? text : `${text}.`;
  }

  /**
   * Inputs with data-maxlength: their limit is a hint, not a cut. The
   * browser's maxlength would silently drop what is typed or pasted past
   * it; here the whole text stays and the input says it is too long.
   * Returns the first input over its limit (after showing its error), or null.
   */
  function checkLengths(form) {
    let first = null;
    for (const input of form.querySelectorAll("[data-maxlength]")) {
      const over = lengthProblem(input);
      showLengthProblem(input, over);
      if (over && !first) first = input;
    }
    return first;
  }

  function lengthProblem(input) {
    const max = Number(input.dataset.maxlength);
    const length = [...input.value.trim()].length;
    if (!max || length <= max) return null;
    return `${fieldLabel(input)} is longer than ${max} characters (it has ${length}): shorten it.`;
  }

  function showLengthProblem(input, message) {
    const id = `${input.id}-length`;
    let feedback = document.getElementById(id);
    const describedBy = (input.getAttribute("aria-describedby") || "").split(" ").filter((x) => x && x !== id);
    if (!message) {
      if (feedback) feedback.remove();
      if (!input.parentElement.querySelector(".js-error")) {
        input.classList.remove("is-invalid");
        input.removeAttribute("aria-invalid");
      }
      input.setAttribute("aria-describedby", describedBy.join(" "));
      return;
    }
    if (!feedback) {
      feedback = el("div", { class: "invalid-feedback js-length", id });
      input.after(feedback);
    }
    feedback.textContent = message;
    input.classList.add("is-invalid");
    input.setAttribute("aria-invalid", "true");
    input.setAttribute("aria-describedby", [...describedBy, id].join(" "));
  }

  /** Say "too long" as soon as it is, in every form of the page. */
  function watchLengths() {
    for (const input of document.querySelectorAll("input[data-maxlength], textarea[data-maxlength]")) {
      input.addEventListener("input", () => showLengthProblem(input, lengthProblem(input)));
    }
  }

  function setBusy(button, busy, label) {
    if (busy) {
      button.disabled = true;
      button._idle = Array.from(button.childNodes);
      button.replaceChildren(
        el("span", { class: "spinner-border spinner-border-sm me-1", "aria-hidden": "true" }),
        label || button.textContent
      );
    } else {
      button.disabled = false;
      if (button._idle) button.replaceChildren(...button._idle);
    }
  }

  // -- dialogs -------------------------------------------------------------

  /**
   * Open a Bootstrap modal and give the focus back to ``returnTo`` when it
   * closes (Bootstrap only does that for data-bs-toggle buttons).
   * ``returnTo`` may be a function, called then: a table row may have been
   * redrawn while the dialog was open.
   */
  function openModal(modalElement, returnTo, focusSelector) {
    const modal = bootstrap.Modal.getOrCreateInstance(modalElement);
    const active = document.activeElement;
    const onShown = () => {
      const target = focusSelector && modalElement.querySelector(focusSelector);
      if (target) target.focus();
    };
    const onHidden = () => {
      modalElement.removeEventListener("shown.bs.modal", onShown);
      const opener = typeof returnTo === "function" ? returnTo() : returnTo || active;
      // The opener may be gone (its row was removed): then a stable control.
      const target =
        opener && opener.isConnected && typeof opener.focus === "function"
          ? opener
          : document.querySelector("[data-focus-fallback]") || document.getElementById("main");
      if (target) target.focus();
    };
    modalElement.addEventListener("shown.bs.modal", onShown, { once: true });
    modalElement.addEventListener("hidden.bs.modal", onHidden, { once: true });
    modal.show();
    return modal;
  }

  /**
   * Ask to confirm an action in the page's #confirm-dialog. ``action`` runs on
   * confirmation; when it throws, its message stays in the dialog (for
   * example the API's 409 refusal) and the dialog stays open.
   */
  function confirmAction({ title, body, confirmLabel, busyLabel, action, returnTo }) {
    const dialog = document.getElementById("confirm-dialog");
    const titleEl = dialog.querySelector(".modal-title");
    const bodyEl = dialog.querySelector(".confirm-body");
    const errorEl = dialog.querySelector(".confirm-error");
    const okButton = dialog.querySelector(".confirm-ok");
    titleEl.textContent = title;
    bodyEl.replaceChildren(...(Array.isArray(body) ? body : [body]).map((b) =>
      b instanceof Node ? b : document.createTextNode(String(b))
    ));
    errorEl.textContent = "";
    errorEl.classList.add("d-none");
    okButton.textContent = confirmLabel;
    okButton.disabled = false;
    const modal = openModal(dialog, returnTo, ".confirm-cancel");
    const onClick = async () => {
      setBusy(okButton, true, busyLabel || confirmLabel);
      try {
        await action();
        okButton.removeEventListener("click", onClick);
        modal.hide();
      } catch (e) {
        errorEl.textContent = e.message;
        errorEl.classList.remove("d-none");
        errorEl.focus();
      } finally {
        setBusy(okButton, false);
        okButton.textContent = confirmLabel;
      }
    };
    okButton.addEventListener("click", onClick);
    dialog.addEventListener("hidden.bs.modal", () => okButton.removeEventListener("click", onClick), {
      once: true,
    });
  }

  // -- ANSI colours ------------------------------------------------------------

  const ANSI_COLOURS = ["black", "red", "green", "yellow", "blue", "magenta", "cyan", "white"];
  // ESC [ params final-byte: CSI sequences; only "m" (SGR) has a meaning here.
  const CSI = /\x1b\[([0-9;?]*)([@-~])/g;

  /**
   * Parse one line with ANSI SGR codes into [{text, fg, bright, bold}] runs.
   * Foreground colours 30-37 and 90-97, bold (1), normal (22), default
   * colour (39) and reset (0) are understood; other SGR codes are ignored,
   * other escape sequences are dropped. Text is never interpreted as HTML.
   */
  function parseAnsi(line) {
    const runs = [];
    const state = { fg: null, bright: false, bold: false };
    let last = 0;
    const push = (text) => {
      // Stray ESC characters and other controls are not shown.
      text = text.replace(/[\x00-\x08\x0b-\x1f\x7f]/g, "");
      if (text) runs.push({ text, fg: state.fg, bright: state.bright, bold: state.bold });
    };
    CSI.lastIndex = 0;
    let match;
    while ((match = CSI.exec(line)) !== null) {
      push(line.slice(last, match.index));
      last = CSI.lastIndex;
      if (match[2] !== "m") continue;
      const codes = match[1] === "" ? [0] : match[1].split(";").map((c) => parseInt(c || "0", 10));
      for (let i = 0; i < codes.length; i++) {
        const code = codes[i];
        if (code === 0) Object.assign(state, { fg: null, bright: false, bold: false });
        else if (code === 1) state.bold = true;
        else if (code === 22) state.bold = false;
        else if (code === 39) Object.assign(state, { fg: null, bright: false });
        else if (code >= 30 && code <= 37) Object.assign(state, { fg: ANSI_COLOURS[code - 30], bright: false });
        else if (code >= 90 && code <= 97) Object.assign(state, { fg: ANSI_COLOURS[code - 90], bright: true });
        else if (code === 38 || code === 48) {
          // 256-colour and true-colour forms: skip their arguments.
          i += codes[i + 1] === 5 ? 2 : codes[i + 1] === 2 ? 4 : 0;
        }
      }
    }
    push(line.slice(last));
    return runs;
  }

  /** Nodes for one log line: plain text, coloured runs as <span class="ansi-…">. */
  function ansiNodes(line) {
    return parseAnsi(line).map((run) => {
      if (!run.fg && !run.bold) return document.createTextNode(run.text);
      const classes = [];
      if (run.fg) classes.push(`ansi-${run.bright ? "bright-" : ""}${run.fg}`);
      if (run.bold) classes.push("ansi-bold");
      const span = document.createElement("span");
      span.className = classes.join(" ");
      span.textContent = run.text;
      return span;
    });
  }

  function stripAnsi(line) {
    return parseAnsi(line)
      .map((run) => run.text)
      .join("");
  }

  /**
   * Redraw a table body from ``items`` in place. Rows whose data did not change
   * are kept (so focus and hover stay); when a redraw took the focus away, it
   * goes back to the same action of the same row. ``keyAttr`` names the rows'
   * data attribute and the items' key ("uid", "name"); ``empty()`` makes the
   * row shown when there are no items.
   */
  function renderRows(tbody, items, { keyAttr, row, empty }) {
    const selector = `tr[data-${keyAttr}]`;
    const focused = document.activeElement;
    const focusedRow = focused && focused.closest && focused.closest(selector);
    const focusedKey = focusedRow && tbody.contains(focusedRow) ? focusedRow.dataset[keyAttr] : null;
    const focusedAction = focusedKey && focused.dataset ? focused.dataset.action : null;

    const existing = new Map();
    for (const tr of tbody.querySelectorAll(selector)) existing.set(tr.dataset[keyAttr], tr);
    const rows = items.map((item) => {
      const data = JSON.stringify(item);
      const old = existing.get(String(item[keyAttr]));
      if (old && old._key === data) return old;
      const tr = row(item);
      tr._key = data;
      return tr;
    });
    if (!rows.length) rows.push(empty());
    tbody.replaceChildren(...rows);

    if (focusedKey && !document.activeElement.closest("tr")) {
      const tr = tbody.querySelector(`tr[data-${keyAttr}="${CSS.escape(focusedKey)}"]`);
      const target =
        tr &&
        (tr.querySelector(`[data-action="${focusedAction}"]:not(.disabled)`) || tr.querySelector("button"));
      if (target) target.focus();
    }
  }

  /** Read JSON embedded by the template in <script type="application/json" id=…>. */
  function pageData(id) {
    const script = document.getElementById(id);
    return script ? JSON.parse(script.textContent) : null;
  }

  window.TljhR2D = {
    baseUrl,
    xsrfToken,
    hubPrefix,
    userName,
    ApiError,
    api,
    el,
    append,
    icon,
    announce,
    formatSize,
    formatCpu,
    timeElement,
    serverSlug,
    poller,
    copyText,
    flashButton,
    download,
    clearErrors,
    showError,
    checkLengths,
    fieldSentence,
    setBusy,
    openModal,
    confirmAction,
    parseAnsi,
    ansiNodes,
    stripAnsi,
    pageData,
    renderRows,
  };
  // common.js is deferred: the page's forms are there.
  watchLengths();
})();
