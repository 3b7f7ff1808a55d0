// pollinid — the specialist's queue: filters (taxon, rank of the model's answer, place, days), the next observation
// leased and its photos downloaded while the current one is judged, and how many were validated today.
//
// expert.js asks takeNext() for the observation to show and calls judged() after each verdict. The queue is asked
// for two items: the one shown and the next; the next one's lease is held and its photos are in authedImageUrl's
// cache, so that after a verdict it appears at once while the following one is fetched in the background.
import { api, authedImageUrl, el, showError } from "./api.js";
import { wireComboboxKeys } from "./combobox.js";
import { formatNumber, t, translatePage } from "./i18n.js";

const $ = (id) => document.getElementById(id);
const RANKS = ["species", "genus", "family", "order", "class", "no_insect", "uncommitted"];

const q = {
  filters: {},         // the query parameters of the applied filters
  current: null,       // id of the observation shown
  judged: false,       // whether the one shown got a verdict
  upcoming: null,      // the next queue item (leased to this specialist, photos downloaded), or null
  fetching: null,      // the background request for the next item, while it runs
  skipped: new Set(),  // ids passed over with "Next" on this page: not shown again until the filters change
  generation: 0,       // bumped when the filters or the key change: late answers of an older queue are dropped
  counted: false,      // whether today's count was fetched for this key
  releasing: Promise.resolve(), // the lease releases sent and not yet answered
  taxonTimer: null,
};

/** The browser's IANA time zone (the days of the date filter and of "today" are counted in it). */
export function timeZone() {
  try { return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC"; } catch { return "UTC"; }
}

// Give a lease back. Queue requests wait for the releases sent before them, so that a request cannot lease an
// item again just before its release arrives (which would leave it shown here but leased to nobody).
function release(id) {
  const done = api(`/api/v1/validation/queue/${id}/lease`, { method: "DELETE" }).catch(() => { /* it expires */ });
  q.releasing = Promise.all([q.releasing, done]);
  return done;
}

function preload(item) {
  for (const photo of item.observation.photos || []) authedImageUrl(photo.url).catch(() => { /* shown when opened */ });
  return item;
}

// Ask the queue for up to `want` items other than the one shown and the skipped ones, keeping their order.
async function fetchItems(want) {
  const generation = q.generation;
  await q.releasing;
  const shown = q.current !== null && !q.judged ? 1 : 0; // the one shown comes back too (its lease renewed)
  const limit = Math.min(100, want + shown + q.skipped.size);
  const page = await api("/api/v1/validation/queue", { query: { ...q.filters, limit } });
  if (generation !== q.generation) { // the filters or the key changed meanwhile: give these back
    page.data.forEach((item) => release(item.observation.id));
    return null;
  }
  const items = [];
  for (const item of page.data) {
    const id = item.observation.id;
    if (id === q.current && !q.judged) continue;
    if (q.skipped.has(id) || items.length >= want) release(id); // leased again by this request: give it back
    else items.push(item);
  }
  return items;
}

function prefetch() {
  if (q.fetching || q.upcoming) return q.fetching;
  const generation = q.generation;
  q.fetching = fetchItems(1)
    .then((items) => { if (items && generation === q.generation) q.upcoming = items.length ? preload(items[0]) : null; })
    .catch(() => { /* the next takeNext() asks again, and shows the error */ })
    .finally(() => { if (generation === q.generation) q.fetching = null; });
  return q.fetching;
}

/** The next observation to show, as a queue page ({data: [item], count}); the one after it is prefetched. */
export async function takeNext() {
  if (!q.counted) { q.counted = true; refreshToday(); }
  if (q.current !== null && !q.judged) {
    q.skipped.add(q.current); // passed over: back to the queue for the others
    release(q.current);
  }
  if (q.fetching) await q.fetching;
  let item = q.upcoming;
  q.upcoming = null;
  if (!item || item.observation.id === q.current) {
    const items = await fetchItems(2);
    item = items && items.length ? items[0] : null;
    if (items && items.length > 1) q.upcoming = preload(items[1]);
  }
  q.current = item ? item.observation.id : null;
  q.judged = false;
  if (item && !q.upcoming) prefetch();
  if (!item && q.skipped.size) renderSkipped();
  return { data: item ? [item] : [], count: item ? 1 + (q.upcoming ? 1 : 0) : 0 };
}

/** After a verdict on the observation shown: count it, and get the next one ready if it is not yet. */
export function judged() {
  q.judged = true;
  refreshToday();
  prefetch();
}

/** Forget everything (another key signed in, or other filters); the leases still held are given back (resolves
 * once they are, so that the next queue request cannot cross them). */
export function resetQueue({ keepLeases = false } = {}) {
  q.generation += 1;
  const releases = [];
  if (!keepLeases) {
    if (q.upcoming) releases.push(release(q.upcoming.observation.id));
    if (q.current !== null && !q.judged) releases.push(release(q.current));
  } else {
    q.counted = false; // another key: another specialist's day
  }
  q.current = null;
  q.judged = false;
  q.upcoming = null;
  q.fetching = null;
  q.skipped.clear();
  return Promise.all(releases);
}

function renderSkipped() {
  $("queue-skipped").textContent = t("queue.skipped", { count: q.skipped.size });
  $("queue-skipped").classList.remove("hidden");
}

// ---- today's count --------------------------------------------------------------------------------------
export async function refreshToday() {
  try {
    const day = await api("/api/v1/validation/stats", { query: { tz: timeZone() } });
    $("queue-today-count").textContent = formatNumber(day.identified_today);
    $("queue-today").dataset.count = String(day.identified_today);
    $("queue-today").title = t("queue.today_detail", {
      agreed: day.agreed, corrected: day.corrected, cannot_tell: day.cannot_tell, not_an_insect: day.not_an_insect,
    });
    $("queue-today").classList.remove("hidden");
  } catch { /* the counter waits for the next verdict */ }
}

// ---- the filter form ------------------------------------------------------------------------------------
function readFilters() {
  const f = {};
  const taxon = $("f-taxon").dataset.id || $("f-taxon").value.trim();
  if (taxon) f.taxon = taxon;
  if ($("f-rank").value) f.rank = $("f-rank").value;
  const near = $("f-near").value.trim();
  if (near) {
    f.near = near;
    if ($("f-radius").value.trim()) f.radius_km = $("f-radius").value.trim();
  }
  if ($("f-from").value) f.observed_from = $("f-from").value;
  if ($("f-to").value) f.observed_to = $("f-to").value;
  if (f.observed_from || f.observed_to) f.tz = timeZone();
  return f;
}

function renderActive() {
  const f = q.filters;
  const n = [f.taxon, f.rank, f.near, f.observed_from || f.observed_to].filter(Boolean).length;
  $("queue-filters-active").textContent = n ? t("queue.filters_active", { count: n }) : t("queue.filters_none");
}

function locate() {
  const status = $("queue-filters-status");
  if (!navigator.geolocation) { status.textContent = t("queue.locate_unavailable"); return; }
  status.textContent = t("queue.locating");
  navigator.geolocation.getCurrentPosition((pos) => {
    $("f-near").value = `${pos.coords.latitude.toFixed(4)}, ${pos.coords.longitude.toFixed(4)}`;
    status.textContent = t("queue.located");
  }, (error) => {
    status.textContent = t("queue.locate_failed", { reason: error.message || String(error.code) });
  }, { enableHighAccuracy: false, timeout: 15000, maximumAge: 600000 });
}

function closeTaxa() { $("f-taxon-list").classList.add("hidden"); $("f-taxon").setAttribute("aria-expanded", "false"); }
function chooseTaxon(taxon) {
  $("f-taxon").value = taxon.scientific_name;
  $("f-taxon").dataset.id = String(taxon.id);
  closeTaxa();
}
async function suggestTaxa() {
  delete $("f-taxon").dataset.id;
  const text = $("f-taxon").value.trim();
  if (text.length < 2) { closeTaxa(); return; }
  const page = await api("/api/v1/taxa", { query: { q: text, limit: 10 } });
  const list = $("f-taxon-list");
  list.replaceChildren(...page.data.map((taxon, i) => el("li", { role: "option", id: `f-taxon-opt-${i}`,
    "aria-selected": "false", onmousedown: (e) => { e.preventDefault(); chooseTaxon(taxon); } },
    taxon.scientific_name, taxon.common_name ? ` — ${taxon.common_name}` : "", ` (${taxon.rank})`)));
  list._taxa = page.data;
  list.classList.toggle("hidden", !page.data.length);
  $("f-taxon").setAttribute("aria-expanded", String(!!page.data.length));
}
function setupTaxon() {
  const input = $("f-taxon");
  input.addEventListener("input", () => {
    clearTimeout(q.taxonTimer);
    q.taxonTimer = setTimeout(() => suggestTaxa().catch((e) => showError($("queue-error"), e)), 150);
  });
  const list = $("f-taxon-list");
  wireComboboxKeys(input, list, { choose: (index) => chooseTaxon(list._taxa[index]), close: closeTaxa });
}

/** Wire the filter form; `reload` shows the queue's first item again (expert.js's next()). */
export function setupQueue(reload) {
  translatePage($("queue-filters-box"));
  translatePage($("queue-today"));
  const rank = $("f-rank");
  rank.replaceChildren(el("option", { value: "" }, t("queue.rank_any")),
    ...RANKS.map((r) => el("option", { value: r }, t(`queue.rank_${r}`))));
  setupTaxon();
  $("f-locate").addEventListener("click", locate);
  $("queue-filters").addEventListener("submit", (e) => {
    e.preventDefault();
    $("queue-filters-status").textContent = "";
    q.filters = readFilters();
    renderActive();
    $("queue-skipped").classList.add("hidden");
    resetQueue().then(reload);
  });
  $("queue-filters").addEventListener("reset", () => {
    delete $("f-taxon").dataset.id;
    $("queue-filters-status").textContent = "";
    // The form's fields are cleared by the browser after this event: apply the empty filters then.
    setTimeout(() => {
      q.filters = {};
      renderActive();
      $("queue-skipped").classList.add("hidden");
      resetQueue().then(reload);
    });
  });
  renderActive();
}
