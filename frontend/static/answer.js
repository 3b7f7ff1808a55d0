// pollinid — the model's committed answer ("rollup") in plain words, shared by the volunteer and specialist pages.
//
// The sentence is built here, in the page's language, from the answer's structured fields (kind, rank, the
// taxon's scientific and common names; the API sends the common name in the page's language, null where that
// language has none): the service's own English sentence (rollup.answer) is not shown, and older stored
// predictions that only carry {taxon, rank, score} get the same words.
// Everything is built as DOM nodes (text nodes and <i>): no string from the API ever goes through innerHTML.
import { el, percent } from "./api.js";
import { t } from "./i18n.js";

// Ranks whose scientific names are written in italics (zoological convention: genus and below).
const ITALIC_RANKS = new Set(["genus", "subgenus", "species", "subspecies"]);

/** A rank's word in the page's language ("genus", "genre"); ranks without a word are shown as they are. */
export function rankWord(rank) {
  const key = `answer.rank_${rank}`;
  const word = t(key);
  return word === key ? rank : word;
}

function capitalised(text) { return text ? text.charAt(0).toUpperCase() + text.slice(1) : text; }

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

/** The committed answer as one plain sentence in the page's language, built from kind, rank and taxon. */
export function answerText(rollup) {
  if (!rollup) return t("answer.not_sure");
  const kind = answerKind(rollup);
  if (kind === "no_insect") return t("answer.no_insect");
  if (kind === "insect") return t("answer.insect");
  const taxon = rollup.taxon || {};
  const name = scientificName(taxon);
  const common = taxon.common_name && taxon.common_name !== name ? taxon.common_name : "";
  const rank = rollup.rank || taxon.rank || "species";
  if (rank === "species") return common ? t("answer.species_common", { common, name }) : name;
  if (common) return t("answer.coarse_common", { common, rank: rankWord(rank), name });
  return t("answer.coarse", { rank: capitalised(rankWord(rank)), name });
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
  if (kind === "none") return t("answer.detail_none");
  const score = typeof rollup.score === "number" ? t("answer.detail_probability", { score: percent(rollup.score) }) : "";
  if (kind === "no_insect") return t("answer.detail_no_insect") + score;
  if (kind === "insect") return t("answer.detail_insect") + score;
  return t("answer.detail_rank", { rank: rankWord(rollup.rank || (rollup.taxon && rollup.taxon.rank) || "species") })
    + score;
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
  if (taxon.rank === "none") return [document.createTextNode(taxon.common_name || t("answer.no_insect_name"))];
  if (isItalicRank(taxon.rank || "species")) {
    const prefix = taxon.rank && taxon.rank !== "species" ? `${rankWord(taxon.rank)} ` : "";
    return [document.createTextNode(prefix), el("i", { class: "sci-name" }, name)].filter((n) => n.textContent);
  }
  return [document.createTextNode(`${rankWord(taxon.rank)} ${name}`)];
}
