// Progressive enhancement of the search page: uploads, drag and drop, word chips, paging, and
// the query kept in the URL. Without this file, text search still works (server-rendered).
"use strict";

const PAGE = 24;
const state = { mode: "text", page: null, offset: 0, upload: null };
const $ = (selector) => document.querySelector(selector);

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

function imageCard(hit) {
  const caption = hit.captions && hit.captions.length ? hit.captions[0] : hit.path;
  return `<li class="card"><img src="${hit.thumbnail_url}" alt="${escapeHtml(caption)}" loading="lazy">
    <span class="score">${hit.score.toFixed(3)}</span><span class="caption">${escapeHtml(caption)}</span>
    <button type="button" class="use" data-id="${hit.id}">use as query</button></li>`;
}

function captionItem(hit) {
  return `<li><button type="button" class="use thumb" data-id="${hit.image.id}" title="use this image as the query">
    <img src="${hit.image.thumbnail_url}" alt=""></button>
    <span class="text">${escapeHtml(hit.text)}</span> <span class="score">${hit.score.toFixed(3)}</span></li>`;
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

function render(response, append) {
  const captions = response.mode.endsWith("caption");
  const items = response.results.map(captions ? captionItem : imageCard).join("");
  let list = $("#results > ul, #results > ol");
  if (!append || !list) {
    const warnings = response.warnings.map((w) => `<p class="warning">${escapeHtml(w)}</p>`).join("");
    $("#results").innerHTML = `${warnings}${generated(response)}<${captions ? "ol class=\"captions\"" : "ul class=\"grid\""}></${captions ? "ol" : "ul"}>`;
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
    return { url: `?mode=text&q=${encodeURIComponent(q)}`,
             fetch: (offset) => request(`/api/search/text?q=${encodeURIComponent(q)}&k=${PAGE}&offset=${offset}`) };
  },
  image() {
    const id = $("#image-id").value;
    if (!state.upload && !id) throw new Error("Choose or drop an image, or give a gallery image id.");
    const upload = state.upload;
    return { url: upload ? null : `?mode=image&id=${id}`,
             fetch: (offset) => { const form = imageForm(upload, id); form.append("k", PAGE); form.append("offset", offset);
                                  return request("/api/search/image", { method: "POST", body: form }); } };
  },
  arith() {
    const id = $("#arith-id").value, minus = words("minus"), plus = words("plus");
    if (!state.upload && !id) throw new Error("Start from an image: choose, drop, or give a gallery image id.");
    if (!minus.length && !plus.length) throw new Error("Add at least one − word or + word.");
    const upload = state.upload;
    const wordParams = [...minus.map((w) => `&minus=${encodeURIComponent(w)}`), ...plus.map((w) => `&plus=${encodeURIComponent(w)}`)].join("");
    return { url: upload ? null : `?mode=arith&id=${id}${wordParams}`,
             fetch: (offset) => { const form = imageForm(upload, id);
                                  minus.forEach((w) => form.append("minus", w)); plus.forEach((w) => form.append("plus", w));
                                  form.append("k", PAGE); form.append("offset", offset);
                                  return request("/api/search/arithmetic", { method: "POST", body: form }); } };
  },
};

async function run(append = false) {
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
    setStatus(error.message, true);
  }
}

function acceptFile(file, dropzone) {
  if (!file) return;
  state.upload = file;
  let preview = dropzone.querySelector("img.query-thumb");
  if (!preview) { preview = document.createElement("img"); preview.className = "query-thumb"; dropzone.appendChild(preview); }
  preview.src = URL.createObjectURL(file);
  preview.alt = `query image ${file.name}`;
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

function useAsQuery(id) {
  state.upload = null;
  showMode("image");
  $("#image-id").value = id;
  for (const img of document.querySelectorAll(".query-thumb")) img.remove();
  run();
}

document.addEventListener("DOMContentLoaded", () => {
  const params = new URLSearchParams(location.search);
  showMode(["text", "image", "arith"].includes(params.get("mode")) ? params.get("mode") : "text");
  for (const link of document.querySelectorAll(".modes a")) {
    link.addEventListener("click", (event) => { event.preventDefault(); showMode(link.dataset.mode);
      history.pushState({}, "", `?mode=${link.dataset.mode}`); });
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
  window.addEventListener("popstate", () => location.reload());
  // A server-rendered first page can be continued with "more".
  if ($("#results li.card, #results ol.captions li") && (params.get("q") || params.get("id"))) {
    state.page = queries[state.mode]();
    state.offset = document.querySelectorAll("#results li").length;
    $("#more").hidden = state.offset < PAGE;
  }
});
