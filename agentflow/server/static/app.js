/* agentflow web chat: operators start copilot runs, follow them live and decide the
 * configuration changes the agent staged for approval. Talks to the JSON API in
 * agentflow/server/API.md.
 *
 * Security rule of this file: everything that comes from the API (and above all tool output
 * and model text) is put in the page with textContent / text nodes only. No innerHTML, no
 * links or images made from API text; the only links built are to our own routes, with
 * ids percent-encoded.
 */
"use strict";

// ------------------------------------------------------------------ DOM and format helpers

const $ = (selector, root = document) => root.querySelector(selector);
const enc = encodeURIComponent;

/** Build an element. props: class, text, data (dataset), on<event> handlers, or DOM
 *  properties (type, value, href, hidden...). String children become text nodes. */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key === "data") for (const [k, v] of Object.entries(value)) node.dataset[k] = String(v ?? "");
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node[key] = value;
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

const fmtUtc = (sec) => (sec == null ? "—" : new Date(sec * 1000).toISOString().slice(0, 19).replace("T", " ") + " UTC");
const fmtClock = (sec) => (sec == null ? "" : new Date(sec * 1000).toISOString().slice(11, 19));
const fmtCost = (usd) => "$" + (Number(usd) || 0).toFixed(4);
const fmtInt = (n) => (Number(n) || 0).toLocaleString("en-US");
const fmtValue = (v) => (typeof v === "string" ? v : JSON.stringify(v) ?? "undefined");

/** Seconds to add to this browser's clock to get the server's: the App may run on a shifted
 * clock (a demo inside a maintenance window), and expiries are in the server's time. */
let clockSkew = 0;
const syncClock = (serverNow) => { if (typeof serverNow === "number") clockSkew = serverNow - Date.now() / 1000; };

/** "in 14 min" / "3 min ago" relative to the server's now. */
function fmtRel(sec) {
  const diff = sec - (Date.now() / 1000 + clockSkew);
  const a = Math.abs(diff);
  const s = a < 60 ? `${Math.round(a)} s` : a < 3600 ? `${Math.round(a / 60)} min`
    : a < 86400 ? `${(a / 3600).toFixed(1)} h` : `${(a / 86400).toFixed(1)} d`;
  return diff >= 0 ? `in ${s}` : `${s} ago`;
}

/** A relative time kept fresh by the 3 s tick (see refreshRelTimes). */
const relTime = (sec) => el("span", { class: "reltime", data: { at: sec }, text: fmtRel(sec) });

function refreshRelTimes() {
  for (const node of document.querySelectorAll(".reltime")) node.textContent = fmtRel(Number(node.dataset.at));
}

/** Text produced by tools or the model: plain text, labelled as untrusted. */
function untrustedBlock(text) {
  return el("div", { class: "untrusted-block" },
    el("span", { class: "untrusted-label", text: "untrusted output" }),
    el("pre", { class: "untrusted", text }));
}

const statusBadge = (status) => el("span", { class: "status", data: { status }, text: status });
const isOver = (status) => ["completed", "failed", "cancelled"].includes(status);

// ------------------------------------------------------------------ state

const ADD_TENANT = "\u0000add-tenant"; // tenant picker entry that opens the sign-in form
const state = {
  session: null,
  csrf: null,        // sent as X-CSRF-Token on POST/PUT/DELETE
  view: null,        // "chat" | "runs" | "inbox"
  runId: null,       // the run shown in the chat view (null on #/)
  source: null,      // its EventSource
  streamRetry: null,
  seen: new Set(),   // step seqs shown (a reconnect may resend steps)
  maxSeq: 0,
  cards: new Map(),  // approval id -> {card, json, el, inInbox} for the current view
  cardUi: new Map(), // approval id -> {busy, error, comment, edits}: survives re-renders
  timer: null,
  sending: false,
  checkingSession: false,
};

// ------------------------------------------------------------------ API client

/** An API error: status 0 = network error; code and message from the JSON error body. */
const apiError = (status, code, message) => Object.assign(new Error(message), { status, code });

/** fetch JSON. Errors throw apiError(); 401 goes to sign-in (unless opts.allow401); other
 *  errors are shown in #page-error unless opts.local (the caller shows them itself). */
async function api(method, path, body, opts = {}) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    const err = apiError(0, "network", "Cannot reach the server (network error).");
    if (!opts.local) showPageError(err.message);
    throw err;
  }
  if (res.status === 204) return null;
  let data = null;
  try { data = await res.json(); } catch { data = null; }
  if (res.ok) return data;
  const info = (data && data.error) || {};
  const err = apiError(res.status, info.code || `http_${res.status}`, info.message || `HTTP ${res.status}`);
  if (res.status === 401 && !opts.allow401) showSignIn(err.code === "not_signed_in" ? "" : err.message);
  else if (!opts.local) showPageError(err.message);
  throw err;
}

function showPageError(message) {
  $("#page-error-text").textContent = message;
  $("#page-error").hidden = false;
}

// ------------------------------------------------------------------ session, header, router

async function boot() {
  $("#signin-form").addEventListener("submit", onSignIn);
  $("#signin-cancel").addEventListener("click", () => enterApp(state.session));
  $("#signout").addEventListener("click", onSignOut);
  $("#tenant-picker").addEventListener("change", onTenantChange);
  $("#page-error-close").addEventListener("click", () => { $("#page-error").hidden = true; });
  $("#composer").addEventListener("submit", (ev) => { ev.preventDefault(); send(); });
  $("#chat-input").addEventListener("keydown", (ev) => {
    // Enter sends, Shift+Enter is a newline (and Enter while composing with an IME is not a send)
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); send(); }
  });
  $("#new-chat").addEventListener("click", () => {
    if (location.hash === "#/") route(); else location.hash = "#/";
  });
  $("#tl-unfold").addEventListener("change", () => { if (tl.data) renderTimelineRows(tl.data); });
  bindLists();
  window.addEventListener("hashchange", route);
  try {
    enterApp(await api("GET", "/api/session", undefined, { local: true }));
  } catch (err) {
    if (err.status !== 401) showSignIn(err.message); // 401: api() already went to sign-in
  }
}

/** Leave the app for the sign-in form. addTenant: keep the session (signing in with another
 *  tenant's token of the same operator adds that tenant to it). */
function showSignIn(message = "", addTenant = false) {
  if (!$("#signin-view").hidden && !message) return; // already there (several requests got 401)
  clearInterval(state.timer); // the signed-in app's activity: polling and the run's stream
  closeStream();
  if (!addTenant) { state.session = null; state.csrf = null; }
  $("#app-view").hidden = true;
  $("#signin-view").hidden = false;
  $("#signin-cancel").hidden = !addTenant;
  $("#signin-note").textContent = addTenant
    ? "Add a tenant: sign in with your token for that tenant (same operator name)."
    : "Sign in with your operator token.";
  signInError(message);
  $("#signin-token").focus();
}

function signInError(message) {
  $("#signin-error").textContent = message;
  $("#signin-error").hidden = !message;
}

async function onSignIn(ev) {
  ev.preventDefault();
  const token = $("#signin-token").value.trim();
  const tenant = $("#signin-tenant").value.trim() || null;
  if (!token) { signInError("Enter your operator token."); return; }
  const button = $("#signin-button");
  button.disabled = true;
  try {
    const before = state.session && state.session.tenant;
    const session = await api("POST", "/api/session", { token, tenant }, { local: true, allow401: true });
    $("#signin-token").value = "";
    // a tenant was added and is now current: a run of the previous one would answer 404
    if (before && session.tenant !== before && /^#\/runs\/./.test(location.hash)) history.replaceState(null, "", "#/runs");
    enterApp(session);
  } catch (err) {
    signInError(err.message);
  } finally {
    button.disabled = false;
  }
}

function enterApp(session) {
  setSession(session);
  $("#signin-view").hidden = true;
  signInError("");
  $("#app-view").hidden = false;
  clearInterval(state.timer);
  state.timer = setInterval(tick, 3000);
  route();
  tick();
}

function setSession(session) {
  state.session = session;
  syncClock(session.now);
  if (session.csrf) state.csrf = session.csrf;
  $("#operator-name").textContent = session.operator;
  $("#operator-roles").textContent = (session.roles || []).length ? session.roles.join(", ") : "no roles";
  const tenants = session.tenants && session.tenants.length ? session.tenants : [session.tenant];
  $("#tenant-picker").replaceChildren(
    ...tenants.map((t) => el("option", { value: t, text: t, selected: t === session.tenant })),
    el("option", { value: ADD_TENANT, text: "+ add tenant…" }));
  $("#tenant-picker").value = session.tenant;
}

async function onTenantChange() {
  const picker = $("#tenant-picker");
  const tenant = picker.value;
  if (tenant === ADD_TENANT) {
    picker.value = state.session.tenant;
    showSignIn("", true);
    return;
  }
  picker.disabled = true;
  try {
    setSession(await api("PUT", "/api/session/tenant", { tenant }));
  } catch {
    picker.value = state.session ? state.session.tenant : "";
    return;
  } finally {
    picker.disabled = false;
  }
  // a run belongs to one tenant (the others answer 404): leave it for the runs list
  if (state.runId) location.hash = "#/runs"; else route();
  tick();
}

async function onSignOut() {
  try { await api("DELETE", "/api/session", undefined, { local: true }); } catch { /* signed out anyway */ }
  showSignIn();
}

/** Hash routes: #/ new request, #/runs/<id> a run, #/runs/<id>/timeline its timeline, #/runs
 *  list, #/inbox approvals. */
function route() {
  if (!state.session) return;
  closeStream();
  state.runId = null;
  state.cards.clear();
  state.cardUi.clear();
  $("#page-error").hidden = true;
  const hash = location.hash.replace(/^#/, "") || "/";
  const match = /^\/runs\/([^/]+)(\/timeline)?$/.exec(hash);
  if (hash === "/runs") showRunsView();
  else if (hash === "/inbox") showInboxView();
  else if (match) {
    let id = match[1];
    try { id = decodeURIComponent(id); } catch { /* keep it as written */ }
    if (match[2]) showTimelineView(id); else showChatView(id);
  } else showChatView(null);
}

function setView(name, nav = name) {
  state.view = name;
  for (const view of ["chat", "runs", "inbox", "timeline"]) $(`#${view}-view`).hidden = view !== name;
  const current = `#nav-${nav}`;
  for (const id of ["#nav-chat", "#nav-runs", "#nav-inbox"]) {
    if (id === current) $(id).setAttribute("aria-current", "page"); else $(id).removeAttribute("aria-current");
  }
}

/** Every 3 s: pending approvals (badge, inbox), runs list, relative times. Errors stay quiet
 *  (a restarting server must not flood the page); a 401 still goes to sign-in. A poll still
 *  waiting for its answer is not sent again: a slow server gets no pile of requests. */
function tick() {
  if (!state.session) return;
  refreshRelTimes();
  polled("approvals", () => refreshApprovals(true));
  if (state.view === "runs") polled("runs", () => loadRuns(true));
  polled("timeline", tickTimeline);
}

const polling = new Set();
async function polled(name, load) {
  if (polling.has(name)) return;
  polling.add(name);
  try { await load(); } finally { polling.delete(name); }
}

// ------------------------------------------------------------------ chat view

function showChatView(runId) {
  setView("chat", runId ? "runs" : "chat"); // a run's conversation belongs to the runs
  state.runId = runId;
  state.seen = new Set();
  state.maxSeq = 0;
  const messages = $("#messages");
  messages.replaceChildren();
  for (const id of ["#run-status", "#run-trace", "#stream-state"]) $(id).hidden = true;
  $("#run-stats").textContent = "";
  const input = $("#chat-input");
  if (runId) {
    $("#run-title").textContent = `run ${runId}`;
    input.placeholder = "approve [comment] · reject <reason> · status · why?";
    $("#composer-hint").textContent =
      "Commands: approve [comment] · reject <reason> · status · why? — Enter sends, Shift+Enter for a new line.";
    loadRun(runId);
  } else {
    $("#run-title").textContent = "New request";
    input.placeholder = "Describe the task for the copilot…";
    $("#composer-hint").textContent =
      "The copilot investigates and stages configuration changes; each change waits for approval. Enter sends, Shift+Enter for a new line.";
    messages.append(el("div", { class: "empty", text: "Start a conversation: describe what the copilot should look into or change." }));
  }
  input.focus();
}

async function loadRun(runId) {
  setStreamState("connecting");
  let detail;
  try {
    detail = await api("GET", `/api/runs/${enc(runId)}`, undefined, { local: true });
  } catch (err) {
    if (state.runId === runId && err.status !== 401) { addReply(err.message, true); setStreamState("closed"); }
    return;
  }
  if (state.runId !== runId) return; // navigated away meanwhile
  $("#messages").append(userBubble(detail.task, detail.requested_by, detail.created_at));
  for (const ev of detail.events || []) addEvent(ev);
  for (const card of detail.approvals || []) upsertCard(card);
  applyRun(detail);
  scrollToEnd(true);
  if (isOver(detail.status)) setStreamState("ended"); else openStream(runId);
}

/** Send the composer's text: a new run's task on #/, a chat command on a run. */
async function send() {
  const input = $("#chat-input");
  const text = input.value.trim();
  if (!text || state.sending) return;
  const runId = state.runId;
  state.sending = true;
  $("#chat-send").disabled = true;
  $(".empty", $("#messages"))?.remove();
  $("#messages").append(userBubble(text, state.session.operator, Date.now() / 1000 + clockSkew));
  scrollToEnd(true);
  input.value = "";
  try {
    if (!runId) {
      const run = await api("POST", "/api/runs", { task: text }, { local: true });
      location.hash = `#/runs/${enc(run.id)}`;
    } else {
      const reply = await api("POST", `/api/runs/${enc(runId)}/messages`, { text }, { local: true });
      if (state.runId !== runId) return;
      addReply(reply.reply, false, reply.kind);
      if (reply.card) upsertCard(reply.card);
    }
  } catch (err) {
    if (err.code === "not_a_task" && state.runId === runId) {
      addReply(err.message, false, "help"); // `help` typed on #/: the server says what to type
    } else if (err.status !== 401 && state.runId === runId) {
      addReply(err.message, true);
      if (!runId) input.value = text; // the task was not started: give it back
    }
  } finally {
    state.sending = false;
    $("#chat-send").disabled = false;
  }
}

function userBubble(text, who, at) {
  return el("div", { class: "chat-user" },
    el("div", { class: "bubble-meta", text: `${who || "operator"} · ${fmtUtc(at)}` }),
    el("div", { class: "bubble-text", text }));
}

function addReply(text, isError = false, kind = "") {
  $("#messages").append(el("div", { class: isError ? "chat-reply error" : "chat-reply", data: { kind: isError ? "error" : kind } },
    el("span", { class: "reply-label", text: isError ? "error" : "copilot" }),
    el("div", { class: "reply-text", text })));
  scrollToEnd(true);
}

/** Keep the conversation scrolled to the end if the operator was already there (or force). */
function scrollToEnd(force = false, wasNear = true) {
  const box = $("#messages");
  if (force || wasNear) box.scrollTop = box.scrollHeight;
}
const nearEnd = () => { const b = $("#messages"); return b.scrollHeight - b.scrollTop - b.clientHeight < 120; };

/** The run summary bar, and the final answer once the run is over. */
function applyRun(run) {
  if (!run || run.id !== state.runId) return;
  const status = $("#run-status");
  status.textContent = run.status;
  status.dataset.status = run.status;
  status.title = run.waiting_on ? `waiting on ${fmtValue(run.waiting_on)}` : "";
  status.hidden = false;
  const parts = [`${fmtInt(run.steps)} steps`, `${fmtInt(run.tokens)} tokens`, fmtCost(run.cost_usd)];
  if (run.open_approvals) parts.push(`${run.open_approvals} open approval${run.open_approvals === 1 ? "" : "s"}`);
  if (run.waiting_on && run.status === "waiting") parts.push(`waiting on ${fmtValue(run.waiting_on)}`);
  $("#run-stats").textContent = parts.join(" · ");
  const trace = $("#run-trace");
  trace.href = `#/runs/${enc(run.id)}/timeline`;
  trace.hidden = false;
  if (isOver(run.status)) showAnswer(run);
}

function showAnswer(run) {
  const near = nearEnd();
  $("#run-answer")?.remove();
  $("#messages").append(el("div", { id: "run-answer", class: "final-answer", data: { status: run.status, outcome: run.outcome || "" } },
    el("div", { class: "final-head" },
      el("span", { class: "final-label", text: "final answer" }), " ", statusBadge(run.status),
      run.outcome ? el("span", { class: "muted", text: ` outcome: ${run.outcome}` }) : null),
    run.answer != null ? untrustedBlock(run.answer) : el("div", { class: "muted", text: "The run gave no answer." })));
  scrollToEnd(false, near);
}

// ------------------------------------------------------------------ live updates (SSE)

function openStream(runId) {
  closeStream();
  const source = new EventSource(`/api/runs/${enc(runId)}/stream?after=${state.maxSeq}`);
  state.source = source;
  setStreamState("connecting");
  source.onopen = () => { if (state.source === source) setStreamState("live"); };
  source.onerror = () => onStreamError(source, runId);
  const on = (type, handler) => source.addEventListener(type, (msg) => {
    if (state.source !== source) return;
    let data;
    try { data = JSON.parse(msg.data); } catch { return; }
    handler(data);
  });
  on("step", addEvent);
  on("approval", (card) => upsertCard(card));
  on("run", applyRun);
  on("end", (run) => { closeStream(); setStreamState("ended"); applyRun(run); });
}

function onStreamError(source, runId) {
  if (state.source !== source) return;
  setStreamState("reconnecting");
  if (source.readyState === EventSource.CLOSED) {
    // the browser gave up (an HTTP error answer rather than a dropped connection): retry ourselves
    clearTimeout(state.streamRetry);
    state.streamRetry = setTimeout(() => { if (state.source === source && state.runId === runId) openStream(runId); }, 3000);
  }
  checkSession();
}

/** The stream failed: if the session is gone (401), api() goes to sign-in. */
async function checkSession() {
  if (state.checkingSession) return;
  state.checkingSession = true;
  try { await api("GET", "/api/session", undefined, { local: true }); } catch { /* 401 handled in api() */ }
  finally { state.checkingSession = false; }
}

function closeStream() {
  clearTimeout(state.streamRetry);
  if (state.source) { state.source.close(); state.source = null; }
}

function setStreamState(s) {
  const node = $("#stream-state");
  node.dataset.state = s;
  node.textContent = { connecting: "connecting…", reconnecting: "reconnecting…", live: "live", ended: "ended", closed: "offline" }[s];
  node.hidden = false;
}

// ------------------------------------------------------------------ step events

/** Insert a step in seq order, once. Approval steps get their card. */
function addEvent(ev) {
  if (!ev || typeof ev.seq !== "number" || state.seen.has(ev.seq)) return;
  state.seen.add(ev.seq);
  state.maxSeq = Math.max(state.maxSeq, ev.seq);
  const near = nearEnd();
  const box = $("#messages");
  // before the first later step; else at the end, but above a final answer already shown
  const later = [...box.querySelectorAll(":scope > .event")].find((n) => Number(n.dataset.seq) > ev.seq);
  box.insertBefore(renderEvent(ev), later || $("#run-answer"));
  const approvalId = ev.kind === "approval" && ev.data ? ev.data.approval_id : null;
  if (approvalId && state.cards.has(approvalId)) placeCard(approvalId);
  scrollToEnd(false, near);
}

function renderEvent(ev) {
  const d = ev.data || {};
  const node = el("div", { class: "event", data: { seq: ev.seq, kind: ev.kind, status: ev.status } },
    el("div", { class: "event-head" },
      el("span", { class: "event-seq", text: `#${ev.seq}` }),
      el("span", { class: "event-kind", text: ev.kind }),
      el("span", { class: "event-title", text: ev.title || ev.name }),
      ev.status === "failed" ? el("span", { class: "event-failed", text: "failed" }) : null,
      el("span", { class: "event-time", text: fmtClock(ev.at), title: fmtUtc(ev.at) })));
  const toolCall = (name, args) => el("code", { class: "tool-call", text: `${name}(${args === undefined ? "" : JSON.stringify(args)})` });
  switch (ev.kind) {
    case "model":
      if ((d.tool_calls || []).length) node.append(el("div", { class: "tool-calls" }, d.tool_calls.map((c) => toolCall(c.name, c.args))));
      if (d.tokens_in != null || d.cost_usd != null) {
        node.append(el("div", { class: "event-usage", text: `${fmtInt(d.tokens_in)} in · ${fmtInt(d.tokens_out)} out tokens · ${fmtCost(d.cost_usd)}` }));
      }
      break;
    case "tool":
      if (d.args !== undefined) node.append(toolCall(ev.name, d.args));
      if (d.error) node.append(el("div", { class: "event-error", text: `error: ${d.error}` }));
      break;
    case "policy":
      node.dataset.effect = d.effect || "";
      node.append(el("div", { class: "policy-line" },
        el("span", { class: "effect", data: { effect: d.effect || "" }, text: d.effect || "?" }),
        d.tool ? toolCall(d.tool, d.args) : null,
        d.rule ? el("span", { class: "policy-rule", text: `rule ${d.rule}` }) : null,
        d.reason ? el("span", { class: "policy-reason", text: d.reason }) : null,
        d.defer_until ? el("span", { class: "policy-defer" }, "until ", fmtUtc(d.defer_until), " (", relTime(d.defer_until), ")") : null));
      break;
    case "approval":
      if (d.approval_id) node.dataset.forApproval = d.approval_id; // not data-approval-id: that names cards
      node.append(el("div", { class: "event-card-slot" }));
      break;
    case "wait":
      if (d.until) node.append(el("div", { class: "event-detail" }, "until ", fmtUtc(d.until), " (", relTime(d.until), ")"));
      break;
    case "plan":
      node.append(el("ol", { class: "plan" }, (d.steps || []).map((s) =>
        el("li", {}, el("code", { text: s.tool || "" }), s.goal ? ` — ${s.goal}` : ""))));
      break;
    case "signal":
      if (d.payload != null) node.append(el("code", { class: "tool-call", text: compactJson(d.payload) }));
      break;
    default:
      break;
  }
  if (ev.text != null && ev.text !== "") node.append(untrustedBlock(ev.text));
  return node;
}

document.addEventListener("DOMContentLoaded", boot);
