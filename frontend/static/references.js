// pollinid — reference photos of a suggested taxon, to compare a photo with (GET /api/v1/taxa/{taxon}/photos):
// validated observations' photos first, then the set shipped with the models, each with its credit. A strip
// loads when it comes into view; each taxon is asked for once per page.
import { api, el } from "./api.js";
import { t } from "./i18n.js";

const DEFAULT_LIMIT = 3;
const cache = new Map(); // "taxon|limit" → Promise of the API's answer

/** The reference photos of a taxon (an id, a model label or a name), fetched once per page. */
export function fetchReferences(taxon, limit = DEFAULT_LIMIT) {
  const key = `${taxon}|${limit}`;
  if (!cache.has(key)) {
    const request = api(`/api/v1/taxa/${encodeURIComponent(taxon)}/photos`, { query: { limit }, auth: false })
      .catch((error) => { cache.delete(key); throw error; }); // try again next time
    cache.set(key, request);
  }
  return cache.get(key);
}

function whenVisible(node, callback) {
  if (!("IntersectionObserver" in window)) { callback(); return; }
  const observer = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) { observer.disconnect(); callback(); }
  }, { rootMargin: "200px" });
  observer.observe(node);
}

function figure(photo, index, count, name, page) {
  // The photo of a species below the asked genus or family is named by that species.
  const shown = photo.taxon_id === page.taxon.id ? name : photo.scientific_name;
  const img = el("img", { src: photo.url, width: photo.width, height: photo.height, loading: "lazy",
    decoding: "async", alt: t("refs.alt", { name: shown, n: index + 1, count }), title: photo.credit });
  return el("figure", { class: "ref", "data-source": photo.source }, img);
}

function render(strip, page, name) {
  const photos = page.data;
  strip.removeAttribute("aria-busy");
  if (!photos.length) {
    strip.replaceChildren(el("p", { class: "refs-none muted" }, t("refs.none")));
    return;
  }
  const credits = [...new Set(photos.map((p) => p.credit))];
  strip.replaceChildren(
    el("div", { class: "refs-photos" }, photos.map((p, i) => figure(p, i, photos.length, name, page))),
    el("p", { class: "refs-credit" }, t("refs.credit", { credit: credits.join(" · ") })),
  );
}

/**
 * A strip of reference photos for a taxon, filled when it scrolls into view.
 * @param {string|number} taxon the taxon's id, model label or name
 * @param {{name?: string, limit?: number}} options name: how the page names the taxon (alt text)
 */
export function referenceStrip(taxon, { name, limit = DEFAULT_LIMIT } = {}) {
  const label = name || String(taxon);
  const strip = el("div", { class: "refs", role: "group", "aria-busy": "true", "data-taxon": taxon,
    "aria-label": t("refs.title", { name: label }) },
  el("p", { class: "refs-loading muted" }, t("refs.loading")));
  whenVisible(strip, () => {
    fetchReferences(taxon, limit)
      .then((page) => render(strip, page, label))
      .catch(() => {
        strip.removeAttribute("aria-busy");
        strip.replaceChildren(el("p", { class: "refs-none muted" }, t("refs.unavailable")));
      });
  });
  return strip;
}
