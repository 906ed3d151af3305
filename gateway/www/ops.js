// axme operations page (read-only, for admins): queue depth per agent, dead letters with a replay
// button, an intent's timeline (events and attempts), endpoint health.  Uses the web inbox's
// session cookie; the replay POST repeats the CSRF cookie.
"use strict";

const $ = (id) => document.getElementById(id);

function csrf() {
  const m = document.cookie.match(/(?:^|;\s*)axme_csrf=([^;]+)/);
  return m ? m[1] : "";
}

async function api(method, path, body) {
  const h = { "Accept": "application/json" };
  if (method !== "GET") { h["X-CSRF-Token"] = csrf(); h["Content-Type"] = "application/json"; }
  const r = await fetch(path, { method, headers: h, credentials: "same-origin",
                                body: body === undefined ? undefined : JSON.stringify(body) });
  const doc = await r.json().catch(() => null);
  if (!r.ok) throw new Error((doc && doc.error && doc.error.message) || "HTTP " + r.status);
  return doc;
}

function cell(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

// A table of rows with the given columns; extra(row) may return a last cell's node.
function table(id, rows, cols, extra) {
  const t = $(id);
  const head = document.createElement("tr");
  for (const c of cols) { const th = document.createElement("th"); th.scope = "col"; th.textContent = c; head.append(th); }
  if (extra) head.append(document.createElement("th"));
  const body = rows.map((r) => {
    const tr = document.createElement("tr");
    for (const c of cols) { const td = document.createElement("td"); td.textContent = cell(r[c]); tr.append(td); }
    if (extra) { const td = document.createElement("td"); td.append(extra(r)); tr.append(td); }
    return tr;
  });
  t.replaceChildren(head, ...body);
}

async function load() {
  $("error").textContent = "";
  try {
    const me = await api("GET", "/v1/whoami");
    $("who").textContent = me.role + (me.admin ? " (admin)" : "");
    const q = await api("GET", "/v1/ops/queues");
    const qcols = q.queues.length ? Object.keys(q.queues[0]) : ["agent"];
    table("queues", q.queues, qcols);
    const d = await api("GET", "/v1/ops/dead_letters");
    table("dead", d.dead_letters, ["intent_id", "to_agent", "reason", "attempt", "dead_lettered_at", "last_error"], (r) => {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = "Replay";
      b.setAttribute("aria-label", "Replay " + r.intent_id);
      b.addEventListener("click", async () => {
        try { await api("POST", "/v1/intents/" + r.intent_id + "/replay", {}); await load(); }
        catch (e) { $("error").textContent = e.message; }
      });
      return b;
    });
    $("dead-empty").hidden = d.dead_letters.length > 0;
    const e = await api("GET", "/v1/ops/endpoints");
    const ecols = e.endpoints.length ? Object.keys(e.endpoints[0]) : ["agent"];
    table("endpoints", e.endpoints, ecols);
    $("ep-empty").hidden = e.endpoints.length > 0;
  } catch (err) {
    $("error").textContent = err.message + " (sign in on the inbox page with an admin key)";
  }
}

async function timeline(id) {
  const box = $("tl");
  box.textContent = "";
  try {
    const ev = await api("GET", "/v1/intents/" + id + "/events");
    const at = await api("GET", "/v1/intents/" + id + "/attempts");
    const h = document.createElement("p");
    h.textContent = at.intent.intent_type + " → " + at.intent.to_agent + ": " + at.intent.status;
    const t1 = document.createElement("table"); t1.id = "tl-events";
    const t2 = document.createElement("table"); t2.id = "tl-attempts";
    const w1 = document.createElement("div"); w1.className = "table-wrap"; w1.append(t1);
    const w2 = document.createElement("div"); w2.className = "table-wrap"; w2.append(t2);
    const h1 = document.createElement("h3"); h1.textContent = "Events";
    const h2 = document.createElement("h3"); h2.textContent = "Attempts";
    box.append(h, h1, w1, h2, w2);
    table("tl-events", ev.events, ["seq", "event_type", "status", "at", "actor", "details"]);
    table("tl-attempts", at.attempts, ["attempt", "started_at", "duration_ms", "http_status", "error_class", "error"]);
  } catch (e) {
    box.textContent = e.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("reload").addEventListener("click", load);
  $("tl-form").addEventListener("submit", (ev) => { ev.preventDefault(); timeline($("tl-id").value.trim()); });
  load();
});
