// pollinid admin page: model versions (origin, state, metrics, per-class table, confusion matrix, activate / roll
// back, force activation with a reason, retire, activation history),
// retrain and export jobs with live progress, users and keys. Plain ES module over the REST API.
import { api, authedImageUrl, el, fillSelect, getKey, setupSignIn, showError, vocabulary } from "./api.js";
import { formatDateTime, formatNumber, formatPercent, label, mountLanguageSwitch, t, translatePage } from "./i18n.js";

const $ = (id) => document.getElementById(id);
translatePage();
mountLanguageSwitch($("language"));
const POLL_MS = 2000;
// The service's vocabularies (GET /api/v1/vocabulary): job states, version states, export kinds, roles.
let words = null;
const wordsReady = vocabulary().then((v) => { words = v; applyVocabulary(v); });
// A job is active (may be cancelled, is polled) until it reaches a state it never leaves.
function isActive(state) { return Boolean(words) && !words.job_states_finished.includes(state); }

let selectedJob = null;
let selectedModel = null;
let pollTimer = null;
let lastJobStates = new Map();

function fmt(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return typeof value === "number"
    ? formatNumber(value, { minimumFractionDigits: digits, maximumFractionDigits: digits }) : String(value);
}

function pct(value) {
  return value === null || value === undefined ? "–" : formatPercent(value, 1);
}

function clearError() { $("admin-error").classList.add("hidden"); }
function fail(error) { showError($("admin-error"), error); }

// -- models --------------------------------------------------------------------------------------------

// Display labels, keyed by the vocabulary's values (a value without a label is shown as is).
function stateText(state) { return label("admin.state_", state); }
let usersById = new Map();
let lastActivations = null;
let versionAction = null; // { kind: "force" | "retire", model }

function modelRef(m) { return `${m.name}/${m.version}`; }
// Some states activate only with force and a reason (docs/retrain.md); the vocabulary says which.
function needsForce(m) {
  return Boolean(m.state) && Boolean(words) && words.version_states_needing_force.includes(m.state);
}

function modelsMessage(text) {
  $("models-status").textContent = text;
}

function modelsError(error) {
  const box = $("models-error");
  let text = error instanceof Error ? error.message : String(error);
  if (error && error.status === 409 && error.body && error.body.error && error.body.error.detail
      && error.body.error.detail.state) {
    text = `${text.replace(/[.\s]*$/, "")}. ${t("admin.use_force")}`;
  }
  box.textContent = error && error.status ? `${text} (HTTP ${error.status})` : text;
  box.classList.remove("hidden");
}

function clearModelsError() { $("models-error").classList.add("hidden"); }

function stateBadges(m) {
  const badges = [];
  if (m.active) badges.push(el("span", { class: "status validated" }, t("admin.badge_active")));
  if (m.state) {
    const title = m.state_reason ? `${stateText(m.state)}: ${m.state_reason}` : null;
    badges.push(el("span", { class: `status state-${m.state.replace(/[^a-z_]/g, "")}`, title }, stateText(m.state)));
  }
  if (m.error) badges.push(el("span", { class: "status disputed", title: m.error }, t("admin.badge_cannot_serve")));
  if (!badges.length) badges.push(el("span", { class: "status" }, t("admin.badge_available")));
  return el("div", { class: "badges" }, ...badges);
}

async function loadModels() {
  await wordsReady;
  const body = await api("/api/v1/admin/models");
  const rows = body.data.map((m) => {
    const ref = modelRef(m);
    const actions = [];
    if (!m.active) {
      if (needsForce(m)) {
        actions.push(el("button", {
          type: "button", class: "danger", "aria-label": t("admin.force_activate_label", { ref }),
          onclick: () => openVersionAction("force", m), disabled: Boolean(m.error),
        }, t("admin.force_activate_button")));
      } else {
        actions.push(el("button", {
          type: "button", class: "secondary", "aria-label": t("admin.activate_label", { ref }),
          onclick: () => activateModel(m), disabled: Boolean(m.error),
        }, t("admin.activate")));
      }
      if (m.state !== "retired") {
        actions.push(el("button", {
          type: "button", class: "secondary", "aria-label": t("admin.retire_label", { ref }),
          onclick: () => openVersionAction("retire", m),
        }, t("admin.retire_button")));
      }
    }
    actions.push(el("button", {
      type: "button", class: "secondary", "aria-label": t("admin.details_of", { ref }),
      onclick: () => showModel(m),
    }, t("admin.details")));
    return el("tr", { "data-version": ref, "data-state": m.state || "" },
      el("th", { scope: "row" }, ref),
      el("td", {}, m.origin ? label("admin.origin_", m.origin) : "–"),
      el("td", {}, stateBadges(m)),
      el("td", {}, pct(m.metrics.top1)),
      el("td", {}, pct(m.metrics.top3)),
      el("td", {}, fmt(m.metrics.ece)),
      el("td", {}, m.live ? t("admin.live_of", { top1: pct(m.live.top1_accuracy), count: m.live.validated }) : "–"),
      el("td", {}, el("div", { class: "row" }, ...actions)));
  });
  $("models").replaceChildren(...rows);
  modelsMessage(t("admin.versions_count", { count: body.count }));
  if (versionAction) {
    const again = body.data.find((m) => m.name === versionAction.model.name && m.version === versionAction.model.version);
    if (!again || again.active) closeVersionAction();
  }
  if (selectedModel) {
    const again = body.data.find((m) => m.name === selectedModel.name && m.version === selectedModel.version);
    if (again) await showModel(again);
  }
  await loadActivations();
}

async function activateModel(model) {
  clearError();
  clearModelsError();
  const ref = modelRef(model);
  modelsMessage(t("admin.activating", { ref }));
  try {
    const query = { name: model.name };
    await api(`/api/v1/admin/models/${encodeURIComponent(model.version)}/activate`, { method: "POST", query });
    await loadModels();
    modelsMessage(t("admin.now_active", { ref }));
  } catch (error) {
    modelsMessage("");
    modelsError(error);
    // A 409 means the version's state changed since the list was drawn (retired, say): redraw it.
    if (error && error.status === 409) await loadModels().catch(fail);
  }
}

function openVersionAction(kind, model) {
  clearModelsError();
  versionAction = { kind, model };
  const ref = modelRef(model);
  const state = model.state ? stateText(model.state) : t("admin.state_unknown");
  const force = kind === "force";
  $("version-action-title").textContent = force ? t("admin.force_title", { ref, state }) : t("admin.retire_title", { ref });
  const why = ["gate_failed", "candidate", "retired"].includes(model.state) ? t(`admin.why_${model.state}`)
    : t("admin.why_state", { state });
  $("version-action-help").textContent = force ? t("admin.force_help", { ref, why }) : t("admin.retire_help");
  $("version-action-label").textContent = force ? t("admin.reason_required") : t("admin.reason_optional");
  $("version-action-submit").textContent = force ? t("admin.force_activate") : t("admin.retire");
  $("version-action-submit").setAttribute("aria-label", force ? t("admin.confirm_force", { ref })
    : t("admin.confirm_retire", { ref }));
  $("version-action-reason").value = "";
  $("version-action-error").classList.add("hidden");
  $("version-action").classList.remove("hidden");
  $("version-action-reason").focus();
}

function closeVersionAction() {
  versionAction = null;
  $("version-action").classList.add("hidden");
  $("version-action-error").classList.add("hidden");
}

async function submitVersionAction(event) {
  event.preventDefault();
  if (!versionAction) return;
  const { kind, model } = versionAction;
  const ref = modelRef(model);
  const reason = $("version-action-reason").value.trim();
  const errorBox = $("version-action-error");
  errorBox.classList.add("hidden");
  clearModelsError();
  const query = { name: model.name };
  const path = `/api/v1/admin/models/${encodeURIComponent(model.version)}/${kind === "force" ? "activate" : "retire"}`;
  // The reason is sent as typed (even empty): the API, not the page, decides what a forced activation needs.
  const json = kind === "force" ? { force: true, reason } : (reason ? { reason } : undefined);
  const button = $("version-action-submit");
  button.disabled = true;
  try {
    await api(path, { method: "POST", query, json });
    closeVersionAction();
    await loadModels();
    modelsMessage(kind === "force" ? t("admin.now_active_forced", { ref }) : t("admin.is_retired", { ref }));
  } catch (error) {
    errorBox.textContent = `${error instanceof Error ? error.message : String(error)}`
      + (error && error.status ? ` (HTTP ${error.status})` : "");
    errorBox.classList.remove("hidden");
  } finally {
    button.disabled = false;
  }
}

function userName(id) {
  if (id === null || id === undefined) return t("admin.by_service");
  const user = usersById.get(id);
  return user ? user.name : t("admin.user_n", { id: String(id) });
}

function renderActivations() {
  if (!lastActivations) return;
  const rows = lastActivations.data.map((a) => el("tr", { "data-activation": String(a.id) },
    el("td", {}, el("time", { datetime: a.at }, formatDateTime(a.at))),
    el("th", { scope: "row" }, `${a.name}/${a.version}`),
    el("td", {}, a.state ? stateText(a.state) : "–"),
    el("td", {}, a.forced ? el("span", { class: "status disputed" }, t("admin.forced")) : t("admin.no")),
    el("td", {}, userName(a.user_id)),
    el("td", { class: "reason" }, a.reason || "–"),
    el("td", {}, a.previous || "–")));
  $("activations").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 7 }, t("admin.no_activation")))]));
}

async function loadActivations() {
  lastActivations = await api("/api/v1/admin/models/activations", { query: { limit: 20 } });
  renderActivations();
}

async function showModel(model) {
  selectedModel = model;
  const ref = `${model.name}/${model.version}`;
  $("model-detail").classList.remove("hidden");
  $("model-detail-title").textContent = t("admin.details_of", { ref });
  const retrain = model.training && model.training.retrain;
  const parts = [model.architecture ? t("admin.architecture", { name: model.architecture }) : null,
    t("admin.classes", { count: model.labels.length }),
    model.metrics.n ? t("admin.evaluated_on", { count: model.metrics.n }) : null,
    retrain ? t("admin.retrained_on", { count: retrain.validated_observations }) : null,
    retrain && retrain.new_classes && retrain.new_classes.length
      ? t("admin.new_classes_list", { labels: retrain.new_classes.join(", ") }) : null];
  $("model-training").textContent = parts.filter(Boolean).join(" · ");
  const perClass = model.metrics.per_class || {};
  const rows = Object.entries(perClass).map(([label, m]) => el("tr", {},
    el("th", { scope: "row" }, label), el("td", {}, fmt(m.precision)), el("td", {}, fmt(m.recall)),
    el("td", {}, fmt(m.f1)), el("td", {}, m.support)));
  $("per-class").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 5 }, t("admin.no_per_class")))]));
  const figure = $("confusion-figure");
  if (model.files.includes("confusion.png")) {
    const path = `/api/v1/admin/models/${encodeURIComponent(model.name)}/${encodeURIComponent(model.version)}/files/confusion.png`;
    $("confusion").src = await authedImageUrl(path);
    $("confusion").alt = t("admin.confusion_of", { ref });
    figure.classList.remove("hidden");
  } else {
    figure.classList.add("hidden");
  }
}

// -- jobs ----------------------------------------------------------------------------------------------

function jobTitle(job) {
  if (job.kind === "export") return t("admin.job_export", { id: String(job.id), kind: job.params.kind });
  const head = job.params.plan && job.params.plan.strategy === "head" ? t("admin.job_last_layer") : "";
  return t("admin.job_retrain", { id: String(job.id), name: job.params.name || "" }) + head;
}

async function download(job) {
  clearError();
  try {
    const headers = { Authorization: `Bearer ${getKey()}` };
    const response = await fetch(job.download, { headers });
    if (!response.ok) throw new Error(t("admin.download_failed", { status: String(response.status) }));
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const name = (job.result && job.result.filename) || `job-${job.id}`;
    const link = el("a", { href: url, download: name, class: "hidden" }, name);
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    $("exports-status").textContent = t("admin.downloaded", { name });
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
  $("job-detail-title").textContent = t("admin.job_title", { title: jobTitle(job) });
  const epoch = job.epoch ? ` · ${t("admin.job_epoch", { epoch: job.epoch, epochs: job.epochs || "?" })}` : "";
  const stage = job.stage ? ` · ${job.stage}` : "";
  $("job-summary").textContent = `${label("admin.job_state_", job.state)}${stage}${epoch} · ${formatPercent(job.progress)} · `
    + t("admin.job_attempt", { attempt: job.attempts, max: job.max_attempts })
    + (job.heartbeat_at ? ` · ${t("admin.job_heartbeat", { time: formatDateTime(job.heartbeat_at) })}` : "");
  $("job-progress").value = Math.round(job.progress * 100);
  const metrics = job.metrics ? Object.entries(job.metrics).map(([k, v]) => `${k} ${fmt(v)}`).join(" · ") : "";
  $("job-metrics").textContent = metrics;
  const result = $("job-result");
  if (job.error) {
    result.textContent = t("admin.job_error", { error: job.error });
    result.classList.remove("hidden");
  } else if (job.kind === "retrain" && job.result && job.result.gate) {
    const gate = job.result.gate;
    const top1 = gate.overall && gate.overall.top1;
    result.textContent = t(gate.passed ? "admin.gate_passed" : "admin.gate_failed",
      { ref: `${job.result.model.name}/${job.result.model.version}` })
      + (top1 ? ` ${t("admin.gate_top1", { candidate: pct(top1.candidate), active: pct(top1.active) })}` : "")
      + `; ${job.result.activated ? t("admin.activated") : t("admin.not_activated")}. ${gate.reasons.join(" ")}`;
    result.classList.remove("hidden");
  } else {
    result.classList.add("hidden");
  }
  const log = $("job-log");
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.value = job.log_tail.join("\n");
  if (atBottom) log.scrollTop = log.scrollHeight;
  $("job-cancel").disabled = !isActive(job.state);
}

async function loadJobs() {
  await wordsReady;
  const body = await api("/api/v1/admin/jobs", { query: { limit: 20 } });
  let finishedRetrain = false;
  const rows = body.data.map((job) => {
    const before = lastJobStates.get(job.id);
    if (before && isActive(before) && !isActive(job.state) && job.kind === "retrain") finishedRetrain = true;
    lastJobStates.set(job.id, job.state);
    const id = String(job.id);
    const actions = [el("button", { type: "button", class: "secondary", "aria-label": t("admin.show_job", { id }),
      onclick: () => { selectedJob = job.id; renderJobDetail(job); } }, t("admin.show"))];
    if (job.download) {
      actions.push(el("button", { type: "button", "aria-label": t("admin.download_job", { id }), onclick: () => download(job) },
        t("admin.download")));
    }
    if (isActive(job.state)) {
      actions.push(el("button", { type: "button", class: "danger", "aria-label": t("admin.cancel_job", { id }),
        onclick: () => cancelJob(job) }, t("admin.cancel")));
    }
    const bar = el("progress", { max: "100", value: String(Math.round(job.progress * 100)),
      "aria-label": t("admin.progress_of_job", { id }) });
    return el("tr", { "data-job": String(job.id) },
      el("th", { scope: "row" }, jobTitle(job)),
      el("td", {}, el("span", { class: "status" }, label("admin.job_state_", job.state))),
      el("td", {}, bar, ` ${formatPercent(job.progress)}`),
      el("td", {}, job.epoch ? `${job.epoch}/${job.epochs || "?"}` : "–"),
      el("td", {}, el("div", { class: "row" }, ...actions)));
  });
  $("jobs").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 5 }, t("admin.no_jobs")))]));
  if (selectedJob === null && body.data.length) selectedJob = body.data[0].id;
  const current = body.data.find((j) => j.id === selectedJob);
  if (current) renderJobDetail(current);
  if (finishedRetrain) await loadModels();
}

function labelCounts(counts) {
  const entries = Object.entries(counts || {});
  return entries.length ? entries.map(([name, n]) => (n >= 0 ? `${name} (${t("admin.photos_count", { count: n })})` : name))
    .join(", ") : t("admin.none");
}

/** The 422's detail as readable lines: the plan (new classes, classes below the minimum…) or field errors. */
function detailLines(detail) {
  if (detail === null || detail === undefined) return [];
  if (Array.isArray(detail)) {
    return detail.map((d) => (d && typeof d === "object" && "message" in d
      ? `${d.field || t("admin.request")}: ${d.message}` : (typeof d === "string" ? d : JSON.stringify(d))));
  }
  if (typeof detail !== "object") return [String(detail)];
  const lines = [];
  const minimum = detail.min_new_class_photos;
  const known = new Set(["strategy", "active_model", "replay_kit", "base_classes", "new_classes", "below_minimum",
    "known_class_photos", "validated_photos", "min_new_class_photos", "empty_classes", "clashes", "model", "field"]);
  if (detail.strategy) {
    lines.push(detail.strategy === "head"
      ? t("admin.plan_head", { model: detail.active_model || t("admin.the_active_model") })
      : t("admin.plan_full"));
  }
  if (detail.base_classes !== undefined) {
    lines.push(t(detail.strategy === "head" ? "admin.classes_active" : "admin.classes_base", { classes: detail.base_classes }));
  }
  if (detail.validated_photos !== undefined) lines.push(t("admin.validated_photos", { count: detail.validated_photos }));
  if (detail.new_classes) {
    lines.push(t("admin.new_classes", { minimum: minimum ?? "?", classes: labelCounts(detail.new_classes) }));
  }
  if (detail.below_minimum) {
    lines.push(t("admin.below_minimum", { minimum: minimum ?? "?", classes: labelCounts(detail.below_minimum) }));
  }
  if (detail.known_class_photos) lines.push(t("admin.known_class_photos", { classes: labelCounts(detail.known_class_photos) }));
  if (detail.empty_classes) lines.push(t("admin.empty_classes", { classes: detail.empty_classes.join(", ") }));
  if (detail.clashes) for (const clash of detail.clashes) lines.push(t("admin.clash", { clash }));
  if (detail.model) lines.push(t("admin.detail_model", { model: detail.model }));
  if (detail.field) lines.push(t("admin.detail_field", { field: detail.field }));
  for (const [key, value] of Object.entries(detail)) {
    if (!known.has(key)) lines.push(`${key}: ${typeof value === "string" ? value : JSON.stringify(value)}`);
  }
  return lines;
}

function showRetrainError(error) {
  const box = $("retrain-error");
  const detail = error && error.body && error.body.error ? error.body.error.detail : undefined;
  const lines = detailLines(detail);
  const title = error && error.status ? t("admin.refused", { status: String(error.status) }) : "";
  box.replaceChildren(
    el("p", { class: "error" }, title, error instanceof Error ? error.message : String(error)),
    lines.length ? el("ul", { class: "plan" }, ...lines.map((line) => el("li", {}, line))) : null);
  box.classList.remove("hidden");
}

function planSummary(plan) {
  if (!plan) return "";
  const how = plan.strategy === "head"
    ? t("admin.summary_head", { model: plan.active_model || t("admin.the_active_model") }) : t("admin.summary_full");
  const parts = [how, t("admin.summary_new", { classes: labelCounts(plan.new_classes) })];
  if (plan.below_minimum && Object.keys(plan.below_minimum).length) {
    parts.push(t("admin.summary_below", { minimum: plan.min_new_class_photos, classes: labelCounts(plan.below_minimum) }));
  }
  return ` (${parts.join("; ")})`;
}

async function startRetrain(event) {
  event.preventDefault();
  clearError();
  $("retrain-error").classList.add("hidden");
  const since = $("since").value;
  const base = $("base-dataset").value.trim();
  const json = {
    include_observations: $("include-observations").checked,
    auto_activate: $("auto-activate").checked,
  };
  // Blank: no base_dataset field at all (the API reads that as "retrain the last layer without base photos").
  if (base) {
    json.base_dataset = base;
    json.backbone = $("backbone").value.trim() || "efficientnet_lite0";
    json.mode = $("mode").value;
    json.epochs = Number($("epochs").value) || 10;
  }
  const minimum = $("min-new-class-photos").value;
  if (minimum) json.min_new_class_photos = Number(minimum);
  if (since) json.observations_since = `${since}T00:00:00Z`;
  $("retrain-status").textContent = t("admin.checking");
  try {
    const job = await api("/api/v1/admin/retrain", { method: "POST", json });
    selectedJob = job.id;
    $("retrain-status").textContent = t("admin.queued_job", { id: String(job.id),
      plan: planSummary(job.params && job.params.plan) });
    await loadJobs();
  } catch (error) {
    $("retrain-status").textContent = "";
    showRetrainError(error);
  }
}


async function startExport(kind) {
  clearError();
  try {
    const job = await api("/api/v1/admin/exports", { method: "POST", json: { kind } });
    selectedJob = job.id;
    $("exports-status").textContent = t("admin.queued_export", { id: String(job.id) });
    await loadJobs();
  } catch (error) { fail(error); }
}

// -- users and keys ------------------------------------------------------------------------------------

function showNewKey(who, key) {
  const box = $("new-key");
  box.replaceChildren(t("admin.new_key_for", { name: who }),
    el("code", { id: "new-key-value", style: "word-break: break-all" }, key));
  box.classList.remove("hidden");
}

async function loadUsers() {
  const body = await api("/api/v1/admin/users", { query: { limit: 1000 } });
  const rows = body.data.map((u) => {
    const keys = u.keys.map((k) => el("div", {},
      el("code", {}, `${k.prefix}…`), k.revoked_at ? t("admin.revoked") : " ",
      k.revoked_at ? null : el("button", { type: "button", class: "danger",
        "aria-label": t("admin.revoke_key_label", { prefix: k.prefix, name: u.name }),
        onclick: () => revokeKey(u, k) }, t("admin.revoke"))));
    return el("tr", {},
      el("th", { scope: "row" }, u.name, u.active ? "" : t("admin.inactive")),
      el("td", {}, label("common.role_", u.role)),
      el("td", {}, ...keys),
      el("td", {}, el("button", { type: "button", class: "secondary", "aria-label": t("admin.new_key_label", { name: u.name }),
        onclick: () => newKey(u) }, t("admin.new_key"))));
  });
  $("users").replaceChildren(...rows);
  usersById = new Map(body.data.map((u) => [u.id, u]));
  renderActivations();
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

/** Pickers from the vocabulary: the export buttons and the roles a new user may get. */
function applyVocabulary(v) {
  $("export-buttons").replaceChildren(...v.export_kinds.map((kind) => el("button", {
    type: "button", class: "secondary", "data-export": kind, onclick: () => startExport(kind),
  }, label("admin.export_", kind))));
  fillSelect($("user-role"), v.roles, { labels: Object.fromEntries(v.roles.map((r) => [r, label("common.role_", r)])) });
}

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
// A box that scrolls is a stop for Tab, named by its table, so that the keyboard can scroll it (arrow keys).
for (const [index, table] of [...document.querySelectorAll("main table")].entries()) {
  const caption = table.querySelector("caption");
  if (caption && !caption.id) caption.id = `table-caption-${index}`;
  const box = el("div", { style: "overflow-x: auto; max-width: 100%", role: "region",
    "aria-labelledby": table.getAttribute("aria-labelledby") || (caption && caption.id) });
  table.replaceWith(box);
  box.append(table);
  const scrollable = () => {
    if (box.scrollWidth > box.clientWidth) box.tabIndex = 0; else box.removeAttribute("tabindex");
  };
  new ResizeObserver(scrollable).observe(table);
  new ResizeObserver(scrollable).observe(box);
}
wordsReady.catch(fail);
setupSignIn($("signin"), $("signin-status"), loadAll);
$("models-refresh").addEventListener("click", () => loadModels().catch(fail));
$("retrain-form").addEventListener("submit", startRetrain);
$("version-action").addEventListener("submit", submitVersionAction);
$("version-action-cancel").addEventListener("click", closeVersionAction);
$("user-form").addEventListener("submit", createUser);
$("job-cancel").addEventListener("click", () => {
  if (selectedJob !== null) cancelJob({ id: selectedJob });
});
loadAll();
