/* agentflow web console: the runs list and the approvals inbox. Loaded after app.js.
 * Same rule as app.js: API text goes in with textContent only. */
"use strict";
// ------------------------------------------------------------------ inbox view

function showInboxView() {
  setView("inbox");
  $("#inbox").replaceChildren(el("p", { class: "empty", text: "Loading…" }));
  refreshApprovals(false);
}

/** GET pending approvals: the nav badge (those I can decide), and the inbox when shown. */
async function refreshApprovals(quiet) {
  let cards;
  try {
    cards = (await api("GET", "/api/approvals?status=pending", undefined, { local: quiet })).approvals || [];
  } catch { return; }
  if (!state.session) return;
  const count = cards.filter((c) => c.can_decide).length;
  const badge = $("#inbox-count");
  badge.textContent = String(count);
  badge.dataset.count = String(count);
  if (state.view === "inbox") renderInbox(cards);
}

/** Update the inbox in place: cards being typed in must keep their element and focus. */
function renderInbox(cards) {
  const box = $("#inbox");
  const ids = new Set(cards.map((c) => c.id));
  for (const [id, entry] of state.cards) {
    if (!ids.has(id) && !cardUi(id).busy) { entry.el.remove(); state.cards.delete(id); }
  }
  $(".empty", box)?.remove();
  if (!cards.length && !state.cards.size) { box.append(el("p", { class: "empty", text: "No pending approvals." })); return; }
  cards.forEach((card, i) => {
    const node = upsertCard(card, true).el;
    if (box.children[i] !== node) box.insertBefore(node, box.children[i] || null);
  });
}

// ------------------------------------------------------------------ runs view

function showRunsView() {
  setView("runs");
  $("#runs-table tbody").replaceChildren(el("tr", {}, el("td", { colSpan: 10, class: "empty", text: "Loading…" })));
  loadRuns(false);
}

async function loadRuns(quiet) {
  let data;
  try { data = await api("GET", "/api/runs?limit=50", undefined, { local: quiet }); } catch { return; }
  if (state.view !== "runs") return;
  const runs = data.runs || [];
  $("#runs-table tbody").replaceChildren(...(runs.length ? runs.map(runRow)
    : [el("tr", {}, el("td", { colSpan: 10, class: "empty", text: "No runs yet in this tenant." }))]));
}

function runRow(r) {
  const td = (cls, ...kids) => el("td", { class: cls }, ...kids);
  return el("tr", { data: { runId: r.id, status: r.status } },
    td("run-id", el("a", { href: `#/runs/${enc(r.id)}`, text: r.id })),
    td("run-status", statusBadge(r.status)),
    td("run-task", el("span", { text: r.task, title: r.task })),
    td("run-by", r.requested_by || ""),
    td("run-created", fmtUtc(r.created_at)),
    td("num run-steps", fmtInt(r.steps)),
    td("num run-tokens", fmtInt(r.tokens)),
    td("num run-cost", fmtCost(r.cost_usd)),
    td("num run-open", String(r.open_approvals || 0)),
    td("run-trace", el("a", { href: `#/runs/${enc(r.id)}/timeline`, text: "trace" })));
}
