// sangal serve: the search page. Plain JS, no build step; talks to the JSON API of the same server.
// body[data-state] is loading | busy | ready | error and body[data-seq] counts finished actions
// (the browser test waits on it).
"use strict";

const $ = (sel) => document.querySelector(sel);
const params = new URLSearchParams(location.search);
const state = {
  info: null,
  query: null,        // {kind: "upload", file, url} | {kind: "gallery", id}
  where: {},          // attribute -> class
  offset: 0,
  k: Math.max(1, Math.min(200, parseInt(params.get("k") || "20", 10) || 20)),
  total: 0,
  maps: null,         // the /maps answer of the current query
  stage: 1,           // index into maps.stages (layer3)
  attr: 0,
  attributes: {},     // the query's predicted attributes
};
const SHOWN = ["gender", "age", "upper_colour", "lower_colour"];
const SHOWN_IF_YES = ["hat", "backpack", "bag", "handbag"];

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

async function api(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  return body;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

function setState(name) {
  document.body.dataset.state = name;
  if (name !== "busy") document.body.dataset.seq = String(Number(document.body.dataset.seq) + 1);
}

async function act(work) {
  setState("busy");
  try {
    await work();
    setState("ready");
  } catch (err) {
    showError(err.message);
    setState("error");
  }
}

const whereText = () => Object.entries(state.where).map(([k, v]) => `${k}=${v}`).join(",");

// --- results ---------------------------------------------------------------------------------

async function fetchResults() {
  const q = state.query;
  const where = whereText();
  if (q && q.kind === "upload") {
    const form = new FormData();
    form.append("image", q.file);
    form.append("k", state.k);
    form.append("offset", state.offset);
    if (where) form.append("where", where);
    return api("/api/search", { method: "POST", body: form });
  }
  const args = new URLSearchParams({ k: state.k, offset: state.offset });
  if (where) args.set("where", where);
  return api(q ? `/api/search/${q.id}?${args}` : `/api/gallery?${args}`);
}

function attributeText(attributes) {
  const names = [...Object.keys(state.where), ...SHOWN.filter((n) => !(n in state.where))];
  const parts = names.filter((n) => n in attributes).map((n) => `${n}=${attributes[n]}`);
  for (const n of SHOWN_IF_YES) if (attributes[n] === "yes" && !(n in state.where)) parts.push(`${n}=yes`);
  return parts.join(" · ");
}

function hitCard(hit) {
  const caption = [el("span", { className: "rank", textContent: `#${hit.rank}` })];
  if (hit.distance !== null) caption.push(" ", el("span", { className: "distance", textContent: hit.distance.toFixed(4) }));
  if (hit.camera) caption.push(" ", el("span", { className: "camera", textContent: hit.camera }));
  caption.push(el("div", { className: "attrs", textContent: attributeText(hit.attributes) }));
  const card = el("figure", {
    className: "hit", tabIndex: 0, title: "search from this image",
    dataset: { galleryId: hit.gallery_id, rank: hit.rank },
  }, [
    el("img", { src: `/api/gallery/${hit.gallery_id}/image`, alt: `gallery image ${hit.gallery_id}`, loading: "lazy" }),
    el("figcaption", {}, caption),
  ]);
  const pick = () => setQuery({ kind: "gallery", id: hit.gallery_id });
  card.addEventListener("click", pick);
  card.addEventListener("keydown", (e) => { if (e.key === "Enter") pick(); });
  return card;
}

function renderResults(answer) {
  state.total = answer.total;
  const q = state.query;
  $("#results-title").textContent = !q ? "Gallery: click an image to search from it"
    : q.kind === "upload" ? "Hits for the uploaded image" : `Hits for gallery image ${q.id}`;
  const last = Math.min(answer.offset + answer.hits.length, answer.total);
  $("#page-info").textContent = answer.total ? `${answer.offset + 1}–${last} of ${answer.total}` : "no image passes the filters";
  const limit = q ? Math.min(answer.total, state.info.max_results) : answer.total;
  $("#prev").disabled = answer.offset === 0;
  $("#next").disabled = answer.offset + state.k >= limit;
  const t = answer.timing_ms;
  const timing = [["decode", t.decode], ["embedding", t.embed], ["ranking", t.rank]].filter(([, v]) => v !== undefined);
  $("#timing").textContent = timing.map(([name, v]) => `${name} ${v.toFixed(1)} ms`).join(" · ");
  $("#hits").replaceChildren(...answer.hits.map(hitCard));
  if (answer.query) {
    state.attributes = answer.query.attributes;
    const camera = answer.query.camera ? `, camera ${answer.query.camera}` : "";
    $("#query-caption").textContent = q.kind === "upload" ? "the uploaded image" : `gallery image ${q.id}${camera}`;
  }
}

async function loadResults() {
  showError("");
  renderResults(await fetchResults());
  renderMapControls();
}

// --- filters ---------------------------------------------------------------------------------

function renderFilters() {
  const groups = state.info.filters.map((f) => el("div", { className: "group" }, [
    el("span", { className: "name", textContent: f.name }),
    ...f.classes.map((c) => {
      const on = state.where[f.name] === c.value;
      const chip = el("button", {
        type: "button", className: on ? "chip on" : "chip", title: `keep the ${c.count} gallery images predicted ${f.name}=${c.value}`,
        dataset: { name: f.name, value: c.value, count: c.count },
      }, [c.value, el("small", { textContent: String(c.count) })]);
      chip.setAttribute("aria-pressed", on ? "true" : "false");
      chip.addEventListener("click", () => toggleFilter(f.name, c.value));
      return chip;
    }),
  ]));
  $("#filters").replaceChildren(...groups);
}

function toggleFilter(name, value) {
  if (state.where[name] === value) delete state.where[name];
  else state.where[name] = value;
  state.offset = 0;
  renderFilters();
  act(loadResults);
}

// --- the query and its heat maps ----------------------------------------------------------------

async function loadMaps() {
  const q = state.query;
  if (!state.info.heat_maps) {
    state.maps = null;
    $("#maps-note").textContent = `This ${state.info.mode} model uses no heat maps.`;
    return;
  }
  if (q.kind === "upload") {
    const form = new FormData();
    form.append("image", q.file);
    state.maps = await api("/api/maps", { method: "POST", body: form });
  } else {
    state.maps = await api(`/api/gallery/${q.id}/maps`);
  }
  $("#maps-note").textContent = `${state.maps.kind === "fast" ? "Forward-only (distilled)" : "Exact Grad-CAM"} ` +
    "attribute heat maps, as the Re-ID net used them (paper eqs. 1-2); pick an attribute and a stage.";
}

function renderMapControls() {
  const maps = state.maps;
  if (!maps || !maps.maps.length) {
    $("#stages").replaceChildren();
    $("#map-attributes").replaceChildren();
    drawOverlay();
    return;
  }
  $("#stages").replaceChildren(...maps.stages.map((name, i) => {
    const b = el("button", { type: "button", className: i === state.stage ? "on" : "", textContent: name });
    b.addEventListener("click", () => { state.stage = i; renderMapControls(); });
    return b;
  }));
  $("#map-attributes").replaceChildren(...maps.attributes.map((name, k) => {
    const label = name in state.attributes ? `${name}: ${state.attributes[name]}` : name;
    const b = el("button", { type: "button", className: k === state.attr ? "on" : "", textContent: label, dataset: { attribute: k } });
    b.addEventListener("click", () => { state.attr = k; renderMapControls(); });
    return b;
  }));
  drawOverlay();
}

function jet(t) {  // matplotlib's "jet", piecewise linear
  const c = (x) => Math.round(255 * Math.max(0, Math.min(1, x)));
  return [c(1.5 - Math.abs(4 * t - 3)), c(1.5 - Math.abs(4 * t - 2)), c(1.5 - Math.abs(4 * t - 1))];
}

function drawOverlay() {
  const img = $("#query-image");
  const canvas = $("#overlay");
  canvas.width = img.clientWidth;
  canvas.height = img.clientHeight;
  canvas.style.opacity = String($("#opacity").value / 100);
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const maps = state.maps;
  if (!maps || !maps.maps.length || !canvas.width) return;
  const map = maps.maps[state.stage][state.attr];  // h x w, over the whole model input
  const h = map.length, w = map[0].length;
  const peak = Math.max(...map.flat());
  const small = el("canvas", { width: w, height: h });
  const pixels = small.getContext("2d").createImageData(w, h);
  map.flat().forEach((v, i) => {
    const t = peak > 0 ? v / peak : 0;
    const [r, g, b] = jet(t);
    pixels.data.set([r, g, b, Math.round(90 + 165 * t)], 4 * i);  // cold regions let the person show through
  });
  small.getContext("2d").putImageData(pixels, 0, 0);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
}

function setQuery(query) {
  const previous = state.query;
  act(async () => {
    state.query = query;
    state.offset = 0;
    try {
      await loadResults();
    } catch (err) {
      state.query = previous;  // a refused upload leaves the last good query on screen
      throw err;
    }
    if (previous && previous.url) URL.revokeObjectURL(previous.url);
    $("#query").hidden = false;
    const img = $("#query-image");
    img.dataset.kind = query.kind;
    img.dataset.galleryId = query.kind === "gallery" ? query.id : "";
    img.src = query.kind === "upload" ? query.url : `/api/gallery/${query.id}/image`;
    await img.decode().catch(() => {});
    await loadMaps();
    renderMapControls();
  });
}

function uploadQuery(file) {
  if (file) setQuery({ kind: "upload", file, url: URL.createObjectURL(file) });
}

function page(step) {
  state.offset = Math.max(0, state.offset + step * state.k);
  act(loadResults);
}

function wire() {
  const drop = $("#drop");
  $("#file").addEventListener("change", (e) => { uploadQuery(e.target.files[0]); e.target.value = ""; });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); uploadQuery(e.dataTransfer.files[0]); });
  $("#prev").addEventListener("click", () => page(-1));
  $("#next").addEventListener("click", () => page(1));
  $("#opacity").addEventListener("input", drawOverlay);
  window.addEventListener("resize", drawOverlay);
}

act(async () => {
  wire();
  state.info = await api("/api/info");
  const i = state.info;
  $("#gallery-info").textContent = `${i.num_images} gallery images · ${i.mode} model at ${i.input_size[0]}×${i.input_size[1]}` +
    (i.heat_maps ? ` · ${i.aah} heat maps` : "") + ` · ${i.backend} search`;
  renderFilters();
  await loadResults();
});
