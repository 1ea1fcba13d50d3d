/* agentflow web console: recorded values (tool output, model messages, arguments) shown readably:
 * objects as key/value lists, lists of records (a KPI series) as tables, epoch times as UTC times.
 * Loaded after app.js. Every value is untrusted: it goes in with textContent only, and nothing in
 * it becomes a link, an image or markup. */
"use strict";

const MAX_ROWS = 200;   // rows of a table shown (the rest is counted)
const MAX_DEPTH = 4;    // nesting shown as lists/tables; deeper values as compact JSON

/** Keys whose numbers are times (seconds since the epoch). */
const TIME_KEY = /^(t|ts|at|time|timestamp|when|since|until|deadline)$|_at$|_until$/i;
const isEpoch = (key, v) => typeof v === "number" && TIME_KEY.test(String(key || "")) && v > 9.4e8 && v < 4.2e9;

/** `2026-01-01 02:00:00Z`; a number of seconds as words. */
const fmtIso = (sec) => new Date(sec * 1000).toISOString().slice(0, 19).replace("T", " ") + "Z";
function fmtDuration(sec) {
  const s = Math.max(0, Number(sec) || 0);
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
  if (s < 172800) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

const isRecord = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const isScalar = (v) => v === null || ["string", "number", "boolean"].includes(typeof v);

/** A value as a DOM node: scalars as text, records as a key/value list, lists of records as a
 *  table. `key` (the field it sits in) tells times from other numbers. */
function renderValue(value, key = "", depth = 0) {
  if (value === null || value === undefined) return el("span", { class: "v-null", text: "—" });
  if (isEpoch(key, value)) return el("time", { class: "v-time", text: fmtIso(value), title: `${value} (seconds since the epoch)` });
  if (typeof value === "number") return el("span", { class: "v-num", text: String(value) });
  if (typeof value === "boolean") return el("span", { class: "v-bool", text: String(value) });
  if (typeof value === "string") {
    return value.includes("\n") || value.length > 120 ? el("pre", { class: "v-text", text: value }) : el("span", { class: "v-str", text: value });
  }
  if (depth >= MAX_DEPTH) return el("code", { class: "v-json", text: JSON.stringify(value) });
  if (Array.isArray(value)) {
    if (!value.length) return el("span", { class: "v-null", text: "(none)" });
    if (value.every(isRecord)) return renderTable(value, depth);
    if (value.every(isScalar)) return el("span", { class: "v-list", text: value.map((v) => (typeof v === "string" ? v : JSON.stringify(v))).join(", ") });
    return el("ol", { class: "v-array" }, value.slice(0, MAX_ROWS).map((v) => el("li", {}, renderValue(v, key, depth + 1))));
  }
  const entries = Object.entries(value);
  if (!entries.length) return el("span", { class: "v-null", text: "{}" });
  return el("dl", { class: "v-record" }, entries.flatMap(([k, v]) => [
    el("dt", { text: k }),
    el("dd", {}, renderValue(v, k, depth + 1)),
  ]));
}

/** A list of records as a table (a KPI series): one column per key, times as UTC times. */
function renderTable(rows, depth) {
  const columns = [...new Set(rows.flatMap((r) => Object.keys(r)))].slice(0, 16);
  const shown = rows.slice(0, MAX_ROWS);
  const cell = (r, c) => {
    const v = r[c];
    const node = isScalar(v) || isEpoch(c, v) ? renderValue(v, c, depth + 1) : el("code", { class: "v-json", text: JSON.stringify(v) });
    return el("td", { class: typeof v === "number" && !isEpoch(c, v) ? "num" : "" }, node);
  };
  return el("div", { class: "v-table-wrap" },
    el("table", { class: "v-table" },
      el("thead", {}, el("tr", {}, columns.map((c) => el("th", { text: c })))),
      el("tbody", {}, shown.map((r) => el("tr", {}, columns.map((c) => cell(r, c)))))),
    rows.length > shown.length ? el("div", { class: "muted", text: `… ${rows.length - shown.length} more rows` }) : null);
}

/** A labelled block of untrusted, readable output (tool results, model words). */
function untrustedValue(value, label = "untrusted output") {
  return el("div", { class: "untrusted-block readable" },
    el("span", { class: "untrusted-label", text: label }),
    el("div", { class: "untrusted-body" }, renderValue(value)));
}
