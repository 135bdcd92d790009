// The Assay dashboard: plain JavaScript, no build step, shipped inside the binary.
// Everything live comes from the server-sent event stream (/api/v1/stream): the browser
// reconnects by itself with Last-Event-ID, so no event is missed. Text from the server is
// always set as text, never as HTML.
"use strict";

const API = "/api/v1";
const STATES = ["waiting", "available", "running", "retrying", "completed", "dead", "cancelled", "skipped"];
const mainEl = document.getElementById("main");
// The page's content; nested arrays and empty parts are allowed, like `h`'s children.
const main = { replaceChildren: (...children) => mainEl.replaceChildren(...children.flat(3).filter(c => c !== null && c !== undefined && c !== false && c !== "")) };
let pageStream = null; // the EventSource of the current page
let pageTimers = [];
let routeCount = 0; // which page is current: a page that awaited past a navigation stops
const stale = mine => mine !== routeCount;

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

async function api(path, options) {
  options = options || {};
  const method = (options.method || "GET").toUpperCase();
  if (method !== "GET" && method !== "HEAD") {
    // A change made with the session cookie must say it comes from this page (CSRF).
    options.headers = Object.assign({ "x-assay-csrf": "1" }, options.headers || {});
  }
  const resp = await fetch(API + path, Object.assign({ credentials: "same-origin" }, options));
  const text = await resp.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (!resp.ok) {
    const err = new Error(body && body.error ? body.error.message : `${resp.status} ${text.slice(0, 200)}`);
    err.code = body && body.error ? body.error.code : "http_" + resp.status;
    throw err;
  }
  return body;
}

const post = (path, body) => api(path, {
  method: "POST",
  headers: { "content-type": "application/json" },
  body: JSON.stringify(body === undefined ? {} : body),
});

function fmtTime(us) {
  if (!us) return "";
  return new Date(us / 1000).toLocaleString();
}

function fmtDuration(us) {
  if (us === null || us === undefined) return "";
  const s = us / 1e6;
  if (s < 60) return s.toFixed(1) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
  return (s / 3600).toFixed(1) + " h";
}

function stateBadge(state) {
  return h("span", { class: "state " + state, "data-state": state }, state);
}

function countsBar(counts) {
  const total = STATES.reduce((n, s) => n + (counts[s] || 0), 0) || 1;
  const bar = h("div", { class: "bar", title: STATES.filter(s => counts[s]).map(s => `${s}: ${counts[s]}`).join(", ") });
  for (const s of STATES) {
    if (counts[s]) bar.append(h("span", { style: `width:${(100 * counts[s] / total).toFixed(2)}%;background:var(--${s})` }));
  }
  return bar;
}

function countsText(counts) {
  return STATES.filter(s => counts[s]).map(s => `${counts[s]} ${s}`).join(" · ");
}

function usageText(total) {
  if (!total || !total.calls) return "—";
  const tokens = (total.prompt_tokens + total.completion_tokens).toLocaleString();
  let s = `${tokens} tokens · $${total.cost_usd.toFixed(4)}`;
  if (total.cached_calls) s += ` · ${total.cached_calls} cached`;
  return s;
}

// Every kind of durable event the server emits (they carry ids).
const DURABLE_KINDS = ["pipeline_created", "pipeline_finished", "pipeline_cancel_requested", "pipeline_reopened",
  "job_state", "job_progress", "breaker_opened", "breaker_closed"];

function openStream(query, handlers) {
  if (pageStream) pageStream.close();
  const live = document.getElementById("live");
  const es = new EventSource(API + "/stream" + query);
  es.onopen = () => live.classList.add("on");
  es.onerror = () => live.classList.remove("on");
  // The ids this page has received, in order: a reconnect must neither skip nor repeat.
  window.assaySeen = [];
  for (const kind of DURABLE_KINDS) {
    es.addEventListener(kind, e => window.assaySeen.push(Number(e.lastEventId)));
  }
  for (const [kind, fn] of Object.entries(handlers)) {
    es.addEventListener(kind, e => fn(JSON.parse(e.data), e));
  }
  pageStream = es;
  window.assayStream = es; // for tests: the stream's state and last id
  return es;
}

/// Run `fn` at most every `ms`, and once more after the last call.
function throttled(fn, ms) {
  let timer = null, again = false;
  return () => {
    if (timer) { again = true; return; }
    fn();
    timer = setTimeout(function tick() {
      timer = null;
      if (again) { again = false; fn(); timer = setTimeout(tick, ms); }
    }, ms);
  };
}

function showError(err) {
  if (err.code === "unauthorized") return loginForm(err.message);
  return h("pre", { class: "error" }, err.code ? `${err.code}: ${err.message}` : String(err));
}

// The server asks for a token: trade one for a session cookie (HttpOnly, so this page
// never keeps the token), then draw the page again.
function loginForm(message) {
  const input = h("input", { type: "password", name: "token", autocomplete: "off", placeholder: "assay_…", "data-login": "token" });
  const result = h("div");
  const form = h("form", { class: "login", "data-login": "form", onsubmit: async e => {
    e.preventDefault();
    try {
      await post("/session", { token: input.value.trim() });
      input.value = "";
      route();
    } catch (err) {
      result.replaceChildren(h("pre", { class: "error" }, `${err.code}: ${err.message}`));
    }
  } },
  h("h2", {}, "Log in"),
  h("p", { class: "muted" }, message),
  h("p", { class: "muted" }, "Paste an API token (scope read, or submit to change things); an admin creates one with `assay token create`."),
  input, " ", h("button", { type: "submit" }, "Log in"), result);
  return form;
}

// ---------------------------------------------------------------- pipelines

async function pipelinesPage(params) {
  const filter = params.get("state") || "";
  const before = params.get("before");
  const list = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const select = h("select", { id: "state-filter", onchange: e => { location.hash = "#/?state=" + e.target.value; } },
    h("option", { value: "" }, "all states"),
    ...["running", "completed", "partial_success", "failed", "cancelled"].map(s => h("option", { value: s, selected: s === filter }, s)));
  const specText = h("textarea", { id: "spec-text", placeholder: "Paste a pipeline spec (TOML) here, or choose a file" });
  const fileInput = h("input", { type: "file", accept: ".toml,text/plain", onchange: async e => {
    const f = e.target.files[0];
    if (f) { specText.value = await f.text(); specText.dataset.fileName = f.name; }
  } });
  const submitResult = h("div", { id: "submit-result" });
  const submitCard = h("div", { class: "card", id: "submit-card", hidden: true },
    h("h2", {}, "Submit a pipeline"), specText,
    h("div", { class: "toolbar" }, fileInput,
      h("button", { class: "primary", id: "submit-spec", onclick: async () => {
        submitResult.replaceChildren();
        try {
          const r = await post("/pipelines", { spec: specText.value, file_name: specText.dataset.fileName || "pasted.toml" });
          location.hash = "#/pipelines/" + r.pipeline_id;
        } catch (err) { submitResult.append(showError(err)); }
      } }, "Submit")),
    submitResult);
  main.replaceChildren(
    h("div", { class: "toolbar" }, h("h1", { style: "flex:1;margin:0" }, "Pipelines"), select,
      h("button", { id: "new-pipeline", onclick: () => { submitCard.hidden = !submitCard.hidden; } }, "New pipeline")),
    submitCard, list);

  const settledUsage = new Map();
  const load = async () => {
    const q = new URLSearchParams({ limit: "50" });
    if (filter) q.set("state", filter);
    if (before) q.set("before", before);
    let rows;
    try { rows = await api("/pipelines?" + q); } catch (err) { list.replaceChildren(showError(err)); return; }
    // A finished pipeline's usage no longer changes: it is asked for once.
    const usage = await Promise.all(rows.map(async p => {
      if (p.state !== "running" && settledUsage.has(p.id)) return settledUsage.get(p.id);
      const u = await api(`/pipelines/${p.id}/usage`).catch(() => null);
      if (u && p.state !== "running") settledUsage.set(p.id, u);
      return u;
    }));
    const table = h("table", { id: "pipelines" },
      h("thead", {}, h("tr", {}, ...["id", "name", "state", "progress", "jobs", "created", "duration", "tokens and cost", ""].map(t => h("th", {}, t)))),
      h("tbody", {}, rows.map((p, i) => h("tr", { "data-pipeline": p.id },
        h("td", {}, h("a", { href: "#/pipelines/" + p.id }, "#" + p.id)),
        h("td", {}, h("a", { href: "#/pipelines/" + p.id }, p.name)),
        h("td", {}, stateBadge(p.state)),
        h("td", {}, countsBar(p.counts)),
        h("td", { class: "muted" }, countsText(p.counts)),
        h("td", {}, fmtTime(p.created_at)),
        h("td", {}, fmtDuration((p.finished_at || Date.now() * 1000) - p.created_at)),
        h("td", {}, usage[i] ? usageText(usage[i].total) : "—"),
        h("td", {}, p.state === "running" ? h("button", { class: "danger", onclick: async () => {
          await post(`/pipelines/${p.id}/cancel`); load();
        } }, "Cancel") : "")))));
    const pager = h("div", { class: "pager" });
    if (before) pager.append(h("a", { href: "#/" + (filter ? "?state=" + filter : "") }, "« newest"));
    if (rows.length === 50) {
      const q2 = new URLSearchParams({ before: rows[rows.length - 1].id });
      if (filter) q2.set("state", filter);
      pager.append(h("a", { href: "#/?" + q2 }, "older »"));
    }
    list.replaceChildren(rows.length ? table : h("p", { class: "muted" }, "No pipelines yet. Submit one above, or run `assay submit SPEC`."), pager);
  };
  // Follow from now (no history replay), then read the list: no change falls between.
  const refresh = throttled(load, 1000);
  openStream("?tail=0", { pipeline_created: refresh, pipeline_finished: refresh, job_state: refresh });
  await load();
}

// ---------------------------------------------------------------- pipeline

function itemLabel(item) {
  if (!item || typeof item !== "object") return String(item);
  return Object.entries(item).map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(" ");
}

// A chip of the grid: one job (it links to the job and follows its events), or several
// jobs of one stage (it shows how many are done and links to their list).
function gridChip(pipeline, c, cell) {
  const name = [c.stage, c.label].filter(Boolean).join(" ");
  if (c.count === 1) {
    return h("a", { class: "chip " + c.state, href: "#/jobs/" + c.job_id, "data-job": c.job_id, "data-state": c.state,
      title: `${name}: ${c.state}` }, name);
  }
  const q = new URLSearchParams({ stage: c.stage });
  if (cell) { q.set("model", cell.model); q.set("template", cell.template); }
  return h("a", { class: "chip " + c.state, href: `#/pipelines/${pipeline}/jobs?${q}`,
    "data-stage": c.stage, "data-state": c.state, title: `${c.count} jobs: ${countsText(c.counts)}` },
    `${name} ${c.counts.completed}/${c.count}`);
}

function gridTable(pipeline, g) {
  const parts = [];
  if (g.folded) parts.push(h("p", { class: "muted", id: "grid-folded" }, `${g.cells.length} apps: each stage's tools share one chip here; a chip opens their jobs.`));
  if (g.cells.length) {
    const cells = new Map(g.cells.map(c => [`${c.model}\u0000${c.template}`, c]));
    parts.push(h("table", { class: "grid" },
      h("thead", {}, h("tr", {}, h("th", {}, "model \\ template"), g.templates.map(t => h("th", {}, t)))),
      h("tbody", {}, g.models.map(m => h("tr", {}, h("th", {}, m), g.templates.map(t => {
        const cell = cells.get(`${m}\u0000${t}`);
        return h("td", { class: "cell", "data-model": m, "data-template": t }, cell ? cell.chips.map(c => gridChip(pipeline, c, cell)) : "");
      }))))));
  }
  if (g.other.length) {
    if (g.cells.length) parts.push(h("h2", {}, "Other jobs"));
    parts.push(h("table", { class: "grid" }, h("tbody", {}, g.other.map(c => h("tr", {}, h("th", {}, c.stage),
      h("td", { class: "cell" }, c.count === 1 ? gridChip(pipeline, c) : [countsBar(c.counts), gridChip(pipeline, c)]))))));
  }
  return parts.length ? parts : h("p", { class: "muted" }, "No jobs.");
}

function waitingTable(rows) {
  return h("table", { class: "waiting" }, h("tbody", {}, rows.map(w => h("tr", { "data-job": w.job_id },
    h("td", {}, h("a", { href: "#/jobs/" + w.job_id }, w.key)), h("td", {}, stateBadge(w.state)),
    h("td", { class: "muted why" }, w.why)))));
}

async function pipelinePage(id) {
  const mine = routeCount;
  let detail, grid;
  try {
    [detail, grid] = await Promise.all([api(`/pipelines/${id}`), api(`/pipelines/${id}/grid`)]);
  } catch (err) { main.replaceChildren(showError(err)); return; }
  if (stale(mine)) return;
  const head = h("div", {});
  const stagesBox = h("div", { class: "card" });
  const usageBox = h("div", { class: "card" });
  const log = h("div", { class: "log", id: "event-log" });
  const running = h("div", { id: "running" });
  const gridBox = h("div", { class: "card", style: "overflow:auto", id: "grid" }, gridTable(id, grid));
  const waitingBox = h("div", { id: "waiting" });

  const renderHead = () => {
    const p = detail.pipeline;
    head.replaceChildren(h("div", { class: "toolbar" },
      h("h1", { style: "flex:1;margin:0" }, `#${p.id} ${p.name} `, stateBadge(p.state)),
      h("a", { href: `#/pipelines/${id}/results`, id: "results-link" }, h("button", {}, "Results")),
      h("a", { href: `#/pipelines/${id}/compare`, id: "compare-link" }, h("button", {}, "Compare models")),
      h("a", { href: `#/pipelines/${id}/jobs` }, h("button", {}, "All jobs")),
      p.counts.dead ? h("button", { id: "retry-dead", onclick: async () => { await post(`/pipelines/${id}/retry`); } }, `Retry ${p.counts.dead} dead`) : "",
      p.state === "running" ? h("button", { class: "danger", id: "cancel-pipeline", onclick: async () => { await post(`/pipelines/${id}/cancel`); } }, "Cancel") : ""),
      h("p", { class: "muted" }, `created ${fmtTime(p.created_at)} · ${fmtDuration((p.finished_at || Date.now() * 1000) - p.created_at)} · ${countsText(p.counts)}`));
    stagesBox.replaceChildren(h("h2", { style: "margin-top:0" }, "Stages"),
      h("table", {}, h("tbody", {}, detail.stages.map(s => h("tr", {},
        h("td", {}, s.name), h("td", { class: "muted" }, s.kind), h("td", { style: "width:40%" }, countsBar(s.counts)),
        h("td", { class: "muted" }, countsText(s.counts)), h("td", {}, s.breaker_open ? h("span", { class: "state dead" }, "breaker open") : ""))))));
  };
  const loadUsage = async () => {
    try {
      const u = await api(`/pipelines/${id}/usage`);
      usageBox.hidden = !u.total.calls && !u.budget;
      usageBox.replaceChildren(h("h2", { style: "margin-top:0" }, "Model calls"),
        h("p", {}, usageText(u.total), u.budget_reached ? h("span", { class: "error" }, " — " + u.budget_reached) : ""),
        h("table", {}, h("tbody", {}, u.by_model.map(m => h("tr", {}, h("td", {}, m.model), h("td", {}, usageText(m.totals)))))));
    } catch (_) { usageBox.hidden = true; }
  };
  // Why the first jobs that have not started wait; the whole list is a page away.
  const loadWaiting = async () => {
    let rows;
    try { rows = await api(`/pipelines/${id}/waiting?limit=20`); } catch (_) { return; }
    waitingBox.replaceChildren(h("h2", {}, "Waiting"), ...(rows.length
      ? [waitingTable(rows), h("p", {}, h("a", { href: `#/pipelines/${id}/jobs?pending=1` }, rows.length === 20 ? "every waiting job »" : "as a list »"))]
      : [h("p", { class: "muted" }, "No job is waiting.")]));
  };

  renderHead();
  loadUsage();
  loadWaiting();
  main.replaceChildren(head, h("div", { class: "cols" }, stagesBox, usageBox),
    h("h2", {}, "Apps"), gridBox,
    h("div", { class: "cols" },
      h("div", {}, h("h2", {}, "Running"), running, waitingBox),
      h("div", {}, h("h2", {}, "Events"), log)));

  const refreshDetail = throttled(async () => {
    try { detail = await api(`/pipelines/${id}`); renderHead(); } catch (_) { /* next event retries */ }
  }, 500);
  const refreshUsage = throttled(loadUsage, 2000);
  const refreshWaiting = throttled(loadWaiting, 2000);
  // Chips of one job follow its events directly; chips of several jobs are recounted.
  // The newest state each job's events told: a grid read before an event must not undo it.
  const latest = new Map();
  const paint = (el, state, key) => {
    el.className = "chip " + state;
    el.dataset.state = state;
    if (key) el.title = `${key}: ${state}`;
  };
  const refreshGrid = throttled(async () => {
    try {
      grid = await api(`/pipelines/${id}/grid`);
      gridBox.replaceChildren(...[gridTable(id, grid)].flat());
      for (const el of gridBox.querySelectorAll("[data-job]")) {
        const state = latest.get(Number(el.dataset.job));
        if (state) paint(el, state);
      }
    } catch (_) { /* next event retries */ }
  }, 1000);
  const logLine = (ev, text) => {
    log.append(h("div", { "data-event": ev.id }, `${new Date(ev.at / 1000).toLocaleTimeString()}  ${text}`));
    while (log.childElementCount > 500) log.firstElementChild.remove();
    log.scrollTop = log.scrollHeight;
  };
  // From the grid's snapshot on (nothing between is lost), with recent history for the log.
  openStream(`?pipeline=${id}&after=${grid.last_event_id}&tail=200`, {
    job_state: ev => {
      latest.set(ev.job_id, ev.data.state);
      const chips = gridBox.querySelectorAll(`[data-job="${ev.job_id}"]`);
      for (const el of chips) paint(el, ev.data.state, ev.data.key);
      if (!chips.length) refreshGrid();
      refreshWaiting();
      const err = ev.data.error ? ` — ${ev.data.error.code}: ${ev.data.error.message}` : "";
      logLine(ev, `${ev.data.key} → ${ev.data.state}${err}`);
      refreshDetail();
      refreshUsage();
    },
    pipeline_created: ev => logLine(ev, `pipeline created with ${ev.data.jobs} jobs`),
    pipeline_cancel_requested: ev => logLine(ev, "cancellation requested"),
    pipeline_reopened: ev => { logLine(ev, "pipeline reopened"); refreshDetail(); },
    breaker_opened: ev => { logLine(ev, `breaker of stage ${ev.data.stage} opened after ${ev.data.consecutive_failures} failures`); refreshDetail(); },
    breaker_closed: ev => { logLine(ev, `breaker of stage ${ev.data.stage} closed`); refreshDetail(); },
    pipeline_finished: ev => { logLine(ev, `pipeline ${ev.data.state}`); refreshDetail(); refreshUsage(); },
    progress: snap => {
      running.replaceChildren(snap.running.length ? h("table", {}, h("tbody", {}, snap.running.map(r => h("tr", {},
        h("td", {}, h("a", { href: "#/jobs/" + r.job_id }, r.key)),
        h("td", {}, r.progress ? r.progress.step + (r.progress.percent != null ? ` ${Math.round(r.progress.percent)}%` : "") : "started"),
        h("td", { class: "muted" }, r.progress && r.progress.message ? r.progress.message : ""))))) : h("p", { class: "muted" }, "Nothing running."));
    },
  });
}

// ---------------------------------------------------------------- jobs of a pipeline

// One page of a pipeline's jobs (keyset-paged on the server), filtered by stage and state;
// `pending=1` lists the jobs that have not started with why each waits.
async function jobsPage(id, params) {
  const mine = routeCount;
  const stage = params.get("stage") || "", state = params.get("state") || "", pending = params.has("pending");
  const model = params.get("model") || "", template = params.get("template") || "";
  const after = params.get("after");
  const limit = 100;
  let detail, rows;
  try {
    detail = await api(`/pipelines/${id}`);
    if (pending) {
      rows = await api(`/pipelines/${id}/waiting?limit=${limit}` + (after ? `&after=${after}` : ""));
    } else {
      const q = new URLSearchParams({ pipeline: id, limit });
      if (stage) q.set("stage", stage);
      if (state) q.set("state", state);
      if (model) q.set("model", model);
      if (template) q.set("template", template);
      if (after) q.set("after", after);
      rows = await api("/jobs?" + q);
    }
  } catch (err) { main.replaceChildren(showError(err)); return; }
  if (stale(mine)) return;
  const go = changes => {
    const q = new URLSearchParams(params);
    q.delete("after");
    for (const [k, v] of Object.entries(changes)) { if (v) q.set(k, v); else q.delete(k); }
    location.hash = `#/pipelines/${id}/jobs?` + q;
  };
  const stageSelect = h("select", { id: "jobs-stage", onchange: e => go({ stage: e.target.value }) },
    h("option", { value: "" }, "all stages"), detail.stages.map(st => h("option", { value: st.name, selected: st.name === stage }, st.name)));
  const stateSelect = h("select", { id: "jobs-state", onchange: e => go({ state: e.target.value, pending: "" }) },
    h("option", { value: "" }, "all states"), STATES.map(st => h("option", { value: st, selected: st === state }, st)));
  const table = pending ? waitingTable(rows) : h("table", { id: "jobs" },
    h("thead", {}, h("tr", {}, ...["id", "key", "stage", "state", "attempts", "worker", "error"].map(t => h("th", {}, t)))),
    h("tbody", {}, rows.map(j => h("tr", { "data-job": j.id },
      h("td", {}, h("a", { href: "#/jobs/" + j.id }, "#" + j.id)), h("td", {}, h("a", { href: "#/jobs/" + j.id }, j.key)),
      h("td", {}, j.stage), h("td", {}, stateBadge(j.state)), h("td", { class: "num" }, j.attempts),
      h("td", { class: "muted" }, j.worker_id || ""),
      h("td", { class: "error" }, j.last_error ? `${j.last_error.code}: ${j.last_error.message}`.slice(0, 160) : "")))));
  const pager = h("div", { class: "pager" });
  if (after) pager.append(h("a", { href: "#", onclick: e => { e.preventDefault(); go({}); } }, "« first"));
  if (rows.length === limit) {
    const last = pending ? rows[rows.length - 1].job_id : rows[rows.length - 1].id;
    const q = new URLSearchParams(params); q.set("after", last);
    pager.append(h("a", { href: `#/pipelines/${id}/jobs?` + q }, "next »"));
  }
  main.replaceChildren(
    h("p", {}, h("a", { href: "#/pipelines/" + id }, `← pipeline #${id} ${detail.pipeline.name}`)),
    h("div", { class: "toolbar" }, h("h1", { style: "flex:1;margin:0" }, pending ? "Jobs waiting, and why" : "Jobs", model || template ? ` of ${[model, template].filter(Boolean).join(" × ")}` : ""),
      pending ? "" : [stageSelect, stateSelect],
      h("a", { href: `#/pipelines/${id}/jobs` + (pending ? "" : "?pending=1") }, h("button", {}, pending ? "All jobs" : "Waiting jobs"))),
    rows.length ? table : h("p", { class: "muted" }, "No job here."), pager);
}

// ---------------------------------------------------------------- job

async function jobPage(id) {
  const mine = routeCount;
  let e;
  try { e = await api(`/jobs/${id}`); } catch (err) { main.replaceChildren(showError(err)); return; }
  if (stale(mine)) return;
  const j = e.job;
  const render = () => {
    const p = j.progress;
    main.replaceChildren(
      h("p", {}, h("a", { href: "#/pipelines/" + j.pipeline_id }, `← pipeline #${j.pipeline_id}`)),
      h("h1", {}, `Job #${j.id} ${j.key} `, stateBadge(j.state)),
      h("div", { class: "card" }, h("dl", { class: "kv" },
        h("dt", {}, "why"), h("dd", { id: "why" }, e.summary),
        h("dt", {}, "kind"), h("dd", {}, j.kind),
        h("dt", {}, "item"), h("dd", {}, itemLabel(j.item)),
        h("dt", {}, "progress"), h("dd", {}, p ? `${p.step}${p.percent != null ? " " + Math.round(p.percent) + "%" : ""}${p.message ? " — " + p.message : ""}` : "—"),
        h("dt", {}, "worker"), h("dd", {}, j.worker_id || "—"),
        j.last_error ? [h("dt", {}, "error"), h("dd", { class: "error" }, `${j.last_error.code} (${j.last_error.class}): ${j.last_error.message}`)] : [],
        ...(e.provider_limits || []).map(l => [h("dt", {}, "model"), h("dd", {}, `${l.model} at ${l.provider}: ${l.status}`)]),
        e.llm_usage ? [h("dt", {}, "model calls"), h("dd", {}, usageText(e.llm_usage))] : [])),
      e.dependencies.length ? [h("h2", {}, "Upstream"), h("div", {}, e.dependencies.map(d => h("a", { class: "chip " + d.state, href: "#/jobs/" + d.job_id }, d.key)))] : [],
      h("h2", {}, "Attempts"),
      e.attempts.length ? h("table", { id: "attempts" }, h("thead", {}, h("tr", {}, ...["#", "outcome", "worker", "started", "took", "error"].map(t => h("th", {}, t)))),
        h("tbody", {}, e.attempts.map(a => h("tr", {},
          h("td", {}, a.number), h("td", {}, stateBadge(a.outcome)), h("td", {}, a.worker_id), h("td", {}, fmtTime(a.started_at)),
          h("td", {}, a.finished_at ? fmtDuration(a.finished_at - a.started_at) : "…"),
          h("td", { class: "error" }, a.error ? `${a.error.code} (${a.error.class}): ${a.error.message}` : "")))))
        : h("p", { class: "muted" }, "No attempt yet."),
      h("h2", {}, "Artifacts"),
      e.artifacts.length ? h("table", {}, h("tbody", {}, e.artifacts.map(a => h("tr", {},
        h("td", {}, h("a", { href: `${API}/jobs/${j.id}/artifacts/${encodeURIComponent(a.name)}`, download: a.name }, a.name)),
        h("td", { class: "muted" }, `${a.size.toLocaleString()} bytes`), h("td", { class: "muted" }, `attempt ${a.attempt}`)))))
        : h("p", { class: "muted" }, "None."),
      h("h2", {}, "Timeline"), timeline,
      logs,
      j.result ? [h("h2", {}, "Result"), h("pre", { class: "card", style: "overflow:auto;max-height:400px" }, JSON.stringify(j.result, null, 2))] : []);
  };
  // Every state the job went through and every progress step it reported, live.
  const timeline = h("div", { class: "log", id: "timeline" });
  const seenIds = new Set();
  const addStep = ev => {
    if (seenIds.has(ev.id)) return; // the history and the stream may both carry it
    seenIds.add(ev.id);
    const p = ev.data.progress;
    const text = ev.kind === "job_state"
      ? `→ ${ev.data.state}` + (ev.data.error ? ` — ${ev.data.error.code}: ${ev.data.error.message}` : "")
      : `step ${p.step}` + (p.percent != null ? ` ${Math.round(p.percent)}%` : "") + (p.message ? ` — ${p.message}` : "");
    const line = h("div", { "data-event": ev.id, "data-kind": ev.kind }, `${new Date(ev.at / 1000).toLocaleTimeString()}  ${text}`);
    // In id order, whichever of history and stream arrives first.
    let after = timeline.lastElementChild;
    while (after && Number(after.dataset.event) > ev.id) after = after.previousElementSibling;
    if (after) after.after(line); else timeline.prepend(line);
    while (timeline.childElementCount > 500) timeline.firstElementChild.remove();
  };
  // The tails of the job's logs (stdout.log, stderr.log, app logs), newest attempt.
  const logs = h("div", { id: "logs" });
  const loadLogs = async () => {
    const latest = Math.max(0, ...e.artifacts.map(a => a.attempt));
    const parts = [];
    for (const a of e.artifacts.filter(a => a.name.endsWith(".log") && a.attempt === latest && a.size > 0)) {
      const resp = await fetch(`${API}/jobs/${j.id}/artifacts/${encodeURIComponent(a.name)}`);
      const text = resp.ok ? await resp.text() : "";
      parts.push(h("h2", {}, `${a.name} (last 40 lines)`), h("div", { class: "log" }, text.split("\n").slice(-40).map(l => h("div", {}, l))));
    }
    logs.replaceChildren(...parts);
  };
  render();
  loadLogs();
  api(`/jobs/${id}/events`).then(evs => evs.forEach(addStep)).catch(() => { /* the stream still adds */ });
  const reload = throttled(async () => {
    try { e = await api(`/jobs/${id}`); Object.assign(j, e.job); render(); } catch (_) { /* retried on the next event */ }
  }, 500);
  openStream(`?pipeline=${j.pipeline_id}&tail=20`, {
    job_state: ev => {
      if (ev.job_id === j.id) addStep(ev);
      if (ev.job_id === j.id || e.dependencies.some(d => d.job_id === ev.job_id)) reload();
    },
    job_progress: ev => { if (ev.job_id === j.id) addStep(ev); },
    progress: snap => { if (snap.running.some(r => r.job_id === j.id)) reload(); },
  });
}

// ---------------------------------------------------------------- results

const SEVERITIES = ["critical", "high", "medium", "low", "info"];

function severityCounts(summary) {
  const by = (summary && summary.by_severity) || {};
  return SEVERITIES.map(s => h("td", { class: "num" }, by[s] ? h("span", { class: "sev " + s }, by[s]) : h("span", { class: "muted" }, "0")));
}

// Downloads of the pipeline's exports (the same files `assay export` writes).
function exportLinks(id) {
  const files = [["report.html", "HTML report"], ["findings.csv", "Findings CSV"], ["models.csv", "Models CSV"],
    ["results.json", "JSON"], ["sarif.zip", "SARIF zip"]];
  return h("div", { class: "toolbar exports" }, h("span", { class: "muted" }, "Export:"),
    files.map(([file, label]) => h("a", { class: "button", href: `${API}/pipelines/${id}/export/${file}`,
      download: `assay-pipeline-${id}-${file}`, "data-export": file }, label)));
}

async function resultsPage(id, params) {
  const mine = routeCount;
  const PAGE = 100;
  const offset = Number(params.get("offset") || 0);
  let apps;
  // One more than a page: whether there is a next one.
  try { apps = await api(`/pipelines/${id}/results?offset=${offset}&limit=${PAGE + 1}`); } catch (err) { main.replaceChildren(showError(err)); return; }
  if (stale(mine)) return;
  const more = apps.length > PAGE;
  apps = apps.slice(0, PAGE);
  const pager = h("div", { class: "pager" },
    offset > 0 ? h("a", { href: `#/pipelines/${id}/results?offset=${Math.max(0, offset - PAGE)}` }, "« previous") : "",
    more ? h("a", { href: `#/pipelines/${id}/results?offset=${offset + PAGE}` }, "next »") : "");
  main.replaceChildren(
    h("p", {}, h("a", { href: "#/pipelines/" + id }, `← pipeline #${id}`)),
    h("div", { class: "toolbar" }, h("h1", { style: "flex:1;margin:0" }, `Results of pipeline #${id}`), exportLinks(id)),
    apps.length ? h("table", { id: "apps" },
      h("thead", {}, h("tr", {}, h("th", {}, "app"), h("th", {}, "template"), h("th", {}, "analyzers"),
        ...SEVERITIES.map(s => h("th", { class: "num" }, s)), h("th", { class: "num" }, "total"))),
      h("tbody", {}, apps.map(a => h("tr", { "data-app": a.app },
        h("td", {}, h("a", { href: `#/pipelines/${id}/results/app?name=${encodeURIComponent(a.app)}` }, a.app)),
        h("td", {}, a.template || "—"),
        h("td", {}, a.analyzers.map(z => h("a", { class: "chip " + (z.status === "completed" || z.status === "success" ? "completed" : z.status.startsWith("skipped") ? "skipped" : "dead"), href: "#/jobs/" + z.job_id, title: z.status }, z.analyzer))),
        ...severityCounts(a.summary), h("td", { class: "num" }, a.summary.total)))))
      : h("p", { class: "muted" }, "No analysis results in this pipeline (yet)."), pager);
}

function latencyChart(endpoints) {
  // One row per endpoint: p50, p95 and p99 as bars on a shared scale.
  const rows = endpoints.filter(e => e.stats && e.stats.latency_ms);
  if (!rows.length) return null;
  const max = Math.max(...rows.map(e => e.stats.latency_ms.p99), 1);
  const W = 560, label = 260, rowH = 26;
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("width", label + W + 80);
  svg.setAttribute("height", rows.length * rowH + 24);
  svg.setAttribute("id", "latency-chart");
  const add = (tag, attrs, text) => {
    const el = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    svg.append(el);
  };
  const colors = { p50: "#3b82f6", p95: "#f59e0b", p99: "#dc2626" };
  rows.forEach((e, i) => {
    const y = i * rowH + 4;
    add("text", { x: 0, y: y + 14, "font-size": 12, fill: "#374151" }, `${e.method} ${e.path}`.slice(0, 40));
    ["p99", "p95", "p50"].forEach((k, j) => {
      const v = e.stats.latency_ms[k];
      add("rect", { x: label, y: y + j * 5, width: Math.max(1, (W * v) / max), height: 14 - j * 5, fill: colors[k] });
    });
    add("text", { x: label + (W * e.stats.latency_ms.p99) / max + 6, y: y + 12, "font-size": 11, fill: "#6b7280" }, `p99 ${e.stats.latency_ms.p99.toFixed(1)} ms`);
  });
  add("text", { x: label, y: rows.length * rowH + 18, "font-size": 11, fill: "#6b7280" }, "latency: p50 (blue) · p95 (amber) · p99 (red)");
  return svg;
}

async function appResultsPage(id, name) {
  const mine = routeCount;
  let app;
  try { app = await api(`/pipelines/${id}/results?app=${encodeURIComponent(name)}`); } catch (err) { main.replaceChildren(showError(err)); return; }
  if (stale(mine)) return;
  const findings = app.findings;
  const state = { severity: "", tool: "", text: "", sort: "severity", desc: false };
  const sevRank = s => SEVERITIES.indexOf(s);
  const select = (id, label, values) => h("select", { id, onchange: e => { state[id.replace("filter-", "")] = e.target.value; draw(); } },
    h("option", { value: "" }, label), values.map(v => h("option", { value: v }, v)));
  const tableBox = h("div", {});
  const columns = [["severity", "severity"], ["tool", "tool"], ["rule", "rule"], ["cwe", "CWE"], ["file", "file"], ["message", "message"]];
  const key = (f, col) => col === "severity" ? sevRank(f.severity) : col === "cwe" ? (f.cwe || 0) : col === "file" ? `${f.location.path}:${String(f.location.line || 0).padStart(6, "0")}` : String(f[col] || "");
  const draw = () => {
    const text = state.text.toLowerCase();
    let rows = findings.filter(f => (!state.severity || f.severity === state.severity)
      && (!state.tool || f.sources.some(s => s.tool === state.tool))
      && (!text || [f.rule, f.message, f.location.path, f.cwe ? "cwe-" + f.cwe : ""].join(" ").toLowerCase().includes(text)));
    rows.sort((a, b) => { const x = key(a, state.sort), y = key(b, state.sort); return (x < y ? -1 : x > y ? 1 : 0) * (state.desc ? -1 : 1); });
    tableBox.replaceChildren(h("p", { class: "muted", id: "finding-count" }, `${rows.length} of ${findings.length} findings`),
      h("table", { id: "findings" },
        h("thead", {}, h("tr", {}, columns.map(([col, label]) => h("th", { class: "sortable", onclick: () => {
          state.desc = state.sort === col ? !state.desc : false; state.sort = col; draw();
        } }, label + (state.sort === col ? (state.desc ? " ▼" : " ▲") : ""))))),
        h("tbody", {}, rows.map(f => {
          const detail = h("tr", { class: "detail", hidden: true }, h("td", { colspan: 6 },
            h("p", {}, f.message),
            f.snippet ? h("pre", { class: "snippet" }, f.snippet) : h("p", { class: "muted" }, "No code snippet."),
            h("p", {}, h("strong", {}, "Reported by: ")),
            h("ul", { class: "sources" }, f.sources.map(s => h("li", {}, `${s.tool} ${s.rule} (${s.tool_severity}): ${s.message}`)))));
          const row = h("tr", { class: "finding", "data-fingerprint": f.fingerprint, onclick: () => { detail.hidden = !detail.hidden; } },
            h("td", {}, h("span", { class: "sev " + f.severity }, f.severity)),
            h("td", {}, f.sources.map(s => s.tool).filter((t, i, a) => a.indexOf(t) === i).join(", ")),
            h("td", {}, f.rule), h("td", {}, f.cwe ? "CWE-" + f.cwe : ""),
            h("td", {}, f.location.path + (f.location.line ? ":" + f.location.line : "")),
            h("td", {}, f.message.length > 90 ? f.message.slice(0, 90) + "…" : f.message));
          return [row, detail];
        }))));
  };
  const perf = app.performance;
  const judge = app.judge;
  main.replaceChildren(
    h("p", {}, h("a", { href: `#/pipelines/${id}/results` }, `← results of pipeline #${id}`)),
    h("h1", {}, app.app),
    h("p", { class: "muted" }, `template ${app.template || "—"} · ${app.summary.total} findings`),
    h("h2", {}, "Tools"),
    h("table", { id: "tools" }, h("thead", {}, h("tr", {}, ...["tool", "status", "version", "duration", "findings", "detail"].map(t => h("th", {}, t)))),
      h("tbody", {}, app.tools.map(t => h("tr", {},
        h("td", {}, t.tool), h("td", {}, h("span", { class: "state " + (t.status === "success" || t.status === "no_issues" ? "completed" : t.status === "skipped" || t.status === "not_available" ? "skipped" : "dead") }, t.status)),
        h("td", {}, t.version || ""), h("td", {}, `${(t.duration_ms / 1000).toFixed(2)} s`), h("td", { class: "num" }, t.findings), h("td", { class: "muted" }, t.detail || ""))))),
    h("h2", {}, "Findings"),
    h("div", { class: "toolbar" }, select("filter-severity", "all severities", SEVERITIES), select("filter-tool", "all tools", [...new Set(findings.flatMap(f => f.sources.map(s => s.tool)))].sort()),
      h("input", { id: "filter-text", placeholder: "rule, CWE, file, message", oninput: e => { state.text = e.target.value; draw(); } })),
    tableBox,
    perf ? [h("h2", {}, "Performance"),
      h("p", {}, `${perf.mode} · ${perf.overall.requests_per_sec.toFixed(0)} req/s · p50 ${perf.overall.latency_ms.p50.toFixed(1)} ms · p99 ${perf.overall.latency_ms.p99.toFixed(1)} ms · errors ${(100 * (perf.overall.error_rate || 0)).toFixed(1)}%`),
      h("div", { class: "card" }, latencyChart(perf.endpoints || []) || h("p", { class: "muted" }, "No endpoint figures."))] : [],
    judge ? [h("h2", {}, "Requirements (LLM judge)"),
      judge.requirements && judge.requirements.length ? [
        h("p", {}, judge.pass_rate != null ? `pass rate ${(100 * judge.pass_rate).toFixed(0)}%` : "", judge.summary ? " — " + judge.summary : ""),
        h("table", { id: "requirements" }, h("tbody", {}, judge.requirements.map(r => h("tr", {},
          h("td", {}, r.id), h("td", {}, h("span", { class: "state " + (r.verdict === "met" ? "completed" : r.verdict === "partial" ? "retrying" : "dead") }, r.verdict)),
          h("td", {}, r.requirement, r.evidence.map(e => h("blockquote", {}, h("code", {}, `${e.file}: `), e.quote, e.explanation ? h("div", { class: "muted" }, e.explanation) : "")))))))]
        : h("p", { class: "muted" }, judge.detail ? "skipped: " + judge.detail : "No verdicts.")] : []);
  draw();
}

// ---------------------------------------------------------------- compare

function heatColor(score, max) {
  // Green (no weighted findings) to red (the worst app of the run).
  const t = max > 0 ? Math.min(1, score / max) : 0;
  const hue = Math.round(130 * (1 - t));
  return `hsl(${hue}, 70%, ${88 - 30 * t}%)`;
}

function severityChart(models) {
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  const rowH = 26, label = 240, W = 520;
  const totals = models.map(m => SEVERITIES.reduce((n, s) => n + (m.by_severity[s] || 0), 0));
  const max = Math.max(1, ...totals);
  svg.setAttribute("width", label + W + 60);
  svg.setAttribute("height", models.length * rowH + 26);
  svg.setAttribute("id", "severity-chart");
  const colors = { critical: "#7f1d1d", high: "#dc2626", medium: "#f59e0b", low: "#3b82f6", info: "#9ca3af" };
  const add = (tag, attrs, text) => {
    const el = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    svg.append(el);
  };
  models.forEach((m, i) => {
    const y = i * rowH + 4;
    add("text", { x: 0, y: y + 14, "font-size": 12, fill: "#374151" }, m.model.slice(0, 36));
    let x = label;
    for (const s of SEVERITIES) {
      const n = m.by_severity[s] || 0;
      if (!n) continue;
      const w = (W * n) / max;
      add("rect", { x, y, width: w, height: 16, fill: colors[s], class: "bar" }, undefined);
      x += w;
    }
    add("text", { x: x + 6, y: y + 13, "font-size": 11, fill: "#6b7280" }, String(totals[i]));
  });
  SEVERITIES.forEach((s, i) => {
    const x = label + i * 90, y = models.length * rowH + 10;
    add("rect", { x, y, width: 10, height: 10, fill: colors[s] });
    add("text", { x: x + 14, y: y + 9, "font-size": 11, fill: "#6b7280" }, s);
  });
  return svg;
}

// As `crate::ranking::cell` and `with_interval` print them, so every view shows one number.
function figure(v) { return v != null ? v.toFixed(2) : "—"; }
function withInterval(score, ci) { return ci ? `${score.toFixed(2)} [${ci[0].toFixed(2)}–${ci[1].toFixed(2)}]` : score.toFixed(2); }

function arrow(before, after) {
  if (before == null || after == null) return "";
  return after < before ? " ▼" : after > before ? " ▲" : "";
}

async function comparePage(id, params) {
  const mine = routeCount;
  const withId = params.get("with");
  let c, earlier = [];
  try {
    c = await api(`/pipelines/${id}/compare` + (withId ? `?with=${withId}` : ""));
    const me = await api(`/pipelines/${id}`);
    earlier = (await api("/pipelines?limit=100")).filter(p => p.id !== id && p.name === me.pipeline.name);
  } catch (err) { main.replaceChildren(showError(err)); return; }
  if (stale(mine)) return;
  const picker = h("select", { id: "compare-with", onchange: e => {
    location.hash = `#/pipelines/${id}/compare` + (e.target.value ? `?with=${e.target.value}` : "");
  } }, h("option", { value: "" }, "compare with another run…"),
    earlier.map(p => h("option", { value: p.id, selected: String(p.id) === withId }, `#${p.id} ${p.name} (${fmtTime(p.created_at)})`)));
  const base = c.baseline;
  const since = base ? [
    h("h2", {}, `Since run #${base.pipeline_id}`, base.same_spec ? "" : " (a different spec)"),
    h("table", { id: "model-changes" }, h("thead", {}, h("tr", {}, ...["model", "score/app before", "after", "pass rate before", "after"].map(t => h("th", {}, t)))),
      h("tbody", {}, c.models.map(m => {
        const b = base.models.find(x => x.model === m.model);
        const pr = v => v != null ? (100 * v).toFixed(0) + "%" : "—";
        return h("tr", {}, h("td", {}, m.model),
          h("td", {}, b ? figure(b.security_score) : "—"),
          h("td", { class: b && m.security_score < b.security_score ? "better" : b && m.security_score > b.security_score ? "worse" : "" }, figure(m.security_score) + arrow(b && b.security_score, m.security_score)),
          h("td", {}, pr(b && b.pass_rate)), h("td", {}, pr(m.pass_rate) + arrow(b && b.pass_rate, m.pass_rate)));
      }))),
    h("h2", {}, "Apps, worst regressions first", base.apps_total > base.apps.length ? ` (the first ${base.apps.length} of ${base.apps_total})` : ""),
    h("table", { id: "app-changes" }, h("thead", {}, h("tr", {}, ...["app", "score before", "after", "fixed", "new"].map(t => h("th", {}, t)))),
      h("tbody", {}, base.apps.map(a => h("tr", { "data-app": a.app },
        h("td", {}, a.app), h("td", {}, a.score_before != null ? a.score_before : "—"),
        h("td", {}, a.score_after != null ? a.score_after : "—"),
        h("td", { class: a.fixed ? "better" : "" }, a.fixed), h("td", { class: a.new ? "worse" : "" }, a.new)))))] : [];
  const cost = m => { const u = c.usage.find(u => u.model === m); return u ? u.totals : null; };
  const max = Math.max(0, ...c.models.flatMap(m => Object.values(m.by_template)));
  main.replaceChildren(
    h("p", {}, h("a", { href: "#/pipelines/" + id }, `← pipeline #${id}`)),
    h("div", { class: "toolbar" }, h("h1", { style: "flex:1;margin:0" }, `Models compared in pipeline #${id}`), earlier.length ? picker : ""),
    exportLinks(id),
    since,
    c.models.length ? [
      h("p", { class: "muted" }, `Ranked by weighted security findings per app (critical × 10, high × 5, medium × 2, low × 1; lower is better), then quality, then requirement pass rate. An app that did not run adds ${c.did_not_run_penalty} to both of its scores. Intervals are 95% bootstrap intervals; a tie means a permutation test cannot tell the model from the next one (p ≥ 0.05). The rules: docs/ranking.md.`),
      h("div", { class: "scroll" }, h("table", { id: "ranking" },
        h("thead", {}, h("tr", {}, h("th", {}, "#"), h("th", {}, "model"), h("th", { class: "num" }, "apps"),
          h("th", { class: "num", title: "apps that did not install, start or answer: the model's own failures" }, "did not run"),
          h("th", { class: "num", title: "apps analyzed fully / partially / not at all" }, "coverage"),
          ...SEVERITIES.map(s => h("th", { class: "num" }, s)),
          h("th", { class: "num", title: "thousands of non-blank lines of code" }, "KLOC"),
          h("th", { class: "num" }, "security/app [95% CI]"), h("th", { class: "num" }, "security/KLOC"),
          h("th", { class: "num" }, "quality/app [95% CI]"), h("th", { class: "num" }, "quality/KLOC"),
          h("th", { class: "num" }, "pass rate"), h("th", { class: "num" }, "p50 ms"), h("th", { class: "num" }, "req/s"), h("th", {}, "cost"), h("th", {}, "note"))),
        h("tbody", {}, c.models.map(m => h("tr", { "data-model": m.model },
          h("td", {}, m.rank), h("td", {}, m.model), h("td", { class: "num" }, m.apps),
          h("td", { class: "num" }, m.did_not_run ? h("span", { class: "sev high" }, m.did_not_run) : "0"),
          h("td", { class: "num" }, `${m.coverage.full} / ${m.coverage.partial} / ${m.coverage.none}`),
          ...severityCounts({ by_severity: m.by_severity }),
          h("td", { class: "num" }, (m.code_lines / 1000).toFixed(2)),
          h("td", { class: "num security" }, withInterval(m.security_score, m.security_ci)),
          h("td", { class: "num" }, figure(m.security_per_kloc)),
          h("td", { class: "num quality" }, withInterval(m.quality_score, m.quality_ci)),
          h("td", { class: "num" }, figure(m.quality_per_kloc)),
          h("td", { class: "num" }, m.pass_rate != null ? (100 * m.pass_rate).toFixed(0) + "%" : "—"),
          h("td", { class: "num" }, figure(m.p50_ms)),
          h("td", { class: "num" }, figure(m.requests_per_sec)),
          h("td", {}, usageText(cost(m.model))),
          h("td", { class: "muted" }, m.note)))))),
      h("h2", {}, "Findings by severity"), h("div", { class: "card" }, severityChart(c.models)),
      h("h2", {}, "Heatmap: weighted findings, model × template"),
      h("table", { class: "grid", id: "heatmap" },
        h("thead", {}, h("tr", {}, h("th", {}, ""), c.templates.map(t => h("th", {}, t)))),
        h("tbody", {}, c.models.map(m => h("tr", {}, h("th", {}, m.model), c.templates.map(t => {
          const v = m.by_template[t];
          return v === undefined ? h("td", { class: "cell muted" }, "—")
            : h("td", { class: "cell num", style: `background:${heatColor(v, max)}`, "data-score": v }, v.toFixed(0));
        })))))]
      : h("p", { class: "muted" }, "No analyzed apps with a model in this pipeline: compare needs analysis stages whose items name a `model`."));
}

// ---------------------------------------------------------------- workers

function workersPage() {
  const workersBox = h("div", {}, h("p", { class: "muted" }, "Loading…")), breakersBox = h("div", {});
  main.replaceChildren(h("h1", {}, "Workers"), workersBox, h("h2", {}, "Circuit breakers of running pipelines"), breakersBox);
  let workers = null, skew = 0; // server clock − this clock, for heartbeat ages
  const drawWorkers = () => {
    if (!workers) return; // no snapshot yet
    const now = Date.now() * 1000 + skew;
    workersBox.replaceChildren(workers.length ? h("table", { id: "workers" },
      h("thead", {}, h("tr", {}, ...["name", "id", "kinds", "running", "last heartbeat", "failures in a row", "state"].map(t => h("th", {}, t)))),
      h("tbody", {}, workers.map(w => h("tr", { "data-worker": w.id },
        h("td", {}, w.name), h("td", { class: "muted" }, w.id), h("td", {}, w.kinds.join(", ")),
        h("td", { class: "num" }, w.running),
        h("td", {}, `${Math.max(0, (now - w.last_seen) / 1e6).toFixed(0)} s ago`),
        h("td", { class: "num" }, w.consecutive_failures),
        h("td", {}, w.stopped ? stateBadge("cancelled") : w.quarantined_until && w.quarantined_until > now
          ? h("span", { class: "state retrying" }, "quarantined until " + fmtTime(w.quarantined_until)) : stateBadge("running"))))))
      : h("p", { class: "muted" }, "No worker has registered yet."));
  };
  const drawBreakers = breakers => {
    breakersBox.replaceChildren(breakers.length ? h("table", { id: "breakers" },
      h("thead", {}, h("tr", {}, ...["pipeline", "stage", "kind", "failures in a row", "opens after", "state"].map(t => h("th", {}, t)))),
      h("tbody", {}, breakers.map(b => h("tr", { "data-breaker": `${b.pipeline_id}/${b.stage}` },
        h("td", {}, h("a", { href: "#/pipelines/" + b.pipeline_id }, `#${b.pipeline_id} ${b.pipeline_name}`)),
        h("td", {}, b.stage), h("td", { class: "muted" }, b.kind),
        h("td", { class: "num" }, b.consecutive_failures), h("td", { class: "num" }, b.threshold),
        h("td", {}, b.open ? h("span", { class: "state dead" }, "open") : h("span", { class: "state completed" }, "closed"))))))
      : h("p", { class: "muted" }, "No running pipeline has a stage with a breaker."));
  };
  // The server pushes a snapshot of the workers and breakers every couple of seconds
  // (heartbeats are not events); between snapshots only the ages tick, locally.
  openStream("?tail=0&workers=true", {
    workers: snap => {
      skew = snap.now - Date.now() * 1000;
      workers = snap.workers;
      drawWorkers();
      drawBreakers(snap.breakers);
    },
  });
  pageTimers.push(setInterval(drawWorkers, 1000));
}

// ---------------------------------------------------------------- router

function route() {
  routeCount++;
  if (pageStream) { pageStream.close(); pageStream = null; }
  pageTimers.forEach(t => { clearTimeout(t); clearInterval(t); });
  pageTimers = [];
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  // A one-time login link (`assay run` prints one): trade the code for a session, and
  // take it out of the address bar and the history before anything else.
  const code = params.get("login");
  if (code) {
    params.delete("login");
    const rest = params.toString();
    history.replaceState(null, "", "#" + path + (rest ? "?" + rest : ""));
    const mine = routeCount;
    post("/session", { token: code }).then(() => { if (!stale(mine)) route(); }, async err => {
      if (stale(mine)) return;
      // Used already, but this browser may hold the session it opened.
      const me = await api("/whoami").catch(() => null);
      if (me) route(); else main.replaceChildren(loginForm(err.message));
    });
    return;
  }
  for (const a of document.querySelectorAll("header nav a")) {
    a.classList.toggle("active", (a.dataset.nav === "workers") === path.startsWith("/workers"));
  }
  let m;
  if ((m = path.match(/^\/pipelines\/(\d+)$/))) return pipelinePage(Number(m[1]));
  if ((m = path.match(/^\/pipelines\/(\d+)\/results$/))) return resultsPage(Number(m[1]), params);
  if ((m = path.match(/^\/pipelines\/(\d+)\/compare$/))) return comparePage(Number(m[1]), params);
  if ((m = path.match(/^\/pipelines\/(\d+)\/results\/app$/))) return appResultsPage(Number(m[1]), params.get("name"));
  if ((m = path.match(/^\/pipelines\/(\d+)\/jobs$/))) return jobsPage(Number(m[1]), params);
  if ((m = path.match(/^\/jobs\/(\d+)$/))) return jobPage(Number(m[1]));
  if (path === "/workers") return workersPage();
  return pipelinesPage(params);
}

window.addEventListener("hashchange", route);
route();
