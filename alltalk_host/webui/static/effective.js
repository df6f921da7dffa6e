// The Effective config panel: every setting of the serving commit with the layer that set it
// (the repo file and section, the host-local file, an ALLTALK_ variable, or a default),
// secrets redacted by the server. The filter is in the URL (#/config/effective?q=...).

import * as api from "./api.js";
import {errorBox, fill, h, short} from "./dom.js";

let app;
let body;
let data = null;

function mount(section, shared) {
  app = shared;
  body = section.querySelector("#effective-body");
  const filter = h("input", {id: "effective-filter", type: "search", size: 40,
    placeholder: "key, value or layer", oninput: () => { app.setQuery({q: filter.value}); render(); }});
  fill(body,
    h("p", {}, h("label", {for: "effective-filter"}, "Filter"), " ", filter),
    h("div", {id: "effective-table"}));
}

async function show(route) {
  body.querySelector("#effective-filter").value = route.query.get("q") || "";
  try {
    data = await api.get("/control/config/effective");
  } catch (err) {
    fill(body.querySelector("#effective-table"), errorBox(err), err.status === 401
      ? h("button", {type: "button", onclick: () => app.enterToken().then(() => show(route))}, "Enter token") : null);
    return;
  }
  render();
}

function render() {
  if (!data) return;
  const q = body.querySelector("#effective-filter").value.trim().toLowerCase();
  const text = (v) => (typeof v === "string" ? v : JSON.stringify(v));
  const rows = data.keys.filter((k) => !q || `${k.key} ${text(k.value)} ${k.layer}`.toLowerCase().includes(q));
  fill(body.querySelector("#effective-table"), h("table", {class: "effective"},
    h("caption", {}, `Settings of ${short(data.commit)} (environment ${data.env}): ${rows.length} of ${data.keys.length} keys`),
    h("thead", {}, h("tr", {}, ["Key", "Value", "Layer"].map((t) => h("th", {scope: "col"}, t)))),
    h("tbody", {}, rows.map((k) => h("tr", {},
      h("td", {}, h("code", {}, k.key)), h("td", {}, text(k.value)),
      h("td", {}, h("span", {class: `layer ${k.layer.split(":")[0]}`}, k.layer)))))));
}

export default {
  id: "effective",
  title: () => "Effective config",
  matches: (path) => path[0] === "config" && path[1] === "effective",
  mount,
  show,
};
