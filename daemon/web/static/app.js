// The edgewatch monitoring page: reads the JSON under /api/ and renders it. No framework, no build step.
// Every value from the device is put into the page as text (textContent), never as HTML.
"use strict";

const REFRESH_MS = 5000;
const KEY_STORE = "edgewatch.api_key";
const state = {
  range: "hour",
  camera: "",
  cls: "",
  key: takeKeyFromUrl() || sessionStorage.getItem(KEY_STORE) || "",
  detail: null,
  sort: { by: "confidence", dir: -1 },
  busy: false,
  again: false, // a filter changed while a refresh was running: run once more after it
  live: false, // the live views are being fetched
};
const integer = new Intl.NumberFormat("en");

// A link may carry ?api_key=: keep the key in this tab's session storage and take it out of the address bar,
// the history and any Referer at once.
function takeKeyFromUrl() {
  const url = new URL(location.href);
  const key = url.searchParams.get("api_key");
  if (key === null) return "";
  url.searchParams.delete("api_key");
  history.replaceState(null, "", url.pathname + url.search + url.hash);
  sessionStorage.setItem(KEY_STORE, key);
  return key;
}
const $ = (selector) => document.querySelector(selector);

class Unauthorized extends Error {}

async function api(path, params = {}) {
  const query = new URLSearchParams(Object.entries(params).filter(([, value]) => value));
  const headers = state.key ? { Authorization: `Bearer ${state.key}` } : {};
  const text = query.toString();
  const response = await fetch(`/api/${path}${text ? `?${text}` : ""}`, { headers });
  if (response.status === 401) throw new Unauthorized();
  const body = await response.json();
  if (!response.ok) throw new Error(body.message || `HTTP ${response.status}`);
  return body;
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = cell instanceof Node ? el("td") : el("td", cell);
    if (cell instanceof Node) td.append(cell);
    tr.append(td);
  }
  return tr;
}

function fill(table, rows) {
  const body = table.querySelector("tbody");
  body.replaceChildren(...rows);
  const empty = table.parentElement.querySelector(".empty");
  if (empty) empty.hidden = rows.length > 0;
  table.hidden = rows.length === 0 && Boolean(empty);
}

const percent = (value) => (value === null || value === undefined ? "–" : `${(value * 100).toFixed(1)}%`);
const millis = (seconds) => (seconds === null || seconds === undefined ? "–" : `${(seconds * 1000).toFixed(1)} ms`);
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");

function chips(entries, className = "chip") {
  const span = el("span", null, "chips");
  for (const text of entries) span.append(el("span", text, className));
  return span;
}

function metadataChips(metadata) {
  return chips(Object.entries(metadata || {}).map(([name, value]) => `${name}: ${value}`), "chip meta");
}

function setStat(id, text, change, lowerIsBetter = false) {
  const box = $(`#${id}`);
  box.querySelector(".value").textContent = text;
  const label = box.querySelector(".change");
  label.className = "change";
  if (change === null || change === undefined) {
    label.textContent = "no earlier data";
    return;
  }
  const arrow = change > 0 ? "▲" : change < 0 ? "▼" : "■";
  label.textContent = `${arrow} ${Math.abs(change).toFixed(1)}% vs previous period`;
  if (change !== 0) label.classList.add((change > 0) !== lowerIsBetter ? "up" : "down");
}

function renderSummary(summary) {
  const { current, change } = summary;
  setStat("stat-inferences", integer.format(current.inferences), change.inferences);
  setStat("stat-confidence", percent(current.avg_confidence), change.avg_confidence);
  setStat("stat-time", millis(current.avg_inference_time), change.avg_inference_time, true);
  renderChart(summary.series);
}

function renderChart(series) {
  const width = 600;
  const height = 120;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  const peak = Math.max(1, ...series.map((point) => point.inferences));
  const step = width / series.length;
  series.forEach((point, index) => {
    const bar = document.createElementNS(ns, "rect");
    const barHeight = (point.inferences / peak) * (height - 4);
    bar.setAttribute("x", (index * step + 1).toFixed(1));
    bar.setAttribute("y", (height - barHeight).toFixed(1));
    bar.setAttribute("width", Math.max(1, step - 2).toFixed(1));
    bar.setAttribute("height", barHeight.toFixed(1));
    const title = document.createElementNS(ns, "title");
    title.textContent = `${when(point.t)}: ${integer.format(point.inferences)} inferences, ` +
      `${integer.format(point.detections)} detections`;
    bar.append(title);
    svg.append(bar);
  });
  const chart = $("#chart");
  chart.replaceChildren(svg);
  const axis = el("div", null, "axis muted");
  axis.append(el("span", when(series[0]?.t)), el("span", `peak ${integer.format(peak)} per bar`), el("span", "now"));
  chart.append(axis);
}

function renderStreams(streams) {
  const rows = streams.map((stream) => {
    const tr = row([
      stream.stream,
      stream.source === "api" ? "API" : "camera",
      metadataChips(stream.metadata),
      integer.format(stream.inferences),
      integer.format(stream.detections),
      percent(stream.avg_confidence),
      millis(stream.avg_inference_time),
      when(stream.last_seen),
    ]);
    for (const index of [3, 4, 5, 6]) tr.children[index].className = "num";
    tr.dataset.stream = stream.stream;
    if (stream.stream === state.camera) tr.classList.add("selected");
    tr.addEventListener("click", () => selectCamera(stream.stream === state.camera ? "" : stream.stream));
    return tr;
  });
  fill($("#streams"), rows);
}

function renderCameraOptions(names) {
  const select = $("#camera-filter");
  const wanted = ["", ...names];
  const have = [...select.options].map((option) => option.value);
  if (wanted.join("\n") === have.join("\n")) return;
  select.replaceChildren(el("option", "All cameras and streams"));
  select.options[0].value = "";
  for (const name of names) {
    const option = el("option", name);
    option.value = name;
    select.append(option);
  }
  select.value = state.camera;
}

function renderClasses(classes) {
  const rows = classes.map((entry) => {
    const bar = el("div", null, "bar");
    const fillBar = el("span");
    fillBar.style.width = `${(entry.share * 100).toFixed(1)}%`;
    bar.append(fillBar, el("em", percent(entry.share)));
    const tr = row([entry.class, integer.format(entry.detections), bar, percent(entry.avg_confidence)]);
    tr.children[1].className = "num";
    tr.children[3].className = "num";
    return tr;
  });
  fill($("#classes"), rows);
}

function renderSamples(result) {
  const select = $("#class-filter");
  const names = ["", ...result.classes];
  if (names.join("\n") !== [...select.options].map((option) => option.value).join("\n")) {
    select.replaceChildren(...names.map((name) => {
      const option = el("option", name || "All classes");
      option.value = name;
      return option;
    }));
    select.value = state.cls;
  }
  const rows = result.samples.map((sample) => {
    const reported = sample.reported.map((entry) => `${entry.class} ${percent(entry.confidence)}`);
    const tr = row([when(sample.timestamp), sample.stream, chips(reported), metadataChips(sample.metadata),
      integer.format(sample.detections)]);
    tr.children[4].className = "num";
    tr.tabIndex = 0;
    tr.dataset.inferenceId = sample.inference_id;
    tr.addEventListener("click", () => openDetail(sample.inference_id));
    tr.addEventListener("keydown", (event) => {
      if (event.key === "Enter") openDetail(sample.inference_id);
    });
    return tr;
  });
  fill($("#samples"), rows);
}

function renderAlerts(alerts) {
  const list = $("#alerts-active");
  list.replaceChildren(...alerts.active.map((alert) => {
    const item = el("li", null, `alert ${alert.severity}`);
    item.append(el("strong", alert.type), el("span", alert.camera ? ` · ${alert.camera}` : ""),
      el("span", ` — ${alert.message}`), el("span", ` (since ${when(alert.timestamp)})`, "muted"));
    return item;
  }));
  if (!alerts.active.length) list.replaceChildren(el("li", "No alert is firing.", "muted"));
  const rows = alerts.recent.map((alert) => {
    const tr = row([when(alert.timestamp), alert.state, alert.severity, alert.type, alert.camera || "–", alert.message]);
    tr.children[2].className = `severity ${alert.severity}`;
    return tr;
  });
  fill($("#alerts-recent"), rows);
}

function field(list, name, value) {
  list.append(el("dt", name), value instanceof Node ? (() => {
    const dd = el("dd");
    dd.append(value);
    return dd;
  })() : el("dd", value ?? "–"));
}

function renderDetections() {
  const { by, dir } = state.sort;
  const detections = [...(state.detail?.predictions || [])].sort((a, b) => {
    const order = by === "class" ? String(a.class).localeCompare(String(b.class)) : a.confidence - b.confidence;
    return order * dir;
  });
  const rows = detections.map((p) => {
    const tr = row([p.class, percent(p.confidence), p.x ?? "–", p.y ?? "–", p.width ?? "–", p.height ?? "–"]);
    for (let index = 1; index < 6; index += 1) tr.children[index].className = "num";
    return tr;
  });
  $("#detail-detections tbody").replaceChildren(...rows);
  for (const button of document.querySelectorAll("#detail-detections [data-sort]")) {
    const active = button.dataset.sort === by;
    button.classList.toggle("sorted", active);
    button.dataset.dir = active ? (dir > 0 ? "asc" : "desc") : "";
  }
}

async function openDetail(inferenceId) {
  try {
    const sample = await api(`samples/${encodeURIComponent(inferenceId)}`);
    state.detail = sample;
    const fields = $("#detail-fields");
    fields.replaceChildren();
    field(fields, "Inference id", sample.inference_id);
    field(fields, "Time", when(sample.timestamp));
    field(fields, "Camera / stream", sample.stream);
    field(fields, "Model", sample.model_id);
    field(fields, "Source", sample.source === "api" ? "HTTP API request" : sample.source ? "camera" : null);
    field(fields, "Image", sample.image ? `${sample.image.width} × ${sample.image.height}` : null);
    field(fields, "Inference time", millis(sample.inference_time));
    field(fields, "Reported to Model Monitoring",
      chips(sample.reported.map((entry) => `${entry.class} ${percent(entry.confidence)}`)));
    const metadata = $("#detail-metadata");
    metadata.replaceChildren();
    for (const [name, value] of Object.entries(sample.metadata || {})) field(metadata, name, value);
    renderDetections();
    const dialog = $("#detail");
    if (!dialog.open) dialog.showModal();
  } catch (error) {
    showError(error);
  }
}

// Images under /api/ need the API key too: fetched with it, shown through object URLs (revoked when replaced).
async function imageUrl(path) {
  const headers = state.key ? { Authorization: `Bearer ${state.key}` } : {};
  const response = await fetch(`/api/${path}`, { headers });
  if (response.status !== 200) return null; // 204: no frame yet
  return URL.createObjectURL(await response.blob());
}

async function showImage(img, path) {
  const url = await imageUrl(path);
  if (!url) return;
  const old = img.dataset.url;
  img.src = url;
  img.dataset.url = url;
  if (old) URL.revokeObjectURL(old);
}

const LIVE_MS = 1000;
const thumbs = new Map(); // snapshot id -> object URL, for the events shown now

function renderZones(cameras) {
  const live = $("#live");
  const ids = cameras.map((camera) => camera.camera);
  if ([...live.children].map((figure) => figure.dataset.camera).join("\n") !== ids.join("\n")) {
    live.replaceChildren(...cameras.map((camera) => {
      const figure = el("figure");
      figure.dataset.camera = camera.camera;
      const img = el("img");
      img.alt = `live view of ${camera.camera}`;
      figure.append(img, el("figcaption"));
      return figure;
    }));
  }
  for (const camera of cameras) {
    const figure = live.querySelector(`figure[data-camera="${CSS.escape(camera.camera)}"]`);
    const caption = figure.querySelector("figcaption");
    caption.replaceChildren(el("strong", camera.camera));
    for (const zone of camera.zones) {
      const inside = Object.entries(zone.occupancy).map(([name, count]) => `${count} ${name}`).join(", ");
      caption.append(el("span", `zone ${zone.name}: ${inside || "empty"}`, "chip zone"));
    }
    for (const line of camera.lines) {
      caption.append(el("span", `line ${line.name}: ${line.in} in · ${line.out} out`, "chip line"));
    }
  }
  $("#events-card").hidden = cameras.length === 0;
}

async function refreshLive() {
  for (const figure of document.querySelectorAll("#live figure")) {
    await showImage(figure.querySelector("img"), `cameras/${encodeURIComponent(figure.dataset.camera)}/latest.jpg`);
  }
}

function eventWhere(event) {
  if (event.line) return `${event.line} (${event.direction})`;
  if (event.zone) return event.dwell_seconds !== undefined ? `${event.zone} (${event.dwell_seconds} s)` : event.zone;
  return event.zones.join(", ") || "–";
}

function renderEvents(events) {
  const wanted = new Set(events.map((event) => event.snapshot_id).filter(Boolean));
  for (const [id, url] of thumbs) {
    if (!wanted.has(id)) {
      URL.revokeObjectURL(url);
      thumbs.delete(id);
    }
  }
  const rows = events.map((event) => {
    const img = el("img", null, "thumb");
    img.alt = `${event.class} #${event.tracker_id}`;
    if (event.snapshot_id) {
      const cached = thumbs.get(event.snapshot_id);
      if (cached) img.src = cached;
      else imageUrl(`snapshots/${event.snapshot_id}/crop.jpg`).then((url) => {
        if (!url) return;
        thumbs.set(event.snapshot_id, url);
        img.src = url;
      });
    }
    const tr = row([img, when(event.timestamp), event.camera, event.type, `${event.class} #${event.tracker_id}`,
      eventWhere(event), percent(event.confidence)]);
    tr.children[6].className = "num";
    tr.dataset.eventId = event.id;
    if (event.snapshot_id) tr.addEventListener("click", () => openSnapshot(event));
    return tr;
  });
  fill($("#events"), rows);
}

async function openSnapshot(event) {
  $("#snapshot-title").textContent = `${event.class} #${event.tracker_id} on ${event.camera}`;
  const fields = $("#snapshot-fields");
  fields.replaceChildren();
  field(fields, "Event", event.type);
  field(fields, "First seen", when(event.first_seen));
  field(fields, "Last seen", when(event.last_seen));
  field(fields, "Best confidence", percent(event.confidence));
  field(fields, "Zones", event.zones.join(", ") || "–");
  await showImage($("#snapshot-image"), `snapshots/${event.snapshot_id}.jpg`);
  const dialog = $("#snapshot");
  if (!dialog.open) dialog.showModal();
}

function showError(error) {
  if (error instanceof Unauthorized) {
    $("#auth").hidden = false;
    return;
  }
  const banner = $("#error");
  banner.textContent = `Cannot reach the device: ${error.message}`;
  banner.hidden = false;
}

async function refresh() {
  if (state.busy) {
    state.again = true;
    return;
  }
  state.busy = true;
  state.again = false;
  try {
    const scope = { range: state.range, camera: state.camera };
    const [info, summary, streams, classes, samples, alerts] = await Promise.all([
      api("info"),
      api("summary", scope),
      api("streams", { range: state.range }),
      api("classes", scope),
      api("samples", { camera: state.camera, class: state.cls, limit: 50 }),
      api("alerts"),
    ]);
    $("#device").textContent = `device ${info.device} · model ${info.model_id} on ${info.provider} · ` +
      `edgewatch ${info.version}`;
    const names = new Set([...info.cameras.map((camera) => camera.id), ...streams.map((s) => s.stream)]);
    renderCameraOptions([...names].sort());
    renderSummary(summary);
    renderStreams(streams);
    renderClasses(classes);
    renderSamples(samples);
    renderAlerts(alerts);
    if (info.events) {
      const [zones, events] = await Promise.all([api("zones"), api("events", { camera: state.camera, limit: 30 })]);
      renderZones(zones);
      renderEvents(events);
    }
    $("#error").hidden = true;
    $("#auth").hidden = true;
    $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.loaded = "true";
  } catch (error) {
    showError(error);
  } finally {
    state.busy = false;
    if (state.again) refresh();
  }
}

function selectCamera(camera) {
  state.camera = camera;
  $("#camera-filter").value = camera;
  refresh();
}

function setup() {
  for (const button of document.querySelectorAll("[data-range]")) {
    button.addEventListener("click", () => {
      state.range = button.dataset.range;
      for (const other of document.querySelectorAll("[data-range]")) other.classList.toggle("active", other === button);
      refresh();
    });
  }
  $("#camera-filter").addEventListener("change", (event) => selectCamera(event.target.value));
  $("#class-filter").addEventListener("change", (event) => {
    state.cls = event.target.value;
    refresh();
  });
  for (const button of document.querySelectorAll("#detail-detections [data-sort]")) {
    button.addEventListener("click", () => {
      const by = button.dataset.sort;
      state.sort = { by, dir: state.sort.by === by ? -state.sort.dir : by === "class" ? 1 : -1 };
      renderDetections();
    });
  }
  $("#detail-close").addEventListener("click", () => $("#detail").close());
  $("#snapshot-close").addEventListener("click", () => $("#snapshot").close());
  $("#auth").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("#auth-key").value.trim();
    sessionStorage.setItem(KEY_STORE, state.key);
    refresh();
  });
  refresh();
  setInterval(refresh, REFRESH_MS);
  setInterval(() => {
    if (!state.live) {
      state.live = true;
      refreshLive().finally(() => { state.live = false; });
    }
  }, LIVE_MS);
}

setup();
