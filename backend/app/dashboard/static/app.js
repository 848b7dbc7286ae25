// DistLM's dashboard: a small single-page app on the public API. The bearer tokens live in
// sessionStorage (never in a URL, never in a cookie, so there is nothing for CSRF to ride
// on); every figure comes from an API call that applies the viewer's role and ownership.
"use strict";

const store = window.sessionStorage;
const main = document.getElementById("main");
let me = null;
let pageTimers = [];
let pageStreams = [];

// -- elements ------------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "on") for (const [ev, fn] of Object.entries(value)) el.addEventListener(ev, fn);
    else if (value !== null && value !== undefined && value !== false) el.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}
const fmt = (n, d = 3) => (typeof n === "number" ? +n.toFixed(d) : n ?? "");
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");

// -- API -----------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, body) {
    super((body && body.detail) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function refreshTokens() {
  const token = store.getItem("refresh");
  if (!token) return false;
  const response = await fetch("/auth/refresh", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ refresh_token: token }),
  });
  if (!response.ok) return false;
  saveTokens(await response.json());
  return true;
}

function saveTokens(body) {
  store.setItem("access", body.access_token);
  store.setItem("refresh", body.refresh_token);
}

async function api(path, options = {}, retried = false) {
  const headers = { ...(options.headers || {}), Authorization: `Bearer ${store.getItem("access")}` };
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options = { ...options, body: JSON.stringify(options.json) };
  }
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401 && !retried && (await refreshTokens())) return api(path, options, true);
  if (response.status === 401) {
    logOut();
    throw new ApiError(401, null);
  }
  if (options.raw) return response;
  const body = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

// A Server-Sent Events stream read with fetch (EventSource cannot send the bearer header);
// reconnects with Last-Event-ID after a drop, so no event is missed or repeated.
function follow(path, onEvent) {
  const controller = new AbortController();
  let last = null;
  let stopped = false;
  async function run() {
    while (!stopped) {
      try {
        const headers = last ? { "Last-Event-ID": last } : {};
        const response = await api(path, { headers, signal: controller.signal, raw: true });
        if (!response.ok) return;
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            const event = {};
            for (const line of block.split("\n")) {
              const at = line.indexOf(":");
              if (at > 0) event[line.slice(0, at)] = line.slice(at + 1).trim();
            }
            if (!event.event) continue;
            last = event.id || last;
            if (event.event === "end") return;
            onEvent(event.event, JSON.parse(event.data || "{}"));
          }
        }
      } catch (error) {
        if (stopped) return;
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
  run();
  const handle = { stop: () => { stopped = true; controller.abort(); } };
  pageStreams.push(handle);
  return handle;
}

async function download(path, name) {
  const response = await api(path, { raw: true });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    alert(body.detail || `HTTP ${response.status}`);
    return;
  }
  const url = URL.createObjectURL(await response.blob());
  const link = h("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// -- charts --------------------------------------------------------------------------------
class Chart {
  constructor(title, seriesNames, xLabel = "step", xIsTime = false) {
    this.names = seriesNames;
    this.data = [[], ...seriesNames.map(() => [])];
    this.el = h("div", { class: "chart", "data-chart": title });
    const palette = ["#0b62d6", "#d6420b", "#18794e", "#8a3ffc", "#b28600"];
    this.plot = new uPlot(
      {
        title, width: 360, height: 200,
        scales: { x: { time: xIsTime } },
        axes: [{ label: xLabel }, { size: 64, values: (u, vals) => vals.map(compact) }],
        series: [{}, ...seriesNames.map((name, i) => ({ label: name, stroke: palette[i % 5], width: 2 }))],
      },
      this.data,
      this.el,
    );
  }
  add(x, values) {
    this.data[0].push(x);
    this.names.forEach((name, i) => this.data[i + 1].push(values[name] ?? null));
    this.plot.setData(this.data);
    this.el.dataset.points = String(this.data[0].length);
  }
  get points() { return this.data[0].length; }
}

// -- pages ---------------------------------------------------------------------------------
function leavePage() {
  pageTimers.forEach(clearInterval);
  pageStreams.forEach((s) => s.stop());
  pageTimers = [];
  pageStreams = [];
}

// Run fn now and every ms while the page is open; a failure shows on the page (once) rather
// than as an unhandled error, and the next round tries again.
function every(ms, fn) {
  const run = () => Promise.resolve().then(fn).catch((error) => {
    if (!document.getElementById("page-error")) {
      main.append(h("p", { class: "error", id: "page-error" }, error.message));
    }
  });
  run();
  pageTimers.push(setInterval(run, ms));
}

function page(title, ...content) {
  main.replaceChildren(h("h2", { id: "page-title" }, title), ...content);
}

function notFound(what) {
  page(`${what} not found`, h("p", { class: "error", id: "not-found" }, `404: ${what} not found, or not yours.`));
}

// A job's money in one cell: what was charged once it ended, else so far of its hold.
function money(job) {
  if (job.charged !== null && job.charged !== undefined) return `${fmt(job.charged, 4)} charged`;
  return `${fmt(job.cost_so_far, 4)} of ${fmt(job.hold, 4)}`;
}

async function jobsPage(params) {
  const filter = h("select", { id: "status-filter" },
    ["", "queued", "scheduled", "running", "succeeded", "failed", "cancelled"].map((s) =>
      h("option", { value: s, selected: s === (params.get("status") || "") }, s || "any status")));
  filter.addEventListener("change", () => { location.hash = `#/jobs?status=${filter.value}`; });
  const ticked = new Set();
  const compare = h("button", { id: "compare", disabled: true, on: { click: () => {
    location.hash = `#/compare?ids=${[...ticked].join(",")}`;
  } } }, "Compare runs");
  const body = h("tbody");
  page("Jobs", h("div", { class: "card" }, filter, " ", compare, h("table", { id: "jobs" },
    h("thead", {}, h("tr", {}, ["", "id", "name", "strategy", "status", "progress", "cost", "created"].map((c) => h("th", {}, c)))),
    body)));
  every(2000, async () => {
    const query = params.get("status") ? `&status=${params.get("status")}` : "";
    const jobs = await api(`/jobs?limit=100${query}`);
    body.replaceChildren(...jobs.items.map((job) => {
      const tick = h("input", { type: "checkbox", "data-tick": job.id, checked: ticked.has(String(job.id)), on: { change: (e) => {
        if (e.target.checked) ticked.add(String(job.id)); else ticked.delete(String(job.id));
        compare.disabled = ticked.size < 2;
      } } });
      return h("tr", { "data-job": job.id }, h("td", {}, tick),
        h("td", {}, h("a", { href: `#/jobs/${job.id}` }, job.id)), h("td", {}, job.name),
        h("td", {}, job.strategy), h("td", { class: `status-${job.status}` }, job.status),
        h("td", {}, job.status_reason), h("td", { class: "cost" }, money(job)), h("td", {}, when(job.created_at)));
    }));
  });
}

async function nodePage(id) {
  let metrics;
  try {
    metrics = await api(`/metrics/node/${id}`);
  } catch (error) {
    if (error.status === 404) return notFound(`Node ${id}`);
    throw error;
  }
  const info = h("p", { id: "node-info" });
  const chart = new Chart("utilisation %", ["cpu_percent", "memory_percent", "gpu_utilization"], "time", true);
  page(`Node ${id}: ${metrics.node.hostname}`, h("div", { class: "card" }, info), h("div", { class: "card" }, chart.el));
  let seen = 0;
  every(3000, async () => {
    const m = await api(`/metrics/node/${id}`);
    info.textContent = `${m.node.status}, ${m.node.approval}; jobs served: ${m.jobs_run}; tokens earned: ${fmt(m.tokens_earned, 4)}; ` +
      `pending: ${fmt(m.node.tokens_pending, 4)}; voided: ${fmt(m.node.tokens_voided, 4)}; ` +
      `CPU core-seconds served: ${fmt(m.resource_seconds_served.cpu_core_seconds, 1)}; ` +
      trustText(m.node.trust);
    const samples = [...m.samples].reverse();
    for (const s of samples.slice(seen)) chart.add(new Date(s.received_at).getTime() / 1000, s);
    seen = samples.length;
  });
}

function trustText(t) {
  if (!t) return "";
  const text = `checked results: ${t.results_valid} valid, ${t.results_invalid} invalid; ` +
    `reliability ${fmt(t.reliability, 2)}; ${t.on_probation ? "on probation (every result checked)" : `${fmt(100 * t.check_rate, 0)}% of results checked`}`;
  return t.suspended_reason ? `${text}; suspended: ${t.suspended_reason}` : text;
}

async function tokensPage() {
  const balance = h("p", { id: "balance" });
  const body = h("tbody");
  const chart = new Chart("tokens over time", ["spent", "earned"], "time", true);
  page("Tokens", h("div", { class: "card" }, balance), h("div", { class: "card" }, chart.el),
    h("div", { class: "card" }, h("table", { id: "history" },
      h("thead", {}, h("tr", {}, ["when", "kind", "amount", "job", "node", "memo"].map((c) => h("th", {}, c)))), body)));
  every(3000, async () => {
    const b = await api("/tokens/balance/me");
    balance.textContent = `available ${fmt(b.available, 6)} · held ${fmt(b.held, 6)} · earned ${fmt(b.earned, 6)} · pending ${fmt(b.pending, 6)} · spent ${fmt(b.spent, 6)}`;
    // The wallet's view: one row per movement in or out of it (the escrow's legs of the
    // same postings would show each movement twice).
    const history = await api("/tokens/history/me?limit=500&account=wallet");
    const entries = history.items;
    body.replaceChildren(...entries.map((e) => h("tr", {}, h("td", {}, when(e.created_at)), h("td", {}, e.kind),
      h("td", {}, fmt(e.amount, 6)), h("td", {}, e.job_id ?? ""), h("td", {}, e.node_id ?? ""), h("td", {}, e.memo))));
    if (chart.points === 0) {
      // Spent: holds less refunds (what left the wallet for jobs); earned: node credits.
      let spent = 0, earned = 0;
      for (const e of [...entries].reverse()) {
        if (e.kind === "hold" || e.kind === "refund") spent -= e.amount;
        if (e.kind === "node_credit") earned += e.amount;
        chart.add(new Date(e.created_at).getTime() / 1000, { spent, earned });
      }
    }
  });
}

// -- shell ---------------------------------------------------------------------------------
async function route() {
  leavePage();
  if (!store.getItem("access")) return showLogin();
  if (!me) {
    try { me = await api("/auth/me"); } catch (error) { return showLogin(); }
  }
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  document.getElementById("nav-system").hidden = me.role !== "admin";
  document.getElementById("who").textContent = `${me.username} (${me.role})`;
  const [path, query] = (location.hash.slice(1) || "/jobs").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.getAttribute("href") === `#/${parts[0]}`));
  try {
    if (parts[0] === "jobs" && parts[1]) await jobPage(parts[1]);
    else if (parts[0] === "compare") await comparePage(params);
    else if (parts[0] === "nodes" && parts[1]) await nodePage(parts[1]);
    else if (parts[0] === "nodes") await nodesPage();
    else if (parts[0] === "tokens") await tokensPage();
    else if (parts[0] === "system" && me.role === "admin") await systemPage();
    else await jobsPage(params);
  } catch (error) {
    page("Something went wrong", h("p", { class: "error" }, error.message));
  }
}

function showLogin() {
  me = null;
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  const error = h("p", { class: "error", id: "login-error" });
  // method=post: even before the script's handler runs, a password never goes into a URL.
  const form = h("form", { id: "login", class: "card", method: "post", action: "/dashboard" }, h("h2", {}, "Log in"),
    h("label", {}, "Username ", h("input", { name: "username", autocomplete: "username", required: true })),
    h("label", {}, "Password ", h("input", { name: "password", type: "password", autocomplete: "current-password", required: true })),
    h("button", { type: "submit" }, "Log in"), error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const response = await fetch("/auth/token", { method: "POST", body: new URLSearchParams(new FormData(form)) });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) { error.textContent = body.detail || "login failed"; return; }
    saveTokens(body);
    route();
  });
  main.replaceChildren(form);
}

async function logOut() {
  const refresh = store.getItem("refresh");
  store.clear();
  me = null;
  if (refresh) {
    fetch("/auth/logout", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ refresh_token: refresh }) }).catch(() => {});
  }
  leavePage();
  showLogin();
}

async function showSummary() {
  if (!store.getItem("access")) return;
  try {
    const s = await api("/status");
    const jobs = s.running_jobs.map((j) => `#${j.job_id} ${j.progress}`).join(", ") || "none";
    document.getElementById("summary").textContent =
      `running: ${jobs} · queued ${s.queued_jobs} · nodes ${s.active_nodes} (${s.gpu_nodes} GPU, ${s.cpu_nodes} CPU)`;
  } catch (error) { /* the page says it */ }
}

document.getElementById("logout").addEventListener("click", logOut);
window.addEventListener("hashchange", route);
setInterval(showSummary, 5000);
route().then(showSummary);
