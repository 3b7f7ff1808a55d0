// pollinid — the keyboard of a text field with a list of suggestions (an ARIA combobox: the list has role
// "listbox", its items role "option"). Shared by the specialist's taxon field and the queue's taxon filter.

/** Arrows move the active option, Enter picks it (`choose(index, option)`), Escape closes the list (`close()`),
 * and leaving the field closes it too (after a moment, so that a click on an option lands first). */
export function wireComboboxKeys(input, list, { choose, close }) {
  input.addEventListener("keydown", (e) => {
    const options = [...list.children];
    if (!options.length || list.classList.contains("hidden")) return;
    let index = options.findIndex((o) => o.getAttribute("aria-selected") === "true");
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      index = e.key === "ArrowDown" ? Math.min(options.length - 1, index + 1) : Math.max(0, index - 1);
      options.forEach((o, i) => o.setAttribute("aria-selected", String(i === index)));
      input.setAttribute("aria-activedescendant", options[index].id);
    } else if (e.key === "Enter" && index >= 0) {
      e.preventDefault();
      choose(index, options[index]);
    } else if (e.key === "Escape") close();
  });
  input.addEventListener("blur", () => setTimeout(close, 100));
}
