// The "Connect a client" panel: the addresses and settings that SillyTavern, Open WebUI, the
// openai SDK and Home Assistant need, from this server's own address and models.

import {fill, h} from "./dom.js";

let app;
let body;

function mount(section, shared) {
  app = shared;
  body = section.querySelector("#connect-body");
  app.on("models", render);
}

function show() {
  render();
}

function render() {
  const base = location.origin;
  const m = app.models;
  const models = m ? m.models.map((x) => x.name) : [];
  const serving = m ? m.models.find((x) => x.default) : null;
  const voices = serving && serving.voices ? serving.voices : [];
  const item = (term, value, note) => h("div", {}, h("dt", {}, term),
    h("dd", {}, h("code", {}, value), note ? h("span", {class: "hint"}, ` ${note}`) : null));
  fill(body,
    h("p", {}, "Speech routes are open to any client that reaches this port; the routes that change state need the control token (or loopback)."),
    h("h2", {}, "SillyTavern, text-generation-webui (AllTalk)"),
    h("dl", {}, item("AllTalk server URL", base, "(AllTalk v2 API; SillyTavern: TTS provider AllTalk)"),
      item("Voices", voices.join(", ") || "-", `(of the default model${serving ? `, ${serving.name}` : ""})`)),
    h("h2", {}, "Open WebUI (OpenAI)"),
    h("dl", {}, item("Text-to-speech engine", "OpenAI"), item("API base URL", `${base}/v1`),
      item("API key", "anything", "(not checked)"), item("TTS model", "tts-1", `(the default model; or one of ${models.join(", ") || "-"})`),
      item("TTS voice", voices[0] || "alloy", "(OpenAI's voice names speak with the model's default voice)")),
    h("h2", {}, "The openai SDK"),
    h("pre", {}, `from openai import OpenAI\n\nclient = OpenAI(base_url="${base}/v1", api_key="unused")\n`
      + `with client.audio.speech.with_streaming_response.create(\n        model="tts-1", voice="alloy", input="Hello there.") as reply:\n`
      + "    reply.stream_to_file(\"hello.mp3\")"),
    h("h2", {}, "Home Assistant"),
    h("dl", {}, item("Wyoming Protocol (recommended): host and port",
      `${location.hostname} : 10200`,
      "(when the server runs with --wyoming-uri tcp://0.0.0.0:10200 or ALLTALK_WYOMING_URI; voices are MODEL and MODEL/VOICE)"),
      item("AllTalk integrations: server URL", base,
      "(those that fetch output_file_url as it is need alltalk.legacy_api = true in the config; SillyTavern and text-generation-webui keep their relative URLs with it on)"),
      item("openai_tts: URL", `${base}/v1/audio/speech`, "(any API key; its key check speaks \".\")")),
    h("h2", {}, "curl"),
    h("pre", {}, `curl -X POST ${base}/tts -H 'Content-Type: application/json' -d '{"text": "Hello there."}' -o out.wav -D -`));
}

export default {
  id: "connect",
  title: () => "Connect a client",
  matches: (path) => path[0] === "connect",
  mount,
  show,
};
