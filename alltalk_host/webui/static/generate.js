// The Generate panel: text, model (a per-request choice: one not loaded loads when it is asked
// for, as any request naming it would; the progress panel shows the load), voice,
// language, speed, the backend's own options, narrator, streaming; the player, provenance,
// timing, the last clips, and the same request as curl.
//
// Requests: POST /tts (WAV) by default; streaming reads POST /v1/audio/speech as raw PCM and
// plays it as it arrives; narrator mode uses AllTalk's /api/tts-generate, which speaks with the
// default model. Form values live in localStorage (and model, voice, language and stream in the
// URL), so a reload loses nothing.

import * as api from "./api.js";
import {errorBox, fill, h, seconds, short} from "./dom.js";
import {Player, wavBlob, wavSeconds} from "./player.js";

const STORE = "alltalk-host.generate";
const PCM_RATE = 24000; // OpenAI's pcm format
const COMMON_OPTIONS = ["temperature", "repetition_penalty", "pitch"]; // AllTalk's set
const PREVIEW_TEXT = "Hello, this is a preview of my voice.";
const MAX_CLIPS = 20;

let app;
let $; // element lookup by id
let player;
let saved = {};
let busy = null; // the AbortController of the request in flight
let loadingModel = null; // the model the request in flight waits for, loading on demand
const clips = [];

function mount(section, shared) {
  app = shared;
  $ = (id) => section.querySelector(`#${id}`);
  player = new Player($("audio"));
  try {
    saved = JSON.parse(localStorage.getItem(STORE) || "{}") || {};
  } catch {
    saved = {};
  }
  $("text").value = saved.text || "";
  $("speed").value = saved.speed || 1;
  $("stream").checked = Boolean(saved.stream);
  $("narrator-on").checked = Boolean(saved.narrator);
  $("not-inside").value = saved.notInside || "character";
  $("generate-form").addEventListener("submit", (e) => {
    e.preventDefault();
    generate();
  });
  section.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      generate();
    } else if (e.key === "Escape" && busy) {
      stop();
    }
  });
  $("stop").addEventListener("click", stop);
  $("preview").addEventListener("click", preview);
  $("make-default").addEventListener("click", () => {
    app.navigate(`#/models/switch/${encodeURIComponent(selected().name)}`);
  });
  $("model").addEventListener("change", () => {
    saved = {...saved, model: $("model").value, voice: "", language: ""};
    render();
  });
  for (const id of ["voice", "language", "narrator-voice", "not-inside", "stream", "narrator-on"]) {
    $(id).addEventListener("change", () => { save(); render(); });
  }
  $("text").addEventListener("input", () => { countText(); save(); });
  $("speed").addEventListener("input", () => { $("speed-value").value = Number($("speed").value).toFixed(2); save(); });
  $("speed-value").value = Number($("speed").value).toFixed(2);
  app.on("models", render);
  app.on("event", loadProgress);
}

/** While a request waits for its model to load on demand: the load's progress, from the
 * model events (the backend's own words and fraction, when it gives them). */
function loadProgress(event) {
  if (!busy || !loadingModel || event.replayed || event.kind !== "model") return;
  const d = event.data;
  if (d.name !== loadingModel) return;
  if (d.state === "loading") {
    const part = typeof d.fraction === "number" ? ` ${Math.round(d.fraction * 100)}%` : "";
    fill($("generate-status"), `Loading ${loadingModel} first${part}${d.detail ? `: ${d.detail}` : ""}…`);
  } else if (d.state === "serving") {
    fill($("generate-status"), "Generating…");
    loadingModel = null;
  }
}

function show(route) {
  // The URL wins over what was stored: a bookmarked or shared link opens as it says.
  for (const key of ["model", "voice", "language"]) {
    if (route.query.get(key)) saved[key] = route.query.get(key);
  }
  if (route.query.has("stream")) saved.stream = route.query.get("stream") === "1";
  $("stream").checked = Boolean(saved.stream);
  render();
}

/** The chosen model's entry of /tts/models; "" in the select is the default model. */
function selected() {
  if (!app.models) return null;
  const name = $("model").value || app.models.default_model;
  return app.models.models.find((m) => m.name === name) || null;
}

/** Replace a select's options only when they changed: a re-render while someone uses the
 * page (a live update) must not close an open list or move the focus. */
function setOptions(select, options) {
  const key = JSON.stringify(options);
  if (select._options !== key) {
    select._options = key;
    fill(select, options.map(([value, label, disabled]) => h("option", {value, disabled}, label)));
  }
}

/** Fill the selects and enable what the chosen model can do, each disabled with a reason. */
function render() {
  const info = app.models;
  if (!info) {
    if (app.modelsError) fill($("generate-error"), errorBox(app.modelsError));
    return;
  }
  fill($("generate-error"));
  // "The default model" names none, so its requests follow a switch of the default.
  const usable = info.models.filter((m) => m.state === "serving" || m.on_demand);
  const want = saved.model || "";
  const label = (m) => m.state === "serving" ? "serving" : m.on_demand ? "loads when used"
    : m.state.replace("_", " ");
  setOptions($("model"), [["", `the default model (${info.default_model})`, false],
    ...info.models.map((m) => [m.name, `${m.name} (${label(m)}${m.default ? ", default" : ""})`,
      !usable.includes(m)])]);
  $("model").value = usable.some((m) => m.name === want) ? want : "";
  const model = selected();
  if (!model) return;
  const [lo, hi] = info.speed_range;
  $("speed").min = lo;
  $("speed").max = hi;
  $("make-default").disabled = model.default;
  $("make-default").title = model.default ? `${model.name} is the default model`
    : `Plan making ${model.name} the default model (nothing loads until you apply it)`;

  const voices = model.voices || [];
  setOptions($("voice"), [["", `model default${model.default_voice ? ` (${model.default_voice})` : ""}`],
    ...voices.map((v) => [v, v])]);
  $("voice").value = voices.includes(saved.voice) ? saved.voice : "";
  setOptions($("narrator-voice"), [["", "the configured narrator voice"], ...voices.map((v) => [v, v])]);
  $("narrator-voice").value = voices.includes(saved.narratorVoice) ? saved.narratorVoice : "";

  const languages = model.languages || [];
  setOptions($("language"), languages.map((l) => [l, l]));
  $("language").value = languages.includes(saved.language) ? saved.language : model.default_language;

  // Streaming and narrator mode go through the OpenAI and AllTalk routes: what they cannot
  // carry is disabled, and says why.
  const stream = $("stream");
  stream.disabled = !model.streaming;
  if (!model.streaming) stream.checked = false;
  fill($("stream-note"), model.streaming
    ? (stream.checked ? "Plays as it is generated (the model's default language, no backend options)." : "")
    : `${model.name} does not stream.`);
  const narratorOk = model.default && !stream.checked;
  $("narrator-on").disabled = !narratorOk;
  if (!narratorOk) $("narrator-on").checked = false;
  const narrating = $("narrator-on").checked;
  $("narrator-voice").disabled = !narrating;
  $("not-inside").disabled = !narrating;
  fill($("narrator-note"), narratorOk
    ? "Text in quotes is the character's (the Voice above); the rest is the narrator's."
    : stream.checked ? "Narrator mode does not stream."
      : `Narrator mode uses AllTalk's route, which speaks with the default model (${info.default_model}).`);
  $("language").disabled = stream.checked;
  $("language").title = stream.checked ? "streaming speaks the model's default language" : "";

  const names = [...new Set([...COMMON_OPTIONS, ...(model.parameters || [])])];
  const old = saved.options || {};
  const fields = $("option-fields");
  const key = JSON.stringify([model.name, names, stream.checked, narrating]);
  if (fields._options !== key) renderOptions(fields, key, model, names, old, stream.checked, narrating);

  fill($("model-note"), model.state === "serving"
    ? `${model.name}: ${model.backend} backend, generation ${model.generation} loaded at config ${short(model.commit)}, ${voices.length || "one"} voice${voices.length === 1 ? "" : "s"}.`
    : `${model.name}: ${model.backend} backend, not loaded: Generate loads it first (its voices show once it is loaded).`,
    info.models.some((m) => m.state !== "serving" && !m.on_demand)
      ? " A model that cannot load here, or is not loaded on demand, cannot be chosen." : "");
  countText();
  save();
}

function renderOptions(fields, key, model, names, old, streaming, narrating) {
  fields._options = key;
  fill(fields, names.map((name) => {
    const takes = (model.parameters || []).includes(name);
    const usable = takes && !streaming && (!narrating || COMMON_OPTIONS.includes(name));
    const why = !takes ? `${model.name} does not take ${name}`
      : !usable ? (streaming ? "not sent when streaming" : "not sent in narrator mode") : "";
    const input = h("input", {id: `option-${name}`, type: "number", step: "any", disabled: !usable,
      placeholder: "model setting", value: old[name] ?? "", title: why,
      "aria-describedby": why ? `why-${name}` : null, oninput: save});
    return h("div", {class: "field"}, h("label", {for: `option-${name}`}, name), input,
      why ? h("span", {class: "hint", id: `why-${name}`}, why) : null);
  }));
}

function countText() {
  const limit = app.models ? app.models.max_text_length : null;
  const n = $("text").value.trim().length;
  const over = limit !== null && n > limit;
  fill($("text-count"), limit === null ? `${n} characters` : `${n} / ${limit} characters`,
    over ? " (over the limit)" : "");
  $("text-count").classList.toggle("over", over);
  $("generate").disabled = over || Boolean(busy);
}

function values() {
  const options = {};
  for (const input of $("option-fields").querySelectorAll("input")) {
    if (!input.disabled && input.value !== "") options[input.id.replace("option-", "")] = Number(input.value);
  }
  return {
    text: $("text").value, model: $("model").value, voice: $("voice").value,
    language: $("language").value, speed: Number($("speed").value), stream: $("stream").checked,
    narrator: $("narrator-on").checked, narratorVoice: $("narrator-voice").value,
    notInside: $("not-inside").value, options,
  };
}

function save() {
  const v = values();
  const options = {...(saved.options || {})};
  for (const input of $("option-fields").querySelectorAll("input")) {
    options[input.id.replace("option-", "")] = input.value;
  }
  saved = {...saved, ...v, options};
  localStorage.setItem(STORE, JSON.stringify(saved));
  curl(v);
  if (app.route && app.route.path[0] === "generate") {
    app.setQuery({model: v.model, voice: v.voice, language: v.stream ? "" : v.language,
      stream: v.stream ? "1" : ""});
  }
}

// --- generating -------------------------------------------------------------------------------

async function generate() {
  if (busy || $("generate").disabled) return;
  const v = values();
  if (!v.text.trim()) {
    fill($("generate-status"), "Type some text first.");
    $("text").focus();
    return;
  }
  player.prime(); // in the click, so the browser lets it play
  player.stop();
  busy = new AbortController();
  $("stop").disabled = false;
  $("generate").disabled = true;
  fill($("generate-error"));
  const chosen = selected();
  loadingModel = chosen && chosen.state !== "serving" ? chosen.name : null;
  fill($("generate-status"), loadingModel
    ? `Loading ${loadingModel} first (it loads when a request names it)…` : "Generating…");
  const started = performance.now();
  try {
    const clip = v.narrator ? await viaAllTalk(v, busy.signal)
      : v.stream ? await viaStream(v, busy.signal, started) : await viaTts(v, busy.signal);
    clip.total = (performance.now() - started) / 1000;
    clip.ttfa = clip.ttfa ?? clip.total;
    clip.text = v.text;
    clip.voice = v.voice || (selected() && selected().default_voice) || "default";
    clip.url = player.load(clip.blob, !clip.streamed);
    addClip(clip);
    showClip(clip);
    fill($("generate-status"), `Done: ${seconds(clip.seconds)} of audio.`);
  } catch (err) {
    if (err.name === "AbortError") fill($("generate-status"), "Stopped.");
    else {
      fill($("generate-status"));
      fill($("generate-error"), errorBox(err));
    }
  } finally {
    busy = null;
    loadingModel = null;
    $("stop").disabled = true;
    countText();
  }
}

function stop() {
  if (busy) busy.abort();
  player.stop();
}

function provenance(resp) {
  const label = resp.headers.get("X-AllTalk-Model") || "";
  const [model, gen] = label.split(";");
  return {commit: resp.headers.get("X-AllTalk-Commit") || "", model: model.trim(),
    generation: (gen || "").replace(/.*=/, "").trim()};
}

async function viaTts(v, signal) {
  const body = {text: v.text, model: v.model || undefined, voice: v.voice || undefined,
    language: v.language || undefined, speed: v.speed};
  if (Object.keys(v.options).length) body.options = v.options;
  const resp = await api.send("POST", "/tts", {body, signal});
  const blob = await resp.blob();
  return {blob, seconds: await wavSeconds(blob), ...provenance(resp)};
}

async function viaStream(v, signal, started) {
  const body = {model: v.model || app.models.default_model, input: v.text,
    voice: v.voice || "alloy", speed: v.speed, response_format: "pcm"};
  const resp = await api.send("POST", "/v1/audio/speech", {body, signal});
  let ttfa = null;
  const samples = await player.stream(resp, PCM_RATE, () => {
    ttfa = (performance.now() - started) / 1000;
    fill($("generate-status"), `Playing while it is generated (first audio after ${seconds(ttfa)})…`);
  });
  return {blob: wavBlob(samples, PCM_RATE), seconds: samples.length / PCM_RATE, ttfa,
    streamed: true, ...provenance(resp)};
}

async function viaAllTalk(v, signal) {
  const form = new FormData();
  const fields = {text_input: v.text, character_voice_gen: v.voice || "default",
    narrator_enabled: "true", narrator_voice_gen: v.narratorVoice || "default",
    text_not_inside: v.notInside, language: v.language, speed: String(v.speed),
    output_file_name: "webui", output_file_timestamp: "true", text_filtering: "standard"};
  for (const [k, val] of Object.entries({...fields, ...v.options})) form.set(k, String(val));
  const resp = await api.send("POST", "/api/tts-generate", {body: form, signal});
  const reply = await resp.json();
  const file = await api.send("GET", reply.output_file_url, {signal});
  const blob = await file.blob();
  return {blob, seconds: await wavSeconds(blob), ...provenance(resp)};
}

async function preview() {
  const v = values();
  player.prime();
  player.stop();
  fill($("generate-error"));
  try {
    const clip = await viaTts({...v, text: PREVIEW_TEXT, options: {}}, undefined);
    player.load(clip.blob);
    fill($("generate-status"), `Preview of ${v.voice || "the default voice"}.`);
  } catch (err) {
    fill($("generate-error"), errorBox(err));
  }
}

// --- the result -------------------------------------------------------------------------------

function fileName(clip) {
  const safe = (s) => String(s || "default").replace(/[^A-Za-z0-9_.-]+/g, "_");
  return `${safe(clip.model)}-${safe(clip.voice)}-${short(clip.commit)}.wav`;
}

function showClip(clip) {
  const link = $("download");
  link.href = clip.url;
  link.download = fileName(clip);
  link.hidden = false;
  fill(link, `Download ${fileName(clip)}`);
  fill($("provenance"), "model ", h("strong", {}, clip.model), ` generation ${clip.generation} · config `,
    h("code", {title: clip.commit}, short(clip.commit)));
  const rtf = clip.seconds ? clip.total / clip.seconds : null;
  fill($("metrics"), `time to first audio ${seconds(clip.ttfa)} · real-time factor `,
    rtf === null ? "-" : rtf.toFixed(2), ` · ${seconds(clip.seconds)} of audio`,
    clip.streamed ? " · streamed" : "");
}

function addClip(clip) {
  clips.unshift(clip);
  for (const old of clips.splice(MAX_CLIPS)) URL.revokeObjectURL(old.url);
  fill($("clips"), clips.map((c) => h("li", {},
    h("q", {}, c.text.length > 60 ? `${c.text.slice(0, 60)}…` : c.text), " ",
    h("span", {class: "hint"}, `${c.model} · ${c.voice} · config ${short(c.commit)} · ${seconds(c.seconds, 1)}`),
    " ",
    h("button", {type: "button", onclick: () => { player.stop(); $("audio").src = c.url; $("audio").play().catch(() => {}); showClip(c); }},
      "Replay"), " ",
    h("a", {href: c.url, download: fileName(c)}, "Download"))));
}

// --- the same request as curl -----------------------------------------------------------------

function curl(v) {
  const base = location.origin;
  const json = (o) => `'${JSON.stringify(o).replaceAll("'", "'\\''")}'`;
  const tts = {text: v.text || "Hello there."};
  if (v.model) tts.model = v.model;
  if (v.voice) tts.voice = v.voice;
  if (v.language) tts.language = v.language;
  tts.speed = v.speed;
  if (Object.keys(v.options).length) tts.options = v.options;
  const speech = {model: v.model || "tts-1", input: v.text || "Hello there.", voice: v.voice || "alloy",
    speed: v.speed, response_format: "wav"};
  const shell = (s) => `'${String(s).replaceAll("'", "'\\''")}'`;
  const commands = [
    ["/tts", `curl -X POST ${base}/tts -H 'Content-Type: application/json' \\\n  -d ${json(tts)} -o out.wav -D -`],
    ["/v1/audio/speech", `curl -X POST ${base}/v1/audio/speech -H 'Content-Type: application/json' \\\n  -d ${json(speech)} -o out.wav`],
    ["/api/tts-generate", `curl -X POST ${base}/api/tts-generate \\\n  --data-urlencode text_input=${shell(v.text || "Hello there.")} \\\n`
      + `  -d character_voice_gen=${shell(v.voice || "default")} -d language=${shell(v.language || "en")} \\\n`
      + `  -d narrator_enabled=${v.narrator ? "true" : "false"} -d output_file_name=out`
      + "\n# (AllTalk's route speaks with the default model)"],
  ];
  fill($("curl"), commands.map(([route, text]) => h("div", {class: "curl"},
    h("pre", {}, text),
    h("button", {type: "button", onclick: (e) => copy(text, e.target)}, `Copy ${route}`))));
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Select the text and copy it";
  }
}

export default {
  id: "generate",
  title: () => "Generate",
  matches: (path) => path[0] === "generate",
  mount,
  show,
};
