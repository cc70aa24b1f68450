// defectkit review page: plain JS, no build step. Every value from the server is inserted as text.
"use strict";

const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4", "#469990"];
const SVG_NS = "http://www.w3.org/2000/svg";
const PAGE = 120;
const state = { gridTicket: 0, summary: null, items: [], shown: PAGE, ids: [], item: null, selected: -1, hidden: new Set(), draw: null };

const $ = (id) => document.getElementById(id);
function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
function svgEl(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}
function colour(cls) {
  const classes = state.summary ? state.summary.classes : [];
  const index = classes.indexOf(cls);
  return PALETTE[(index >= 0 ? index : classes.length + [...cls].reduce((a, c) => a + c.charCodeAt(0), 0)) % PALETTE.length];
}
async function api(path, options = {}) {
  const init = { ...options, headers: { "X-Review": "1", ...(options.headers || {}) } };
  if (options.json !== undefined) {
    init.method = init.method || "POST";
    init.body = JSON.stringify(options.json);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}
function fmt(score) { return score === null || score === undefined ? "–" : Number(score).toFixed(3); }

// ------------------------------------------------------------------------------------ grid
function gridQuery() {
  const q = new URLSearchParams();
  for (const [key, id] of [["status", "f-status"], ["review", "f-review"], ["gate", "f-gate"], ["cls", "f-cls"], ["min_score", "f-min"], ["max_score", "f-max"], ["sort", "f-sort"]]) {
    if ($(id).value !== "") q.set(key, $(id).value);
  }
  return q;
}
async function loadGrid() {
  const q = gridQuery();
  sessionStorage.setItem("filters", q.toString());
  const ticket = ++state.gridTicket;
  const data = await api("/api/items?" + q.toString());
  if (ticket !== state.gridTicket) return; // a newer filter was chosen while this one loaded
  state.items = data.items;
  state.ids = data.items.map((i) => i.id);
  state.shown = PAGE;
  $("grid-count").textContent = `${data.total} images`;
  renderGrid();
}
function renderGrid() {
  const grid = $("grid");
  grid.replaceChildren();
  for (const item of state.items.slice(0, state.shown)) {
    const card = el("a", { class: "card" + (item.reviewed ? " reviewed" : "") + (item.status === "error" ? " error" : ""), href: "#/item/" + item.id, "data-id": item.id });
    if (item.status === "ok") card.append(el("img", { src: `/api/items/${item.id}/image?size=thumb`, loading: "lazy", alt: item.name }));
    else card.append(el("div", { class: "note" }, item.error || "error"));
    card.append(el("div", { class: "name", title: item.name }, item.name));
    const meta = el("div", { class: "meta" });
    meta.append(el("span", { class: "badge" + (item.gate && item.gate !== "normal" ? " defect" : "") }, item.gate || item.status));
    meta.append(el("span", {}, `${item.n} inst.`), el("span", { class: "score" }, fmt(item.score)));
    card.append(meta);
    grid.append(card);
  }
  $("more").hidden = state.items.length <= state.shown;
}

// ---------------------------------------------------------------------------- photo view
function instanceList(item) {
  // Predicted instances with the reviewer's decisions applied, then the drawn regions.
  const decisions = item.decisions.instances || {};
  return item.instances.map((inst, index) => {
    const d = decisions[String(index)] || {};
    return { index, inst, decision: d.decision || null, cls: d.class || inst.class };
  });
}
function ringPoints(inst) {
  if (inst.polygon && inst.polygon.length >= 3) return inst.polygon;
  const [x1, y1, x2, y2] = inst.box;
  return [[x1, y1], [x2, y1], [x2, y2], [x1, y2]];
}
function drawShape(svg, points, cls, extra = {}) {
  const shape = svgEl("polygon", { points: points.map((p) => p.join(",")).join(" "), class: "shape", stroke: colour(cls), fill: colour(cls), "data-class": cls, ...extra });
  shape.style.fillOpacity = $("opacity").value;
  svg.append(shape);
  return shape;
}
function setupSvg(svg, width, height) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
}
function applyVisibility() {
  for (const shape of document.querySelectorAll("svg .shape")) {
    shape.style.display = state.hidden.has(shape.dataset.class) ? "none" : "";
    shape.style.fillOpacity = $("opacity").value;
  }
}
function renderItem() {
  const item = state.item;
  const list = instanceList(item);
  $("item-name").textContent = item.name;
  $("item-meta").textContent = `gate ${item.gate || "–"} · score ${fmt(item.score)} · ${item.width}×${item.height}`;
  const svg = $("pred-svg");
  setupSvg(svg, item.width, item.height);
  for (const entry of list) {
    const shape = drawShape(svg, ringPoints(entry.inst), entry.cls, { "data-index": entry.index });
    if (entry.decision === "reject") shape.classList.add("rejected");
    if (entry.index === state.selected) shape.classList.add("selected");
    shape.addEventListener("click", (event) => { if (!state.draw) { event.stopPropagation(); select(entry.index); } });
  }
  for (const region of item.decisions.added || []) drawShape(svg, region.polygon, region.class, { "data-added": region.id });
  const gt = item.ground_truth;
  $("gt-figure").hidden = !gt;
  $("gt-note").textContent = item.ground_truth_note || "";
  if (gt) {
    const gsvg = $("gt-svg");
    setupSvg(gsvg, item.width, item.height);
    for (const shape of gt) {
      if (shape.polygon) drawShape(gsvg, shape.polygon, shape.class);
      else { const [x1, y1, x2, y2] = shape.box; drawShape(gsvg, [[x1, y1], [x2, y1], [x2, y2], [x1, y2]], shape.class); }
    }
  }
  // Class toggles: every class of the run plus any class the photo shows.
  const toggles = $("class-toggles");
  toggles.replaceChildren();
  const classes = new Set(state.summary.classes);
  list.forEach((e) => classes.add(e.cls));
  for (const cls of classes) {
    const label = el("label", { class: "toggle" });
    const box = el("input", { type: "checkbox", "data-class": cls });
    box.checked = !state.hidden.has(cls);
    box.addEventListener("change", () => { box.checked ? state.hidden.delete(cls) : state.hidden.add(cls); applyVisibility(); });
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = colour(cls);
    label.append(box, swatch, document.createTextNode(" " + cls));
    toggles.append(label);
  }
  const ol = $("instances");
  ol.replaceChildren();
  for (const entry of list) {
    const li = el("li", { class: "inst" + (entry.index === state.selected ? " selected" : ""), "data-index": entry.index, "data-decision": entry.decision || "" });
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = colour(entry.cls);
    const select_ = el("select", { class: "cls", "aria-label": "class" });
    for (const cls of state.summary.classes) select_.append(el("option", { value: cls }, cls));
    select_.value = entry.cls;
    select_.addEventListener("change", () => decide(entry.index, null, select_.value));
    li.append(swatch, el("span", { class: "label" }, `${entry.index + 1}. ${entry.inst.class} ${fmt(entry.inst.score)} `), select_);
    const accept = el("button", { type: "button", class: "accept" }, "accept");
    const reject = el("button", { type: "button", class: "reject" }, "reject");
    accept.addEventListener("click", () => decide(entry.index, "accept"));
    reject.addEventListener("click", () => decide(entry.index, "reject"));
    li.append(accept, reject);
    li.addEventListener("click", (event) => { if (event.target === li) select(entry.index); });
    ol.append(li);
  }
  if (!list.length) ol.append(el("li", {}, "no instances predicted"));
  const added = $("added");
  added.replaceChildren();
  for (const region of item.decisions.added || []) {
    const li = el("li", { class: "added", "data-id": region.id }, `${region.id}: ${region.class} (${region.polygon.length} points) `);
    const remove = el("button", { type: "button", class: "remove" }, "delete");
    remove.addEventListener("click", () => change(`/api/items/${item.id}/regions/${region.id}`, { method: "DELETE", json: {} }));
    li.append(remove);
    added.append(li);
  }
  $("item-status").textContent = item.reviewed ? "reviewed ✓" : "not reviewed";
  $("item-status").dataset.reviewed = item.reviewed ? "1" : "0";
  $("done").textContent = item.decisions.done ? "Unmark reviewed" : "Mark reviewed";
  applyVisibility();
}
async function openItem(id) {
  state.item = await api("/api/items/" + id);
  state.selected = -1;
  cancelDraw();
  for (const img of [$("pred-img"), $("gt-img")]) img.src = `/api/items/${id}/image`;
  if (!state.ids.length) {
    const data = await api("/api/items?" + (sessionStorage.getItem("filters") || ""));
    state.ids = data.items.map((i) => i.id);
  }
  renderItem();
}
function select(index) { state.selected = index; renderItem(); }
async function change(path, options) {
  const result = await api(path, options);
  state.item.decisions = result.decisions;
  state.item.reviewed = result.reviewed;
  renderItem();
  refreshProgress();
}
function decide(index, decision, cls) {
  const body = {};
  if (decision) body.decision = decision;
  if (cls) body.class = cls;
  return change(`/api/items/${state.item.id}/instances/${index}`, { json: body }).catch(showError);
}
function step(delta) {
  const at = state.ids.indexOf(state.item.id);
  const next = state.ids[at + delta];
  if (next) location.hash = "#/item/" + next;
}

// ------------------------------------------------------------------------- drawing regions
function svgPoint(event) {
  const svg = $("pred-svg");
  const point = svg.createSVGPoint();
  point.x = event.clientX; point.y = event.clientY;
  const p = point.matrixTransform(svg.getScreenCTM().inverse());
  return [Math.round(p.x * 10) / 10, Math.round(p.y * 10) / 10];
}
function startDraw(kind) {
  cancelDraw();
  state.draw = { kind, points: [] };
  $("draw-hint").textContent = kind === "box" ? "drag a box on the photo" : "click points, Enter to finish";
}
function cancelDraw() {
  state.draw = null;
  $("draw-hint").textContent = "";
  const sketch = document.querySelector("#pred-svg .drawing");
  if (sketch) sketch.remove();
}
function sketch(points) {
  const svg = $("pred-svg");
  let line = svg.querySelector(".drawing");
  if (!line) { line = svgEl("polygon", { class: "drawing" }); svg.append(line); }
  line.setAttribute("points", points.map((p) => p.join(",")).join(" "));
}
async function finishDraw(body) {
  cancelDraw();
  body.class = $("draw-class").value;
  await change(`/api/items/${state.item.id}/regions`, { json: body }).catch(showError);
}
function setupDrawing() {
  const svg = $("pred-svg");
  svg.addEventListener("mousedown", (event) => {
    if (!state.draw) return;
    event.preventDefault();
    const p = svgPoint(event);
    if (state.draw.kind === "box") state.draw.start = p;
    else { state.draw.points.push(p); sketch(state.draw.points); }
  });
  svg.addEventListener("mousemove", (event) => {
    if (state.draw && state.draw.kind === "box" && state.draw.start) {
      const [x1, y1] = state.draw.start, [x2, y2] = svgPoint(event);
      sketch([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]);
    }
  });
  svg.addEventListener("mouseup", (event) => {
    if (state.draw && state.draw.kind === "box" && state.draw.start) {
      const [x1, y1] = state.draw.start, [x2, y2] = svgPoint(event);
      finishDraw({ box: [x1, y1, x2, y2] });
    }
  });
}

// ---------------------------------------------------------------------------------- upload
async function upload(file) {
  $("upload-note").textContent = `sending ${file.name}…`;
  $("upload-result").hidden = true;
  try {
    const response = await fetch("/api/upload", { method: "POST", body: file, headers: { "X-Review": "1", "X-Filename": encodeURIComponent(file.name).slice(0, 200), "Content-Type": "application/octet-stream" } });
    const body = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) throw new Error(body.error || response.statusText);
    $("upload-note").textContent = body.note || "";
    $("upload-result").hidden = false;
    $("upload-name").textContent = decodeURIComponent(body.name);
    $("upload-img").src = `/api/uploads/${body.id}/image`;
    const svg = $("upload-svg");
    setupSvg(svg, body.width, body.height);
    const ol = $("upload-instances");
    ol.replaceChildren();
    const prediction = body.prediction;
    if (prediction) {
      $("upload-meta").textContent = `gate ${(prediction.gate || {}).label || "–"} · score ${fmt((prediction.gate || {}).score)}`;
      for (const inst of prediction.instances) {
        drawShape(svg, ringPoints(inst), inst.class);
        ol.append(el("li", {}, `${inst.class} ${fmt(inst.score)} · area ${inst.area}`));
      }
      if (!prediction.instances.length) ol.append(el("li", {}, "no defect found"));
    } else $("upload-meta").textContent = "";
  } catch (error) {
    $("upload-note").textContent = "upload failed: " + error.message;
  }
}
function setupUpload() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) upload(e.dataTransfer.files[0]); });
  $("file").addEventListener("change", () => { if ($("file").files[0]) upload($("file").files[0]); });
}

// ---------------------------------------------------------------------------- navigation
function showError(error) { $("export-result").textContent = "error: " + error.message; }
async function refreshProgress() {
  const summary = await api("/api/summary");
  state.summary = summary;
  $("progress").textContent = `${summary.n_reviewed} of ${summary.n_images} reviewed`;
}
async function route() {
  const hash = location.hash || "#/grid";
  for (const view of ["grid", "item", "upload"]) $("view-" + view).hidden = true;
  if (hash.startsWith("#/item/")) { $("view-item").hidden = false; await openItem(hash.slice(7)).catch(showError); }
  else if (hash === "#/upload") {
    $("view-upload").hidden = false;
    const u = state.summary.upload;
    if (!u.available) $("upload-note").textContent = "Photos are decoded but not predicted: " + u.note;
  } else { $("view-grid").hidden = false; await loadGrid().catch(showError); }
}
function onKey(event) {
  if ($("view-item").hidden || event.target.matches("input, select, textarea")) return;
  const item = state.item;
  if (!item) return;
  const key = event.key;
  if (key === "ArrowRight" || key === "j") step(1);
  else if (key === "ArrowLeft" || key === "k") step(-1);
  else if (key === "g") location.hash = "#/grid";
  else if (key === "Escape") cancelDraw();
  else if (key === "Enter" && state.draw && state.draw.kind === "poly" && state.draw.points.length >= 3) finishDraw({ polygon: state.draw.points });
  else if (key >= "1" && key <= "9" && Number(key) <= item.instances.length) select(Number(key) - 1);
  else if (key === "a" && state.selected >= 0) decide(state.selected, "accept");
  else if (key === "r" && state.selected >= 0) decide(state.selected, "reject");
  else if (key === "A") item.instances.forEach((_, i) => decide(i, "accept"));
  else if (key === "c" && state.selected >= 0) document.querySelector(`#instances li[data-index="${state.selected}"] select`).focus();
  else if (key === "d") change(`/api/items/${item.id}/done`, { json: { done: !item.decisions.done } }).catch(showError);
  else if (key === "b") startDraw("box");
  else if (key === "p") startDraw("poly");
  else return;
  event.preventDefault();
}
async function init() {
  await refreshProgress();
  const s = state.summary;
  $("run-name").textContent = `${s.work_dir} · ${s.mode || "results"}`;
  $("nav-report").hidden = !s.report;
  for (const gate of s.gate_labels) $("f-gate").append(el("option", { value: gate }, gate));
  for (const cls of s.classes) { $("f-cls").append(el("option", { value: cls }, cls)); $("draw-class").append(el("option", { value: cls }, cls)); }
  const saved = new URLSearchParams(sessionStorage.getItem("filters") || "");
  for (const [key, id] of [["status", "f-status"], ["review", "f-review"], ["gate", "f-gate"], ["cls", "f-cls"], ["min_score", "f-min"], ["max_score", "f-max"], ["sort", "f-sort"]]) {
    if (saved.has(key)) $(id).value = saved.get(key);
    $(id).addEventListener("change", () => loadGrid().catch(showError));
  }
  $("more").addEventListener("click", () => { state.shown += PAGE; renderGrid(); });
  $("prev").addEventListener("click", () => step(-1));
  $("next").addEventListener("click", () => step(1));
  $("opacity").addEventListener("input", applyVisibility);
  $("draw-box").addEventListener("click", () => startDraw("box"));
  $("draw-poly").addEventListener("click", () => startDraw("poly"));
  $("done").addEventListener("click", () => change(`/api/items/${state.item.id}/done`, { json: { done: !state.item.decisions.done } }).catch(showError));
  $("export").addEventListener("click", async () => {
    $("export-result").textContent = "exporting…";
    try {
      const r = await api("/api/export", { json: {} });
      $("export-result").replaceChildren(
        document.createTextNode(`${r.images} images, ${r.regions} regions → `),
        el("a", { href: "/files/" + r.coco, id: "export-coco", target: "_blank" }, "COCO"), document.createTextNode(" · "),
        el("a", { href: "/files/" + r.polygon_json, id: "export-polygon-json", target: "_blank" }, "polygon JSON"));
    } catch (error) { showError(error); }
  });
  setupDrawing();
  setupUpload();
  document.addEventListener("keydown", onKey);
  window.addEventListener("hashchange", route);
  await route();
}
init().catch(showError);
