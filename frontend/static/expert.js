// pollinid — specialist page: validation queue, zoomable viewer, agree / correct / cannot tell.
import { api, authedImageUrl, el, getKey, percent, setupSignIn, showError } from "./api.js";
import { answerKind, rankWord, renderAnswer, taxonNameNodes } from "./answer.js";
import { wireComboboxKeys } from "./combobox.js";
import { formatDateTime, label, mountLanguageSwitch, t, translatePage } from "./i18n.js";
import { referenceStrip } from "./references.js";
import { mountPlaceView } from "./place.js";
import { judged, resetQueue, setupQueue, takeNext } from "./queue.js";

const $ = (id) => document.getElementById(id);
translatePage();
mountLanguageSwitch($("language"));
const state = { item: null, photoIndex: 0, zoom: 1, x: 0, y: 0, taxonChoice: null, suggestTimer: null };

function taxonName(taxon) { return taxon ? (taxon.scientific_name || taxon.label || taxon.name) : "—"; }

// ---- viewer -------------------------------------------------------------------------------------
function applyTransform() {
  $("photo").style.transform = `translate(${state.x}px, ${state.y}px) scale(${state.zoom})`;
}
function fit() {
  const img = $("photo");
  const box = $("viewer").getBoundingClientRect();
  if (!img.naturalWidth) return;
  state.zoom = Math.min(box.width / img.naturalWidth, box.height / img.naturalHeight);
  state.x = (box.width - img.naturalWidth * state.zoom) / 2;
  state.y = (box.height - img.naturalHeight * state.zoom) / 2;
  applyTransform();
}
function zoomBy(factor, cx, cy) {
  const box = $("viewer").getBoundingClientRect();
  const px = cx ?? box.width / 2;
  const py = cy ?? box.height / 2;
  const next = Math.min(20, Math.max(0.05, state.zoom * factor));
  state.x = px - (px - state.x) * (next / state.zoom);
  state.y = py - (py - state.y) * (next / state.zoom);
  state.zoom = next;
  applyTransform();
}
function setupViewer() {
  const viewer = $("viewer");
  viewer.addEventListener("wheel", (e) => {
    e.preventDefault();
    const box = viewer.getBoundingClientRect();
    zoomBy(e.deltaY < 0 ? 1.2 : 1 / 1.2, e.clientX - box.left, e.clientY - box.top);
  }, { passive: false });
  let drag = null;
  viewer.addEventListener("pointerdown", (e) => { drag = { x: e.clientX - state.x, y: e.clientY - state.y }; viewer.setPointerCapture(e.pointerId); });
  viewer.addEventListener("pointermove", (e) => { if (drag) { state.x = e.clientX - drag.x; state.y = e.clientY - drag.y; applyTransform(); } });
  viewer.addEventListener("pointerup", () => { drag = null; });
  $("photo").addEventListener("load", fit);
  $("zoom-in").addEventListener("click", () => zoomBy(1.25));
  $("zoom-out").addEventListener("click", () => zoomBy(0.8));
  $("zoom-reset").addEventListener("click", fit);
}
async function showPhoto(index) {
  const photos = state.item.photos;
  state.photoIndex = index;
  $("photo").src = await authedImageUrl(photos[index].url);
  $("photo").alt = t("expert.photo_n_of", { n: index + 1, count: photos.length });
  for (const [i, thumb] of [...$("thumbs").children].entries()) thumb.setAttribute("aria-current", String(i === index));
}

// ---- the item ---------------------------------------------------------------------------------------
function renderItem(obs) {
  state.item = obs;
  state.taxonChoice = null;
  $("item").classList.remove("hidden");
  $("item-title").textContent = t("expert.observation_n", { id: String(obs.id) });
  const thumbs = obs.photos.map((p, i) => el("img", { alt: t("expert.photo_n", { n: i + 1 }), tabindex: 0, role: "button",
    onclick: () => showPhoto(i),
    onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); showPhoto(i); } } }));
  $("thumbs").replaceChildren(...thumbs);
  obs.photos.forEach((p, i) => authedImageUrl(p.url).then((url) => { thumbs[i].src = url; }));
  if (obs.photos.length) showPhoto(0);
  const meta = [
    [t("expert.meta_observed"), obs.observed_at ? formatDateTime(obs.observed_at) : "—"],
    [t("expert.meta_place"), obs.latitude !== null && obs.latitude !== undefined ? `${obs.latitude}, ${obs.longitude}` : "—"],
    [t("expert.meta_flower"), obs.flower_text || taxonName(obs.flower_taxon)],
    [t("expert.meta_status"), label("common.status_", obs.status)],
    [t("expert.meta_community_taxon"), taxonName(obs.community_taxon)],
  ];
  $("meta").replaceChildren(...meta.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  placeView.show(obs); // the place on the map, read-only (place.js)
  const result = obs.prediction && obs.prediction.result;
  renderModelAnswer(result);
  const suggestions = (result && result.results) || [];
  $("suggestions").replaceChildren(...suggestions.map((s) => el("li", {},
    s.taxon.rank === "none"
      // "No insect" is not a taxon to propose; the candidate is listed with its score only.
      ? el("span", {}, ...taxonNameNodes(s.taxon), ` — ${percent(s.score)}`)
      : [el("button", { type: "button", class: "secondary", onclick: () => chooseTaxon(s.taxon.label, taxonName(s.taxon)) },
        ...taxonNameNodes(s.taxon), s.taxon.common_name ? ` (${s.taxon.common_name})` : "", ` — ${percent(s.score)}`),
      // Photos of the candidate to compare with (references.js).
      referenceStrip(s.taxon.label || s.taxon.scientific_name, { name: s.taxon.scientific_name })])));
  if (!suggestions.length) $("suggestions").replaceChildren(el("li", { class: "muted" }, t("expert.no_suggestion")));
  $("comment").value = "";
  $("taxon").value = "";
  loadHistory();
}

// The model's committed answer (the prediction's roll-up) and the rank it commits at.
function renderModelAnswer(result) {
  const meta = $("model-answer-meta");
  if (!result) {
    $("model-rollup").replaceChildren(t("expert.no_model_answer"));
    $("model-rollup").dataset.kind = "";
    meta.replaceChildren();
    return;
  }
  const rollup = result.rollup || null;
  const kind = answerKind(rollup);
  renderAnswer($("model-rollup"), rollup);
  const rank = kind === "none" ? t("expert.rank_none_committed")
    : kind === "no_insect" ? t("expert.rank_none_no_insect")
      : rankWord(rollup.rank || (rollup.taxon && rollup.taxon.rank) || "—");
  // [field (for tests and styling), label, value]
  const rows = [["rank", t("expert.meta_rank"), rank]];
  if (rollup && typeof rollup.score === "number") rows.push(["score", t("expert.meta_score"), percent(rollup.score)]);
  if (result.out_of_distribution) rows.push(["photos", t("expert.meta_photos"), t("expert.out_of_distribution")]);
  meta.replaceChildren(...rows.flatMap(([field, k, v]) => [el("dt", {}, k), el("dd", { "data-field": field }, v)]));
  $("model-answer").classList.toggle("warn", kind !== "taxon" || rollup.rank !== "species");
}

async function loadHistory() {
  const page = await api(`/api/v1/observations/${state.item.id}/identifications`);
  $("history").replaceChildren(...page.data.map((i) => el("tr", { class: i.current ? "" : "muted" },
    el("td", {}, formatDateTime(i.created_at)),
    el("td", {}, `${i.user_name || i.user_id} (${label("common.role_", i.user_role)})`),
    el("td", {}, label("expert.kind_", i.kind) + (i.current ? "" : t("expert.withdrawn"))),
    el("td", {}, taxonName(i.taxon)),
    el("td", {}, i.comment || ""))));
  if (!page.data.length) $("history").replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "muted" }, t("expert.no_identification"))));
}

async function next() {
  $("queue-error").classList.add("hidden");
  if (!getKey()) { $("queue-status").textContent = t("expert.sign_in_first"); return; }
  $("queue-status").textContent = t("common.loading");
  try {
    if (!state.me) state.me = await api("/api/v1/users/me");
    if (!["expert", "admin"].includes(state.me.role)) {
      $("queue-status").textContent = t("expert.wrong_role", { name: state.me.name,
        role: label("common.role_", state.me.role) });
      $("item").classList.add("hidden");
      return;
    }
    const page = await takeNext(); // the prefetched next item when there is one (queue.js)
    if (!page.data.length) {
      $("queue-status").textContent = t("expert.queue_empty");
      $("item").classList.add("hidden");
      return;
    }
    $("queue-status").textContent = t("expert.waiting", { count: page.count });
    renderItem(page.data[0].observation);
  } catch (error) {
    showError($("queue-error"), error);
    $("queue-status").textContent = "";
  }
}

async function identify(kind) {
  $("identify-error").classList.add("hidden");
  const body = { kind, comment: $("comment").value.trim() || null };
  if (kind === "propose") {
    const typed = $("taxon").value.trim();
    if (!state.taxonChoice && !typed) { showError($("identify-error"), t("expert.choose_taxon")); $("taxon").focus(); return; }
    body.taxon = state.taxonChoice ?? typed;
  }
  try {
    const result = await api(`/api/v1/observations/${state.item.id}/identifications`, { method: "POST", json: body });
    $("identify-status").textContent = t("expert.saved_status", { status: label("common.status_", result.consensus.status) }) +
      (result.consensus.taxon ? ` — ${taxonName(result.consensus.taxon)}` : "");
    $("identify-status").classList.remove("hidden");
    judged();
    await next();
  } catch (error) {
    showError($("identify-error"), error);
  }
}

// ---- taxon autocomplete -------------------------------------------------------------------------------
function chooseTaxon(value, label) {
  state.taxonChoice = value;
  $("taxon").value = label;
  closeList();
  $("taxon").focus();
}
function closeList() { $("taxon-list").classList.add("hidden"); $("taxon").setAttribute("aria-expanded", "false"); }
async function suggestTaxa() {
  state.taxonChoice = null;
  const q = $("taxon").value.trim();
  if (q.length < 2) { closeList(); return; }
  const page = await api("/api/v1/taxa", { query: { q, limit: 10 } });
  const list = $("taxon-list");
  list.replaceChildren(...page.data.map((taxon, i) => el("li", { role: "option", id: `taxon-opt-${i}`,
    "aria-selected": "false", "data-id": taxon.id,
    onmousedown: (e) => { e.preventDefault(); chooseTaxon(taxon.id, taxon.scientific_name); } },
    `${taxon.scientific_name}`, taxon.common_name ? ` — ${taxon.common_name}` : "", ` (${rankWord(taxon.rank)})`)));
  list.classList.toggle("hidden", !page.data.length);
  $("taxon").setAttribute("aria-expanded", String(!!page.data.length));
}
function setupAutocomplete() {
  const input = $("taxon");
  input.addEventListener("input", () => { clearTimeout(state.suggestTimer); state.suggestTimer = setTimeout(() => suggestTaxa().catch((e) => showError($("identify-error"), e)), 150); });
  wireComboboxKeys(input, $("taxon-list"), {
    choose: (index, option) => chooseTaxon(Number(option.dataset.id), option.textContent.split(" — ")[0].split(" (")[0]),
    close: closeList,
  });
}

// ---- keyboard shortcuts -----------------------------------------------------------------------------
document.addEventListener("keydown", (e) => {
  const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
  if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === "n") next();
  else if (!state.item) return;
  else if (e.key === "a") identify("agree");
  else if (e.key === "x") identify("cannot_tell");
  else if (e.key === "i") identify("not_an_insect");
  else if (e.key === "c") { e.preventDefault(); $("taxon").focus(); }
  else if (e.key === "+" || e.key === "=") zoomBy(1.25);
  else if (e.key === "-") zoomBy(0.8);
});

setupSignIn($("signin"), $("signin-status"), () => { state.me = null; resetQueue({ keepLeases: true }); next(); });
setupQueue(next);
setupViewer();
setupAutocomplete();
const placeView = mountPlaceView($("place-view"));
$("next").addEventListener("click", next);
$("agree").addEventListener("click", () => identify("agree"));
$("cannot-tell").addEventListener("click", () => identify("cannot_tell"));
$("not-an-insect").addEventListener("click", () => identify("not_an_insect"));
$("identify-form").addEventListener("submit", (e) => { e.preventDefault(); identify("propose"); });
if (getKey()) next();
