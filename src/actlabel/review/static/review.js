// Keyboard shortcuts and small conveniences for the review page. Plain forms do the real work:
// every key below just submits one of the page's forms, so the app also works without JavaScript.
// Nothing here writes item data into the page (no innerHTML): the server renders and escapes it.
"use strict";
(function () {
  const saveForm = document.getElementById("save-form");
  const skipForm = document.getElementById("skip-form");
  const undoForm = document.getElementById("undo-form");
  const filter = document.getElementById("label-filter");
  // A multi-label item shows checkboxes: number keys tick them and Enter saves the ticked set.
  const multi = Boolean(saveForm && saveForm.dataset.multi);
  const labelButtons = saveForm
    ? Array.from(saveForm.querySelectorAll(multi ? "#labels input[type=checkbox]" : "#labels button"))
    : [];
  const saveSet = document.getElementById("save-set");
  const started = performance.now();
  let submitting = false;

  // One submission per page: a second key press while the next item loads must not save twice.
  for (const form of document.querySelectorAll("form")) {
    form.addEventListener("submit", function (event) {
      if (submitting) { event.preventDefault(); return; }
      submitting = true;
      if (form === saveForm) {
        form.elements.duration_ms.value = String(Math.round(performance.now() - started));
      }
    });
  }
  // Coming back through the history cache must not leave the page locked.
  window.addEventListener("pageshow", function (event) { if (event.persisted) submitting = false; });

  function submitWith(form, button) {
    if (!form || submitting) return;
    if (button === undefined) form.requestSubmit();
    else if (button) form.requestSubmit(button);
  }

  function shown(b) { return multi ? b.closest("label") : b; }
  function visibleLabels() { return labelButtons.filter(function (b) { return !shown(b).hidden; }); }

  function applyFilter() {
    const query = filter.value.trim().toLowerCase();
    for (const b of labelButtons) shown(b).hidden = query !== "" && !b.value.toLowerCase().includes(query);
  }
  if (filter) filter.addEventListener("input", applyFilter);

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return;
    const target = event.target;
    if (filter && target === filter) {
      if (event.key === "Enter") {
        event.preventDefault();
        const first = visibleLabels()[0];
        if (first && multi) { first.checked = !first.checked; filter.value = ""; applyFilter(); filter.blur(); }
        else if (first) submitWith(saveForm, first);
      } else if (event.key === "Escape") {
        filter.value = ""; applyFilter(); filter.blur();
      }
      return;
    }
    const onCheckbox = multi && target && target.tagName === "INPUT" && target.type === "checkbox";
    if (!onCheckbox && target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.isContentEditable)) return;
    const key = event.key;
    let button = null;
    if (multi && /^[1-9]$/.test(key)) {
      button = saveForm.querySelector('#labels input[data-key="' + key + '"]');
      if (button) button.checked = !button.checked;
    } else if (multi && key === "Enter" && !(target && target.tagName === "BUTTON")) {
      button = saveSet; submitWith(saveForm, saveSet);
    } else if (/^[1-9]$/.test(key)) {
      button = saveForm ? saveForm.querySelector('#labels button[data-key="' + key + '"]') : null;
      if (button) submitWith(saveForm, button);
    } else if (key === "a" || key === "c") {
      button = document.getElementById(key === "a" ? "accept-machine" : "accept-proposal");
      if (button) submitWith(saveForm, button);
    } else if (key === "s") {
      button = skipForm; submitWith(skipForm);
    } else if (key === "u") {
      button = undoForm; submitWith(undoForm);
    } else if (key === "/" && filter) {
      button = filter; filter.focus();
    }
    if (button) event.preventDefault();
  });
})();
