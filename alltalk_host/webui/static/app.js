// The page: hash routes to panels, the state panels share (status, commits, models, live
// operations), the event stream and its banner, the token prompt and the confirmation dialog.
//
// Every panel is mounted once and shown or hidden, so a clip keeps playing while you look at
// the status. A panel's state lives in the URL (#/config/plan/<commit>, #/generate?model=...),
// so any view can be bookmarked, reloaded and tested.

import * as api from "./api.js";
import activity from "./activity.js";
import config from "./config.js";
import connect from "./connect.js";
import {debounce, fill, h, short} from "./dom.js";
import effective from "./effective.js";
import {EventStream} from "./events.js";
import generate from "./generate.js";
import plan from "./plan.js";
import {Operations} from "./progress.js";
import status from "./status.js";
import voices from "./voices.js";

const PANELS = [generate, voices, status, config, plan, effective, activity, connect];

const app = {
  status: null, // GET /control/status
  commits: [], // GET /control/config/commits
  statusError: null,
  models: null, // GET /tts/models
  modelsError: null,
  ops: new Operations(),
  events: null,
  live: "connecting",
  route: null,
  listeners: new Map(),

  /** Call ``fn`` on every ``name`` ("status", "models", "event", "live"). */
  on(name, fn) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set());
    this.listeners.get(name).add(fn);
  },

  emit(name, value) {
    for (const fn of this.listeners.get(name) || []) fn(value);
  },

  navigate(hash) {
    location.hash = hash;
  },

  /** Rewrite the current route's query (form state) without a new history entry. */
  setQuery(values) {
    const query = new URLSearchParams();
    for (const [k, v] of Object.entries(values)) if (v !== "" && v !== null && v !== undefined) query.set(k, v);
    const path = app.route.path.map(encodeURIComponent).join("/");
    const qs = query.toString();
    history.replaceState(null, "", `#/${path}${qs ? `?${qs}` : ""}`);
    app.route.query = query;
  },

  confirm,
  refresh: single(refreshStatus),
  refreshModels: single(refreshModels),
};

/** One call at a time; a call made meanwhile runs once more after it. */
function single(fn) {
  let running = null;
  let again = false;
  return async function run() {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      do {
        again = false;
        await fn();
      } while (again);
    })().finally(() => { running = null; });
    return running;
  };
}

async function refreshStatus() {
  try {
    const [status, commits] = await Promise.all([
      api.get("/control/status"), api.get("/control/config/commits?limit=100")]);
    app.status = status;
    app.commits = commits.commits;
    app.statusError = null;
  } catch (err) {
    app.statusError = err;
  }
  app.emit("status");
  showSummary();
}

async function refreshModels() {
  try {
    app.models = await api.get("/tts/models");
    app.modelsError = null;
  } catch (err) {
    app.modelsError = err;
  }
  app.emit("models");
  showSummary();
}

const refreshSoon = debounce(() => { app.refresh(); app.refreshModels(); }, 150);

function showSummary() {
  const s = app.status;
  const m = app.models;
  const commit = s ? s.serving_commit : m && m.commit;
  const model = s ? s.default_model : m && m.default_model;
  fill(document.getElementById("summary"),
    commit ? `serving ${short(commit)} · default model ${model}` : "not serving yet",
    s && s.apply_in_progress ? ` · ${s.apply_in_progress.action} in progress` : "");
}

// --- live events ------------------------------------------------------------------------------

function onEvent(event) {
  app.ops.take(event);
  app.emit("event", event);
  if (event.replayed) return;
  if (["operation", "model", "worker", "reset"].includes(event.kind)) refreshSoon();
}

function onLive(state, error) {
  const was = app.live;
  app.live = state;
  const banner = document.getElementById("banner");
  if (state === "reconnecting") {
    fill(banner, "Live updates reconnecting…",
      error && error.message ? h("span", {class: "hint"}, ` (${error.message})`) : null);
    banner.hidden = false;
  } else if (state === "off") {
    fill(banner, "Live updates are off: the server wants the control token. ",
      h("button", {type: "button", onclick: enterToken}, "Enter token"));
    banner.hidden = false;
  } else if (state === "live") {
    banner.hidden = true;
    if (was === "reconnecting" || was === "off") refreshSoon(); // what changed meanwhile
  }
  app.emit("live", state);
}

/** The "Enter token" buttons: ask, then read everything again with it. */
async function enterToken() {
  if (!await api.askToken(null, true)) return;
  app.refresh();
  app.events.start();
}

app.enterToken = enterToken;

// --- dialogs ----------------------------------------------------------------------------------

function askToken(error) {
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  fill(document.getElementById("token-reason"),
    error && error.message ? `The server says: ${error.message}.` : "");
  input.value = "";
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "ok" && input.value.trim() ? input.value.trim() : null);
    }, {once: true});
    dialog.showModal();
    input.focus();
  });
}

/** A modal confirmation; resolves to true when confirmed. ``body`` is a node or a list. */
function confirm(title, body) {
  const dialog = document.getElementById("confirm-dialog");
  fill(document.getElementById("confirm-title"), title);
  fill(document.getElementById("confirm-body"), body);
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "confirm"),
      {once: true});
    dialog.showModal();
  });
}

// --- routes -----------------------------------------------------------------------------------

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const at = raw.indexOf("?");
  const path = (at < 0 ? raw : raw.slice(0, at)).split("/").filter(Boolean).map(decodeURIComponent);
  return {path, query: new URLSearchParams(at < 0 ? "" : raw.slice(at + 1))};
}

let current = null;

function route() {
  const next = parseHash();
  if (!next.path.length) next.path = ["generate"];
  const panel = PANELS.find((p) => p.matches(next.path)) || generate;
  app.route = next;
  for (const p of PANELS) document.getElementById(`panel-${p.id}`).hidden = p !== panel;
  for (const link of document.querySelectorAll("nav a")) {
    const here = link.dataset.panel === panel.id
      || (panel.id === "plan" && link.dataset.panel === "config");
    if (here) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (current && current !== panel && current.hide) current.hide();
  const moved = current !== null && current !== panel;
  current = panel;
  document.title = `${panel.title(next)} · alltalk-host`;
  panel.show(next);
  if (moved) document.getElementById(`${panel.id}-title`).focus();
}

function start() {
  api.setTokenPrompt(askToken);
  for (const panel of PANELS) panel.mount(document.getElementById(`panel-${panel.id}`), app);
  app.events = new EventStream(onEvent, onLive);
  window.addEventListener("hashchange", route);
  route();
  app.refreshModels();
  app.refresh().then(() => app.events.start());
}

start();
