// The Config history panel: the branch log, newest first, each commit marked serving, known
// good or failed (with the reason), with Plan, Apply… and Roll back… (both open the plan
// first); and "Reload branch head", which lists uncommitted files and offers to commit them.

import {age, errorBox, fill, firstLine, h, short} from "./dom.js";
import {runChange} from "./progress.js";
import {branchState} from "./status.js";

let app;
let body;
let visible = false;

function mount(section, shared) {
  app = shared;
  body = section.querySelector("#config-body");
  fill(body,
    h("div", {id: "history-error"}),
    h("p", {id: "branch-line"}),
    h("div", {class: "buttons"},
      h("button", {type: "button", id: "reload-head", onclick: reloadHead}, "Reload branch head")),
    h("div", {id: "reload-box"}),
    h("div", {id: "history-table"}));
  app.on("status", () => { if (visible) render(); });
}

const part = (id) => body.querySelector(`#${id}`);

function show() {
  visible = true;
  render();
  app.refresh();
}

function render() {
  const s = app.status;
  fill(part("history-error"), app.statusError
    ? [errorBox(app.statusError), app.statusError.status === 401
      ? h("button", {type: "button", onclick: app.enterToken}, "Enter token") : null] : null);
  if (!s) return;
  fill(part("branch-line"), `Branch ${s.config_repo.branch}: ${branchState(s, app.commits)}.`);
  const head = app.commits.length ? app.commits[0].commit : null;
  fill(part("history-table"), h("table", {class: "history"},
    h("caption", {}, `Commits on ${s.config_repo.branch}, newest first`),
    h("thead", {}, h("tr", {}, ["Marks", "Commit", "Message", "Author", "Date", "Actions"]
      .map((t) => h("th", {scope: "col"}, t)))),
    h("tbody", {}, app.commits.map((c) => row(c, c.commit === head)))));
}

function row(c, isHead) {
  const marks = [];
  if (isHead) marks.push(h("span", {class: "mark head"}, "HEAD"));
  if (c.serving) marks.push(h("span", {class: "mark serving", title: "serving now"}, "● serving"));
  if (c.known_good) marks.push(h("span", {class: "mark good", title: "applied and passed its checks"}, "✓ known good"));
  if (c.failed) marks.push(h("span", {class: "mark failed", title: c.failure_reason || ""}, "✗ failed"));
  const go = (hash) => () => app.navigate(hash);
  const id = encodeURIComponent(c.commit);
  return h("tr", {class: c.failed ? "failed" : c.serving ? "serving" : "", "data-commit": c.commit},
    h("td", {class: "marks"}, marks),
    h("td", {}, h("code", {title: c.commit}, short(c.commit))),
    h("td", {}, firstLine(c.message),
      c.failed ? h("p", {class: "reason"}, `failed: ${c.failure_reason || "no reason recorded"}`) : null),
    h("td", {}, c.author),
    h("td", {}, h("time", {datetime: c.date, title: c.date}, age(c.date))),
    h("td", {}, h("div", {class: "buttons"},
      h("button", {type: "button", onclick: go(`#/config/plan/${id}`)}, "Plan"),
      c.serving ? null : h("button", {type: "button", onclick: go(`#/config/plan/${id}`),
        title: "Shows the plan first; Apply is there"}, "Apply…"),
      c.known_good && !c.serving ? h("button", {type: "button", onclick: go(`#/config/rollback/${id}`),
        title: "Shows the plan first"}, "Roll back…") : null)));
}

async function reloadHead() {
  await reload({}, part("reload-box"));
}

async function reload(body, box) {
  const {error} = await runChange(app, box, "/control/config/reload", body);
  if (!error || error.code !== "working_tree_dirty") return;
  // Uncommitted edits: list them (the error box did) and offer to commit them first.
  const message = h("input", {id: "commit-message", type: "text", size: 50,
    value: "Commit working-tree changes from the web UI"});
  box.append(h("div", {class: "box"},
    h("p", {}, "Commit these files with a message, then apply the new head? The files are validated first."),
    h("p", {}, h("label", {for: "commit-message"}, "Commit message"), " ", message),
    h("button", {type: "button", class: "primary", onclick: () => reload(
      {commit_working_tree: true, message: message.value}, box)}, "Commit and apply")));
}

export default {
  id: "config",
  title: () => "Config history",
  matches: (path) => path[0] === "config" && path.length === 1,
  mount,
  show,
  hide: () => { visible = false; },
};
