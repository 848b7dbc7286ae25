// The pages a node owner and an admin run the pool from: Nodes (state-aware actions, owners
// by name, earnings) and System (queue, utilisation by resource, jobs by status, the ledger).
// Uses app.js's h, api, page, every, fmt, when and Chart (called once a page opens).
"use strict";

// The actions a node's state allows, for the viewer's role; each is [label, path, method].
function nodeActions(node) {
  const gone = node.status === "deregistered";
  const banned = node.approval === "banned";
  const actions = [];
  if (me.role === "admin" && !gone) {
    if (node.approval === "pending") actions.push(["Approve", `/nodes/${node.id}/approve`, "POST"]);
    if (!banned) actions.push(["Ban", `/nodes/${node.id}/ban`, "POST"]);
    else actions.push(["Unban", `/nodes/${node.id}/unban`, "POST"]);
  }
  if (!gone && !banned) {
    actions.push(node.drained ? ["Undrain", `/nodes/${node.id}/undrain`, "POST"] : ["Drain", `/nodes/${node.id}/drain`, "POST"]);
    actions.push(["New credential", `/nodes/${node.id}/credential`, "POST"]);
  }
  if (!gone) actions.push(["Retire", `/nodes/${node.id}`, "DELETE"]);
  return actions;
}

async function nodesPage() {
  const body = h("tbody");
  const notice = h("p", { id: "node-notice" });
  const cardEl = h("div", { class: "card" }, notice, h("table", { id: "nodes" },
    h("thead", {}, h("tr", {}, ["id", "host", "owner", "status", "approval", "resources", "earned", "last heartbeat", ""]
      .map((c) => h("th", {}, c)))), body));
  page("Nodes", cardEl);
  async function act(label, path, method) {
    if ((label === "Retire" || label === "Ban") && !confirm(`${label} this node?`)) return;
    try {
      const answer = await api(path, { method });
      notice.className = "";
      notice.textContent = answer && answer.credential
        ? `New credential for node ${answer.node_id} (shown once): ${answer.credential}`
        : `${label}: done.`;
    } catch (error) {
      notice.className = "error";
      notice.textContent = `${label} failed: ${error.message}`;
    }
    refresh();
  }
  async function refresh() {
    let nodes;
    try {
      nodes = await api("/nodes?limit=500");
    } catch (error) {
      if (error.status !== 403) throw error;
      leavePage();
      cardEl.replaceChildren(h("p", { id: "nodes-forbidden" },
        "Nodes are lent by node owners. Your account is a user's: an admin can make it a node " +
        "owner's, and then a machine of yours can join the pool (see \"Lending a machine\" in the README)."));
      return;
    }
    if (!nodes.items.length) notice.textContent = notice.textContent || "No nodes yet: lend a machine with the node agent (distlm-node).";
    body.replaceChildren(...nodes.items.map((node) => h("tr", { "data-node": node.id },
      h("td", {}, h("a", { href: `#/nodes/${node.id}` }, node.id)),
      h("td", {}, node.hostname), h("td", { class: "owner" }, node.owner_username || node.owner_id),
      h("td", { class: `node-${node.status}` }, node.status + (node.drained ? " (drained)" : "") + (node.flag_reason ? ` — ${node.flag_reason}` : "")),
      h("td", {}, node.approval),
      h("td", {}, `${node.resources.gpu} GPU, ${node.resources.cpu_cores} CPU, ${node.resources.memory} GB`),
      h("td", { class: "earned" }, fmt(node.tokens_earned, 4)),
      h("td", {}, when(node.last_heartbeat_at)),
      h("td", { class: "actions" }, nodeActions(node).map(([label, path, method]) =>
        h("button", { "data-action": label, on: { click: () => act(label, path, method) } }, label))))));
  }
  every(3000, refresh);
}

function countsTable(id, counts) {
  return h("table", { id }, h("tbody", {}, Object.entries(counts).map(([k, v]) =>
    h("tr", { "data-key": k }, h("th", {}, k), h("td", {}, v)))));
}

async function systemPage() {
  const parts = Object.fromEntries(["jobs", "nodes", "users", "resources", "ledger"].map((k) => [k, h("div", {})]));
  const queue = h("tbody");
  const utilisation = new Chart("utilisation %", ["gpu", "cpu_cores", "memory_gb"], "time", true);
  const waiting = new Chart("jobs", ["queued", "running"], "time", true);
  const card = (title, ...content) => h("div", { class: "card" }, h("h3", {}, title), ...content);
  page("System",
    h("div", { class: "two-columns" }, card("Jobs by status", parts.jobs), card("Nodes", parts.nodes)),
    h("div", { class: "two-columns" }, card("Resources of online nodes", parts.resources), card("Ledger", parts.ledger)),
    card("Over time", h("div", { class: "charts" }, utilisation.el, waiting.el)),
    card("Users by role", parts.users),
    card("Queue", h("table", { id: "queue" }, h("thead", {}, h("tr", {}, ["job", "owner", "waiting because"].map((c) => h("th", {}, c)))), queue)));
  every(3000, async () => {
    const s = await api("/metrics/system");
    parts.jobs.replaceChildren(countsTable("jobs-by-status", s.jobs_by_status));
    parts.nodes.replaceChildren(countsTable("nodes-by-status", s.nodes_by_status), countsTable("nodes-by-approval", s.nodes_by_approval));
    parts.users.replaceChildren(countsTable("users-by-role", s.users_by_role));
    const online = s.online_resources;
    const free = { gpu: 0, cpu_cores: 0, memory_gb: 0 };
    for (const n of s.free_resources) for (const k of Object.keys(free)) free[k] += n[k];
    const used = {};
    const rows = ["gpu", "cpu_cores", "memory_gb"].map((k) => {
      used[k] = online[k] ? (100 * (online[k] - free[k])) / online[k] : 0;
      return h("tr", { "data-key": k }, h("th", {}, k), h("td", {}, `${fmt(online[k] - free[k], 2)} of ${fmt(online[k], 2)} in use`),
        h("td", {}, `${fmt(used[k], 1)}%`));
    });
    parts.resources.replaceChildren(h("p", {}, `${online.nodes} online nodes`), h("table", { id: "utilisation" }, h("tbody", {}, rows)));
    const l = s.ledger;
    parts.ledger.replaceChildren(
      h("p", { id: "invariant", class: l.invariant_ok ? "status-succeeded" : "error" },
        l.invariant_ok ? "Every account balances: nothing created or lost." : `Invariant broken: ${l.problems.join("; ")}`),
      countsTable("ledger", { issued: l.issued, "in wallets": l.in_wallets, "in escrow": l.in_escrow, "pending credit": l.pending, "platform fees": l.fees }));
    const now = Date.now() / 1000;
    utilisation.add(now, used);
    waiting.add(now, { queued: s.jobs_by_status.queued || 0, running: s.jobs_by_status.running || 0 });
    const list = await api("/jobs?status=queued&limit=200");
    queue.replaceChildren(...list.items.map((j) => h("tr", {}, h("td", {}, h("a", { href: `#/jobs/${j.id}` }, j.id)),
      h("td", {}, j.owner_id), h("td", {}, j.status_reason))));
  });
}
