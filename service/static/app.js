// dentalmim clinician page: upload a DICOM, show the overlay (re-rendered by the server at the slider's
// threshold) and the findings at or above it. The API key stays in this tab's sessionStorage.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { prediction: null, overlayUrl: null, timer: null };

function apiKey() {
  return $("api-key").value.trim();
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function apiFetch(path, options = {}) {
  const headers = Object.assign({ "X-API-Key": apiKey() }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try {
      const body = await response.json();
      if (body.detail && body.detail.message) message = body.detail.code + ": " + body.detail.message;
    } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function allBoxes(p) {
  return p.findings.concat(p.candidates).sort((a, b) => b.score - a.score);
}

function fmt(v) { return Number(v).toFixed(1); }

function renderList() {
  const p = state.prediction;
  const threshold = Number($("threshold").value);
  $("threshold-value").textContent = threshold.toFixed(3);
  const shown = allBoxes(p).filter((f) => f.score >= threshold);
  const list = $("findings");
  list.replaceChildren();
  for (const f of shown) {
    const li = document.createElement("li");
    li.className = "finding";
    const b = f.box_px;
    let text = `${f.class} ${f.score.toFixed(3)}: x ${fmt(b.x1)}–${fmt(b.x2)}, y ${fmt(b.y1)}–${fmt(b.y2)} px`;
    if (f.box_mm) {
      text += ` (${(f.box_mm.x2 - f.box_mm.x1).toFixed(2)} × ${(f.box_mm.y2 - f.box_mm.y1).toFixed(2)} mm)`;
    }
    li.textContent = text;
    list.appendChild(li);
  }
  $("finding-count").textContent = `(${shown.length})`;
}

async function loadOverlay() {
  const p = state.prediction;
  const threshold = Number($("threshold").value);
  const response = await apiFetch(`${p.links.overlay}?threshold=${threshold}&max_side=1600`);
  const url = URL.createObjectURL(await response.blob());
  const img = $("overlay");
  img.onload = () => { img.dataset.threshold = String(threshold); };
  img.src = url;
  if (state.overlayUrl) URL.revokeObjectURL(state.overlayUrl);
  state.overlayUrl = url;
}

function onThreshold() {
  renderList();
  clearTimeout(state.timer);
  state.timer = setTimeout(() => loadOverlay().catch((e) => setStatus(e.message, true)), 200);
}

async function downloadSr(event) {
  event.preventDefault();
  try {
    const response = await apiFetch(state.prediction.links.sr);
    const url = URL.createObjectURL(await response.blob());
    const a = document.createElement("a");
    a.href = url;
    a.download = `${state.prediction.prediction_id}.sr.dcm`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function analyse() {
  const file = $("file").files[0];
  if (!apiKey()) return setStatus("Enter your API key first.", true);
  if (!file) return setStatus("Choose a DICOM file first.", true);
  sessionStorage.setItem("dentalmim-key", apiKey());
  setStatus("Analysing…", false);
  $("upload").disabled = true;
  try {
    const form = new FormData();
    form.append("files", file);
    const response = await apiFetch("/v1/predictions", { method: "POST", body: form });
    const p = (await response.json()).predictions[0];
    state.prediction = p;
    const slider = $("threshold");
    slider.min = String(Math.min(p.score_floor, p.score_threshold));
    slider.value = String(p.score_threshold);
    $("summary").textContent = `Caries probability ${(100 * p.image_probability).toFixed(1)} %` +
      ` (${p.caries_present ? "caries suspected" : "no caries suspected"}); model ${p.model_version}`;
    const warnings = p.warnings || [];
    $("warnings").textContent = warnings.map((w) => `Caution: ${w}`).join(" ");
    $("warnings").hidden = warnings.length === 0;
    $("result").hidden = false;
    renderList();
    await loadOverlay();
    setStatus(`Done: ${p.findings.length} finding(s) at the model's threshold.`, false);
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    $("upload").disabled = false;
  }
}

window.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = sessionStorage.getItem("dentalmim-key") || "";
  $("upload").addEventListener("click", analyse);
  $("threshold").addEventListener("input", onThreshold);
  $("sr-link").addEventListener("click", downloadSr);
});
