// pollinid — the pages' languages. One catalogue per language: /static/i18n/<code>.json (flat keys, "{name}"
// placeholders, plural forms as {"one": …, "other": …}). The service lists the catalogues it has at
// /static/i18n/languages.json and reads the committed answer's sentences from the same files.
// Adding a language is one file: copy en.json to <code>.json and translate it (its "_language" is its own name).
//
// The choice: the language the person picked (remembered in localStorage), else the first of the browser's
// languages that has a catalogue, else English. A key missing from a catalogue falls back to English.
const STORAGE = "pollinid.lang";
const FALLBACK = "en";

async function load(code) {
  const response = await fetch(`/static/i18n/${code}.json`, { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`no catalogue for ${code}`);
  return response.json();
}

async function loadLanguages() {
  try {
    const response = await fetch("/static/i18n/languages.json", { headers: { Accept: "application/json" } });
    if (response.ok) return await response.json();
  } catch { /* fall through */ }
  return { en: "English" };
}

/** The best supported language among these BCP 47 tags ("fr-CH" → "fr"), else English. */
export function pickLanguage(tags, supported) {
  for (const tag of tags || []) {
    if (!tag) continue;
    const lower = String(tag).toLowerCase();
    if (supported.includes(lower)) return lower;
    const base = lower.split("-")[0];
    if (supported.includes(base)) return base;
  }
  return FALLBACK;
}

const languages = await loadLanguages();
const supported = Object.keys(languages);
let stored = null;
try { stored = localStorage.getItem(STORAGE); } catch { /* private mode */ }
const current = stored && supported.includes(stored) ? stored
  : pickLanguage(navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language],
                 supported);
const english = await load(FALLBACK);
let catalogue = english;
if (current !== FALLBACK) {
  try { catalogue = await load(current); } catch { catalogue = english; }
}
document.documentElement.lang = current;

/** The page's language code ("en", "fr"). */
export function lang() { return current; }

/** Supported languages: {code: name in that language}. */
export function availableLanguages() { return { ...languages }; }

/** Remember a choice and reload the page in it. */
export function setLanguage(code) {
  if (!supported.includes(code)) return;
  try { localStorage.setItem(STORAGE, code); } catch { /* private mode */ }
  window.location.reload();
}

/** The message for this key, with {placeholders} filled in; plural forms are chosen from vars.count. */
export function t(key, vars = {}) {
  let message = key in catalogue ? catalogue[key] : english[key];
  if (message === undefined) return key;
  if (message && typeof message === "object") {
    const form = new Intl.PluralRules(current).select(Number(vars.count ?? 0));
    message = message[form] ?? message.other;
  }
  return String(message).replace(/\{(\w+)\}/g, (whole, name) => {
    if (!(name in vars)) return whole;
    const value = vars[name];
    return typeof value === "number" ? formatNumber(value) : String(value);
  });
}

/** Whether a catalogue (or English) has this key. */
export function has(key) { return key in catalogue || key in english; }

/** The catalogue's word for a value of the service's vocabulary (prefix + value: "status.needs_id"), else the
 * value as it is, underscores as spaces. */
export function label(prefix, value) {
  if (value === null || value === undefined) return "";
  return has(`${prefix}${value}`) ? t(`${prefix}${value}`) : String(value).replaceAll("_", " ");
}

export function formatNumber(value, options = {}) { return new Intl.NumberFormat(current, options).format(value); }
/** A score (0..1) as a percentage ("12%", "12 %" in French); ``digits`` decimals at most. */
export function formatPercent(score, digits = 0) {
  return new Intl.NumberFormat(current, { style: "percent", maximumFractionDigits: digits }).format(score);
}
export function formatDate(value, options = { dateStyle: "medium" }) {
  const date = value instanceof Date ? value : new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : new Intl.DateTimeFormat(current, options).format(date);
}
export function formatDateTime(value) { return formatDate(value, { dateStyle: "medium", timeStyle: "short" }); }
/** A month's name (1 = January) in the page's language. */
export function monthName(month) {
  return new Intl.DateTimeFormat(current, { month: "long", timeZone: "UTC" }).format(Date.UTC(2001, month - 1, 1));
}

/** Translate static markup: data-i18n="key" sets the text; data-i18n-attr="placeholder:key;aria-label:key"
 * sets attributes. */
export function translatePage(root = document) {
  for (const node of root.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  for (const node of root.querySelectorAll("[data-i18n-attr]")) {
    for (const pair of node.dataset.i18nAttr.split(";")) {
      const [attr, key] = pair.split(":").map((s) => s.trim());
      if (attr && key) node.setAttribute(attr, t(key));
    }
  }
  const title = document.querySelector("title[data-i18n]");
  if (title) document.title = title.textContent;
}

/** The language switch in a page's header: a <select> that remembers the choice. */
export function mountLanguageSwitch(select) {
  select.replaceChildren(...Object.entries(languages).map(([code, name]) => {
    const option = document.createElement("option");
    option.value = code;
    option.textContent = name;
    option.lang = code;
    option.selected = code === current;
    return option;
  }));
  select.addEventListener("change", () => setLanguage(select.value));
}
