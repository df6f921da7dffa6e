// The Status panel: what serves and how it got there, on separate axes (serving commit, the
// branch, the last operation, the models), the operation running now, one card per model
// with Reload and Make default (and Load / Unload for models loaded on demand), watch,
// plugins (failed ones with their error), outputs.

import * as api from "./api.js";
import {bytes, errorBox, fill, firstLine, h, seconds, short, age} from "./dom.js";
import {renderStepper, runChange, summary} from "./progress.js";

let app;
let body;
let visible = false;

function mount(section, shared) {
  app = shared;
  body = section.querySelector("#status-body");
  // Built once: a reload's progress (in #model-action) outlives the re-renders it causes.
  fill(body,
    h("div", {id: "status-error"}),
    h("dl", {class: "axes", id: "axes"}),
    h("section", {id: "canary", "aria-labelledby": "canary-title", hidden: ""}),
    h("section", {"aria-labelledby": "op-title"},
      h("h2", {id: "op-title"}, "Latest operation"),
      h("p", {id: "op-busy"}),
      h("ol", {id: "status-op", class: "stepper", "aria-label": "Progress"})),
    h("section", {"aria-labelledby": "models-title"},
      h("h2", {id: "models-title"}, "Models"),
      h("div", {id: "model-action"}),
      h("div", {class: "cards", id: "cards"})),
    h("div", {id: "status-rest"}));
  app.on("status", () => { if (visible) render(); });
  app.ops.subscribe(() => {
    if (!visible) return;
    renderStepper(part("status-op"), app.ops.latest());
    if (app.status) fill(part("axis-operation"), lastOperation(app.status));
  });
}

const part = (id) => body.querySelector(`#${id}`);

function show() {
  visible = true;
  render();
  app.refresh();
}

/** The commit log knows messages and the branch order; the status knows what serves. */
export function branchState(status, commits) {
  const branch = status.config_repo ? status.config_repo.branch : "the branch";
  const head = commits.length ? commits[0].commit : null;
  const applied = status.applied_commit;
  if (status.watch && status.watch.paused_at) {
    return `paused after rollback: ${short(applied)} is pinned, and automatic apply waits `
      + `for a new commit on ${branch} (now at ${short(head)})`;
  }
  if (!head || !applied) return "-";
  if (head === applied) return `in sync: ${branch} is at the serving commit`;
  const behind = commits.findIndex((c) => c.commit === applied);
  if (behind > 0) return `behind by ${behind}: ${branch} is at ${short(head)}, not applied yet`;
  return `${short(applied)} is not on ${branch} (at ${short(head)})`;
}

function lastOperation(s) {
  const live = app.ops.latest();
  if (live) return summary(live);
  const last = s && s.history.length ? s.history[s.history.length - 1] : null;
  if (!last) return "-";
  return `${last.action} of ${short(last.commit)}: ${last.result} in ${seconds(last.duration_s)}`
    + (last.reason ? `: ${last.reason}` : "");
}

function render() {
  const s = app.status;
  fill(part("status-error"), app.statusError
    ? [errorBox(app.statusError), app.statusError.status === 401 ? tokenButton() : null] : null);
  if (!s) return;
  const serving = app.commits.find((c) => c.commit === s.serving_commit);
  const models = s.models;
  const count = (state) => models.filter((m) => m.state === state).length;
  const unavailable = models.filter((m) => m.availability === "unavailable").length;
  const axis = (term, id, ...value) => h("div", {}, h("dt", {}, term), h("dd", {id}, ...value));
  fill(part("axes"),
    axis("Serving", "axis-serving", s.serving_commit
      ? [h("code", {title: s.serving_commit}, short(s.serving_commit)),
        serving ? ` ${firstLine(serving.message)}` : "", ` (env ${s.env})`] : "nothing yet"),
    axis("Branch", "axis-branch", branchState(s, app.commits)),
    axis("Last operation", "axis-operation", lastOperation(s)),
    axis("Models", "axis-models",
      `${count("serving")} serving · ${count("loading")} loading · ${count("draining")} draining`,
      unavailable ? ` · ${unavailable} unavailable here` : ""),
    s.last_failure ? axis("Last failure", "axis-failure", h("code", {}, short(s.last_failure.commit)),
      ` ${s.last_failure.action}: ${s.last_failure.reason || ""}`) : null);
  renderCanary(s.canary);
  fill(part("op-busy"), s.apply_in_progress
    ? `${s.apply_in_progress.action} of ${short(s.apply_in_progress.commit)} in progress` : "");
  renderStepper(part("status-op"), app.ops.latest());
  fill(part("cards"), models.map((m) => card(s, m)));
  fill(part("status-rest"),
    watchSection(s),
    h("section", {"aria-labelledby": "plugins-title"},
      h("h2", {id: "plugins-title"}, "Plugins"),
      h("table", {},
        h("thead", {}, h("tr", {}, ["Plugin", "Distribution", "Version", "Backends", "Status", "Error"]
          .map((t) => h("th", {scope: "col"}, t)))),
        h("tbody", {}, s.plugins.map((p) => h("tr", {class: p.error ? "failed" : ""},
          h("td", {}, p.name), h("td", {}, p.distribution), h("td", {}, p.version),
          h("td", {}, (p.backends || []).join(", ")), h("td", {}, p.status),
          h("td", {}, p.error || "")))))),
    h("section", {"aria-labelledby": "host-title"},
      h("h2", {id: "host-title"}, "Host"),
      h("p", {}, `alltalk-host ${s.version} · config repo ${s.config_repo.path} (branch `
        + `${s.config_repo.branch}${s.config_repo.subdir ? `, folder ${s.config_repo.subdir}` : ""})`),
      h("p", {}, "Outputs: ", s.outputs ? `${s.outputs.dir} ${s.outputs.writable
        ? "(writable)" : `(not writable: ${s.outputs.problem})`}` : "-"),
      h("p", {}, `Memory held by loaded models: ${bytes(models.reduce((n, m) => n + (m.memory_estimate || 0), 0))}`
        + " (the backends' estimates)")));
}

function card(s, m) {
  const isDefault = m.name === s.default_model;
  const loaded = m.state === "serving";
  const state = m.availability === "unavailable" && !loaded ? "unavailable" : m.state;
  const backendStatus = Object.entries(m.backend_status || {});
  const row = (term, value) => h("div", {}, h("dt", {}, term), h("dd", {}, value));
  return h("article", {class: `card ${state}`, "aria-label": `Model ${m.name}`},
    h("h3", {}, m.name, " ", h("span", {class: `badge ${state}`}, state === "configured" ? "not loaded" : state),
      isDefault ? h("span", {class: "badge default"}, "default") : null,
      m.arm === "canary" ? h("span", {class: "badge canary"}, "canary arm") : null),
    h("dl", {},
      row("Backend", m.backend || "-"),
      m.generation !== undefined ? row("Generation", String(m.generation)) : null,
      m.commit ? row("Commit", h("code", {title: m.commit}, short(m.commit))) : null,
      m.running !== undefined ? row("Requests", `${m.running} running, ${m.waiting} waiting`) : null,
      m.instances !== undefined ? row("Instances", `${m.instances} × ${m.max_concurrency / m.instances} at once`) : null,
      m.memory_estimate !== undefined ? row("Memory", bytes(m.memory_estimate)) : null,
      m.loaded_at ? row("Loaded", age(m.loaded_at)) : null,
      m.resident ? row("Loaded because", resident(m)) : null,
      !loaded && m.on_demand ? row("Loads", "when a request names it") : null,
      backendStatus.map(([k, v]) => row(k.replace(/_/g, " "), typeof v === "object" ? JSON.stringify(v) : String(v))),
      m.availability === "unavailable" ? row("Unavailable", m.reason || "") : null),
    h("div", {class: "buttons"},
      loaded ? h("button", {type: "button", onclick: () => reload(m.name)}, "Reload") : null,
      !loaded && m.on_demand ? h("button", {type: "button", onclick: () => residency(m.name, "load")}, "Load") : null,
      m.resident === "on_demand" && m.arm !== "canary" ? h("button", {type: "button",
        onclick: () => residency(m.name, "unload")}, "Unload") : null,
      !isDefault && !["draining", "unavailable"].includes(state) ? h("button", {type: "button",
        onclick: () => app.navigate(`#/models/switch/${encodeURIComponent(m.name)}`)}, "Make default") : null));
}

function resident(m) {
  if (m.resident === "default") return "it is the default model";
  if (m.resident === "keep_loaded") return "keep_loaded = true";
  const idle = m.idle_s !== undefined ? `, unused for ${seconds(m.idle_s, 0)}` : "";
  const until = m.unloads_in_s === null || m.unloads_in_s === undefined ? ""
    : `, unloads in ${seconds(m.unloads_in_s, 0)}`;
  return `a request named it (on demand${idle}${until})`;
}

/** Load a model now, or unload one loaded on demand: not commits, so no plan to confirm. */
async function residency(name, what) {
  const box = part("model-action");
  fill(box, h("p", {role: "status"}, what === "load" ? `Loading ${name}…` : `Unloading ${name}…`));
  try {
    const result = await api.post(`/control/models/${encodeURIComponent(name)}/${what}`);
    fill(box, h("p", {class: "ok", role: "status"}, what === "load"
      ? `${name} is loaded (generation ${result.generation}).`
      : `${name} unloads once its requests finish.`));
  } catch (err) {
    fill(box, errorBox(err));
  } finally {
    app.refresh();
  }
}

async function reload(name) {
  const ok = await app.confirm(`Reload ${name}?`, [
    h("p", {}, `Loads ${name} again from disk at the serving commit, beside the copy that serves now.`),
    h("p", {}, "Requests keep being served; the new copy takes over once it has warmed up and passed its checks, and the old one drains.")]);
  if (!ok) return;
  await runChange(app, part("model-action"), `/control/models/${encodeURIComponent(name)}/reload`, {});
}

// A running canary: both arms side by side, what the verdict would be now, and a person's
// early decision (Promote, Abort). Hidden when none runs.
function renderCanary(c) {
  const section = part("canary");
  const running = Boolean(c && c.running);
  section.hidden = !running;
  if (!running) { fill(section); return; }
  const pct = (x) => (x === null || x === undefined ? "-" : `${(100 * x).toFixed(1)} %`);
  const arm = (name, a) => h("tr", {class: name},
    h("th", {scope: "row"}, name), h("td", {}, h("code", {title: a.commit}, short(a.commit))),
    h("td", {}, String(a.requests)), h("td", {}, String(a.errors)), h("td", {}, pct(a.error_rate)),
    h("td", {}, a.p95_time_to_first_audio_s === null ? "-" : seconds(a.p95_time_to_first_audio_s)));
  const decide = async (what) => {
    const ok = await app.confirm(`${what === "promote" ? "Promote" : "Abort"} the canary of ${short(c.arms.canary.commit)}?`, [
      h("p", {}, what === "promote"
        ? "Its commit becomes the applied one, as a normal apply would make it; the stable arm drains."
        : "Its models are unloaded and its commit is recorded as failed; the stable commit serves on.")]);
    if (!ok) return;
    try {
      await api.post(`/control/canary/${what}`);
      fill(part("canary-error"));
    } catch (error) {
      fill(part("canary-error"), errorBox(error));
    }
    app.refresh();
  };
  fill(section,
    h("h2", {id: "canary-title"}, "Canary"),
    h("p", {}, `${short(c.arms.canary.commit)} serves ${c.spec.percent} % of requests beside `
      + `${short(c.arms.stable.commit)} (${c.arm_choice}); ${seconds(c.time_left_s)} left. `
      + `Now it would be: ${c.verdict_now.outcome} (${c.verdict_now.reason}).`),
    h("table", {class: "arms"},
      h("thead", {}, h("tr", {}, ["Arm", "Commit", "Requests", "Errors", "Error rate", "p95 first audio"]
        .map((t) => h("th", {scope: "col"}, t)))),
      h("tbody", {}, arm("stable", c.arms.stable), arm("canary", c.arms.canary))),
    h("div", {class: "buttons"},
      h("button", {type: "button", onclick: () => decide("promote")}, "Promote"),
      h("button", {type: "button", onclick: () => decide("abort")}, "Abort")),
    h("div", {id: "canary-error"}));
}

function watchSection(s) {
  const w = s.watch || {};
  const state = w.paused_at ? `paused after rollback (until a new commit follows ${short(w.paused_at)})`
    : w.enabled ? "on" : "off";
  return h("section", {"aria-labelledby": "watch-title"},
    h("h2", {id: "watch-title"}, "Watch"),
    h("p", {id: "watch-state"}, `Automatic apply of new commits: ${state}`,
      w.enabled && w.remote ? ` · fetching from ${w.remote}` : "",
      w.last_checked ? ` · last checked ${age(w.last_checked)}` : "",
      w.last_error ? ` · last error: ${w.last_error}` : ""));
}

function tokenButton() {
  return h("button", {type: "button", onclick: app.enterToken}, "Enter token");
}

export default {
  id: "status",
  title: () => "Status",
  matches: (path) => path[0] === "status",
  mount,
  show,
  hide: () => { visible = false; },
};
