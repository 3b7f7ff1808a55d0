// pollinid admin page: model versions (metrics, per-class table, confusion matrix, activate / roll back),
// retrain and export jobs with live progress, users and keys. Plain ES module over the REST API.
import { api, authedImageUrl, el, getKey, setupSignIn, showError } from "./api.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;
const ACTIVE_STATES = new Set(["queued", "running"]);

let selectedJob = null;
let selectedModel = null;
let pollTimer = null;
let lastJobStates = new Map();

function fmt(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return typeof value === "number" ? value.toFixed(digits) : String(value);
}

function pct(value) {
  return value === null || value === undefined ? "–" : `${Math.round(value * 1000) / 10}%`;
}

function clearError() { $("admin-error").classList.add("hidden"); }
function fail(error) { showError($("admin-error"), error); }

// -- models --------------------------------------------------------------------------------------------

async function loadModels() {
  const body = await api("/api/v1/admin/models");
  const rows = body.data.map((m) => {
    const ref = `${m.name}/${m.version}`;
    const state = m.active ? "active" : (m.error ? "cannot serve" : "available");
    const activate = m.active ? null : el("button", {
      type: "button", class: "secondary", "aria-label": `Activate ${ref}`,
      onclick: () => activateModel(m),
      disabled: Boolean(m.error),
    }, "Activate");
    const details = el("button", {
      type: "button", class: "secondary", "aria-label": `Details of ${ref}`,
      onclick: () => showModel(m),
    }, "Details");
    return el("tr", { "data-version": ref },
      el("th", { scope: "row" }, ref),
      el("td", {}, el("span", { class: `status ${m.active ? "validated" : ""}` }, state)),
      el("td", {}, pct(m.metrics.top1)),
      el("td", {}, pct(m.metrics.top3)),
      el("td", {}, fmt(m.metrics.ece)),
      el("td", {}, m.live ? `${pct(m.live.top1_accuracy)} of ${m.live.validated}` : "–"),
      el("td", {}, el("div", { class: "row" }, activate, details)));
  });
  $("models").replaceChildren(...rows);
  $("models-status").textContent = `${body.count} version(s)`;
  if (selectedModel) {
    const again = body.data.find((m) => m.name === selectedModel.name && m.version === selectedModel.version);
    if (again) await showModel(again);
  }
}

async function activateModel(model) {
  clearError();
  $("models-status").textContent = `Activating ${model.name}/${model.version}…`;
  try {
    const query = { name: model.name };
    await api(`/api/v1/admin/models/${encodeURIComponent(model.version)}/activate`, { method: "POST", query });
    await loadModels();
    $("models-status").textContent = `${model.name}/${model.version} is now active.`;
  } catch (error) { fail(error); }
}

async function showModel(model) {
  selectedModel = model;
  const ref = `${model.name}/${model.version}`;
  $("model-detail").classList.remove("hidden");
  $("model-detail-title").textContent = `Details of ${ref}`;
  const retrain = model.training && model.training.retrain;
  const parts = [model.architecture ? `architecture ${model.architecture}` : null,
    `${model.labels.length} classes`,
    model.metrics.n ? `evaluated on ${model.metrics.n} photos` : null,
    retrain ? `retrained on ${retrain.validated_observations} validated observations` : null,
    retrain && retrain.new_classes && retrain.new_classes.length ? `new: ${retrain.new_classes.join(", ")}` : null];
  $("model-training").textContent = parts.filter(Boolean).join(" · ");
  const perClass = model.metrics.per_class || {};
  const rows = Object.entries(perClass).map(([label, m]) => el("tr", {},
    el("th", { scope: "row" }, label), el("td", {}, fmt(m.precision)), el("td", {}, fmt(m.recall)),
    el("td", {}, fmt(m.f1)), el("td", {}, m.support)));
  $("per-class").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 5 }, "No per-class metrics on this card."))]));
  const figure = $("confusion-figure");
  if (model.files.includes("confusion.png")) {
    const path = `/api/v1/admin/models/${encodeURIComponent(model.name)}/${encodeURIComponent(model.version)}/files/confusion.png`;
    $("confusion").src = await authedImageUrl(path);
    $("confusion").alt = `Confusion matrix of ${ref}`;
    figure.classList.remove("hidden");
  } else {
    figure.classList.add("hidden");
  }
}

// -- jobs ----------------------------------------------------------------------------------------------

function jobTitle(job) {
  return job.kind === "export" ? `#${job.id} export ${job.params.kind}` : `#${job.id} retrain ${job.params.name || ""}`;
}

async function download(job) {
  clearError();
  try {
    const headers = { Authorization: `Bearer ${getKey()}` };
    const response = await fetch(job.download, { headers });
    if (!response.ok) throw new Error(`download failed (${response.status})`);
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const name = (job.result && job.result.filename) || `job-${job.id}`;
    const link = el("a", { href: url, download: name, class: "hidden" }, name);
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    $("exports-status").textContent = `Downloaded ${name}.`;
  } catch (error) { fail(error); }
}

async function cancelJob(job) {
  clearError();
  try {
    await api(`/api/v1/admin/jobs/${job.id}/cancel`, { method: "POST" });
    await loadJobs();
  } catch (error) { fail(error); }
}

function renderJobDetail(job) {
  $("job-detail").classList.remove("hidden");
  $("job-detail-title").textContent = `Job ${jobTitle(job)}`;
  const epoch = job.epoch ? ` · epoch ${job.epoch}/${job.epochs || "?"}` : "";
  const stage = job.stage ? ` · ${job.stage}` : "";
  $("job-summary").textContent = `${job.state}${stage}${epoch} · ${Math.round(job.progress * 100)}% · attempt ${job.attempts}/${job.max_attempts}`
    + (job.heartbeat_at ? ` · heartbeat ${new Date(job.heartbeat_at).toLocaleTimeString()}` : "");
  $("job-progress").value = Math.round(job.progress * 100);
  const metrics = job.metrics ? Object.entries(job.metrics).map(([k, v]) => `${k} ${fmt(v)}`).join(" · ") : "";
  $("job-metrics").textContent = metrics;
  const result = $("job-result");
  if (job.error) {
    result.textContent = `Error: ${job.error}`;
    result.classList.remove("hidden");
  } else if (job.kind === "retrain" && job.result && job.result.gate) {
    const gate = job.result.gate;
    const top1 = gate.overall && gate.overall.top1;
    result.textContent = `Candidate ${job.result.model.name}/${job.result.model.version}: gate ${gate.passed ? "passed" : "failed"}`
      + (top1 ? ` (top-1 ${pct(top1.candidate)} vs ${pct(top1.active)})` : "")
      + `; ${job.result.activated ? "activated" : "not activated"}. ${gate.reasons.join(" ")}`;
    result.classList.remove("hidden");
  } else {
    result.classList.add("hidden");
  }
  const log = $("job-log");
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.value = job.log_tail.join("\n");
  if (atBottom) log.scrollTop = log.scrollHeight;
  $("job-cancel").disabled = !ACTIVE_STATES.has(job.state);
}

async function loadJobs() {
  const body = await api("/api/v1/admin/jobs", { query: { limit: 20 } });
  let finishedRetrain = false;
  const rows = body.data.map((job) => {
    const before = lastJobStates.get(job.id);
    if (before && ACTIVE_STATES.has(before) && !ACTIVE_STATES.has(job.state) && job.kind === "retrain") finishedRetrain = true;
    lastJobStates.set(job.id, job.state);
    const actions = [el("button", { type: "button", class: "secondary", "aria-label": `Show job ${job.id}`,
      onclick: () => { selectedJob = job.id; renderJobDetail(job); } }, "Show")];
    if (job.download) {
      actions.push(el("button", { type: "button", "aria-label": `Download job ${job.id}`, onclick: () => download(job) }, "Download"));
    }
    if (ACTIVE_STATES.has(job.state)) {
      actions.push(el("button", { type: "button", class: "danger", "aria-label": `Cancel job ${job.id}`, onclick: () => cancelJob(job) }, "Cancel"));
    }
    const bar = el("progress", { max: "100", value: String(Math.round(job.progress * 100)), "aria-label": `Progress of job ${job.id}` });
    return el("tr", { "data-job": String(job.id) },
      el("th", { scope: "row" }, jobTitle(job)),
      el("td", {}, el("span", { class: "status" }, job.state)),
      el("td", {}, bar, ` ${Math.round(job.progress * 100)}%`),
      el("td", {}, job.epoch ? `${job.epoch}/${job.epochs || "?"}` : "–"),
      el("td", {}, el("div", { class: "row" }, ...actions)));
  });
  $("jobs").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 5 }, "No jobs yet."))]));
  if (selectedJob === null && body.data.length) selectedJob = body.data[0].id;
  const current = body.data.find((j) => j.id === selectedJob);
  if (current) renderJobDetail(current);
  if (finishedRetrain) await loadModels();
}

async function startRetrain(event) {
  event.preventDefault();
  clearError();
  const since = $("since").value;
  const json = {
    base_dataset: $("base-dataset").value.trim(),
    backbone: $("backbone").value.trim() || "efficientnet_lite0",
    mode: $("mode").value,
    epochs: Number($("epochs").value) || 10,
    include_observations: $("include-observations").checked,
    auto_activate: $("auto-activate").checked,
  };
  if (since) json.observations_since = `${since}T00:00:00Z`;
  try {
    const job = await api("/api/v1/admin/retrain", { method: "POST", json });
    selectedJob = job.id;
    $("retrain-status").textContent = `Queued job ${job.id}.`;
    await loadJobs();
  } catch (error) { fail(error); }
}

async function startExport(kind) {
  clearError();
  try {
    const job = await api("/api/v1/admin/exports", { method: "POST", json: { kind } });
    selectedJob = job.id;
    $("exports-status").textContent = `Queued export job ${job.id}.`;
    await loadJobs();
  } catch (error) { fail(error); }
}

// -- users and keys ------------------------------------------------------------------------------------

function showNewKey(who, key) {
  const box = $("new-key");
  box.replaceChildren(`New key for ${who} (shown once, copy it now): `,
    el("code", { id: "new-key-value", style: "word-break: break-all" }, key));
  box.classList.remove("hidden");
}

async function loadUsers() {
  const body = await api("/api/v1/admin/users", { query: { limit: 1000 } });
  const rows = body.data.map((u) => {
    const keys = u.keys.map((k) => el("div", {},
      el("code", {}, `${k.prefix}…`), k.revoked_at ? " (revoked)" : " ",
      k.revoked_at ? null : el("button", { type: "button", class: "danger", "aria-label": `Revoke key ${k.prefix} of ${u.name}`,
        onclick: () => revokeKey(u, k) }, "Revoke")));
    return el("tr", {},
      el("th", { scope: "row" }, u.name, u.active ? "" : " (inactive)"),
      el("td", {}, u.role),
      el("td", {}, ...keys),
      el("td", {}, el("button", { type: "button", class: "secondary", "aria-label": `New key for ${u.name}`,
        onclick: () => newKey(u) }, "New key")));
  });
  $("users").replaceChildren(...rows);
}

async function createUser(event) {
  event.preventDefault();
  clearError();
  try {
    const user = await api("/api/v1/admin/users", { method: "POST", json: { name: $("user-name").value.trim(), role: $("user-role").value } });
    showNewKey(user.name, user.key);
    $("user-name").value = "";
    await loadUsers();
  } catch (error) { fail(error); }
}

async function newKey(user) {
  clearError();
  try {
    const key = await api(`/api/v1/admin/users/${user.id}/keys`, { method: "POST" });
    showNewKey(user.name, key.key);
    await loadUsers();
  } catch (error) { fail(error); }
}

async function revokeKey(user, key) {
  clearError();
  try {
    await api(`/api/v1/admin/users/${user.id}/keys/${key.id}/revoke`, { method: "POST" });
    await loadUsers();
  } catch (error) { fail(error); }
}

// -- wiring --------------------------------------------------------------------------------------------

async function loadAll() {
  clearError();
  if (pollTimer) clearInterval(pollTimer);
  pollTimer = null;
  if (!getKey()) return;
  try {
    await Promise.all([loadModels(), loadJobs(), loadUsers()]);
  } catch (error) {
    fail(error);
    return;
  }
  pollTimer = setInterval(() => { loadJobs().catch(fail); }, POLL_MS);
}

// Wide tables scroll inside their panel on a phone instead of widening the page (CSSOM: allowed by the CSP).
for (const table of document.querySelectorAll("main table")) {
  const box = el("div", { style: "overflow-x: auto; max-width: 100%" });
  table.replaceWith(box);
  box.append(table);
}
setupSignIn($("signin"), $("signin-status"), loadAll);
$("models-refresh").addEventListener("click", () => loadModels().catch(fail));
$("retrain-form").addEventListener("submit", startRetrain);
$("user-form").addEventListener("submit", createUser);
$("job-cancel").addEventListener("click", () => {
  if (selectedJob !== null) cancelJob({ id: selectedJob });
});
for (const button of document.querySelectorAll("[data-export]")) {
  button.addEventListener("click", () => startExport(button.dataset.export));
}
loadAll();
