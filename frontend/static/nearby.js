// pollinid — where and when as evidence on the volunteer page: the "Use where and when" switch (remembered),
// the place and date sent with /identify, each card's "Seen nearby in June (12 records)" and both scores.
import { el, percent } from "./api.js";
import { formatNumber, monthName, t } from "./i18n.js";

const STORAGE = "pollinid.nearby";

export function nearbyOn() {
  try { return localStorage.getItem(STORAGE) !== "off"; } catch { return true; }
}

/** Wire the checkbox: checked from the remembered choice (on by default); onToggle(on) after each change. */
export function mountNearbySwitch(checkbox, onToggle) {
  checkbox.checked = nearbyOn();
  checkbox.addEventListener("change", () => {
    try { localStorage.setItem(STORAGE, checkbox.checked ? "on" : "off"); } catch { /* private mode */ }
    onToggle(checkbox.checked);
  });
}

/** The date part of a datetime-local value ("2024-06-12T10:30" → "2024-06-12"); today when empty. */
function dateOf(value) {
  if (value) return value.slice(0, 10);
  const now = new Date();
  const pad = (n) => String(n).padStart(2, "0");
  return `${now.getFullYear()}-${pad(now.getMonth() + 1)}-${pad(now.getDate())}`;
}

/** Add the place and date already entered to an /identify form, and the switch. */
export function addPlace(form, { latitude, longitude, observedAt }) {
  if (latitude === "" || longitude === "") return false;
  form.append("latitude", latitude);
  form.append("longitude", longitude);
  form.append("observed_at", dateOf(observedAt));
  form.append("nearby", nearbyOn() ? "true" : "false");
  return true;
}

/** Whether the answer was re-ranked (then it carries both scores and can be shown either way). */
export function nearbyUsed(result) { return !!(result && result.nearby && result.nearby.used); }

/** The suggestions in the order to show: by the combined score when the switch is on, else the model's. */
export function orderResults(result, on) {
  const items = [...result.results];
  if (!on || !nearbyUsed(result)) items.sort((a, b) => b.score - a.score);
  return items;
}

/** The card's nearby line ("Seen nearby in June (12 records)" / "Not recorded nearby"), or null. */
export function nearbyLine(item, on) {
  const n = item.nearby;
  if (!on || !n) return null;
  const text = n.records > 0
    ? t("nearby.seen", { month: monthName(n.month), count: formatNumber(n.records) })
    : t("nearby.not_seen");
  return el("div", { class: n.records > 0 ? "nearby seen" : "nearby muted" }, text);
}

/** The scores line: the model's, and the one with where and when when it was used. */
export function scoreLine(item, on) {
  if (!on || !item.nearby) return t("volunteer.score", { score: percent(item.score) });
  return t("nearby.scores", { model: percent(item.score), combined: percent(item.nearby.combined) });
}

/** The status under the switch: what the evidence was, or why there was none. */
export function nearbySummary(result, on) {
  if (!on) return t("nearby.off");
  const n = result && result.nearby;
  if (!n || !n.used) return t("nearby.no_place");
  return t("nearby.summary", { count: formatNumber(n.records), radius: formatNumber(n.radius_km),
    month: monthName(n.month) });
}
