// Keeps the uploads page current: polls the JSON API every second and redraws the two
// tables with DOM nodes (textContent only: names come from users, never as HTML).
"use strict";

const POLL_MS = 1000;
const STALE_AFTER_MS = 5000;
let lastSuccess = Date.now();

function human(n) {
  if (n === null || n === undefined) return "-";
  let size = Number(n);
  for (const unit of ["B", "KiB", "MiB", "GiB"]) {
    if (size < 1024 || unit === "GiB") {
      return unit === "B" ? `${size.toFixed(0)} B` : `${size.toFixed(1)} ${unit}`;
    }
    size /= 1024;
  }
  return `${n} B`;
}

function cell(className, text, attrs = {}) {
  const td = document.createElement("td");
  td.className = className;
  if (text !== undefined) td.textContent = text;
  for (const [name, value] of Object.entries(attrs)) td.setAttribute(name, value);
  return td;
}

function emptyRow(text) {
  const tr = document.createElement("tr");
  tr.className = "empty";
  const td = cell("", text, { colspan: "6" });
  tr.appendChild(td);
  return tr;
}

function progressCell(u) {
  const td = cell("progress");
  const bar = document.createElement("progress");
  if (u.percent !== null) {
    bar.max = 100;
    bar.value = u.percent;
    td.append(bar, ` ${u.percent}%`);
  } else {
    td.append(bar); // no value: the browser draws an indeterminate bar
  }
  if (u.resumed_from) {
    const note = document.createElement("span");
    note.className = "note";
    note.textContent = `resumed at ${human(u.resumed_from)}`;
    td.append(note);
  }
  return td;
}

function activeRow(u) {
  const tr = document.createElement("tr");
  tr.dataset.uploadKey = u.key;
  tr.append(
    cell("user", u.user || "-"),
    cell("path", u.path),
    cell("bytes", human(u.size), { "data-bytes": String(u.size) }),
    cell("rate", `${human(u.rate)}/s`),
    progressCell(u),
    cell("time", (u.started_at || "").slice(11, 19), { "data-time": u.started_at }),
  );
  return tr;
}

function recentRow(r) {
  const tr = document.createElement("tr");
  tr.dataset.uploadId = r.id;
  tr.dataset.status = r.status;
  const badge = document.createElement("span");
  badge.className = `badge ${r.status}`;
  badge.textContent = r.status;
  const status = cell("status");
  status.append(badge);
  const path = cell("path", r.path, { title: r.object_key });
  let last;
  if (r.sha256) {
    last = cell("sha256");
    const code = document.createElement("code");
    code.textContent = r.sha256;
    last.append(code);
  } else {
    last = cell("reason", r.error || "");
  }
  tr.append(
    cell("time", (r.started_at || "").slice(0, 19).replace("T", " "), { "data-time": r.started_at }),
    cell("user", r.user_name),
    path,
    status,
    cell("size", human(r.size), { "data-bytes": String(r.size) }),
    last,
  );
  return tr;
}

function replaceRows(tableId, rows, emptyText) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren(...(rows.length ? rows : [emptyRow(emptyText)]));
}

function searchQuery() {
  const form = document.getElementById("search");
  const params = new URLSearchParams();
  for (const [name, value] of new FormData(form)) {
    if (value) params.set(name, value);
  }
  return params;
}

async function getJson(url) {
  const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

async function refresh() {
  const apiError = document.getElementById("api-error");
  try {
    const [active, recent] = await Promise.all([
      getJson("/api/uploads/active"),
      getJson(`/api/uploads?${searchQuery()}`),
    ]);
    replaceRows("active", active.uploads.map(activeRow), "Nothing is being uploaded right now.");
    document.getElementById("active-count").textContent = String(active.uploads.length);
    replaceRows("recent", recent.uploads.map(recentRow), "No uploads match.");
    apiError.hidden = true;
    lastSuccess = Date.now();
  } catch (err) {
    apiError.textContent = `Could not refresh: ${err.message}`;
    apiError.hidden = false;
  }
  const status = document.getElementById("live-status");
  const stale = Date.now() - lastSuccess > STALE_AFTER_MS;
  status.classList.toggle("stale", stale);
  status.textContent = stale
    ? "not refreshed for a while: is the gateway running?"
    : `live: refreshed ${new Date().toLocaleTimeString()}`;
}

async function loop() {
  await refresh();
  setTimeout(loop, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("search").addEventListener("submit", (event) => {
    event.preventDefault();
    const query = searchQuery().toString();
    history.replaceState(null, "", query ? `/uploads?${query}` : "/uploads");
    refresh();
  });
  setTimeout(loop, POLL_MS);
});
