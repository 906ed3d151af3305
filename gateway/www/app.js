// axme web inbox: sign in with an API key (an HttpOnly session cookie afterwards), the open tasks
// of the person's inbox newest first, a task's thread and payload, approve / reject / the
// outcome form / reply / delegate, and live updates over SSE (EventSource sends the cookie; a key
// never goes into a URL).  State-changing requests repeat the CSRF cookie in X-CSRF-Token.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { owner: null, threads: [], current: null, es: null, known: new Set(), me: null };

function csrf() {
  const m = document.cookie.match(/(?:^|;\s*)axme_csrf=([^;]+)/);
  return m ? m[1] : "";
}

async function api(method, path, body, headers) {
  const h = Object.assign({ "Accept": "application/json" }, headers || {});
  if (method !== "GET") h["X-CSRF-Token"] = csrf();
  if (body !== undefined) h["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers: h, credentials: "same-origin",
                                body: body === undefined ? undefined : JSON.stringify(body) });
  let doc = null;
  try { doc = await r.json(); } catch (e) { doc = null; }
  if (!r.ok) {
    const err = new Error((doc && doc.error && doc.error.message) || ("HTTP " + r.status));
    err.status = r.status;
    err.code = doc && doc.error && doc.error.code;
    throw err;
  }
  return doc;
}

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined) e.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k.nodeType ? k : String(k));
  return e;
}

function when(ts) {
  if (!ts) return "";
  const d = new Date(ts);
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

function show(id, on) { $(id).hidden = !on; }

async function start() {
  try {
    state.me = await api("GET", "/v1/whoami");
  } catch (e) {
    if (e.status === 401 || e.status === 403) return showSignin();
    $("signin-error").textContent = e.message;
    return showSignin();
  }
  show("signin", false);
  show("app", true);
  show("signout", true);
  $("who").textContent = state.me.role;
  show("ops-link", state.me.admin);
  const sel = $("owner");
  sel.replaceChildren(...state.me.inboxes.map((a) => el("option", { value: a }, a)));
  sel.hidden = state.me.inboxes.length < 2;
  const wanted = sessionStorage.getItem("axme-owner");
  state.owner = state.me.inboxes.includes(wanted) ? wanted : (state.me.inboxes[0] || null);
  if (state.owner) sel.value = state.owner;
  await refresh();
  listen();
}

function showSignin() {
  show("app", false);
  show("signout", false);
  show("signin", true);
  $("who").textContent = "";
  $("api-key").focus();
}

async function refresh() {
  if (!state.owner) {
    state.threads = [];
    renderList();
    $("empty").textContent = "This key's role owns no inbox.";
    return;
  }
  const doc = await api("GET", "/v1/inbox?owner=" + encodeURIComponent(state.owner));
  state.threads = doc.threads.filter((t) => t.kind === "task" && t.status !== "done");
  renderList();
}

function renderList() {
  const ul = $("tasks");
  const items = state.threads.map((t) => {
    const overdue = t.due_at && new Date(t.due_at) < new Date();
    const li = el("li", { "data-thread": t.thread_id, "data-intent": t.intent_id,
                          class: (state.current === t.thread_id ? "current" : "") + (state.known.has(t.thread_id) ? "" : " new") },
      el("button", { type: "button", onclick: () => openThread(t.thread_id),
                     "aria-label": (t.title || "Task") + ", " + (t.task_type || "") },
        el("span", { class: "title" }, t.title || "(untitled)"),
        el("span", { class: "sub" },
          el("span", { class: "badge" }, t.task_type || t.kind),
          t.due_at ? el("span", { class: "badge" + (overdue ? " overdue" : "") }, "due " + when(t.due_at)) : null,
          t.reminders ? el("span", null, t.reminders + " reminder" + (t.reminders > 1 ? "s" : "")) : null,
          el("span", null, when(t.created_at)),
          t.from_agent ? el("span", null, "from " + t.from_agent) : null)));
    return li;
  });
  for (const t of state.threads) state.known.add(t.thread_id);
  ul.replaceChildren(...items);
  show("empty", state.threads.length === 0);
}

function listen() {
  if (state.es) state.es.close();
  if (!state.owner) return;
  const es = new EventSource("/v1/inbox/stream?owner=" + encodeURIComponent(state.owner));
  state.es = es;
  let timer = null;
  es.onopen = () => { $("live").textContent = "live"; $("live").classList.add("on"); };
  es.onerror = () => { $("live").textContent = "reconnecting…"; $("live").classList.remove("on"); };
  es.addEventListener("inbox.changed", (ev) => {
    // coalesce a burst of changes into one refresh
    clearTimeout(timer);
    timer = setTimeout(async () => {
      await refresh().catch(() => {});
      let changed = null;
      try { changed = JSON.parse(ev.data).thread_id; } catch (e) { /* ignore */ }
      if (state.current && (!changed || changed === state.current)) openThread(state.current, true).catch(() => {});
    }, 150);
  });
  es.addEventListener("stream.closed", () => { $("live").textContent = "reconnecting…"; });
}

function outcomesOf(task) {
  return (task && task.allowed_outcomes) || [];
}

async function openThread(id, quiet) {
  const doc = await api("GET", "/v1/inbox/" + id);
  const t = doc.thread;
  state.current = id;
  state.thread = t;
  for (const li of $("tasks").children) li.classList.toggle("current", li.dataset.thread === id);
  document.querySelector(".layout").classList.add("showing-detail");
  show("detail", true);
  $("d-title").textContent = t.title || "(untitled)";
  $("d-type").textContent = t.task_type || t.kind;
  $("d-status").textContent = t.status + (t.intent ? " · " + t.intent.status : "");
  $("d-due").textContent = t.due_at ? "due " + when(t.due_at) : "";
  $("d-desc").textContent = (t.task && t.task.description) || "";
  $("d-payload").textContent = JSON.stringify(t.intent ? t.intent.payload : {}, null, 2);
  const open = t.status !== "done" && t.kind === "task";
  show("d-actions", open);
  const out = $("d-outcome");
  if (t.outcome && t.outcome.result) {
    out.textContent = "Decided: " + (t.outcome.result.outcome || t.outcome.status) +
      (t.outcome.result.actor ? " by " + t.outcome.result.actor : "");
    out.hidden = false;
  } else out.hidden = true;
  if (open && !quiet) {
    const outs = outcomesOf(t.task);
    $("outcome").replaceChildren(...outs.map((o) => el("option", { value: o }, o.replace(/_/g, " "))));
    $("approve").hidden = !outs.some((o) => ["approved", "confirmed", "assigned", "override_approved", "completed", "provided"].includes(o));
    $("reject").hidden = !outs.some((o) => ["rejected", "declined", "failed"].includes(o));
    const req = t.task && t.task.required_comment;
    $("comment").required = !!req;
    $("comment-req").textContent = req ? "(required)" : "(optional)";
    renderFormFields(t.task);
    $("d-error").textContent = "";
  }
  $("d-messages").replaceChildren(...(t.messages || []).map((m) =>
    el("li", null, el("span", { class: "when" }, when(m.at) + " "), el("strong", null, m.kind), " ",
       m.actor_name || m.actor || "", m.body ? ": " + m.body : "")));
  $("d-events").replaceChildren(...(t.timeline || []).map((e) =>
    el("li", null, el("span", { class: "when" }, when(e.at) + " "), e.event_type, " ", e.actor ? "(" + e.actor + ")" : "")));
  if (!quiet) $("d-title").setAttribute("tabindex", "-1"), $("d-title").focus();
}

// Fields for a form task's form_schema (required names and basic types); their values go into data.
function renderFormFields(task) {
  const box = $("form-fields");
  box.replaceChildren();
  if (task && task.evidence_required) {
    // manual_action and the like: the decision's data must carry the evidence
    box.append(el("label", { for: "f-evidence" }, "Evidence (required)"),
               el("input", { id: "f-evidence", placeholder: "a reference, a file name, a link" }));
  }
  const schema = task && task.form_schema;
  if (!schema || !schema.properties) return;
  for (const [name, p] of Object.entries(schema.properties)) {
    const id = "f-" + name;
    const type = Array.isArray(p.type) ? p.type[0] : p.type;
    const input = type === "boolean" ? el("input", { id, type: "checkbox", "data-field": name, "data-type": type })
      : el("input", { id, type: type === "number" || type === "integer" ? "number" : "text", "data-field": name, "data-type": type,
                      required: (schema.required || []).includes(name) ? "" : null });
    box.append(el("label", { for: id }, name), input);
  }
}

function collectData() {
  let data = {};
  const txt = $("data").value.trim();
  if (txt) data = JSON.parse(txt);
  const ev = $("f-evidence");
  if (ev && ev.value.trim()) data.evidence = ev.value.trim();
  for (const i of document.querySelectorAll("#form-fields [data-field]")) {
    const t = i.dataset.type;
    if (t === "boolean") data[i.dataset.field] = i.checked;
    else if (i.value !== "") data[i.dataset.field] = t === "number" || t === "integer" ? Number(i.value) : i.value;
  }
  return data;
}

async function act(fn) {
  $("d-error").textContent = "";
  try {
    await fn();
    await refresh();
    await openThread(state.current, true);
  } catch (e) {
    $("d-error").textContent = e.message;
  }
}

function decide(kind) {
  return act(async () => {
    let data;
    try { data = collectData(); } catch (e) { throw new Error("Data is not valid JSON"); }
    const body = { comment: $("comment").value || undefined, data, actor: state.me.role };
    if (kind === "decision") body.outcome = $("outcome").value;
    const r = await api("POST", "/v1/inbox/" + state.current + "/" + kind, body);
    $("d-outcome").textContent = "Decided: " + r.outcome;
    $("d-outcome").hidden = false;
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("signin-error").textContent = "";
    try {
      await api("POST", "/v1/session", undefined, { "x-api-key": $("api-key").value.trim() });
      $("api-key").value = "";
      await start();
    } catch (e) {
      $("signin-error").textContent = e.status === 401 ? "That key is not valid." : e.message;
    }
  });
  $("signout").addEventListener("click", async () => {
    if (state.es) state.es.close();
    await api("DELETE", "/v1/session").catch(() => {});
    location.reload();
  });
  $("owner").addEventListener("change", async (ev) => {
    state.owner = ev.target.value;
    sessionStorage.setItem("axme-owner", state.owner);
    state.current = null;
    show("detail", false);
    await refresh();
    listen();
  });
  $("back").addEventListener("click", () => {
    document.querySelector(".layout").classList.remove("showing-detail");
    show("detail", false);
    state.current = null;
  });
  $("approve").addEventListener("click", () => decide("approve"));
  $("reject").addEventListener("click", () => decide("reject"));
  $("decide-form").addEventListener("submit", (ev) => { ev.preventDefault(); decide("decision"); });
  $("reply-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act(async () => {
      await api("POST", "/v1/inbox/" + state.current + "/reply", { message: $("reply").value, actor: state.me.role });
      $("reply").value = "";
    });
  });
  $("delegate-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act(async () => {
      await api("POST", "/v1/inbox/" + state.current + "/delegate",
                { delegate_to: $("delegate-to").value.trim(), note: $("delegate-note").value || undefined });
      show("detail", false);
      state.current = null;
    });
  });
  // keyboard: j / k move through the list, Enter opens (buttons do that already)
  document.addEventListener("keydown", (ev) => {
    if (ev.target.matches("input, textarea, select")) return;
    const buttons = [...document.querySelectorAll("#tasks button")];
    const i = buttons.indexOf(document.activeElement);
    if (ev.key === "j" && buttons.length) buttons[Math.min(i + 1, buttons.length - 1)].focus();
    if (ev.key === "k" && buttons.length) buttons[Math.max(i - 1, 0)].focus();
  });
  start();
});
