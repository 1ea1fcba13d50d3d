/* agentflow web console: approval cards (in a run's conversation and in the inbox), with the
 * evidence the agent gathered and what the viewer may do. Loaded after app.js (its helpers).
 * Same rule as app.js: API text goes in with textContent only. */
"use strict";
// ------------------------------------------------------------------ approval cards

const OPEN_STATUSES = ["pending", "escalated"];

function cardUi(id) {
  if (!state.cardUi.has(id)) state.cardUi.set(id, { busy: false, error: "", comment: "", edits: {} });
  return state.cardUi.get(id);
}

/** Create or update (in place) the element of an approval card in the current view. */
function upsertCard(card, inInbox = false) {
  const json = JSON.stringify({ ...card, now: 0 }); // the server's clock alone changes nothing shown
  // measured before the card grows the conversation: an operator following the end keeps following
  const near = !inInbox && nearEnd();
  let entry = state.cards.get(card.id);
  if (!entry) {
    entry = { card, json, el: el("div", { class: "card" }), inInbox };
    state.cards.set(card.id, entry);
    renderCard(entry);
    if (!inInbox) placeCard(card.id);
  } else if (entry.json !== json) {
    Object.assign(entry, { card, json });
    renderCard(entry);
  }
  if (near) scrollToEnd(true);
  return entry;
}

/** In the conversation a card sits in the slot of its (first) approval step, or at the end
 *  until that step arrives. */
function placeCard(id) {
  const entry = state.cards.get(id);
  const step = [...document.querySelectorAll('#messages > .event[data-kind="approval"]')]
    .find((n) => n.dataset.forApproval === id);
  if (step) $(".event-card-slot", step).append(entry.el);
  else if (!entry.el.isConnected) $("#messages").insertBefore(entry.el, $("#run-answer"));
}

/** (Re)build a card's content, keeping typed input, focus, busy state and error. */
function renderCard(entry) {
  const { card, el: root } = entry;
  syncClock(card.now);
  const ui = cardUi(card.id);
  const focused = root.contains(document.activeElement) ? document.activeElement : null;
  const focusKey = focused && {
    cls: [...focused.classList].find((c) => c.startsWith("card-")), arg: focused.dataset.arg, pos: focused.selectionStart,
  };
  root.dataset.approvalId = card.id;
  root.dataset.status = card.status;
  const q = card.quorum || { have: 0, needed: 1 };
  const row = (label, value) => [el("dt", { text: label }), el("dd", {}, value)];
  const isOpen = OPEN_STATUSES.includes(card.status);
  root.replaceChildren(...[ // (replaceChildren would show a null as the text "null")
    el("div", { class: "card-head" },
      el("span", { class: "card-status-badge status", data: { status: card.status }, text: card.status }),
      el("code", { class: "card-tool", text: card.tool }),
      el("span", { class: "card-target", text: card.target == null ? "" : fmtValue(card.target) }),
      el("span", { class: "spacer" }),
      entry.inInbox ? el("a", { class: "card-run-link", href: `#/runs/${enc(card.run_id)}`, text: `run ${card.run_id}` }) : null,
      el("span", { class: "card-id", text: card.id })),
    el("div", { class: "card-diff" }, renderDiff(card.diff)),
    card.evidence ? renderEvidence(card.evidence, ui) : null,
    card.evidence_error ? el("div", { class: "ev-block ev-error muted",
      text: `The evidence cannot be shown: the run's records could not be read (${card.evidence_error}). Open the run's timeline.` }) : null,
    el("dl", { class: "card-meta" },
      row("args", el("pre", { class: "card-args", text: compactJson(card.args) })),
      row("rule", el("span", {}, el("span", { class: "card-rule", text: card.rule || "—" }),
        card.evidence ? el("span", { class: "card-rule-text", text: ` — ${card.evidence.rule.text}` }) : null)),
      row("requested by", el("span", { class: "card-requested-by", text: card.requested_by || "—" })),
      isOpen ? row("expires", el("span", { class: "card-expiry" },
        card.expires_at == null ? "never" : [relTime(card.expires_at), ` · ${fmtUtc(card.expires_at)}`])) : null,
      row("quorum", el("span", { class: "card-quorum", text: `${q.have}/${q.needed} approvals` })),
      row("deciding roles", el("span", { class: "card-roles", text: (card.deciding_roles || []).join(", ") || "—" })),
      card.four_eyes ? row("four eyes", el("span", { text: "the requester may not approve" })) : null,
      (card.votes || []).length ? row("votes", el("ul", { class: "card-votes" }, card.votes.map(renderVote))) : null,
      card.decided_at != null ? row("decided", el("span", { class: "card-decided", text: fmtUtc(card.decided_at) })) : null),
    card.can_decide && isOpen ? cardActions(card, ui)
      : card.why_not && isOpen ? el("div", { class: "card-why-not", text: card.why_not_text || card.why_not }) : null,
    el("div", { class: "card-error", role: "alert", text: ui.error, hidden: !ui.error })].filter(Boolean));
  if (focusKey && focusKey.cls) {
    const again = [...root.querySelectorAll(`.${focusKey.cls}`)].find((n) => n.dataset.arg === focusKey.arg);
    if (again) { again.focus(); if (focusKey.pos != null && again.setSelectionRange) again.setSelectionRange(focusKey.pos, focusKey.pos); }
  }
}

const renderVote = (v) => el("li", { class: "card-vote", data: { decision: v.decision } },
  el("b", { text: v.principal }), ` ${v.decision}`, v.comment ? ` — “${v.comment}”` : "",
  el("span", { class: "muted", text: ` · ${fmtUtc(v.at)}` }));

/** The staged change: {site, param, from, to} rows as "from → to", anything else as JSON. */
function renderDiff(diff) {
  if (diff == null) return el("span", { class: "muted", text: "no preview of the change" });
  const rows = Array.isArray(diff) ? diff : [diff];
  const fromTo = (r) => r && typeof r === "object" && !Array.isArray(r) && "from" in r && "to" in r;
  if (!rows.length || !rows.every(fromTo)) return el("pre", { class: "diff-json", text: JSON.stringify(diff, null, 2) });
  return rows.map((r) => {
    const where = [r.site, r.param].filter((x) => x != null).map(fmtValue);
    for (const [k, v] of Object.entries(r)) if (!["site", "param", "from", "to"].includes(k)) where.push(`${k}=${fmtValue(v)}`);
    return el("div", { class: "diff-row" },
      el("span", { class: "diff-where", text: where.join(" · ") }),
      el("span", { class: "diff-from", text: fmtValue(r.from) }),
      el("span", { class: "diff-arrow", text: "→" }),
      el("span", { class: "diff-to", text: fmtValue(r.to) }));
  });
}

/** One line when short, indented when long. */
const compactJson = (v) => { const s = JSON.stringify(v); return s && s.length > 100 ? JSON.stringify(v, null, 2) : s; };
const editText = (v) => (v === undefined ? "" : typeof v === "string" ? v : JSON.stringify(v));

function cardActions(card, ui) {
  const edits = (card.editable_args || []).map((name) => {
    const original = editText((card.args || {})[name]);
    return el("label", { class: "card-edit-row" },
      el("span", { class: "card-edit-name", text: name }),
      el("input", { class: "card-edit", type: "text", spellcheck: false, data: { arg: name },
        value: name in ui.edits ? ui.edits[name] : original,
        oninput: (e) => { ui.edits[name] = e.target.value; } }),
      el("span", { class: "muted", text: `current: ${original}` }));
  });
  return el("div", { class: "card-actions" },
    edits.length ? el("div", { class: "card-edits" }, el("div", { class: "card-edits-title", text: "edit before approving" }), edits) : null,
    el("div", { class: "card-decide" },
      el("input", { class: "card-comment", type: "text", maxLength: 2000, value: ui.comment,
        placeholder: "comment (a reason is required to reject)", oninput: (e) => { ui.comment = e.target.value; } }),
      el("button", { class: "btn approve card-approve", type: "button", text: "Approve", disabled: ui.busy, onclick: () => decide(card.id, "approve") }),
      el("button", { class: "btn reject card-reject", type: "button", text: "Reject", disabled: ui.busy, onclick: () => decide(card.id, "reject") })));
}

/** The full args with the edited values, or null when nothing changed. Numbers stay numbers,
 *  booleans booleans, objects are parsed as JSON. */
function editedArgs(card, ui) {
  const args = { ...(card.args || {}) };
  let changed = false;
  for (const [name, text] of Object.entries(ui.edits)) {
    const original = args[name];
    if (text === editText(original)) continue;
    let value = text;
    if (typeof original === "number") {
      value = Number(text.trim());
      if (text.trim() === "" || !Number.isFinite(value)) throw new Error(`${name} must be a number.`);
    } else if (typeof original === "boolean") {
      if (!["true", "false"].includes(text.trim())) throw new Error(`${name} must be true or false.`);
      value = text.trim() === "true";
    } else if (original !== null && typeof original === "object") {
      try { value = JSON.parse(text); } catch { throw new Error(`${name} must be valid JSON.`); }
    }
    args[name] = value;
    changed = true;
  }
  return changed ? args : null;
}

/** Approve or reject from a card; one request at a time per card (double-click safe). */
async function decide(id, decision) {
  const entry = state.cards.get(id);
  const ui = cardUi(id);
  if (!entry || ui.busy) return;
  const card = entry.card;
  const comment = ui.comment.trim();
  let body;
  ui.error = "";
  if (decision === "reject") {
    if (!comment) {
      ui.error = "Write the reason for rejecting in the comment field.";
      renderCard(entry);
      $(".card-comment", entry.el)?.focus();
      return;
    }
    body = { comment };
  } else {
    body = { comment, seen_hash: card.args_hash };
    try {
      const args = editedArgs(card, ui);
      if (args) body.args = args;
    } catch (err) {
      ui.error = err.message;
      renderCard(entry);
      return;
    }
  }
  ui.busy = true;
  renderCard(entry);
  try {
    const updated = await api("POST", `/api/approvals/${enc(id)}/${decision}`, body, { local: true });
    Object.assign(ui, { comment: "", edits: {} });
    ui.busy = false;
    upsertCard(updated, entry.inInbox);
  } catch (err) {
    ui.busy = false;
    if (err.status !== 401) ui.error = err.message;
    // decided, edited or expired meanwhile: show the card as it is now (the error stays)
    if (err.status === 409 || err.status === 410) refreshCard(id, entry.inInbox);
  } finally {
    const current = state.cards.get(id);
    if (current) renderCard(current);
  }
}

async function refreshCard(id, inInbox) {
  try {
    const card = await api("GET", `/api/approvals/${enc(id)}`, undefined, { local: true });
    if (state.cards.has(id)) upsertCard(card, inInbox);
  } catch { /* the error shown is the decision's */ }
}

// ------------------------------------------------------------------ evidence

/** What the approver reads before deciding: the agent's reason and diagnosis (untrusted), the
 *  blast radius (the pack's limits: allowed, used, after approving), a deferral, and the reads
 *  the agent made (folded: the KPI series as a table). */
function renderEvidence(ev, ui) {
  const diagnosis = (ev.diagnosis || []).filter((d) => d.value !== null && d.value !== "");
  const reads = ev.reads || [];
  const open = ui.readsOpen === true;
  return el("div", { class: "card-evidence" },
    ev.reason ? el("div", { class: "ev-block ev-reason" },
      el("span", { class: "ev-label", text: "the agent's reason" }),
      el("div", { class: "ev-quote untrusted", text: ev.reason, title: `model call #${ev.reason_seq}` })) : null,
    diagnosis.length ? el("div", { class: "ev-block ev-diagnosis" },
      el("span", { class: "ev-label", text: "diagnosis" }),
      el("dl", { class: "ev-facts untrusted" }, diagnosis.flatMap((d) => [
        el("dt", { text: d.field.replace(/_/g, " ") }),
        el("dd", {}, renderValue(d.value, d.field), el("span", { class: "muted", text: ` (${d.tool})` }))]))) : null,
    (ev.limits || []).length ? el("div", { class: "ev-block ev-limits" },
      el("span", { class: "ev-label", text: "blast radius" }),
      el("ul", { class: "ev-limit-list" }, ev.limits.map(renderLimit))) : null,
    ev.deferred ? el("div", { class: "ev-block ev-deferred" },
      el("span", { class: "ev-label", text: "when it runs" }),
      el("span", { text: `${ev.deferred.text} — deferred until ${fmtUtc(ev.deferred.until)} (rule ${ev.deferred.rule})` })) : null,
    reads.length ? el("details", { class: "ev-block ev-reads", open,
      ontoggle: (e) => { ui.readsOpen = e.target.open; } },
      el("summary", { text: `what the agent read (${reads.length}): ${reads.map((r) => r.tool).join(", ")}` }),
      reads.map((r) => el("div", { class: "ev-read", data: { seq: r.seq, tool: r.tool } },
        el("div", { class: "ev-read-head" }, el("code", { text: `${r.tool}(${compactArgs(r.args)})` }),
          el("span", { class: "muted", text: ` step #${r.seq}${r.at ? " · " + fmtUtc(r.at) : ""}` })),
        untrustedValue(r.result, "tool output (untrusted)")))) : null);
}

const compactArgs = (args) => Object.entries(args || {}).map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(", ");

const METER_CELLS = 20; // a larger limit is drawn as one bar: a cell per call would not fit a phone

function renderLimit(l) {
  return el("li", { class: "ev-limit", data: { kind: l.kind, rule: l.rule, used: l.used ?? "", limit: l.limit ?? "" } },
    limitMeter(l), el("span", { class: "ev-limit-text", text: l.text }), el("span", { class: "muted", text: ` (rule ${l.rule})` }));
}

/** What a limit has used and what approving adds: a cell per unit, or a bar for a large limit. */
function limitMeter(l) {
  if (!l.limit || l.used == null) return null;
  const after = l.after ?? l.used;
  const title = `${l.used} used of ${l.limit}`;
  if (l.limit <= METER_CELLS) {
    return el("span", { class: "ev-meter", title }, ...Array.from({ length: l.limit }, (_, i) =>
      el("span", { class: "ev-cell", data: { state: i < l.used ? "used" : i < after ? "this" : "free" } })));
  }
  const part = (cls, n) => {
    const p = el("span", { class: cls });
    p.style.width = `${Math.min(100, Math.max(0, (100 * n) / l.limit))}%`;
    if (n > 0) p.style.minWidth = "2px"; // one call of 500 still shows
    return p;
  };
  return el("span", { class: "ev-meter ev-bar", title }, part("ev-bar-used", l.used), part("ev-bar-this", after - l.used));
}
