/* agentflow web console: a run's timeline (#/runs/<id>/timeline), from GET /api/runs/{id}/timeline.
 * A waterfall on the run's recorded clock: one row per step (long waits drawn shortened, their
 * real length labelled), the lease changes between them (a worker lost, the run resumed, a wake
 * after a wait), the reads folded into groups; a click on a step shows what it carried.
 * Loaded after app.js and values.js. Text from models, tools and operators goes in with
 * textContent only. */
"use strict";

const tl = {
  runId: null,
  data: null,
  json: "",
  open: new Set(),      // seqs whose detail is shown (kept across refreshes)
  unfolded: new Set(),  // group ids shown unfolded
};

const TL_KIND = { model: "model", tool: "tool", policy: "policy", approval: "approval", wait: "wait", signal: "wait",
  child: "child", plan: "plan", activity: "activity", bookkeeping: "record" };
const TL_MARK = { crash: "⚠ crash", resume: "↻ resume", wake: "→ wake" };
const NARROW = "(max-width: 700px)";

function showTimelineView(runId) {
  setView("timeline", "runs");
  Object.assign(tl, { runId, data: null, json: "", open: new Set(), unfolded: new Set() });
  $("#tl-title").textContent = `run ${runId}`;
  $("#tl-chat").href = `#/runs/${enc(runId)}`;
  $("#tl-jsonl").href = `/api/runs/${enc(runId)}/trace.jsonl`;
  $("#tl-jsonl").download = `${runId}.jsonl`;
  for (const id of ["#tl-status", "#tl-story"]) $(id).hidden = true;
  $("#tl-unfold").checked = false;
  $("#tl-story").open = !window.matchMedia(NARROW).matches; // on a phone the waterfall comes first
  for (const id of ["#tl-task", "#tl-stats", "#tl-axis"]) $(id).replaceChildren();
  $("#tl-rows").replaceChildren(el("p", { class: "empty", text: "Loading…" }));
  loadTimeline(false);
}

/** Fetch and draw; quiet refreshes (the 3 s tick, while the run is not over) redraw only when
 *  something changed, keeping what the operator opened. */
async function loadTimeline(quiet) {
  const runId = tl.runId;
  let data;
  try {
    data = await api("GET", `/api/runs/${enc(runId)}/timeline`, undefined, { local: true });
  } catch (err) {
    if (!quiet && state.view === "timeline" && tl.runId === runId && err.status !== 401) {
      $("#tl-rows").replaceChildren(el("p", { class: "empty tl-error", text: err.message }));
    }
    return;
  }
  if (state.view !== "timeline" || tl.runId !== runId) return;
  const json = JSON.stringify(data);
  if (json === tl.json) return;
  Object.assign(tl, { data, json });
  renderTimeline(data);
}

/** The 3 s tick: a run still going gets its new steps. */
function tickTimeline() {
  if (state.view === "timeline" && tl.data && !isOver(tl.data.run.status)) return loadTimeline(true);
  return undefined;
}

function renderTimeline(data) {
  const { run, totals, axis } = data;
  const status = $("#tl-status");
  Object.assign(status, { textContent: run.status, hidden: false });
  status.dataset.status = run.status;
  $("#tl-task").replaceChildren(el("span", {},
    run.task ? el("span", { class: "tl-task-text", text: run.task }) : null,
    el("span", { class: "muted", text: ` — asked by ${run.requested_by || "?"} at ${fmtIso(run.created_at)}` })));
  const stats = [
    ["took", fmtDuration(axis.seconds) + (isOver(run.status) ? "" : " so far")],
    ["steps", fmtInt(totals.steps)], ["model calls", fmtInt(totals.model_calls)],
    ["tokens", fmtInt(totals.tokens_in + totals.tokens_out)], ["cost", fmtCost(totals.cost_usd)],
    ["waited", fmtDuration(totals.waited_s)], ["lease changes", String(totals.lease_changes)],
    ["crashes", String(totals.crashes)], ["retries", String(totals.retries)],
  ];
  const one = { steps: "step", "model calls": "model call", "lease changes": "lease change", crashes: "crash", retries: "retry" };
  $("#tl-stats").replaceChildren(...stats.map(([k, v]) =>
    el("span", { class: "tl-stat", data: { stat: k, zero: v === "0" } }, el("b", { text: v }), ` ${v === "1" && one[k] || k}`)));
  const story = $("#tl-story");
  story.hidden = !(data.story || []).length;
  $("ol", story).replaceChildren(...(data.story || []).map((line) => el("li", { text: line })));
  $("#tl-axis").replaceChildren(...axisMarks(axis));
  renderTimelineRows(data);
}

function axisMarks(axis) {
  const marks = [el("span", { class: "tl-tick", data: { edge: "start" }, text: "+0 s", title: fmtIso(axis.start) })];
  for (const b of axis.breaks) {
    const band = el("span", { class: "tl-axis-break", title: `${fmtDuration(b.seconds)} (${b.kind === "wait" ? "a durable wait" : "idle"}), drawn shortened`,
      text: `⋯ ${fmtDuration(b.seconds)} ⋯` });
    band.style.left = `${b.x0}%`;
    band.style.width = `${Math.max(b.x1 - b.x0, 0.5)}%`;
    marks.push(band);
  }
  marks.push(el("span", { class: "tl-tick", data: { edge: "end" }, text: `+${fmtDuration(axis.seconds)}`, title: fmtIso(axis.end) }));
  return marks;
}

function renderTimelineRows(data) {
  const box = $("#tl-rows");
  const markers = new Map();
  for (const m of data.markers) markers.set(m.before_seq, [...(markers.get(m.before_seq) || []), m]);
  const groups = new Map(data.groups.map((g) => [g.seqs[0], g]));
  const all = $("#tl-unfold").checked;
  const nodes = [];
  for (const r of data.rows) {
    for (const m of markers.get(r.seq) || []) nodes.push(markerRow(m));
    if (groups.has(r.seq)) nodes.push(groupRow(groups.get(r.seq), data.axis));
    const row = stepRow(r, data.axis);
    row.hidden = Boolean(r.group) && !all && !tl.unfolded.has(r.group);
    nodes.push(row);
    if (tl.open.has(r.seq) && !row.hidden) nodes.push(stepDetail(r));
  }
  if (!data.rows.length) nodes.push(el("p", { class: "empty", text: "Nothing recorded yet." }));
  box.replaceChildren(...nodes);
}

function markerRow(m) {
  const when = m.gap_s > 0 ? ` · ${fmtDuration(m.gap_s)} later` : "";
  return el("div", { class: "tl-marker", data: { kind: m.kind, epochFrom: m.epoch_from, epochTo: m.epoch_to }, role: "note" },
    el("span", { class: "tl-mark-icon", text: TL_MARK[m.kind] || m.kind }),
    el("span", { class: "tl-mark-text", text: m.text }),
    el("span", { class: "tl-mark-when", text: `${fmtIso(m.kind === "crash" ? m.at : m.resumed_at)}${m.kind === "crash" ? "" : when}` }));
}

function track(x0, x1, axis, cls = "") {
  const bar = el("span", { class: `tl-bar ${cls}`.trim() });
  bar.style.left = `${x0}%`;
  bar.style.width = `${Math.max(x1 - x0, 0.6)}%`;
  const bands = axis.breaks.map((b) => {
    const band = el("span", { class: "tl-band" });
    band.style.left = `${b.x0}%`;
    band.style.width = `${b.x1 - b.x0}%`;
    return band;
  });
  return el("div", { class: "tl-track", ariaHidden: "true" }, ...bands, bar);
}

function groupRow(g, axis) {
  const unfolded = $("#tl-unfold").checked || tl.unfolded.has(g.id);
  const toggle = () => {
    if (tl.unfolded.has(g.id)) tl.unfolded.delete(g.id); else tl.unfolded.add(g.id);
    renderTimelineRows(tl.data);
  };
  return el("div", { class: "tl-row tl-group", data: { group: g.id, kind: "reads" }, tabIndex: 0, role: "button",
    ariaExpanded: String(unfolded), onclick: toggle, onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); toggle(); } } },
    el("span", { class: "tl-seq", text: unfolded ? "▾" : "▸" }),
    el("div", { class: "tl-label" },
      el("span", { class: "tl-kind", text: "reads" }),
      el("span", { class: "tl-title", text: g.title }),
      el("span", { class: "tl-chip", text: `${g.model_calls} model calls · ${fmtInt(g.tokens)} tokens · ${fmtCost(g.cost_usd)}` })),
    track(g.x0, g.x1, axis, "group"),
    el("span", { class: "tl-dur", text: `${g.seqs.length} steps` }));
}

function stepRow(r, axis) {
  const toggle = () => {
    if (tl.open.has(r.seq)) tl.open.delete(r.seq); else tl.open.add(r.seq);
    renderTimelineRows(tl.data);
  };
  const effect = r.policy ? r.policy.effect : "";
  return el("div", { class: "tl-row", data: { seq: r.seq, kind: r.kind, status: r.status, epoch: r.epoch, effect },
    tabIndex: 0, role: "button", ariaExpanded: String(tl.open.has(r.seq)), title: r.title, onclick: toggle,
    onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); toggle(); } } },
    el("span", { class: "tl-seq", text: `#${r.seq}` }),
    el("div", { class: "tl-label" },
      el("span", { class: "tl-kind", text: TL_KIND[r.kind] || r.kind }),
      el("span", { class: "tl-title", text: r.title }),
      ...rowChips(r)),
    track(r.x0, r.x1, axis, [r.shortened ? "shortened" : "", r.open ? "open" : ""].join(" ")),
    el("span", { class: "tl-dur", text: r.shortened ? `${fmtDuration(r.duration_s)} ⋯` : fmtDuration(r.duration_s),
      title: `+${fmtDuration(r.offset_s)} · ${fmtIso(r.started_at)}` }));
}

function rowChips(r) {
  const chips = [];
  const chip = (text, cls = "") => chips.push(el("span", { class: `tl-chip ${cls}`.trim(), text }));
  if (r.usage) chip(`${fmtInt(r.usage.tokens_in)} in · ${fmtInt(r.usage.tokens_out)} out · ${fmtCost(r.usage.cost_usd)}`, "usage");
  if (r.policy) chip(r.policy.effect || "?", `effect ${r.policy.effect || ""}`);
  if (r.approval && (r.approval.votes || []).length) {
    for (const v of r.approval.votes) chip(`${v.decision}d by ${v.principal} ${fmtClock(v.at)}`, `vote ${v.decision}`);
  } else if (r.approval) chip(r.approval.status || "?", "vote");
  if (r.retries.length) chip(`${r.retries.length} failed attempt${r.retries.length === 1 ? "" : "s"}`, "bad");
  if (r.attempt > 1) chip(`attempt ${r.attempt}`, "bad");
  if (r.status === "failed") chip("failed", "bad");
  if (r.open) chip(r.status === "waiting" ? "waiting now" : "in flight", "open");
  if (r.shortened) chip("drawn shortened", "muted");
  return chips;
}

// ------------------------------------------------------------------ a step's detail

function stepDetail(r) {
  const d = r.detail || {};
  const row = (label, value) => [el("dt", { text: label }), el("dd", {}, value)];
  const box = el("div", { class: "tl-detail", data: { seq: r.seq } },
    el("dl", { class: "tl-facts" },
      row("started", `${fmtIso(r.started_at)} (+${fmtDuration(r.offset_s)} into the run)`),
      row("finished", r.finished_at == null ? `not yet (${r.status})` : fmtIso(r.finished_at)),
      row("took", fmtDuration(r.duration_s) + (r.shortened ? " (drawn shortened)" : "")),
      row("lease", `epoch ${r.epoch}`), row("attempt", String(r.attempt)),
      r.error ? row("error", el("pre", { class: "event-error", text: r.error })) : null));
  const section = (title, ...kids) => box.append(el("section", { class: "tl-section" }, el("h4", { text: title }), ...kids));
  if (d.unreadable) {
    section("unreadable record", renderValue({ error: d.unreadable, args: d.args, result: d.result }));
    return box;
  }
  if (r.kind === "model") {
    if (d.extends != null) box.append(el("p", { class: "muted", text: `Continues the conversation of step #${d.extends}; the messages this call added:` }));
    section("request", ...(d.request || []).map((m) => messageBlock(m)));
    if (d.response) section("response", messageBlock(d.response));
    section("usage", renderValue({ model: d.model, finish_reason: d.finish_reason, ...d.usage }));
  } else if (r.kind === "tool") {
    section("arguments", renderValue(d.args));
    if (d.result !== undefined && d.result !== null) section("result", untrustedValue(d.result, "tool output (untrusted)"));
    section("idempotency key", el("code", { text: d.idempotency_key || "" }));
  } else if (r.kind === "policy") {
    section("decision", renderValue(present({ tool: d.tool, args: d.args, effect: d.effect, rule: d.rule, reason: d.reason,
      defer_until: d.defer_until, approval_rule: d.approval_rule, matched_rules: d.matched, pack: `${d.pack} ${d.pack_hash || ""}`.trim() })));
  } else if (!r.approval) {
    section("recorded", renderValue({ args: d.args, result: d.result }));
  }
  if (r.approval) section("approval", approvalFacts(r.approval));
  if (r.retries.length) {
    section("failed attempts", renderValue(r.retries.map((a) => ({ attempt: a.attempt, error: a.error, started_at: a.started_at,
      finished_at: a.finished_at, retry_at: a.retry_at }))));
  }
  return box;
}

/** A record without its empty fields (a decision says what it has, not every blank). */
const present = (o) => Object.fromEntries(Object.entries(o).filter(([, v]) => v != null && v !== "" && !(Array.isArray(v) && !v.length)));

function approvalFacts(a) {
  return el("div", { class: "tl-approval" },
    renderValue({ id: a.id, tool: a.tool, rule: a.rule, status: a.status, requested_by: a.requested_by, created_at: a.created_at,
      decided_at: a.decided_at, args: a.args }),
    a.diff ? el("div", { class: "card-diff" }, renderDiff(a.diff)) : null,
    (a.votes || []).length ? renderValue(a.votes.map((v) => ({ who: v.principal, decision: v.decision, at: v.at, comment: v.comment || "" })))
      : el("p", { class: "muted", text: "No decision yet." }));
}

function messageBlock(m) {
  const role = { human: "user", ai: "model", system: "system prompt", tool: `tool result${m.name ? ` (${m.name})` : ""}` }[m.role] || m.role;
  const content = m.content;
  return el("div", { class: "tl-msg", data: { role: m.role } },
    el("div", { class: "tl-msg-head", text: role }),
    content !== "" && content != null ? untrustedValue(content, m.role === "tool" ? "tool output (untrusted)" : "text (untrusted)") : null,
    (m.tool_calls || []).length ? el("ul", { class: "tl-calls" }, m.tool_calls.map((c) =>
      el("li", {}, el("code", { class: "tl-call-name", text: `calls ${c.name}` }), renderValue(c.args)))) : null);
}
