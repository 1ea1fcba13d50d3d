/* agentflow web console: the runs list (filters, search, sorting, counts per status) and the
 * approvals inbox (pending and decided, filters, sorting). Loaded after app.js and cards.js.
 * Same rule as app.js: API text goes in with textContent only. */
"use strict";

const lists = {
  inboxTab: "pending",                 // pending | decided | all
  inboxCards: [],                      // the last cards fetched (open ones, the newest decided)
  inboxCounts: null,                   // {pending, decided}: over every request of the tenant
  runs: [],                            // the last runs fetched (already filtered by the server)
  runSort: { key: "created_at", dir: -1 },
  facets: "",                          // the facets last put in the selects (JSON)
  inboxFacets: "",
  debounce: null,
};

/** Fill a <select> with "any" and these values, keeping the choice (and an open select alone). */
function fillSelect(select, anyLabel, values) {
  const keep = select.value;
  select.replaceChildren(el("option", { value: "", text: anyLabel }), ...values.map((v) => el("option", { value: v, text: v })));
  select.value = values.includes(keep) ? keep : "";
}

// ------------------------------------------------------------------ inbox view

function showInboxView() {
  setView("inbox");
  $("#inbox").replaceChildren(el("p", { class: "empty", text: "Loading…" }));
  refreshApprovals(false);
}

/** GET the approvals: the nav badge (open ones I can decide), and the inbox when shown (every
 *  status then: the decided history is filtered here). */
async function refreshApprovals(quiet) {
  const all = state.view === "inbox";
  let cards, counts;
  try {
    // the badge alone (every page, every 3 s) needs no evidence: the server then reads no history
    const query = all ? "status=all" : "status=pending&evidence=false";
    const data = await api("GET", `/api/approvals?${query}`, undefined, { local: quiet });
    cards = data.approvals || [];
    counts = data.counts;
  } catch { return; }
  if (!state.session) return;
  const count = cards.filter((c) => OPEN_STATUSES.includes(c.status) && c.can_decide).length;
  const badge = $("#inbox-count");
  badge.textContent = String(count);
  badge.dataset.count = String(count);
  if (all && state.view === "inbox") {
    lists.inboxCards = cards;
    lists.inboxCounts = counts;
    renderInboxControls(cards);
    renderInbox(inboxShown(cards));
  }
}

const decidedBy = (c) => (c.votes || []).map((v) => v.principal);

function renderInboxControls(cards) {
  // the server's counts are over every request; it sends the newest decided ones only
  const open = cards.filter((c) => OPEN_STATUSES.includes(c.status)).length;
  const known = lists.inboxCounts || { pending: open, decided: cards.length - open };
  const counts = { ...known, all: known.pending + known.decided };
  for (const tab of $("#inbox-tabs").querySelectorAll("button")) {
    tab.setAttribute("aria-pressed", String(tab.dataset.tab === lists.inboxTab));
    $(".chip-count", tab).textContent = String(counts[tab.dataset.tab]);
  }
  const sent = cards.length - open;
  $("#inbox-more").hidden = lists.inboxTab === "pending" || sent >= counts.decided;
  $("#inbox-more").textContent = `The newest ${sent} of ${counts.decided} decided requests are shown; older ones are in `
    + "each run's timeline and in `agentflow approvals list --status all`.";
  $("#inbox-title").textContent = { pending: "Pending approvals", decided: "Decided approvals", all: "All approvals" }[lists.inboxTab];
  const facets = {
    tool: [...new Set(cards.map((c) => c.tool))].sort(),
    target: [...new Set(cards.map((c) => c.target).filter(Boolean))].sort(),
    requester: [...new Set(cards.map((c) => c.requested_by).filter(Boolean))].sort(),
    approver: [...new Set(cards.flatMap(decidedBy))].sort(),
  };
  const json = JSON.stringify(facets);
  if (json === lists.inboxFacets) return;
  lists.inboxFacets = json;
  fillSelect($("#inbox-tool"), "any tool", facets.tool);
  fillSelect($("#inbox-target"), "any site", facets.target);
  fillSelect($("#inbox-requester"), "asked by anyone", facets.requester);
  fillSelect($("#inbox-approver"), "decided by anyone", facets.approver);
}

/** The cards of the current tab that pass the filters, in the chosen order. */
function inboxShown(cards) {
  const tab = lists.inboxTab;
  const words = $("#inbox-q").value.trim().toLowerCase().split(/\s+/).filter(Boolean);
  const want = { tool: $("#inbox-tool").value, target: $("#inbox-target").value,
    requester: $("#inbox-requester").value, approver: $("#inbox-approver").value };
  const shown = cards.filter((c) => {
    const open = OPEN_STATUSES.includes(c.status);
    if ((tab === "pending" && !open) || (tab === "decided" && open)) return false;
    if ((want.tool && c.tool !== want.tool) || (want.target && c.target !== want.target)) return false;
    if (want.requester && c.requested_by !== want.requester) return false;
    if (want.approver && !decidedBy(c).includes(want.approver)) return false;
    const text = [c.id, c.run_id, c.tool, c.target, c.rule, c.requested_by, JSON.stringify(c.args),
      ...(c.votes || []).flatMap((v) => [v.principal, v.comment])].join(" ").toLowerCase();
    return words.every((w) => text.includes(w));
  });
  const order = $("#inbox-sort").value;
  const key = {
    newest: (c) => -c.created_at, oldest: (c) => c.created_at,
    expiring: (c) => (c.expires_at == null ? Infinity : c.expires_at), decided: (c) => -(c.decided_at || 0),
  }[order] || ((c) => -c.created_at);
  return shown.sort((a, b) => key(a) - key(b));
}

/** Update the inbox in place: cards being typed in must keep their element and focus. */
function renderInbox(cards) {
  const box = $("#inbox");
  const ids = new Set(cards.map((c) => c.id));
  for (const [id, entry] of state.cards) {
    if (!ids.has(id) && !cardUi(id).busy) { entry.el.remove(); state.cards.delete(id); }
  }
  $(".empty", box)?.remove();
  if (!cards.length && !state.cards.size) {
    const none = lists.inboxTab === "pending" ? "No pending approvals." : "No approvals match.";
    box.append(el("p", { class: "empty", text: none }));
    return;
  }
  cards.forEach((card, i) => {
    const node = upsertCard(card, true).el;
    if (box.children[i] !== node) box.insertBefore(node, box.children[i] || null);
  });
}

function onInboxFilter() {
  if (state.view === "inbox") renderInbox(inboxShown(lists.inboxCards));
}

function onInboxTab(ev) {
  const tab = ev.target.closest("button[data-tab]");
  if (!tab) return;
  lists.inboxTab = tab.dataset.tab;
  if (lists.inboxTab === "decided" && $("#inbox-sort").value === "newest") $("#inbox-sort").value = "decided";
  renderInboxControls(lists.inboxCards);
  onInboxFilter();
}

// ------------------------------------------------------------------ runs view

const RUN_COLUMNS = 13;

function showRunsView() {
  setView("runs");
  $("#runs-table tbody").replaceChildren(el("tr", {}, el("td", { colSpan: RUN_COLUMNS, class: "empty", text: "Loading…" })));
  loadRuns(false);
}

/** The query of the runs list from its filters (times on the server's clock). */
function runsQuery() {
  const params = new URLSearchParams({ limit: "100" });
  const set = (name, value) => { if (value) params.set(name, value); };
  set("status", $("#runs-counts button[aria-pressed='true']")?.dataset.status || "");
  set("q", $("#runs-q").value.trim());
  set("target", $("#runs-target").value);
  set("tool", $("#runs-tool").value);
  set("requested_by", $("#runs-requester").value);
  const within = Number($("#runs-since").value);
  if (within) set("since", String(Date.now() / 1000 + clockSkew - within));
  return params.toString();
}

async function loadRuns(quiet) {
  const query = runsQuery();
  let data;
  try { data = await api("GET", `/api/runs?${query}`, undefined, { local: quiet }); } catch { return; }
  if (state.view !== "runs" || query !== runsQuery()) return; // filters changed meanwhile: a newer load comes
  lists.runs = data.runs || [];
  renderRunsControls(data);
  renderRuns();
}

function renderRunsControls(data) {
  const counts = data.counts || {};
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  for (const chip of $("#runs-counts").querySelectorAll("button")) {
    const n = chip.dataset.status ? counts[chip.dataset.status] || 0 : total;
    $(".chip-count", chip).textContent = String(n);
  }
  $("#runs-matched").textContent = `${data.matched} of ${data.scanned} latest runs`;
  const facets = data.facets || {};
  const json = JSON.stringify(facets);
  if (json === lists.facets) return;
  lists.facets = json;
  fillSelect($("#runs-target"), "any site", facets.targets || []);
  fillSelect($("#runs-tool"), "any tool", facets.tools || []);
  fillSelect($("#runs-requester"), "asked by anyone", facets.requested_by || []);
}

const RUN_SORTS = {
  created_at: (r) => r.created_at, status: (r) => r.status, duration_s: (r) => r.duration_s, steps: (r) => r.steps,
  tokens: (r) => r.tokens, cost_usd: (r) => r.cost_usd, requested_by: (r) => r.requested_by || "",
  outcome: (r) => r.outcome || "", open_approvals: (r) => r.open_approvals || 0,
};

function renderRuns() {
  const { key, dir } = lists.runSort;
  const get = RUN_SORTS[key] || RUN_SORTS.created_at;
  const runs = [...lists.runs].sort((a, b) => {
    const x = get(a), y = get(b);
    return (x < y ? -1 : x > y ? 1 : 0) * dir;
  });
  for (const th of $("#runs-table thead").querySelectorAll("th[data-sort]")) {
    th.setAttribute("aria-sort", th.dataset.sort === key ? (dir > 0 ? "ascending" : "descending") : "none");
  }
  const filtered = $("#runs-counts button[aria-pressed='true']")?.dataset.status || $("#runs-q").value.trim()
    || ["#runs-target", "#runs-tool", "#runs-requester", "#runs-since"].some((id) => $(id).value);
  $("#runs-table tbody").replaceChildren(...(runs.length ? runs.map(runRow)
    : [el("tr", {}, el("td", { colSpan: RUN_COLUMNS, class: "empty", text: filtered ? "No run matches these filters." : "No runs yet in this tenant." }))]));
}

function onRunSort(ev) {
  const th = ev.target.closest("th[data-sort]");
  if (!th) return;
  const key = th.dataset.sort;
  lists.runSort = { key, dir: lists.runSort.key === key ? -lists.runSort.dir : key === "created_at" ? -1 : 1 };
  renderRuns();
}

function onRunStatus(ev) {
  const chip = ev.target.closest("button[data-status]");
  if (!chip) return;
  for (const other of $("#runs-counts").querySelectorAll("button")) other.setAttribute("aria-pressed", String(other === chip));
  loadRuns(false);
}

function onRunFilter(ev) {
  clearTimeout(lists.debounce);
  lists.debounce = setTimeout(() => loadRuns(false), ev && ev.type === "input" ? 250 : 0);
}

function clearRunFilters() {
  for (const id of ["#runs-q", "#runs-target", "#runs-tool", "#runs-requester", "#runs-since"]) $(id).value = "";
  for (const chip of $("#runs-counts").querySelectorAll("button")) chip.setAttribute("aria-pressed", String(!chip.dataset.status));
  loadRuns(false);
}

function runRow(r) {
  const td = (cls, label, ...kids) => el("td", { class: cls, data: { label } }, ...kids);
  const targets = (r.targets || []).join(", ");
  return el("tr", { data: { runId: r.id, status: r.status } },
    td("run-id", "run", el("a", { href: `#/runs/${enc(r.id)}`, text: r.id })),
    td("run-status", "status", statusBadge(r.status)),
    td("run-outcome", "outcome", r.outcome || (r.error ? "error" : "—")),
    td("run-task", "task", el("span", { text: r.task, title: r.task })),
    td("run-targets", "site", targets || "—"),
    td("run-by", "asked by", r.requested_by || ""),
    td("run-created", "created", fmtUtc(r.created_at)),
    td("num run-duration", "took", fmtDuration(r.duration_s)),
    td("num run-steps", "steps", fmtInt(r.steps)),
    td("num run-tokens", "tokens", fmtInt(r.tokens)),
    td("num run-cost", "cost", fmtCost(r.cost_usd)),
    td("num run-open", "open approvals", String(r.open_approvals || 0)),
    td("run-trace", "timeline", el("a", { href: `#/runs/${enc(r.id)}/timeline`, text: "trace" })));
}

function bindLists() {
  $("#runs-counts").addEventListener("click", onRunStatus);
  $("#runs-table thead").addEventListener("click", onRunSort);
  $("#runs-table thead").addEventListener("keydown", (ev) => {  // the headers are focusable: Enter sorts too
    if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); onRunSort(ev); }
  });
  $("#runs-q").addEventListener("input", onRunFilter);
  for (const id of ["#runs-target", "#runs-tool", "#runs-requester", "#runs-since"]) $(id).addEventListener("change", onRunFilter);
  $("#runs-clear").addEventListener("click", clearRunFilters);
  $("#runs-filters").addEventListener("submit", (ev) => { ev.preventDefault(); loadRuns(false); });
  $("#inbox-tabs").addEventListener("click", onInboxTab);
  $("#inbox-q").addEventListener("input", onInboxFilter);
  for (const id of ["#inbox-tool", "#inbox-target", "#inbox-requester", "#inbox-approver", "#inbox-sort"]) {
    $(id).addEventListener("change", onInboxFilter);
  }
  $("#inbox-filters").addEventListener("submit", (ev) => ev.preventDefault());
}
