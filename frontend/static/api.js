// pollinid — a small client for the REST API: the key lives in localStorage and goes in a Bearer header.
// Every request says the page's language (Accept-Language), so taxa come back with names in that language.
import { formatPercent, has, lang, t } from "./i18n.js";

const KEY_STORAGE = "pollinid.apiKey";

export function getKey() { return localStorage.getItem(KEY_STORAGE) || ""; }
export function setKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key.trim()); else localStorage.removeItem(KEY_STORAGE);
}

/** The message shown to a person: in English the service's own (the most precise); in another language the
 * catalogue's sentence for the error's code (errors.<code>), else the service's message. */
function errorMessage(status, body) {
  const error = body && body.error;
  const server = error && error.message;
  if (error && error.code && lang() !== "en" && has(`errors.${error.code}`)) return t(`errors.${error.code}`);
  return server || t("errors.request_failed", { status });
}

export class ApiError extends Error {
  constructor(status, body) {
    super(errorMessage(status, body));
    this.status = status;
    this.body = body;
    this.code = body && body.error ? body.error.code : undefined;
    this.serverMessage = body && body.error ? body.error.message : undefined;
  }
}

/** fetch() wrapper: JSON in and out, FormData passed through, errors thrown as ApiError. */
export async function api(path, { method = "GET", json, form, query, headers = {}, auth = true } = {}) {
  const url = new URL(path, window.location.origin);
  if (query) {
    for (const [k, v] of Object.entries(query)) {
      if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
    }
  }
  const init = { method, headers: { Accept: "application/json", "Accept-Language": lang(), ...headers } };
  const key = getKey();
  if (auth && key) init.headers.Authorization = `Bearer ${key}`;
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form) {
    init.body = form;
  }
  const response = await fetch(url, init);
  const type = response.headers.get("content-type") || "";
  const body = type.includes("application/json") ? await response.json() : null;
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

/** The service's vocabularies (licences, roles, statuses, kinds, states: GET /api/v1/vocabulary, public), fetched
 * once per page. Pickers and rules are built from these values; pages keep only display labels keyed by them. */
let vocabularyPromise = null;
export function vocabulary() {
  if (!vocabularyPromise) {
    vocabularyPromise = api("/api/v1/vocabulary", { auth: false }).catch((error) => {
      vocabularyPromise = null; // try again next time
      throw error;
    });
  }
  return vocabularyPromise;
}

/** Fill a <select> with these values (shown by their label, else as is), keeping the current or given choice. */
export function fillSelect(select, values, { labels = {}, selected } = {}) {
  const chosen = select.value || selected;
  select.replaceChildren(...values.map((value) =>
    el("option", { value, selected: value === chosen }, labels[value] || value)));
}

/** Text node helper: never build HTML from API strings. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "style") node.style.cssText = v; // CSSOM, allowed by the pages' CSP
    else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Photos need the key too: fetch one as a blob and return an object URL for an <img>. */
const imageCache = new Map();
export async function authedImageUrl(path) {
  if (imageCache.has(path)) return imageCache.get(path);
  const headers = {};
  const key = getKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(path, { headers });
  if (!response.ok) throw new ApiError(response.status, null);
  const url = URL.createObjectURL(await response.blob());
  imageCache.set(path, url);
  return url;
}

export function showError(target, error) {
  target.textContent = error instanceof Error ? error.message : String(error);
  target.classList.remove("hidden");
}

/** A score (0..1) as a percentage in the page's language ("12%", "12 %"). */
export function percent(score) { return formatPercent(score); }

/** Wire the sign-in form shared by every page. */
export function setupSignIn(form, status, onChange) {
  const input = form.querySelector("input");
  // The page's scripts may run after a quick person has started typing their key: never wipe what is typed.
  if (!input.value) input.value = getKey();
  const render = () => { status.textContent = getKey() ? t("common.signed_in") : t("common.not_signed_in"); };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    setKey(input.value);
    render();
    onChange && onChange();
  });
  render();
}
