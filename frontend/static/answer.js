// pollinid — the model's committed answer ("rollup") in plain words, shared by the volunteer and specialist pages.
//
// The service sends the sentence itself (rollup.answer); older responses and stored predictions made before it
// did carry only {taxon, rank, score[, kind]}, so the same sentence is rebuilt here from those fields.
// Everything is built as DOM nodes (text nodes and <i>): no string from the API ever goes through innerHTML.
import { el, percent } from "./api.js";

// Ranks whose scientific names are written in italics (zoological convention: genus and below).
const ITALIC_RANKS = new Set(["genus", "subgenus", "species", "subspecies"]);

export const NOT_SURE = "Not sure: the photo does not show enough to name anything. Try a closer, sharper photo.";
export const NO_INSECT = "No insect found in this photo: try closer.";
export const INSECT = "An insect we cannot place yet: an expert will look at it.";

/** The kind of a committed answer: "taxon", "insect", "no_insect", or "none" for a null roll-up. */
export function answerKind(rollup) {
  if (!rollup) return "none";
  if (rollup.kind) return rollup.kind;
  const t = rollup.taxon || {};
  if (rollup.rank === "none" || t.rank === "none" || t.label === "no_insect") return "no_insect";
  if (rollup.rank === "class" && (t.scientific_name || t.name) === "Insecta") return "insect";
  return "taxon";
}

function scientificName(taxon) {
  return taxon ? (taxon.scientific_name || taxon.name || taxon.label || "") : "";
}

/** Whether a taxon's scientific name is written in italics. */
export function isItalicRank(rank) { return ITALIC_RANKS.has(rank); }

/** The committed answer as one plain sentence (the service's own, else rebuilt from kind, rank and taxon). */
export function answerText(rollup) {
  if (!rollup) return NOT_SURE;
  if (typeof rollup.answer === "string" && rollup.answer.trim()) return rollup.answer.trim();
  const kind = answerKind(rollup);
  if (kind === "no_insect") return NO_INSECT;
  if (kind === "insect") return INSECT;
  const taxon = rollup.taxon || {};
  const name = scientificName(taxon);
  const common = taxon.common_name && taxon.common_name !== name ? taxon.common_name : "";
  const rank = rollup.rank || taxon.rank || "species";
  if (rank === "species") return common ? `${common} (${name})` : name;
  const what = common ? `${common} (${rank} ${name})` : `${rank.charAt(0).toUpperCase()}${rank.slice(1)} ${name}`;
  return `${what}: the species needs an expert.`;
}

/** Text split into nodes, with every whole-word occurrence of ``name`` in an <i>. */
export function italicise(text, name) {
  if (!name) return [document.createTextNode(text)];
  const nodes = [];
  let from = 0;
  const isWordChar = (c) => !!c && /[\p{L}\p{N}_-]/u.test(c);
  for (let at = text.indexOf(name); at !== -1; at = text.indexOf(name, at + name.length)) {
    if (isWordChar(text[at - 1]) || isWordChar(text[at + name.length])) continue;
    if (at > from) nodes.push(document.createTextNode(text.slice(from, at)));
    nodes.push(el("i", { class: "sci-name" }, name));
    from = at + name.length;
  }
  if (from < text.length) nodes.push(document.createTextNode(text.slice(from)));
  return nodes;
}

/** The answer sentence as DOM nodes: the taxon's scientific name in italics at genus rank and below. */
export function answerNodes(rollup) {
  const text = answerText(rollup);
  if (!rollup || answerKind(rollup) !== "taxon") return [document.createTextNode(text)];
  const taxon = rollup.taxon || {};
  const rank = rollup.rank || taxon.rank;
  return isItalicRank(rank) ? italicise(text, scientificName(taxon)) : [document.createTextNode(text)];
}

/** A short line under the answer: at which rank the model commits, and how sure it is. */
export function answerDetail(rollup) {
  const kind = answerKind(rollup);
  if (kind === "none") return "The model commits to no answer for these photos: pick a candidate below only if you recognise it.";
  const score = typeof rollup.score === "number" ? ` · ${percent(rollup.score)} probability` : "";
  if (kind === "no_insect") return `Answer: no insect${score}`;
  if (kind === "insect") return `Answer at class rank: an insect (Insecta)${score}`;
  return `Answer at ${rollup.rank || (rollup.taxon && rollup.taxon.rank) || "species"} rank${score}`;
}

/** Fill ``target`` with the answer sentence and set data-kind / data-rank for styling and tests. */
export function renderAnswer(target, rollup) {
  const kind = answerKind(rollup);
  target.replaceChildren(...answerNodes(rollup));
  target.dataset.kind = kind;
  target.dataset.rank = kind === "none" ? "" : (rollup.rank || "");
}

/** A candidate's name as nodes: "Peacock" + italic "Aglais io", "family Vespidae", "No insect". */
export function taxonNameNodes(taxon) {
  if (!taxon) return [document.createTextNode("—")];
  const name = scientificName(taxon);
  if (taxon.rank === "none") return [document.createTextNode(taxon.common_name || "No insect")];
  if (isItalicRank(taxon.rank || "species")) {
    const prefix = taxon.rank && taxon.rank !== "species" ? `${taxon.rank} ` : "";
    return [document.createTextNode(prefix), el("i", { class: "sci-name" }, name)].filter((n) => n.textContent);
  }
  return [document.createTextNode(`${taxon.rank} ${name}`)];
}
