// The Plan panel: what a change would do, before it is done. Three routes:
//   #/config/plan/<commit>       apply a commit
//   #/config/rollback/<commit>   roll back to a commit (?pin=1: pin it, pausing automatic apply)
//   #/models/switch/<model>      make a model the default (a commit, then an apply)
// The settings diff and the model actions come from the server's plan; the action button is
// enabled only once they are shown, and asks for a confirmation that names the side effects.

import * as api from "./api.js";
import {bytes, errorBox, fill, firstLine, h, short} from "./dom.js";
import {runChange} from "./progress.js";

let app;
let body;
let shown = null; // the route whose plan is on screen

function mount(section, shared) {
  app = shared;
  body = section.querySelector("#plan-body");
}

function parse(route) {
  const [first, second, target] = route.path;
  if (first === "models") return {mode: "switch", target: second === "switch" ? target : ""};
  return {mode: second === "rollback" ? "rollback" : "apply", target};
}

function title(route) {
  const {mode, target} = parse(route);
  if (mode === "switch") return `Plan: make ${target} the default model`;
  if (mode === "rollback") return `Plan: roll back to ${short(target)}`;
  return `Plan: apply ${short(target)}`;
}

async function show(route) {
  const key = route.path.join("/");
  const pin = route.query.get("pin") === "1";
  if (shown === key) {
    body.querySelectorAll("input[name=rollback-how]").forEach((r) => { r.checked = (r.value === "pin") === pin; });
    return; // only the query changed (our own choice)
  }
  shown = key;
  const {mode, target} = parse(route);
  fill(document.getElementById("plan-title"), title(route));
  const action = h("button", {type: "button", class: "primary", disabled: true, id: "plan-action"},
    mode === "rollback" ? "Roll back" : "Apply");
  const planBox = h("div", {id: "plan-content"}, h("p", {}, "Working out the plan…"));
  const progress = h("div", {id: "plan-progress"});
  fill(body, h("p", {}, h("a", {href: "#/config"}, "← Config history")), planBox,
    mode === "rollback" ? rollbackChoice(pin) : null,
    h("div", {class: "buttons"}, action), progress);
  let plan;
  try {
    plan = mode === "switch"
      ? await api.post("/control/models/switch/plan", {model: target})
      : await api.post("/control/config/plan", {commit: target});
  } catch (err) {
    if (shown === key) fill(planBox, errorBox(err));
    return;
  }
  if (shown !== key) return; // navigated elsewhere meanwhile
  await app.refresh();
  fill(planBox, describe(plan, mode, target));
  action.disabled = false;
  action.addEventListener("click", async () => {
    const how = mode === "rollback" && body.querySelector("input[name=rollback-how][value=pin]").checked ? "pin" : "revert";
    if (!await app.confirm(confirmTitle(plan, mode, target), sideEffects(plan, mode, target, how))) return;
    action.disabled = true;
    const [path, payload] = mode === "switch" ? ["/control/models/switch", {model: target}]
      : mode === "rollback" ? ["/control/config/rollback", {commit: plan.commit, revert: how !== "pin"}]
        : ["/control/config/apply", {commit: plan.commit}];
    await runChange(app, progress, path, payload);
    action.disabled = false;
  });
}

function rollbackChoice(pin) {
  const option = (value, label, text) => h("label", {class: "choice"},
    h("input", {type: "radio", name: "rollback-how", value, checked: (value === "pin") === pin,
      onchange: () => app.setQuery(value === "pin" ? {pin: "1"} : {})}),
    h("strong", {}, label), ` ${text}`);
  return h("fieldset", {class: "box"}, h("legend", {}, "Roll back as"),
    option("revert", "A new commit", "on the branch with this configuration: the branch says what serves."),
    option("pin", "A pin", "of this commit, without touching the branch: automatic apply pauses until a new commit appears."));
}

function commitInfo(hash) {
  return app.commits.find((c) => c.commit === hash) || null;
}

function describe(plan, mode, target) {
  const info = commitInfo(plan.commit);
  const status = app.status;
  // The host's admission decision for a model it loads (plan.memory), else what a serving
  // copy holds now.
  const memory = (name) => {
    const a = (plan.memory || []).find((x) => x.model === name);
    if (a && a.need && a.need.ram_bytes) {
      const device = a.need.device_bytes ? ` + ${bytes(a.need.device_bytes)} on ${a.need.device}` : "";
      const what = `${bytes(a.need.ram_bytes)} RAM${device} (${a.need.source})`;
      return a.fits === false ? h("span", {class: "warning"}, `${what}: does not fit: ${a.reason}`)
        : `${what}, loads ${a.how}`;
    }
    const m = status && status.models.find((x) => x.name === name && x.state === "serving");
    return m && m.memory_estimate ? bytes(m.memory_estimate) : "not known until loaded";
  };
  const actions = [];
  for (const key of ["load", "reload", "unload", "keep"]) {
    for (const name of plan[key]) actions.push([name, key]);
  }
  const unavailable = Object.entries(plan.availability || {}).filter(([, a]) => a.availability === "unavailable");
  const voices = plan.voices || [];
  const nothing = !plan.changes.length && !voices.length && plan.runtime_only;
  return [
    h("p", {}, mode === "switch"
      ? `Switching writes a commit on top of ${short(plan.base)} that sets default_model to ${target}.`
      : [h("code", {title: plan.commit}, short(plan.commit)), info ? ` ${firstLine(info.message)}` : "",
        ` compared with what serves (${short(plan.from_commit)}).`]),
    nothing ? h("p", {class: "empty"}, plan.commit === plan.from_commit || mode === "switch"
      ? "This is what serves now: no changes." : "No setting changes, and no model loads or unloads.") : null,
    h("h2", {}, "Settings"),
    plan.changes.length ? h("table", {class: "diff"},
      h("caption", {}, "Settings that change (secrets redacted)"),
      h("thead", {}, h("tr", {}, ["Key", "Layer", "Old", "New"].map((t) => h("th", {scope: "col"}, t)))),
      h("tbody", {}, plan.changes.map((c) => h("tr", {},
        h("td", {}, h("code", {}, c.key)), h("td", {}, h("span", {class: "layer"}, c.layer || "-")),
        h("td", {class: "old"}, value(c.old)), h("td", {class: "new"}, value(c.new))))))
      : h("p", {class: "empty"}, "No setting changes."),
    voices.length ? [h("h2", {}, "Voices"), h("table", {class: "diff"},
      h("caption", {}, "Voice library samples that change (voices.toml, voices/)"),
      h("thead", {}, h("tr", {}, ["Voice", "Change", "File", "Length", "SHA-256"].map((t) => h("th", {scope: "col"}, t)))),
      h("tbody", {}, voices.map((v) => h("tr", {},
        h("td", {}, v.name), h("td", {}, v.change), h("td", {}, h("code", {}, v.file)),
        h("td", {}, v.seconds ? `${v.seconds} s` : "-"),
        h("td", {}, h("code", {}, v.old_sha256 && v.old_sha256 !== v.sha256 ? `${v.old_sha256} -> ${v.sha256}` : v.sha256))))))] : null,
    h("h2", {}, "Models"),
    actions.length ? h("table", {class: "actions"},
      h("caption", {}, plan.runtime_only ? "Runtime-only: nothing loads or unloads" : "What happens to each model"),
      h("thead", {}, h("tr", {}, ["Model", "Action", "Memory estimate"].map((t) => h("th", {scope: "col"}, t)))),
      h("tbody", {}, actions.map(([name, key]) => h("tr", {class: key},
        h("td", {}, name), h("td", {}, key), h("td", {}, memory(name))))))
      : h("p", {class: "empty"}, "No model is loaded or unloaded."),
    unavailable.length ? h("ul", {class: "warning"}, unavailable.map(([name, a]) =>
      h("li", {}, `${name} is unavailable here: ${a.reason}`))) : null,
  ];
}

function value(v) {
  if (v === null || v === undefined) return h("span", {class: "hint"}, "(not set)");
  return typeof v === "string" ? v : JSON.stringify(v);
}

function confirmTitle(plan, mode, target) {
  if (mode === "switch") return `Make ${target} the default model?`;
  if (mode === "rollback") return `Roll back to ${short(plan.commit)}?`;
  return `Apply ${short(plan.commit)}?`;
}

/** What the change does besides the plan: branch moves, pauses, who keeps serving. */
function sideEffects(plan, mode, target, how) {
  const s = app.status;
  const branch = s ? s.config_repo.branch : "the branch";
  const head = app.commits.length ? app.commits[0].commit : null;
  const loads = [...plan.load, ...plan.reload];
  const lines = [];
  if (mode === "switch") {
    lines.push(`Writes a commit "Switch the default model to ${target}" on ${branch} and applies it; ${branch} moves to it only if the apply succeeds.`);
  } else if (mode === "rollback" && how === "pin") {
    lines.push(`Rolling back pauses automatic apply: ${short(plan.commit)} serves, pinned, without touching ${branch}, until a new commit appears on it.`);
  } else if (mode === "rollback") {
    lines.push(`Writes a commit "Roll back to ${short(plan.commit)}" on ${branch} with that configuration, and applies it.`);
  } else if (head && plan.commit !== head) {
    lines.push(`${short(plan.commit)} is not the head of ${branch} (${short(head)}): the branch stays where it is, and model switches are refused until the branch and what serves agree again.`);
  } else {
    lines.push(`Applies ${short(plan.commit)}, the head of ${branch}.`);
  }
  lines.push(loads.length
    ? `Loads ${loads.join(", ")} beside the serving models; requests keep being served until the switch.`
    : "Nothing loads: the change applies at once.");
  if (plan.unload.length) lines.push(`Unloads ${plan.unload.join(", ")} once its requests have finished.`);
  lines.push("If anything fails, nothing changes and the current commit keeps serving.");
  return lines.map((l) => h("p", {}, l));
}

export default {
  id: "plan",
  title,
  matches: (path) => (path[0] === "config" && ["plan", "rollback"].includes(path[1]) && path[2])
    || (path[0] === "models" && path[1] === "switch" && path[2]),
  mount,
  show,
  hide: () => { shown = null; },
};
