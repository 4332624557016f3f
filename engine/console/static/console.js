// Touchpoint console: progressive enhancement only — every form works without it.
// The editor checks and previews the text as it is typed (POST /edit/check), marks the
// lines with problems in the gutter, and inserts fields from the picker at the cursor.
"use strict";

function setUpEditor(form) {
  const source = form.querySelector("textarea[name=content]");
  const gutter = form.querySelector(".gutter");
  const patient = form.querySelector("input[name=patient]");
  const token = form.querySelector("input[name=csrf_token]").value;
  const problems = document.getElementById("problems");
  const preview = document.getElementById("preview");
  let marks = JSON.parse(form.dataset.lines || "{}");
  let timer = null;
  let asked = 0;

  function drawGutter() {
    const count = source.value.split("\n").length;
    const rows = [];
    for (let n = 1; n <= count; n += 1) {
      const row = document.createElement("div");
      row.textContent = String(n);
      if (marks[String(n)]) {
        row.className = marks[String(n)].some((m) => m.startsWith("error")) ? "bad" : "warn";
        row.title = marks[String(n)].join("\n");
      }
      rows.push(row);
    }
    gutter.replaceChildren(...rows);
    gutter.scrollTop = source.scrollTop;
  }

  async function check() {
    const mine = ++asked;
    const body = new URLSearchParams({ path: form.dataset.path, content: source.value,
                                       patient: patient.value });
    const answer = await fetch("/edit/check", { method: "POST", body,
                                                headers: { "X-CSRF-Token": token } });
    if (mine !== asked) return;  // a newer check is on its way
    if (!answer.ok) {
      problems.textContent = "Could not check the text (" + answer.status + "); save the draft to keep it.";
      return;
    }
    const data = await answer.json();
    problems.innerHTML = data.problems;  // rendered and escaped by the server
    preview.innerHTML = data.preview;
    marks = data.lines;
    drawGutter();
  }

  function later() {
    clearTimeout(timer);
    timer = setTimeout(check, 350);
  }

  source.addEventListener("input", () => { drawGutter(); later(); });
  source.addEventListener("scroll", () => { gutter.scrollTop = source.scrollTop; });
  patient.addEventListener("change", check);
  form.querySelectorAll("button[data-field]").forEach((button) => {
    button.addEventListener("click", () => {
      const text = "{{ " + button.dataset.field + " }}";
      const at = source.selectionStart;
      source.setRangeText(text, at, source.selectionEnd, "end");
      source.focus();
      drawGutter();
      later();
    });
  });
  drawGutter();
  // Text typed before this script ran (a slow page) gets its check now.
  if (source.value !== source.defaultValue) later();
  form.dataset.live = "true";
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.querySelector("form[data-editor]");
  if (form) setUpEditor(form);
});
