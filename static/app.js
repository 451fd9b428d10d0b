// Progressive enhancement of the search page: uploads, drag and drop, word chips, paging, and
// the query kept in the URL. Without this file, text search still works (server-rendered).
"use strict";

const PAGE = 24;
const state = { mode: "text", page: null, offset: 0, upload: null, best: null };
const $ = (selector) => document.querySelector(selector);
// The served index this page was opened on (?index=): every request and shared URL keeps it.
const INDEX = new URLSearchParams(location.search).get("index");
const indexParam = INDEX ? `&index=${encodeURIComponent(INDEX)}` : "";

function setStatus(message, isError = false) {
  $("#status").innerHTML = message ? `<p class="${isError ? "error" : ""}">${escapeHtml(message)}</p>` : "";
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function showMode(mode) {
  state.mode = mode;
  for (const panel of document.querySelectorAll(".panel")) panel.hidden = panel.id !== `panel-${mode}`;
  for (const link of document.querySelectorAll(".modes a")) link.classList.toggle("active", link.dataset.mode === mode);
}

// A score a person can read: the calibrated relevance when the index has one, else the share of
// the best hit's score; the raw cosine stays in the tooltip.
function score(hit) {
  const label = hit.relevance != null ? `${Math.round(100 * hit.relevance)}% match`
                                      : `${Math.round(100 * hit.score / (state.best || hit.score))}% of best`;
  return `<span class="score" data-score="${hit.score}" title="cosine similarity ${hit.score.toFixed(3)}">${label}</span>`;
}

function imageCard(hit) {
  const caption = hit.captions && hit.captions.length ? hit.captions[0] : hit.path;
  return `<li class="card"><img src="${hit.thumbnail_url}" alt="${escapeHtml(caption)}" width="160" height="160">
    ${score(hit)}<span class="caption">${escapeHtml(caption)}</span>
    <button type="button" class="use" data-id="${hit.id}">use as query</button></li>`;
}

function captionItem(hit) {
  const images = hit.images && hit.images.length ? hit.images : [hit.image];
  const thumbs = images.slice(0, 4).map((image) => `<button type="button" class="use thumb" data-id="${image.id}"
    title="use this image as the query"><img src="${image.thumbnail_url}" alt="image ${image.id}" width="64" height="64"></button>`).join("");
  const count = hit.count > 1 ? ` <span class="count" title="${hit.count} captions with this text">×${hit.count}</span>` : "";
  const made = hit.source === "generated"
    ? ` <span class="source" title="written by the model, not a person">generated</span>` : "";
  return `<li><span class="thumbs">${thumbs}</span><span class="text">${escapeHtml(hit.text)}</span>${made}${count} ${score(hit)}</li>`;
}

// GXN encoders also generate: a caption for the query image, an image for the query text.
function generated(response) {
  let html = "";
  if (response.generated_caption) {
    html += `<p class="generated">Generated caption: <q>${escapeHtml(response.generated_caption)}</q></p>`;
  }
  if (response.imagined_image_url) {
    html += `<figure class="imagined"><img src="${escapeHtml(response.imagined_image_url)}"
      alt="what the model imagined for the query"><figcaption>what the model imagined</figcaption></figure>`;
  }
  return html;
}

// An attending encoder (DAN) says where it looked: bold words for a text, a heat grid over the
// query image (squashed to a square, as the model saw it). Weights are the steps' mean.
function looked(response) {
  const attention = response.query_attention;
  if (!attention) return "";
  const mean = (steps, i) => steps.reduce((sum, step) => sum + step[i], 0) / steps.length;
  if (attention.words) {
    const weights = attention.words.map((_, i) => mean(attention.word_weights, i));
    const top = Math.max(...weights) || 1;
    const words = attention.words.map((word, i) => `<span class="attended${weights[i] / top > 0.5 ? " strong" : ""}"
      style="--share:${(weights[i] / top).toFixed(3)}" title="attention ${(100 * weights[i]).toFixed(1)}%">${escapeHtml(word)}</span>`);
    return `<p class="attention">The model attended to: ${words.join(" ")}</p>`;
  }
  const steps = attention.region_weights || [];
  const query = document.querySelector(".panel:not([hidden]) img.query-thumb");
  if (!steps.length || !query) return "";
  const cells = steps[0].flat().map((_, i) => mean(steps.map((step) => step.flat()), i));
  const top = Math.max(...cells) || 1;
  const spans = cells.map((cell) => `<span style="--share:${(cell / top).toFixed(3)}"></span>`).join("");
  return `<figure class="looked"><div class="heat" style="--rows:${steps[0].length};--cols:${steps[0][0].length}">
    <img src="${escapeHtml(query.src)}" alt="the query image as the model saw it"><div class="cells">${spans}</div></div>
    <figcaption>where the model looked</figcaption></figure>`;
}

function attends() {
  return $("#results").dataset.attention === "on";
}

function render(response, append) {
  const captions = response.mode.endsWith("caption");
  if (!append) state.best = response.results.length ? response.results[0].score : null;
  const items = response.results.map(captions ? captionItem : imageCard).join("");
  let list = $("#results > ul, #results > ol");
  if (!append || !list) {
    const warnings = response.warnings.map((w) => `<p class="warning">${escapeHtml(w)}</p>`).join("");
    const notes = (response.notes || []).map((n) => `<p class="note">${escapeHtml(n)}</p>`).join("");
    $("#results").innerHTML = `${warnings}${notes}${generated(response)}${looked(response)}<${captions ? "ol class=\"captions\"" : "ul class=\"grid\""}></${captions ? "ol" : "ul"}>`;
    list = $("#results > ul, #results > ol");
  }
  list.insertAdjacentHTML("beforeend", items || (append ? "" : "<li>No results.</li>"));
  $("#more").hidden = response.results.length < response.k;
}

async function request(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
  return body;
}

function imageForm(fileOrNull, id) {
  const form = new FormData();
  if (INDEX) form.append("index", INDEX);
  if (fileOrNull) form.append("file", fileOrNull);
  else if (id) form.append("image_id", id);
  return form;
}

function words(kind) {
  return [...document.querySelectorAll(`#chips input[name=${kind}]`)].map((input) => input.value);
}

// Each mode turns the form into one fetch (for a page at `offset`) and a shareable URL.
const queries = {
  text() {
    const q = $("#q").value.trim();
    if (!q) throw new Error("Type what you are looking for.");
    return { url: `?mode=text&q=${encodeURIComponent(q)}${indexParam}`,
             fetch: (offset) => request(`/api/search/text?q=${encodeURIComponent(q)}&k=${PAGE}&offset=${offset}${indexParam}`
                                        + (attends() && !offset ? "&attention=true" : "")) };
  },
  image() {
    const id = $("#image-id").value;
    if (!state.upload && !id) throw new Error("Choose or drop an image, or give a gallery image id.");
    const upload = state.upload;
    return { url: upload ? null : `?mode=image&id=${id}${indexParam}`,
             fetch: (offset) => { const form = imageForm(upload, id); form.append("k", PAGE); form.append("offset", offset);
                                  if (attends() && !offset) form.append("attention", "true");
                                  return request("/api/search/image", { method: "POST", body: form }); } };
  },
  arith() {
    const id = $("#arith-id").value, minus = words("minus"), plus = words("plus");
    if (!state.upload && !id) throw new Error("Start from an image: choose, drop, or give a gallery image id.");
    if (!minus.length && !plus.length) throw new Error("Add at least one − word or + word.");
    const upload = state.upload;
    const wordParams = [...minus.map((w) => `&minus=${encodeURIComponent(w)}`), ...plus.map((w) => `&plus=${encodeURIComponent(w)}`)].join("");
    return { url: upload ? null : `?mode=arith&id=${id}${wordParams}${indexParam}`,
             fetch: (offset) => { const form = imageForm(upload, id);
                                  minus.forEach((w) => form.append("minus", w)); plus.forEach((w) => form.append("plus", w));
                                  form.append("k", PAGE); form.append("offset", offset);
                                  return request("/api/search/arithmetic", { method: "POST", body: form }); } };
  },
};

function clearResults() {
  $("#results").innerHTML = "";
  $("#more").hidden = true;
}

// An error replaces the results: a red line above the previous query's answers reads as if
// those answered this query.
function showError(message) {
  clearResults();
  state.page = null;
  setStatus(message, true);
}

async function run(append = false) {
  if (append && !state.page) return;
  try {
    if (!append) {
      state.page = queries[state.mode]();
      state.offset = 0;
      if (state.page.url) history.pushState({}, "", state.page.url);
    }
    setStatus("Searching…");
    const response = await state.page.fetch(state.offset);
    state.offset += response.results.length;
    setStatus("");
    render(response, append);
  } catch (error) {
    if (state.upload && !append) forgetUpload();  // the server could not read it: do not show it as the query
    showError(error.message);
  }
}

function showQueryImage(dropzone, src, alt) {
  let preview = dropzone.querySelector("img.query-thumb");
  if (!preview) { preview = document.createElement("img"); preview.className = "query-thumb"; dropzone.appendChild(preview); }
  preview.onerror = () => preview.remove();  // e.g. an id not in the gallery: no broken-image icon
  preview.src = src;
  preview.alt = alt;
}

// A gallery image (by id) as the query of the image or arithmetic panel.
function showGalleryQuery(prefix, id) {
  showQueryImage($(`#${prefix}-drop`), `/images/${id}/thumb`, `query image ${id}`);
}

function forgetUpload() {
  state.upload = null;
  for (const img of document.querySelectorAll(".query-thumb")) img.remove();
}

function acceptFile(file, dropzone) {
  if (!file) return;
  if (!file.type.startsWith("image/")) {
    forgetUpload();
    showError(`${file.name} is not an image: choose a JPEG, PNG, WebP, GIF or BMP file.`);
    return;
  }
  state.upload = file;
  showQueryImage(dropzone, URL.createObjectURL(file), `query image ${file.name}`);
  for (const idInput of document.querySelectorAll("#image-id, #arith-id")) idInput.value = "";
  if (state.mode === "image") run();
}

function wireDropzone(zoneSelector, inputSelector) {
  const zone = $(zoneSelector), input = $(inputSelector);
  input.addEventListener("change", () => acceptFile(input.files[0], zone));
  zone.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") { event.preventDefault(); input.click(); } });
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => { event.preventDefault(); zone.classList.remove("over"); acceptFile(event.dataTransfer.files[0], zone); });
}

function addChip(kind) {
  const word = $("#word").value.trim();
  if (!word) return;
  const chip = document.createElement("span");
  chip.className = `chip ${kind}`;
  chip.innerHTML = `${kind === "minus" ? "−" : "+"} ${escapeHtml(word)}<input type="hidden" name="${kind}" value="${escapeHtml(word)}">
    <button type="button" class="remove" aria-label="remove ${escapeHtml(word)}">×</button>`;
  $("#chips").appendChild(chip);
  $("#word").value = "";
  $("#word").focus();
}

// "use as query": the clicked image becomes the query, shown at the top with its captions below.
function useAsQuery(id) {
  forgetUpload();
  showMode("image");
  $("#image-id").value = id;
  showGalleryQuery("image", id);
  clearResults();
  window.scrollTo({ top: 0 });
  run();
}

document.addEventListener("DOMContentLoaded", () => {
  const params = new URLSearchParams(location.search);
  showMode(["text", "image", "arith"].includes(params.get("mode")) ? params.get("mode") : "text");
  for (const link of document.querySelectorAll(".modes a")) {
    link.addEventListener("click", (event) => {
      event.preventDefault();
      if (link.dataset.mode === state.mode) return;
      showMode(link.dataset.mode);
      clearResults();
      setStatus("");
      state.page = null;
      history.pushState({}, "", `?mode=${link.dataset.mode}${indexParam}`);
    });
  }
  for (const [formId, mode] of [["#text-form", "text"], ["#image-form", "image"], ["#arith-form", "arith"]]) {
    $(formId).addEventListener("submit", (event) => { event.preventDefault(); state.mode = mode; run(); });
  }
  wireDropzone("#image-drop", "#image-file");
  wireDropzone("#arith-drop", "#arith-file");
  $("#add-minus").addEventListener("click", () => addChip("minus"));
  $("#add-plus").addEventListener("click", () => addChip("plus"));
  $("#word").addEventListener("keydown", (event) => { if (event.key === "Enter") { event.preventDefault(); addChip(event.shiftKey ? "minus" : "plus"); } });
  $("#chips").addEventListener("click", (event) => { if (event.target.classList.contains("remove")) event.target.parentElement.remove(); });
  $("#results").addEventListener("click", (event) => {
    const button = event.target.closest("button.use");
    if (button) useAsQuery(button.dataset.id);
  });
  $("#more").addEventListener("click", () => run(true));
  for (const prefix of ["image", "arith"]) {  // a typed gallery id shows its image as the query
    const idInput = $(`#${prefix}-id`);
    idInput.addEventListener("change", () => {
      forgetUpload();
      if (idInput.value) showGalleryQuery(prefix, idInput.value);
    });
  }
  window.addEventListener("popstate", () => location.reload());
  // A server-rendered first page can be continued with "more".
  if ($("#results li.card, #results ol.captions li") && (params.get("q") || params.get("id"))) {
    state.page = queries[state.mode]();
    state.offset = document.querySelectorAll("#results li.card, #results ol.captions > li").length;
    const first = $("#results .score");
    state.best = first ? Number(first.dataset.score) : null;
    $("#more").hidden = state.offset < PAGE;
  }
});
