// The Activity panel: the apply history, the audit trail (time, who, action, commit, result,
// duration, reason), newest first, as the host's state file keeps it.

import {clock, errorBox, fill, h, seconds, short} from "./dom.js";

let app;
let body;
let visible = false;

function mount(section, shared) {
  app = shared;
  body = section.querySelector("#activity-body");
  app.on("status", () => { if (visible) render(); });
}

function show() {
  visible = true;
  render();
  app.refresh();
}

function render() {
  const s = app.status;
  if (!s) {
    fill(body, app.statusError ? errorBox(app.statusError) : h("p", {}, "Loading…"));
    return;
  }
  const rows = [...s.history].reverse();
  fill(body, h("table", {class: "activity"},
    h("caption", {}, `The last ${rows.length} changes, newest first`),
    h("thead", {}, h("tr", {}, ["Time", "Who", "Action", "Commit", "Result", "Duration", "Reason"]
      .map((t) => h("th", {scope: "col"}, t)))),
    h("tbody", {}, rows.map((e) => h("tr", {class: e.result},
      h("td", {}, clock(e.time)), h("td", {}, e.actor), h("td", {}, e.action),
      h("td", {}, h("code", {title: e.commit}, short(e.commit))),
      h("td", {}, e.result), h("td", {}, seconds(e.duration_s)), h("td", {}, e.reason || ""))))));
}

export default {
  id: "activity",
  title: () => "Activity",
  matches: (path) => path[0] === "activity",
  mount,
  show,
  hide: () => { visible = false; },
};
