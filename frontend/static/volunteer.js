// pollinid — volunteer page: photos → suggestions → observation.
import { api, el, fillSelect, getKey, setupSignIn, showError, vocabulary } from "./api.js";
import { answerDetail, answerKind, answerText, renderAnswer, taxonNameNodes } from "./answer.js";
import { formatDateTime, label, mountLanguageSwitch, t, translatePage } from "./i18n.js";
import { preparePhotos } from "./photos.js";
import { mountPlacePicker } from "./place.js";
import { referenceStrip } from "./references.js";
import { addPlace, mountNearbySwitch, nearbyLine, nearbyOn, nearbySummary, nearbyUsed, orderResults,
  scoreLine } from "./nearby.js";

const MAX_PHOTOS = 5;
const SESSION_MINUTES = 20;
const SESSION_STORAGE = "pollinid.session";
const REASK_DELAY_MS = 400; // a new place or date: ask again once it has settled
const $ = (id) => document.getElementById(id);
translatePage();
mountLanguageSwitch($("language"));

const state = { files: [], prepared: null, result: null, picked: null };

function taxonPath(taxon) {
  if (taxon.rank === "none") return "";
  // The taxon's ancestors only (a genus-rank label's own genus is its name, not its path).
  const own = taxon.scientific_name;
  return [taxon.order, taxon.family, taxon.genus].filter((n) => n && n !== own).join(" › ");
}

function renderPreviews() {
  const box = $("previews");
  box.replaceChildren();
  state.files.forEach((file, index) => {
    const url = URL.createObjectURL(file);
    const img = el("img", { src: url, alt: t("volunteer.preview_alt", { n: index + 1, name: file.name }) });
    img.addEventListener("load", () => URL.revokeObjectURL(url));
    box.append(el("figure", {}, img,
      el("button", { type: "button", class: "secondary", "aria-label": t("volunteer.remove_photo", { n: index + 1 }),
        onclick: () => { state.files.splice(index, 1); renderPreviews(); } }, "×")));
  });
  $("identify").disabled = state.files.length === 0;
}

function renderAnswerBox(rollup) {
  // The committed answer, in plain words, above the candidates: the one thing the service claims.
  const kind = answerKind(rollup);
  renderAnswer($("rollup"), rollup);
  $("answer-detail").textContent = answerDetail(rollup);
  const box = $("answer");
  box.dataset.kind = kind;
  box.classList.toggle("warn", kind !== "taxon" || rollup.rank !== "species");
}

function renderResults(result) {
  $("results-panel").classList.remove("hidden");
  $("details-panel").classList.remove("hidden");
  renderAnswerBox(result.rollup);
  const cards = $("cards");
  cards.replaceChildren();
  const nearby = nearbyOn();  // where and when (nearby.js): order, label and both scores
  $("nearby-status").textContent = nearbySummary(result, nearby);
  orderResults(result, nearby).forEach((item, index) => {
    const taxon = item.taxon;
    const id = `pick-${index}`;
    const radio = el("input", { type: "radio", name: "pick", id, value: taxon.label,
      onchange: () => { state.picked = taxon; markSelected(); } });
    const common = taxon.rank !== "none" && taxon.common_name ? taxon.common_name : null;
    // Photos of the suggested taxon to compare with (references.js), not the volunteer's own photo again.
    const refs = taxon.rank === "none" ? null
      : referenceStrip(taxon.label || taxon.scientific_name, { name: taxon.scientific_name });
    const score = scoreLine(item, nearby);
    cards.append(el("label", { class: "card with-refs", for: id, "data-label": taxon.label },
      el("div", {},
        el("div", { class: "row" }, radio, el("span", { class: "name" }, `${index + 1}. `, ...taxonNameNodes(taxon))),
        common ? el("div", {}, common) : null,
        el("div", { class: "bar", role: "img", "aria-label": score },
          el("span", { style: `width:${Math.max(2, Math.round(item.score * 100))}%` })),
        el("div", { class: "muted" }, score),
        nearbyLine(item, nearby),
        el("div", { class: "path" }, taxonPath(taxon))),
      refs));
  });
  $("pick-unknown").onchange = () => { state.picked = null; markSelected(); };
}

function markSelected() {
  for (const card of document.querySelectorAll(".card")) {
    card.classList.toggle("selected", !!state.picked && card.dataset.label === state.picked.label);
  }
}

let asked = 0; // the latest /identify asked: an older answer arriving late is dropped
let reaskTimer = null;

const placeGiven = () => $("latitude").value !== "" && $("longitude").value !== "";

/** A new place or date asks again (once it settles: a marker dragged across the map asks once, at the end). */
function reask() {
  clearTimeout(reaskTimer);
  reaskTimer = setTimeout(() => {
    if (state.result && nearbyOn() && placeGiven()) identify({ toResults: false });
  }, REASK_DELAY_MS);
}

/** The observation is being sent: no re-ask may bring its photos' answer back afterwards. */
function dropAsks() {
  clearTimeout(reaskTimer);
  asked += 1;
  $("identify").disabled = state.files.length === 0;
  if ($("identify-status").textContent === t("volunteer.identifying")) $("identify-status").textContent = "";
}

/**
 * Ask for the photos' taxa (with the place and date, when given). toResults: move the focus to the results, as
 * when the volunteer pressed "Identify"; a re-ask because the place or date changed leaves the focus (and the
 * page's scroll) where the volunteer is working.
 */
async function identify({ toResults = true } = {}) {
  const ask = ++asked;
  $("identify-error").classList.add("hidden");
  $("saved").classList.add("hidden");
  $("identify").disabled = true;
  $("identify-status").textContent = t("volunteer.identifying");
  try {
    state.prepared = await preparePhotos(state.files);
    const form = new FormData();
    for (const file of state.prepared.files) form.append("photos", file, file.name);
    fillFromExif(state.prepared.exif);  // before asking: the place and date go with the photos
    addPlace(form, { latitude: $("latitude").value, longitude: $("longitude").value,
      observedAt: $("observed-at").value });
    const result = await api("/api/v1/identify", { method: "POST", form, query: { top_k: 5 } });
    if (ask !== asked) return;
    state.result = result;
    renderResults(state.result);
    // Keyboard and screen-reader users land on the results (Tab goes on to the candidates).
    if (toResults) $("results-title").focus();
    $("identify-status").textContent = t("volunteer.model", { name: state.result.model.name,
      version: state.result.model.version });
  } catch (error) {
    if (ask !== asked) return;
    showError($("identify-error"), error);
    $("identify-status").textContent = "";
  } finally {
    if (ask === asked) $("identify").disabled = state.files.length === 0;
  }
}

function toLocalInput(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

function fillFromExif(exif) {
  if (!$("observed-at").value) $("observed-at").value = exif.observedAt ? exif.observedAt.slice(0, 16) : toLocalInput(new Date());
  if (exif.latitude !== undefined) place.fromExif(exif.latitude, exif.longitude);
}

function currentSession() {
  try {
    const s = JSON.parse(localStorage.getItem(SESSION_STORAGE) || "null");
    if (s && Date.now() < s.endsAt) return s;
  } catch { /* ignore */ }
  return null;
}

function renderSession() {
  const s = currentSession();
  $("session-start").classList.toggle("hidden", !!s);
  $("session-stop").classList.toggle("hidden", !s);
  if (s) {
    const left = Math.max(0, Math.round((s.endsAt - Date.now()) / 60000));
    $("session-status").textContent = t("volunteer.session_left", { id: s.id.slice(0, 8), count: left });
  } else {
    $("session-status").textContent = t("volunteer.no_session");
  }
}

async function submitObservation(event) {
  event.preventDefault();
  $("submit-error").classList.add("hidden");
  if (!state.prepared) { showError($("submit-error"), t("volunteer.identify_first")); return; }
  dropAsks();
  const form = new FormData();
  for (const file of state.prepared.files) form.append("photos", file, file.name);
  const observedAt = $("observed-at").value;
  if (observedAt) form.append("observed_at", new Date(observedAt).toISOString());
  if ($("latitude").value && $("longitude").value) {
    form.append("latitude", $("latitude").value);
    form.append("longitude", $("longitude").value);
    if (place.precision()) form.append("coordinate_precision_m", String(place.precision()));
    if (place.source()) form.append("location_source", place.source());
  }
  if ($("flower").value.trim()) form.append("flower", $("flower").value.trim());
  if ($("licence").value) form.append("licence", $("licence").value); // else the service's default licence
  if ($("notes").value.trim()) form.append("notes", $("notes").value.trim());
  const session = currentSession();
  if (session) form.append("session_id", session.id);
  $("submit").disabled = true;
  $("submit-status").textContent = t("volunteer.sending");
  try {
    const created = await api("/api/v1/observations", {
      method: "POST", form, headers: { "Idempotency-Key": crypto.randomUUID() } });
    if (state.picked) {
      // The volunteer's own pick is their identification of the observation ("no insect" is not a taxon).
      const json = state.picked.rank === "none" ? { kind: "not_an_insect" } : { kind: "propose", taxon: state.picked.label };
      await api(`/api/v1/observations/${created.id}/identifications`, { method: "POST", json });
    }
    $("submit-status").textContent = "";
    $("saved").textContent = t("volunteer.saved", { id: String(created.id) });
    $("saved").classList.remove("hidden");
    state.files = []; state.prepared = null; state.result = null; state.picked = null;
    renderPreviews();
    $("results-panel").classList.add("hidden");
    $("details-panel").classList.add("hidden");
    $("photos").value = "";
    $("photos").focus(); // the submit button is hidden now: focus goes back to the start, for the next insect
    await loadMine();
  } catch (error) {
    showError($("submit-error"), error);
    $("submit-status").textContent = "";
  } finally {
    $("submit").disabled = false;
  }
}

/** The community's taxon, else the model's committed answer in words, else its top candidate. */
function mineTaxon(o) {
  if (o.community_taxon) return o.community_taxon.scientific_name;
  const result = o.prediction && o.prediction.result;
  if (result && "rollup" in result) return t("volunteer.by_model", { what: answerText(result.rollup) });
  return o.taxon ? t("volunteer.by_model", { what: o.taxon.scientific_name }) : "—";
}

async function loadMine() {
  $("mine-error").classList.add("hidden");
  const body = $("mine");
  if (!getKey()) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 4, class: "muted" }, t("volunteer.mine_signed_out"))));
    return;
  }
  try {
    const page = await api("/api/v1/observations", { query: { limit: 50 } });
    body.replaceChildren(...page.data.map((o) => el("tr", {},
      el("td", {}, o.observed_at ? formatDateTime(o.observed_at) : "—"),
      el("td", {}, el("span", { class: `status ${o.status}` }, label("common.status_", o.status))),
      el("td", {}, mineTaxon(o)),
      el("td", {}, o.session_id ? o.session_id.slice(0, 8) : "—"))));
    if (!page.data.length) body.replaceChildren(el("tr", {}, el("td", { colspan: 4, class: "muted" }, t("volunteer.mine_empty"))));
  } catch (error) {
    if (error.status === 401) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: 4, class: "muted" }, t("volunteer.mine_signed_out"))));
    } else {
      showError($("mine-error"), error);
    }
  }
}

setupSignIn($("signin"), $("signin-status"), loadMine);
function addChosenPhotos() {
  const chosen = Array.from($("photos").files || []);
  state.files = [...state.files, ...chosen].slice(0, MAX_PHOTOS);
  if (chosen.length + state.files.length > MAX_PHOTOS) $("identify-status").textContent = t("volunteer.at_most", { count: MAX_PHOTOS });
  renderPreviews();
}
$("photos").addEventListener("change", addChosenPhotos);
// Photos chosen before this script ran (a slow connection, the page's catalogue still loading, or a browser
// that restored the field): take them now, as if chosen just now.
if ($("photos").files && $("photos").files.length) addChosenPhotos();
$("identify").addEventListener("click", () => identify());
// Where and when: an answer that was re-ranked carries both orders; otherwise ask again with the place.
mountNearbySwitch($("nearby-switch"), (on) => {
  if (!state.result) return;
  if (on && !nearbyUsed(state.result) && placeGiven()) identify({ toResults: false });
  else renderResults(state.result);
});
for (const id of ["latitude", "longitude", "observed-at"]) $(id).addEventListener("change", reask);
// The map, the coordinate fields and "Use my location" (place.js keeps them in step).
const place = mountPlacePicker({ map: $("place-map"), latitude: $("latitude"), longitude: $("longitude"),
  locate: $("locate"), status: $("locator"), onChange: reask });
$("observation-form").addEventListener("submit", submitObservation);
$("refresh-mine").addEventListener("click", loadMine);
$("session-start").addEventListener("click", () => {
  localStorage.setItem(SESSION_STORAGE, JSON.stringify({ id: crypto.randomUUID(), endsAt: Date.now() + SESSION_MINUTES * 60000 }));
  renderSession();
});
$("session-stop").addEventListener("click", () => { localStorage.removeItem(SESSION_STORAGE); renderSession(); });
setInterval(renderSession, 30000);
renderSession();
vocabulary()
  .then((words) => fillSelect($("licence"), words.licences, { selected: words.default_licence }))
  .catch((error) => showError($("submit-error"), error));
loadMine();
