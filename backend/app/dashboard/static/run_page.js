// The job page (one run, as W&B and the Ray dashboard show one) and the page comparing runs.
// It uses app.js's h, api, follow, download, page, notFound, every, fmt and when (loaded
// after this file; they are called only once a page opens).
"use strict";

// -- what a metric is ------------------------------------------------------------------------
const VALIDATION_KEY = /^(validation|eval|val)_/;
const SYSTEM_KEY = new RegExp("(samples_per_s|tokens_per_s|per_s$|seconds|_s$|bytes|_mb$|memory|" +
  "utili[sz]ation|wait|in_flight|live_workers|evaluations|examples|^clients_|attempts|" +
  "num_params|batch|total_steps|estimated_|population|pairs)");
const HIGHER_IS_BETTER = /(accuracy|exact_match|f1|precision|recall|bleu|rouge|per_s$)/;
const SAMPLE_KEY = /(sample|text|generated)/;

function groupOf(key) {
  if (VALIDATION_KEY.test(key)) return "validation";
  return SYSTEM_KEY.test(key) ? "system" : "training";
}

// The training series a validation series is drawn beside: validation_loss beside loss (or
// train_loss), validation_accuracy beside accuracy.
function partnerOf(key, keys) {
  const base = key.replace(VALIDATION_KEY, "");
  return [base, `train_${base}`].find((k) => keys.has(k)) || null;
}

// 12345 → "12.3k", 0.000123 → "1.23e-4": axis labels that fit their column.
function compact(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "";
  const size = Math.abs(value);
  if (size !== 0 && (size < 1e-3 || size >= 1e6)) return value.toExponential(2).replace("e", "e");
  if (size >= 1e3) return new Intl.NumberFormat("en", { notation: "compact", maximumSignificantDigits: 3 }).format(value);
  return String(+value.toPrecision(3));
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || seconds < 0) return "–";
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

const seconds = (from, to) => (from ? ((to ? new Date(to) : new Date()) - new Date(from)) / 1000 : null);

// -- a chart of several series over one x --------------------------------------------------
class SeriesChart {
  constructor(title, names, xLabel = "step") {
    this.names = names;
    this.el = h("div", { class: "chart", "data-chart": title, "data-series": names.join(",") });
    const palette = ["#0b62d6", "#d6420b", "#18794e", "#8a3ffc", "#b28600", "#c41d7f"];
    this.plot = new uPlot({
      title, width: 380, height: 210,
      legend: { live: true },  // hover values in the legend
      axes: [
        { label: xLabel, values: (u, vals) => vals.map(compact) },
        { size: 64, values: (u, vals) => vals.map(compact) },
      ],
      series: [{ label: xLabel }, ...names.map((name, i) => ({
        label: name, stroke: palette[i % palette.length], width: 2, spanGaps: true,
        value: (u, v) => (v === null || v === undefined ? "–" : compact(v)),
      }))],
    }, [[], ...names.map(() => [])], this.el);
  }
  // byName: name → [[x, y], ...]
  set(byName) {
    const xs = [...new Set(this.names.flatMap((n) => (byName.get(n) || []).map((p) => p[0])))].sort((a, b) => a - b);
    const columns = this.names.map((n) => {
      const at = new Map(byName.get(n) || []);
      return xs.map((x) => (at.has(x) ? at.get(x) : null));
    });
    this.plot.setData([xs, ...columns]);
    this.el.dataset.points = String(xs.length);
  }
}

// -- one run's numbers -----------------------------------------------------------------------
class RunSeries {
  constructor() {
    this.points = new Map();  // key → [[step, value], ...]
    this.samples = [];  // [{step, key, text}]
    this.total = null;
    this.lastStep = 0;
  }
  add(point) {
    const values = point.values || {};
    if (typeof values.total_steps === "number") this.total = values.total_steps;
    if (point.step > 0) this.lastStep = Math.max(this.lastStep, point.step);
    for (const [key, value] of Object.entries(values)) {
      if (typeof value === "string" && SAMPLE_KEY.test(key)) this.samples.push({ step: point.step, key, text: value });
      if (typeof value !== "number" || !Number.isFinite(value) || key === "epoch") continue;
      if (point.step === 0 && key === "total_steps") continue;
      if (!this.points.has(key)) this.points.set(key, []);
      this.points.get(key).push([point.step, value]);
    }
  }
  // A series worth a chart: two or more points that are not all the same value.
  charted(key) {
    const points = this.points.get(key) || [];
    return points.length > 1 && new Set(points.map((p) => p[1])).size > 1;
  }
  latest(key) { const p = this.points.get(key); return p ? p[p.length - 1] : null; }
  best(key) {
    const p = this.points.get(key) || [];
    if (!p.length) return null;
    const higher = HIGHER_IS_BETTER.test(key);
    return p.reduce((b, x) => ((higher ? x[1] > b[1] : x[1] < b[1]) ? x : b));
  }
}

// -- the job page ----------------------------------------------------------------------------
async function jobPage(id) {
  let job;
  try {
    job = await api(`/jobs/${id}`);
  } catch (error) {
    if (error.status === 404) return notFound(`Job ${id}`);
    throw error;
  }
  const task = (job.spec && job.spec.task) || "train";
  const status = h("span", { id: "job-status" });
  const reason = h("span", { id: "job-reason" });
  const bar = h("div", { id: "progress-bar", style: "width:0%" });
  const progress = h("div", { class: "progress", id: "progress", "data-progress": "0" }, bar);
  const progressText = h("span", { id: "progress-text" });
  const summary = h("tbody", { id: "summary-table" });
  const best = h("tbody", { id: "best" });
  const figures = h("tbody", { id: "figures" });
  const table = (body, heads) => h("table", {}, h("thead", {}, h("tr", {}, heads.map((c) => h("th", {}, c)))), body);
  const bestPart = h("div", { hidden: true }, h("h3", {}, "Latest and best"), table(best, ["metric", "latest", "best", "at step"]));
  const figuresPart = h("div", { hidden: true }, h("h3", {}, "Figures"), table(figures, ["figure", "value"]));
  const groups = Object.fromEntries(["training", "validation", "system"].map((g) =>
    [g, h("div", { class: "charts", id: `charts-${g}` })]));
  const groupCards = Object.fromEntries(Object.entries(groups).map(([g, el]) =>
    [g, h("div", { class: "card", hidden: true }, h("h3", {}, g[0].toUpperCase() + g.slice(1)), el)]));
  const samples = h("ol", { id: "samples", reversed: true });
  const samplesCard = h("div", { class: "card", hidden: true }, h("h3", {}, "Samples"), samples);
  const results = h("div", { class: "card", id: "results", hidden: true });
  const usage = h("tbody");
  const logs = h("div", { class: "logs", id: "logs" });
  const cost = h("p", { id: "cost" });
  const cancel = h("button", { id: "cancel", on: { click: async () => {
    try { await api(`/jobs/${id}/cancel`, { method: "POST" }); } catch (e) { alert(e.message); }
  } } }, "Cancel job");
  const actions = [cancel];
  if (task === "train") actions.push(h("button", { on: { click: () => download(`/jobs/${id}/artifacts`, `job-${id}-model.tar.gz`) } }, "Download model"));
  page(`Job ${id}: ${job.name}`,
    h("div", { class: "card" },
      h("p", {}, "Status: ", status, " — ", reason),
      progress, h("p", { class: "muted" }, progressText), h("p", {}, ...actions.flatMap((a) => [a, " "]))),
    h("div", { class: "card two-columns" },
      h("div", {}, h("h3", {}, "Summary"), table(summary, ["", ""])),
      h("div", {}, bestPart, figuresPart)),
    results, groupCards.training, groupCards.validation, groupCards.system, samplesCard,
    h("div", { class: "card" }, h("h3", {}, "Usage and cost"), cost,
      table(usage, ["node", "stage", "GPU s", "CPU core s", "GB s"])),
    h("div", { class: "card" }, h("h3", {}, "Logs"), logs),
    h("div", { class: "card" }, h("h3", {}, "Spec"), h("pre", {}, JSON.stringify(job.spec, null, 2))));

  const run = new RunSeries();
  const charts = new Map();
  let current = job;
  let resultsShown = false;

  function showProgress() {
    const j = current;
    const match = /(\w+) (\d+) of (\d+)/.exec(j.status_reason || "");
    const total = run.total || (match ? +match[3] : null);
    const unit = match ? match[1] : "step";
    const done = Math.max(run.lastStep, match ? +match[2] : 0);
    let percent = total ? Math.min(100, (100 * done) / total) : 0;
    if (j.status === "succeeded") percent = 100;
    bar.style.width = `${percent}%`;
    progress.dataset.progress = String(Math.round(percent));
    progressText.textContent = j.status === "succeeded" ? `done: ${done ? `${unit} ${done}` : "finished"}` :
      total ? `${unit} ${done} of ${total}` : done ? `${unit} ${done}` : "";
  }

  function showSummary() {
    const j = current;
    const training = j.spec.training_config || {};
    const rows = [
      ["task", task], ["strategy", j.strategy], ["model", `${j.model_type} ${j.spec.model_config.model_name}`],
      ["data", `${j.spec.data_config.data_source} ${j.spec.data_config.dataset_name}`],
      ["queued", duration(seconds(j.created_at, j.started_at || (j.finished_at || null)))],
      ["starting", j.started_at ? duration(seconds(j.started_at, j.first_step_at || j.finished_at)) : "–"],
      ["running", j.first_step_at ? duration(seconds(j.first_step_at, j.finished_at)) : "–"],
      ["attempts", j.attempts],
      ["requirements", `${j.requirements.gpu} GPU, ${j.requirements.cpu_cores} CPU, ${j.requirements.memory} GB`],
      ...Object.entries(training).filter(([k, v]) => typeof v !== "object" && k !== "strategy"),
    ];
    summary.replaceChildren(...rows.map(([k, v]) => h("tr", { "data-key": k }, h("th", {}, k), h("td", {}, v))));
  }

  function showMoney() {
    const j = current;
    const rows = [];
    for (const [node, f] of Object.entries(j.usage || {})) {
      for (const [stage, s] of Object.entries(f.stages || { "": f })) rows.push(h("tr", {}, h("td", {}, node), h("td", {}, stage || "–"),
        h("td", {}, fmt(s.gpu_seconds, 1)), h("td", {}, fmt(s.cpu_core_seconds, 1)), h("td", {}, fmt(s.memory_gb_seconds, 1))));
    }
    usage.replaceChildren(...rows);
    if (j.charged === null || j.charged === undefined) {
      cost.textContent = `Cost so far: ${fmt(j.cost_so_far, 6)} of a hold of ${fmt(j.hold, 6)} tokens ` +
        "(charged for what ran on others' nodes, at least the minimum charge; the rest of the hold is refunded)" +
        (j.pending_credit ? `; ${fmt(j.pending_credit, 6)} of it saved by checkpoints, pending for the nodes' owners.` : ".");
    } else {
      const earned = (j.earnings || []).map((e) => `node ${e.node_id}: ${fmt(e.tokens, 6)}`).join(", ");
      cost.textContent = `Charged ${fmt(j.charged, 6)} of a hold of ${fmt(j.hold, 6)} tokens; ` +
        `refunded ${fmt(j.refunded, 6)}; platform fee ${fmt(j.platform_fee, 6)}` +
        (j.voided ? `; voided ${fmt(j.voided, 6)} (a node's work refused, given back)` : "") +
        (j.compensated ? `; compensated ${fmt(j.compensated, 6)} (the result was invalid: what it cost you, given back by the platform)` : "") +
        (earned ? `; earned by ${earned}.` : " (it ran only on its owner's nodes: free).");
    }
    // The driving node's work done again elsewhere: its credit waits for the verdict.
    const audits = (j.audits || []).map((a) => `node ${a.node_id}'s audit` +
      (a.audit_job_id ? ` (job ${a.audit_job_id})` : "") + `: ${a.status}` + (a.detail ? ` (${a.detail})` : "") +
      (a.recompute_job_id ? `, computed again as job ${a.recompute_job_id}` : ""));
    if (audits.length) cost.textContent += ` ${audits.join("; ")}.`;
  }

  function showJob(j) {
    current = j;
    status.textContent = j.status;
    status.className = `status-${j.status}`;
    reason.textContent = j.status_reason;
    cancel.disabled = ["succeeded", "failed", "cancelled"].includes(j.status);
    showProgress();
    showSummary();
    showMoney();
    if (j.status === "succeeded" && task !== "train" && !resultsShown) {
      resultsShown = true;
      showResults(id, task, results).catch((error) => results.append(h("p", { class: "error" }, error.message)));
    }
  }

  let drawing = false;
  function redraw() {
    if (drawing) return;
    drawing = true;
    requestAnimationFrame(() => { drawing = false; draw(); });
  }

  function draw() {
    const keys = new Set(run.points.keys());
    const wanted = new Map();  // title → {group, names}
    const constants = [];
    for (const key of [...keys].sort()) {
      if (!run.charted(key)) { constants.push(key); continue; }
      const partner = VALIDATION_KEY.test(key) ? partnerOf(key, keys) : null;
      if (partner && run.charted(partner)) continue;  // drawn beside its training series
      const names = [key];
      for (const other of keys) {
        if (VALIDATION_KEY.test(other) && partnerOf(other, keys) === key && run.charted(other)) names.push(other);
      }
      wanted.set(key, { group: names.length > 1 ? "training" : groupOf(key), names });
    }
    for (const [title, { group, names }] of wanted) {
      let chart = charts.get(title);
      if (!chart || chart.names.join() !== names.join()) {
        if (chart) chart.el.remove();
        chart = new SeriesChart(title, names);
        charts.set(title, chart);
        groups[group].append(chart.el);
        groupCards[group].hidden = false;
      }
      chart.set(run.points);
    }
    bestPart.hidden = ![...keys].some((k) => run.charted(k) && groupOf(k) !== "system");
    figuresPart.hidden = constants.length === 0;
    best.replaceChildren(...[...keys].filter((k) => run.charted(k) && groupOf(k) !== "system").sort().map((k) => {
      const [, latest] = run.latest(k);
      const [step, value] = run.best(k);
      return h("tr", { "data-key": k }, h("td", {}, k), h("td", { class: "latest" }, compact(latest)),
        h("td", { class: "best" }, compact(value)), h("td", {}, step));
    }));
    figures.replaceChildren(...constants.map((k) =>
      h("tr", { "data-key": k }, h("td", {}, k), h("td", {}, compact(run.latest(k)[1])))));
    if (run.samples.length) {
      samplesCard.hidden = false;
      samples.replaceChildren(...run.samples.slice(-50).reverse().map((s) =>
        h("li", {}, h("span", { class: "muted" }, `step ${s.step} (${s.key}): `), s.text)));
    }
    showProgress();
  }

  function addLog(line) {
    logs.append(h("div", { class: `log-${line.level}` }, `${when(line.at)} [${line.source}] ${line.message}`));
    logs.scrollTop = logs.scrollHeight;
  }
  showJob(job);
  every(5000, () => { if (!["succeeded", "failed", "cancelled"].includes(current.status)) showSummary(); });
  follow(`/jobs/${id}/events`, async (kind, data) => {
    if (kind === "metric") { run.add(data); redraw(); }
    else if (kind === "log") addLog(data);
    else if (kind === "status" || kind === "usage") showJob(await api(`/jobs/${id}`));
  });
}

// -- a validate or infer job's results -------------------------------------------------------
async function showResults(id, task, card) {
  const s = await api(`/jobs/${id}/results/summary`);
  const formats = task === "validate" ? ["json"] : ["jsonl", "parquet"];
  const buttons = formats.map((f) => h("button", { id: `download-${f}`, on: { click: () =>
    download(`/jobs/${id}/results?format=${f}`, `job-${id}-results.${f}`) } }, `Download ${f}`));
  const rows = (pairs) => h("table", {}, h("tbody", {}, pairs.map(([k, v]) => h("tr", { "data-key": k }, h("th", {}, k), h("td", {}, v)))));
  const parts = [h("h3", {}, task === "validate" ? "Scores" : "Predictions")];
  if (task === "validate") {
    const scores = Object.entries(s).filter(([, v]) => typeof v === "number");
    parts.push(h("div", { id: "scores" }, rows(scores.map(([k, v]) => [k, compact(v)]))));
    if (s.per_class) {
      parts.push(h("h3", {}, "Per class"), h("table", { id: "per-class" },
        h("thead", {}, h("tr", {}, ["class", "precision", "recall", "support"].map((c) => h("th", {}, c)))),
        h("tbody", {}, Object.entries(s.per_class).map(([name, c]) => h("tr", { "data-class": name },
          h("td", {}, name), h("td", {}, compact(c.precision)), h("td", {}, compact(c.recall)), h("td", {}, c.support))))));
    }
    if (s.confusion_matrix) parts.push(h("h3", {}, "Confusion matrix (rows: true class, columns: predicted)"), confusion(s));
  } else {
    const counts = ["total_samples", "kept", "filtered_out", "result_bytes", "parquet_bytes"].filter((k) => k in s);
    parts.push(h("div", { id: "scores" }, rows(counts.map((k) => [k, s[k]]))));
    const preview = await api(`/jobs/${id}/results/preview?limit=20`);
    parts.push(h("h3", {}, `The first ${preview.rows.length} predictions`), previewTable(preview.rows));
  }
  parts.push(h("p", {}, ...buttons.flatMap((b) => [b, " "])));
  card.replaceChildren(...parts);
  card.hidden = false;
}

function confusion(s) {
  const names = Object.keys(s.per_class || {});
  const matrix = s.confusion_matrix;
  const largest = Math.max(1, ...matrix.flat());
  return h("table", { id: "confusion", class: "confusion" },
    h("thead", {}, h("tr", {}, h("th", {}, ""), names.map((n) => h("th", {}, n)))),
    h("tbody", {}, matrix.map((row, i) => h("tr", {}, h("th", {}, names[i] ?? i), row.map((count) =>
      h("td", { style: `background: rgba(11, 98, 214, ${(0.85 * count) / largest})`, class: count / largest > 0.5 ? "dark" : "" }, count))))));
}

function previewTable(rows) {
  const described = (row) => {
    if (Array.isArray(row.top_k)) return row.top_k.map((t) => `${t.label} (${compact(t.probability)})`).join(", ");
    const { id, ...rest } = row;
    return JSON.stringify(rest).slice(0, 200);
  };
  return h("table", { id: "preview" },
    h("thead", {}, h("tr", {}, ["id", "prediction", "probability", "top k"].map((c) => h("th", {}, c)))),
    h("tbody", {}, rows.map((row) => h("tr", {}, h("td", {}, row.id ?? ""), h("td", {}, row.label ?? row.prediction ?? ""),
      h("td", {}, row.probability !== undefined ? compact(row.probability) : ""), h("td", {}, described(row))))));
}

// -- comparing runs --------------------------------------------------------------------------
async function comparePage(params) {
  const ids = (params.get("ids") || "").split(",").map((x) => x.trim()).filter((x) => /^\d+$/.test(x)).slice(0, 8);
  if (ids.length < 2) {
    page("Compare runs", h("p", { id: "compare-hint" }, "Tick two or more jobs on the Jobs page and press Compare."));
    return;
  }
  const runs = [];
  for (const id of ids) {
    try {
      const [job, metrics] = await Promise.all([api(`/jobs/${id}`), api(`/metrics/training/${id}?limit=10000`)]);
      const run = new RunSeries();
      metrics.series.forEach((p) => run.add(p));
      runs.push({ id, job, run });
    } catch (error) {
      if (error.status === 404) return notFound(`Job ${id}`);
      throw error;
    }
  }
  const order = { training: 0, validation: 1, system: 2 };
  const keys = [...new Set(runs.flatMap((r) => [...r.run.points.keys()]))]
    .filter((k) => runs.some((r) => r.run.charted(k)))
    .sort((a, b) => order[groupOf(a)] - order[groupOf(b)] || a.localeCompare(b));
  const charts = h("div", { class: "charts", id: "compare-charts" });
  const legend = h("ul", { id: "compare-runs" }, runs.map((r) =>
    h("li", {}, h("a", { href: `#/jobs/${r.id}` }, `#${r.id}`), ` ${r.job.name} (${r.job.strategy}, ${r.job.status})`)));
  page(`Compare runs ${ids.map((i) => `#${i}`).join(", ")}`, h("div", { class: "card" }, legend), h("div", { class: "card" }, charts));
  for (const key of keys) {
    const names = runs.map((r) => `#${r.id} ${key}`);
    const chart = new SeriesChart(key, names);
    charts.append(chart.el);
    chart.set(new Map(runs.map((r, i) => [names[i], r.run.points.get(key) || []])));
  }
  if (!keys.length) charts.append(h("p", {}, "These runs share no series to compare."));
}
