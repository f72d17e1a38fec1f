// genrefusion's page: POST /predict for the bars and the modality shares, then POST /explain for the heatmap and
// the words. Plain DOM, no framework and nothing fetched from outside this server. Every server-provided string is
// set with textContent (plot words are user input).
"use strict";

const $ = (id) => document.getElementById(id);
const pct = (x) => `${Math.round(x * 100)}%`;
let model = null;
let posterUrl = null;

function el(tag, attrs = {}, text = "") {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "style") Object.assign(e.style, v); else e.setAttribute(k, v);
  }
  if (text) e.textContent = text;
  return e;
}

// The API key, when the server requires one (GET /model answers 401): typed once, kept for this tab only.
function authHeaders() {
  const key = sessionStorage.getItem("genrefusion-api-key");
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// Every error has the body {code, message, field}; a 503 also says when to retry.
function errorText(r, body) {
  let text = (body && typeof body.message === "string") ? body.message : `HTTP ${r.status}`;
  const after = r.headers.get("Retry-After");
  if (r.status === 503 && after) text += ` (try again in ${after} s)`;
  return text;
}

async function loadModel() {
  try {
    const r = await fetch("/model", { headers: authHeaders() });
    if (r.status === 401) {
      $("key-box").hidden = false;
      $("model-info").textContent = "This server needs an API key.";
      return;
    }
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    model = await r.json();
    $("key-box").hidden = !model.api_key_required;
    const enc = Object.entries(model.encoders).map(([m, n]) => `${m}: ${n.split("/").pop()}`).join(", ");
    $("model-info").textContent = `Model: ${model.fusion} fusion (${enc}).`;
    const langs = (model.languages || {}).text;
    $("languages-hint").textContent = !model.modalities.includes("text") ? ""
      : langs ? `The plot may be in ${langs.length > 8 ? `any of ${langs.length} languages` : langs.join(", ")}`
                + ` (${(model.scripts.text || []).join(", ")} script).`
      : "The text encoder declares no languages.";
    const need = model.modalities.filter((m) => !model.missing_modality_ok[m]);
    $("missing-hint").textContent = need.length
      ? `This model needs ${need.map((m) => (m === "text" ? "a plot" : "a poster")).join(" and ")}.`
      : "Either one is enough; both is best.";
  } catch (e) {
    $("model-info").textContent = "Could not reach the model.";
  }
}

function formData(withPoster) {
  const fd = new FormData();
  const file = $("poster").files[0];
  if (file && withPoster) fd.append("poster", file);
  const plot = $("plot").value;
  if (plot.trim()) fd.append("plot", plot);
  return fd;
}

async function post(url, fd) {
  const r = await fetch(url, { method: "POST", body: fd, headers: authHeaders() });
  const body = await r.json().catch(() => null);
  if (!r.ok) throw new Error(errorText(r, body));
  return body;
}

// Warnings the prediction comes with (e.g. a plot in a script the text encoder cannot read): shown above the bars.
function renderWarnings(result) {
  const box = $("warnings");
  box.replaceChildren(...(result.warnings || []).map((w) => el("li", { "data-code": w.code }, w.message)));
  box.hidden = !box.children.length;
}

function renderBars(result) {
  const bars = $("bars");
  bars.replaceChildren();
  for (const g of result.genres) {
    const row = el("div", { class: `row bar${g.predicted ? " on" : ""}`, "data-genre": g.genre,
                            "data-probability": g.probability.toFixed(4), "data-threshold": g.threshold });
    row.append(el("span", { class: "name" }, g.genre));
    const track = el("div", { class: "track", title: `threshold ${g.threshold.toFixed(2)}` });
    track.append(el("div", { class: "fill", style: { width: pct(g.probability) } }));
    track.append(el("div", { class: "threshold", style: { left: `calc(${pct(g.threshold)} - 1px)` } }));
    row.append(track, el("span", { class: "value" }, g.probability.toFixed(3)));
    bars.append(row);
  }
  const p = $("predicted");
  p.replaceChildren();
  if (result.predicted.length) {
    p.append("Predicted: ");
    for (const g of result.predicted) p.append(el("span", { class: "chip" }, g));
  } else {
    p.textContent = `No genre reaches its threshold; most probable: ${result.genres[0].genre}.`;
  }
}

function stack(label, text, image, id) {
  const wrap = el("div", { id });
  wrap.append(el("div", { class: "stack-label" }, label));
  const s = el("div", { class: "stack", "data-text": text.toFixed(4), "data-image": image.toFixed(4) });
  s.append(el("div", { class: "t", style: { width: pct(text) } }, text >= 0.12 ? `plot ${pct(text)}` : ""));
  s.append(el("div", { class: "i", style: { width: pct(image) } }, image >= 0.12 ? `poster ${pct(image)}` : ""));
  wrap.append(s);
  return wrap;
}

function renderContribution(result) {
  const box = $("contribution");
  box.replaceChildren();
  const c = result.contribution;
  box.append(stack("Occlusion share (prediction change without each)", c.text ?? 0, c.image ?? 0, "occlusion"));
  const f = result.fusion;
  if (f) {
    const names = { gmu_gate: "GMU gate (mean image share of the fused units)",
                    attention_weights: "Attention weights", late_alpha: "Late-fusion weight α" };
    box.append(stack(names[f.kind] || f.kind, f.text, f.image, "fusion-weights"));
  }
}

// Heatmap colours: unimportant regions stay see-through, then yellow -> red, more opaque as importance grows.
function heatColour(v) {
  const g = Math.round(255 * Math.min(1, 2 * (1 - v)));
  return [255, g, 0, Math.round(200 * Math.pow(v, 0.7))];
}

async function renderHeatmap(grid) {
  const canvas = $("heatmap");
  const img = new Image();
  img.src = posterUrl;
  await img.decode();
  const w = 300, h = Math.round(300 * img.height / img.width);
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0, w, h);
  const n = grid.length, m = grid[0].length;
  const small = document.createElement("canvas");
  small.width = m; small.height = n;
  const sctx = small.getContext("2d");
  const data = sctx.createImageData(m, n);
  grid.flat().forEach((v, i) => data.data.set(heatColour(v), 4 * i));
  sctx.putImageData(data, 0, 0);
  ctx.imageSmoothingEnabled = true;  // bilinear upsampling of the coarse grid, as Grad-CAM is usually shown
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(small, 0, 0, w, h);
  canvas.dataset.grid = `${n}x${m}`;
  $("heatmap-box").hidden = false;
}

function renderWords(plot) {
  const words = plot.words;
  const sentences = plot.method === "sentence-occlusion";  // a text encoder without gradients: whole sentences
  $("words-title").textContent = sentences ? "Plot sentences that weighed most" : "Plot words that weighed most";
  $("words-method").textContent = sentences ? "Sentence occlusion (the change when a sentence is left out)"
                                            : "Integrated gradients";
  const label = (w) => (w.word.length > 60 ? `${w.word.slice(0, 57)}…` : w.word);
  const top = [...words].sort((a, b) => Math.abs(b.score) - Math.abs(a.score)).slice(0, 10);
  const ol = $("top-words");
  ol.replaceChildren(...top.map((w) => el("li", { class: w.score > 0 ? "pos" : "neg" },
                                          `${label(w)} (${w.score > 0 ? "+" : ""}${w.score.toFixed(2)})`)));
  const p = $("words");
  p.replaceChildren();
  let end = 0;
  for (const w of words) {  // the plot's own text between words (spaces, punctuation the tokenizer skipped)
    p.append(plot.text.slice(end, w.start));
    const a = Math.min(1, Math.abs(w.score));
    const colour = w.score > 0 ? `rgba(214, 39, 40, ${0.7 * a})` : `rgba(31, 119, 180, ${0.7 * a})`;
    p.append(el("span", { style: { background: colour }, title: w.score.toFixed(3) }, w.word));
    end = w.end;
  }
  if (plot.truncated) p.append(el("em", {}, ` … (the model reads the first ${plot.tokens_read} tokens)`));
  $("words-box").hidden = false;
}

async function explain(fd) {
  $("explain-status").textContent = "Working out why…";
  $("heatmap-box").hidden = true;
  $("words-box").hidden = true;
  try {
    const e = await post("/explain", fd);
    $("explained-genre").textContent = `${e.genre} (p = ${e.probability.toFixed(2)})`;
    if (e.poster) await renderHeatmap(e.poster.grid);
    if (e.plot) renderWords(e.plot);
    $("explain-status").textContent = `Explained in ${e.seconds.toFixed(1)} s.`;
  } catch (err) {
    $("explain-status").textContent = `No explanation: ${err.message}`;
  }
}

async function onSubmit(event) {
  event.preventDefault();
  $("error").hidden = true;
  const fd = formData(true);
  if (![...fd.keys()].length) {
    showError("Choose a poster or paste a plot first.");
    return;
  }
  $("submit").disabled = true;
  $("status").textContent = "Predicting…";
  try {
    const t0 = performance.now();
    const result = await post("/predict", fd);
    renderWarnings(result);
    renderBars(result);
    renderContribution(result);
    $("results").hidden = false;
    $("status").textContent = `Predicted in ${Math.round(performance.now() - t0)} ms.`;
    document.body.dataset.state = "predicted";
    await explain(fd);
    document.body.dataset.state = "explained";
  } catch (err) {
    showError(err.message);
  } finally {
    $("submit").disabled = false;
  }
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("status").textContent = "";
  document.body.dataset.state = "error";
}

$("poster").addEventListener("change", () => {
  const file = $("poster").files[0];
  if (posterUrl) URL.revokeObjectURL(posterUrl);
  posterUrl = file ? URL.createObjectURL(file) : null;
  $("preview").hidden = !file;
  if (file) $("preview").src = posterUrl;
});
$("api-key").addEventListener("change", () => {
  sessionStorage.setItem("genrefusion-api-key", $("api-key").value.trim());
  loadModel();
});
$("movie-form").addEventListener("submit", onSubmit);
loadModel();
