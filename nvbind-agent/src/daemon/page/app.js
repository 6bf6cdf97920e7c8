// The agent's dashboard page: live frame times per game from the WebSocket streams, the GPUs,
// and the sessions the agent wrote. Everything a process can name (its name, a stutter's
// sentence) is untrusted text: it only ever goes into the page as text (textContent), never as
// markup.
"use strict";

// Cause colours: the same as the SVG charts' (report/svg.rs).
const CAUSE_COLOURS = {
  "cpu-contention": "#d62728",
  "gpu-driver-wait": "#9467bd",
  "blocked": "#ff7f0e",
  "gpu-throttle": "#8c564b",
  "vram-pressure": "#e377c2",
  "shader-compile": "#17becf",
  "unknown": "#7f7f7f",
};
const CHART_SECONDS = 30;
const FRAMES_PER_MESSAGE = 600;
const BACKFILL_FRAMES = 2000;
const STREAM_INTERVAL_MS = 250;
const MAX_GAMES = 8;
const MAX_POINTS = 20000;

const games = new Map(); // pid -> Game

function text(value, digits) {
  return value === null || value === undefined || Number.isNaN(value) ? "–" : value.toFixed(digits);
}

function setConnection(state, message) {
  const el = document.getElementById("connection");
  el.dataset.state = state;
  el.textContent = message;
}

async function getJson(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) {
    let why = response.statusText;
    try { why = (await response.json()).error; } catch (_) { /* not JSON */ }
    throw new Error(`${path}: ${why}`);
  }
  return response.json();
}

class Game {
  constructor(view) {
    this.pid = view.pid;
    this.frames = []; // {t, ms, stutter}
    this.stutters = new Map(); // ts_ns -> stutter
    this.framesReceived = 0;
    this.socket = null;
    this.closed = false;
    const node = document.getElementById("game-template").content.firstElementChild.cloneNode(true);
    node.dataset.pid = String(view.pid);
    node.dataset.frames = "0";
    node.dataset.stutters = "0";
    this.node = node;
    this.canvas = node.querySelector("canvas");
    this.tooltip = node.querySelector(".tooltip");
    // The chart holds still under the mouse, so a marker stays where the reader points.
    this.frozen = false;
    this.canvas.addEventListener("mousemove", (e) => { this.frozen = true; this.hover(e); });
    this.canvas.addEventListener("mouseleave", () => {
      this.frozen = false;
      this.tooltip.hidden = true;
      this.draw();
    });
    document.getElementById("games").appendChild(node);
    this.update(view);
    this.backfill().finally(() => this.connect());
  }

  // The chart starts with the frames the daemon still holds (the stream then sends only the
  // newest of each interval).
  async backfill() {
    try {
      this.update(await getJson(`/api/processes/${this.pid}?frames=${BACKFILL_FRAMES}`));
    } catch (_) { /* the stream fills the chart anyway */ }
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}/metrics/${this.pid}?interval_ms=${STREAM_INTERVAL_MS}&frames=${FRAMES_PER_MESSAGE}`;
    const socket = new WebSocket(url);
    this.socket = socket;
    socket.onmessage = (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch (_) { return; }
      if (message.live === false) { this.end(); return; }
      this.update(message);
    };
    socket.onclose = () => {
      // The process may still run (a restarted agent): the process list decides.
      this.socket = null;
    };
  }

  update(view) {
    const node = this.node;
    node.querySelector(".name").textContent = view.name || view.comm || `pid ${view.pid}`;
    const meta = [`pid ${view.pid}`, view.source];
    if (view.container_id) meta.push(`container ${view.container_id.slice(0, 12)}`);
    if (view.wine_version) meta.push(`Wine ${view.wine_version}`);
    node.querySelector(".meta").textContent = meta.filter(Boolean).join(" · ");
    node.querySelector(".fps").textContent = text(view.fps, 1);
    const ft = view.frame_time_ms;
    node.querySelector(".p50").textContent = ft ? `${text(ft.p50, 2)} ms` : "–";
    node.querySelector(".p99").textContent = ft ? `${text(ft.p99, 2)} ms` : "–";
    node.querySelector(".p999").textContent = ft ? `${text(ft.p99_9, 2)} ms` : "–";
    const low = view.low_fps;
    node.querySelector(".low1").textContent = low ? `${text(low.p1_percentile, 1)} / ${text(low.p1_average, 1)}` : "–";
    node.querySelector(".low01").textContent = low ? `${text(low.p0_1_percentile, 1)} / ${text(low.p0_1_average, 1)}` : "–";
    node.querySelector(".stutter-count").textContent = String(view.stutters_total ?? 0);
    // Only where a compositor's flips showed its frames (absent otherwise).
    const shown = view.display;
    const latency = shown ? shown.present_to_display_ms : null;
    node.querySelector(".display").textContent = shown
      ? `${latency ? `${text(latency.p50, 1)} / ${text(latency.p99, 1)} ms` : "–"} (${shown.dropped_total})`
      : "–";
    this.updateCauses(view.stutters_by_cause || {});
    // Frames are ordered and de-duplicated by the kernel's timestamp (exact); the wall-clock
    // time is only where they are drawn.
    const last = this.frames.length ? this.frames[this.frames.length - 1].ts : -Infinity;
    for (const f of view.recent_frames || []) {
      if (f.ts_ns > last) {
        this.frames.push({ ts: f.ts_ns, t: f.t_unix_ms, ms: f.frame_time_ms, stutter: f.stutter });
        this.framesReceived += 1;
      }
    }
    if (this.frames.length > MAX_POINTS) this.frames.splice(0, this.frames.length - MAX_POINTS);
    for (const s of view.recent_stutters || []) {
      if (!this.stutters.has(s.ts_ns)) {
        this.stutters.set(s.ts_ns, s);
        this.addStutterLine(s);
      }
    }
    node.dataset.frames = String(this.framesReceived);
    node.dataset.stutters = String(this.stutters.size);
    this.draw();
  }

  updateCauses(byCause) {
    const box = this.node.querySelector(".causes");
    box.replaceChildren();
    for (const [cause, count] of Object.entries(byCause)) {
      const item = document.createElement("span");
      item.className = "cause";
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = CAUSE_COLOURS[cause] || CAUSE_COLOURS.unknown;
      item.append(swatch, document.createTextNode(`${cause}: ${count}`));
      box.appendChild(item);
    }
  }

  addStutterLine(s) {
    const list = this.node.querySelector("ul.stutters");
    const item = document.createElement("li");
    item.dataset.cause = s.cause;
    const when = new Date(s.t_unix_ms).toLocaleTimeString();
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = CAUSE_COLOURS[s.cause] || CAUSE_COLOURS.unknown;
    item.append(swatch, document.createTextNode(` ${when}, ${s.frame_time_ms.toFixed(1)} ms, ${s.cause}: ${s.summary}`));
    list.prepend(item);
    while (list.children.length > 32) list.lastElementChild.remove();
  }

  // Plots the last CHART_SECONDS: the frame-time line and each stutter as a dot in its cause's
  // colour (hover one for its sentence).
  draw() {
    if (this.frozen) return;
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 900;
    const height = canvas.clientHeight || 220;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const left = 48, right = 8, top = 8, bottom = 22;
    const now = this.frames.length ? this.frames[this.frames.length - 1].t : Date.now();
    const t0 = now - CHART_SECONDS * 1000;
    const shown = this.frames.filter((f) => f.t >= t0);
    const yMax = Math.max(20, ...shown.map((f) => f.ms)) * 1.1;
    const x = (t) => left + ((t - t0) / (CHART_SECONDS * 1000)) * (width - left - right);
    const y = (ms) => top + (1 - ms / yMax) * (height - top - bottom);
    // Where a stutter's marker is (a frame longer than the axis sits on its top).
    const marker = (st) => [x(st.t_unix_ms), y(Math.min(st.frame_time_ms, yMax))];
    this.scale = { marker, t0, tEnd: now };
    ctx.strokeStyle = "#d8dce4";
    ctx.fillStyle = "#5b6475";
    ctx.font = "11px system-ui, sans-serif";
    ctx.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const ms = (yMax / 4) * i;
      ctx.beginPath();
      ctx.moveTo(left, y(ms));
      ctx.lineTo(width - right, y(ms));
      ctx.stroke();
      ctx.fillText(`${ms.toFixed(0)} ms`, 4, y(ms) + 4);
    }
    ctx.fillText(`last ${CHART_SECONDS} s`, left, height - 6);
    ctx.strokeStyle = "#1f77b4";
    ctx.beginPath();
    shown.forEach((f, i) => (i ? ctx.lineTo(x(f.t), y(f.ms)) : ctx.moveTo(x(f.t), y(f.ms))));
    ctx.stroke();
    for (const s of this.stutters.values()) {
      if (s.t_unix_ms < t0 || s.t_unix_ms > now) continue;
      ctx.fillStyle = CAUSE_COLOURS[s.cause] || CAUSE_COLOURS.unknown;
      const [mx, my] = marker(s);
      ctx.beginPath();
      ctx.arc(mx, my, 5, 0, 2 * Math.PI);
      ctx.fill();
    }
  }

  hover(event) {
    if (!this.scale) return;
    const rect = this.canvas.getBoundingClientRect();
    const px = event.clientX - rect.left, py = event.clientY - rect.top;
    let best = null, bestDistance = 10;
    for (const s of this.stutters.values()) {
      if (s.t_unix_ms < this.scale.t0 || s.t_unix_ms > this.scale.tEnd) continue;
      const [mx, my] = this.scale.marker(s);
      const d = Math.hypot(mx - px, my - py);
      if (d < bestDistance) { best = s; bestDistance = d; }
    }
    if (!best) { this.tooltip.hidden = true; return; }
    this.tooltip.dataset.stutter = String(best.t_unix_ms);
    this.tooltip.textContent = `${best.frame_time_ms.toFixed(1)} ms, ${best.cause}: ${best.summary}`;
    this.tooltip.style.left = `${Math.min(px + 12, rect.width - 300)}px`;
    this.tooltip.style.top = `${py + 12}px`;
    this.tooltip.hidden = false;
  }

  end() {
    this.closed = true;
    if (this.socket) this.socket.close();
    this.node.remove();
    games.delete(this.pid);
  }
}

async function refreshGames() {
  const body = await getJson("/api/processes");
  const seen = new Set();
  const processes = body.processes.slice(0, MAX_GAMES);
  for (const view of processes) {
    seen.add(view.pid);
    const game = games.get(view.pid);
    if (!game) games.set(view.pid, new Game(view));
    else if (!game.socket) game.connect();
  }
  for (const [pid, game] of games) if (!seen.has(pid)) game.end();
  document.getElementById("no-games").hidden = games.size > 0;
  const more = document.getElementById("more-games");
  const hidden = body.processes.length - processes.length;
  more.hidden = hidden <= 0;
  more.textContent = `${hidden} more presenting process${hidden === 1 ? "" : "es"} not shown (the first ${MAX_GAMES} by pid are); \`nvbind-agent top\` lists them all.`;
}

function gpuRow(list, label, value) {
  const dt = document.createElement("dt");
  dt.textContent = label;
  const dd = document.createElement("dd");
  if (value instanceof Node) dd.appendChild(value); else dd.textContent = value;
  list.append(dt, dd);
}

async function refreshGpus() {
  const body = await getJson("/api/gpu/status");
  const box = document.getElementById("gpus");
  box.replaceChildren();
  if (!body.gpus.length) {
    const p = document.createElement("p");
    p.className = "hint";
    p.textContent = "No GPU was found.";
    box.appendChild(p);
  }
  for (const gpu of body.gpus) {
    const card = document.createElement("div");
    card.className = "gpu";
    card.dataset.pci = gpu.pci_address;
    const title = document.createElement("strong");
    title.textContent = `${gpu.name} (${gpu.vendor}, ${gpu.pci_address}, ${gpu.driver})`;
    card.appendChild(title);
    const list = document.createElement("dl");
    const s = gpu.sample;
    if (!s) {
      gpuRow(list, "counters", gpu.not_sampled || "not sampled yet");
    } else if (s.suspended) {
      gpuRow(list, "state", "runtime-suspended (not woken to be read)");
    } else {
      const pct = (r) => (r === undefined ? "–" : `${(r * 100).toFixed(0)} %`);
      gpuRow(list, "utilisation", pct(s.utilization_ratio));
      gpuRow(list, "clock", s.graphics_clock_hertz === undefined ? "–" : `${(s.graphics_clock_hertz / 1e6).toFixed(0)} MHz`);
      gpuRow(list, "temperature", s.temperature_celsius === undefined ? "–" : `${s.temperature_celsius.toFixed(0)} °C`);
      gpuRow(list, "power", s.power_watts === undefined ? "–" : `${s.power_watts.toFixed(0)} W${s.power_limit_watts ? ` of ${s.power_limit_watts.toFixed(0)} W` : ""}`);
      gpuRow(list, "VRAM", s.vram_used_bytes === undefined ? "–" : `${(s.vram_used_bytes / 2 ** 30).toFixed(2)} of ${(s.vram_total_bytes / 2 ** 30).toFixed(2)} GiB`);
      const throttle = document.createElement("span");
      if (s.throttle_reasons === undefined) throttle.textContent = "not reported";
      else if (!s.throttle_reasons.length) throttle.textContent = "none";
      else { throttle.textContent = s.throttle_reasons.join(", "); throttle.className = "throttled"; }
      gpuRow(list, "throttled by", throttle);
    }
    card.appendChild(list);
    box.appendChild(card);
  }
}

const sessionRows = new Map(); // id -> row

async function refreshSessions() {
  const body = await getJson("/api/sessions");
  const tbody = document.querySelector("#sessions tbody");
  for (const s of body.sessions.slice().reverse()) {
    if (sessionRows.has(s.id)) continue;
    const row = document.createElement("tr");
    row.dataset.session = String(s.id);
    const cells = [
      `${s.name} (pid ${s.pid})`,
      new Date(s.started_unix_s * 1000).toLocaleString(),
      `${s.duration_s.toFixed(1)} s`,
      String(s.frames),
      text(s.fps_avg, 1),
      s.p99_ms === null ? "–" : `${s.p99_ms.toFixed(2)} ms`,
      text(s.low_1pct_fps, 1),
      `${s.stutters}${Object.keys(s.stutters_by_cause).length ? ` (${Object.entries(s.stutters_by_cause).map(([c, n]) => `${c} ${n}`).join(", ")})` : ""}`,
    ];
    for (const value of cells) {
      const td = document.createElement("td");
      td.textContent = value;
      row.appendChild(td);
    }
    const chartCell = document.createElement("td");
    if (s.chart) {
      const details = document.createElement("details");
      const summary = document.createElement("summary");
      summary.textContent = "show";
      details.appendChild(summary);
      details.addEventListener("toggle", () => {
        if (details.open && !details.querySelector("img")) {
          const img = document.createElement("img");
          img.alt = `frame times of ${s.name}`;
          img.src = `/api/sessions/${s.id}/chart.svg`;
          details.appendChild(img);
        }
      }, { once: false });
      chartCell.appendChild(details);
    } else {
      chartCell.textContent = "not kept";
    }
    row.appendChild(chartCell);
    tbody.prepend(row);
    sessionRows.set(s.id, row);
  }
}

async function refresh() {
  try {
    await Promise.all([refreshGames(), refreshGpus(), refreshSessions()]);
    setConnection("live", "live");
  } catch (e) {
    setConnection("down", `cannot reach the agent (${e.message}); retrying`);
  }
}

refresh();
setInterval(refresh, 2000);
