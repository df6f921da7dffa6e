// The Voices panel: the voice library of the serving commit (voices.toml and voices/ in the
// config repo). Upload a recording (file picker or drag and drop), hear a preview, rename or
// remove a voice; each change is a commit the server applies before the branch moves, and the
// table says which commit holds each sample.

import * as api from "./api.js";
import {errorBox, fill, h, short} from "./dom.js";

const PREVIEW = "Hello, this is a preview of my voice.";
let app;
let body;
let data = null;
let dropped = null; // a File dropped on the zone, until the form is sent

function mount(section, shared) {
  app = shared;
  body = section.querySelector("#voices-body");
  const file = h("input", {id: "voice-file", type: "file", accept: "audio/*,.wav,.flac,.mp3,.ogg,.opus,.m4a",
    onchange: () => { dropped = null; named(file.files[0]); }});
  const zone = h("div", {id: "voice-drop", class: "drop", tabindex: 0,
    ondragover: (e) => { e.preventDefault(); zone.classList.add("over"); },
    ondragleave: () => zone.classList.remove("over"),
    ondrop: (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      dropped = e.dataTransfer.files[0] || null;
      if (dropped) { zone.textContent = `Dropped: ${dropped.name}`; named(dropped); }
    }}, "Drop a recording here, or choose a file");
  const field = (id, label, attrs = {}) => h("p", {}, h("label", {for: id}, label), " ",
    h("input", {id, type: "text", size: 40, ...attrs}));
  fill(body,
    h("form", {id: "voice-form", class: "box", onsubmit: (e) => { e.preventDefault(); upload(); }},
      h("h2", {}, "Add a voice"),
      h("p", {class: "hint"}, "3 to 30 s of one person speaking clearly (wav, flac, mp3, ogg/opus, m4a). ",
        "The server trims the silence, sets the loudness and commits it to the config repo."),
      zone, h("p", {}, h("label", {for: "voice-file"}, "Recording"), " ", file),
      field("voice-name", "Name", {required: true, pattern: "[A-Za-z0-9][A-Za-z0-9_.\\-]{0,63}"}),
      field("voice-language", "Language", {size: 8, placeholder: "en"}),
      field("voice-source", "Source and consent", {placeholder: "who recorded it, and their consent"}),
      h("p", {}, h("button", {type: "submit", id: "voice-add"}, "Add voice")),
      h("div", {id: "voice-result", role: "status"})),
    h("h2", {}, "The library"),
    h("div", {id: "voices-table"}),
    h("audio", {id: "voice-preview", controls: true, hidden: true}));
}

function named(f) {
  const name = body.querySelector("#voice-name");
  if (f && !name.value) name.value = f.name.replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9_.-]/g, "_").slice(0, 64);
}

async function show() {
  try {
    data = await api.get("/control/voices");
  } catch (err) {
    fill(body.querySelector("#voices-table"), errorBox(err), err.status === 401
      ? h("button", {type: "button", onclick: () => app.enterToken().then(show)}, "Enter token") : null);
    return;
  }
  render();
}

function render() {
  const table = body.querySelector("#voices-table");
  const unversioned = (data.unversioned || []).length ? h("table", {class: "voices"},
    h("caption", {}, "From voices_dir (unversioned: not in the config repo, no rollback)"),
    h("thead", {}, h("tr", {}, ["Voice file", "Model"].map((t) => h("th", {scope: "col"}, t)))),
    h("tbody", {}, data.unversioned.map((v) => h("tr", {}, h("td", {}, v.name), h("td", {}, v.model))))) : null;
  if (!data.voices.length) {
    fill(table, h("p", {class: "empty"}, `No voices in the library at ${short(data.commit)}.`), unversioned);
    return;
  }
  fill(table, unversioned, h("table", {class: "voices"},
    h("caption", {}, `Voices of ${short(data.commit)}`),
    h("thead", {}, h("tr", {}, ["Voice", "Length", "Language", "Source", "SHA-256", "Spoken by", ""]
      .map((t) => h("th", {scope: "col"}, t)))),
    h("tbody", {}, data.voices.map((v) => h("tr", {"data-voice": v.name},
      h("td", {}, v.name), h("td", {}, v.seconds ? `${v.seconds} s` : "-"),
      h("td", {}, v.language || "-"), h("td", {}, v.source || "-"),
      h("td", {}, h("code", {title: `${v.sha256}, added in ${v.added_in || "?"}`}, v.sha256.slice(0, 12))),
      h("td", {}, v.models.join(", ") || "no loaded model clones"),
      h("td", {},
        h("button", {type: "button", disabled: !v.models.length, onclick: () => preview(v)}, `Preview ${v.name}`), " ",
        h("button", {type: "button", onclick: () => rename(v)}, `Rename ${v.name}`), " ",
        h("button", {type: "button", onclick: () => remove(v)}, `Remove ${v.name}`)))))));
}

async function upload() {
  const result = body.querySelector("#voice-result");
  const file = dropped || body.querySelector("#voice-file").files[0];
  if (!file) {
    fill(result, h("p", {class: "error"}, "Choose or drop a recording first."));
    return;
  }
  const form = new FormData();
  form.append("name", body.querySelector("#voice-name").value.trim());
  for (const key of ["language", "source"]) {
    const value = body.querySelector(`#voice-${key}`).value.trim();
    if (value) form.append(key, value);
  }
  form.append("file", file, file.name);
  fill(result, h("p", {}, "Uploading and applying..."));
  try {
    const reply = await (await api.send("POST", "/control/voices", {body: form})).json();
    fill(result, h("p", {class: "ok"}, `Added as commit ${short(reply.commit)}.`));
    body.querySelector("#voice-form").reset();
    dropped = null;
    app.refresh();
    app.refreshModels();
    await show();
  } catch (err) {
    fill(result, errorBox(err));
  }
}

async function preview(v) {
  const player = body.querySelector("#voice-preview");
  try {
    const resp = await api.send("POST", "/tts", {body: {text: PREVIEW, model: v.models[0], voice: v.name}});
    player.src = URL.createObjectURL(await resp.blob());
    player.hidden = false;
    await player.play().catch(() => {});
  } catch (err) {
    fill(body.querySelector("#voice-result"), errorBox(err));
  }
}

async function rename(v) {
  const name = window.prompt(`New name for ${v.name}`, v.name);
  if (!name || name === v.name) return;
  await change(() => api.send("PATCH", `/control/voices/${encodeURIComponent(v.name)}`, {body: {name}}));
}

async function remove(v) {
  if (!await app.confirm(`Remove the voice ${v.name}?`,
    "A commit removes it from the branch; the config repo's history keeps it, and a rollback brings it back.")) return;
  await change(() => api.send("DELETE", `/control/voices/${encodeURIComponent(v.name)}`));
}

async function change(call) {
  try {
    await call();
    app.refresh();
    app.refreshModels();
    await show();
  } catch (err) {
    fill(body.querySelector("#voice-result"), errorBox(err));
  }
}

export default {
  id: "voices",
  title: () => "Voices",
  matches: (path) => path[0] === "voices",
  mount,
  show,
};
