// The live event stream (GET /control/events) read with fetch, since EventSource cannot send
// the token. It reconnects on its own, sending the last id it saw as Last-Event-ID, so nothing
// is missed; the first connection asks for the whole buffer (?after=0), so a page opened in the
// middle of an apply shows that apply from its start.

import * as api from "./api.js";

const QUIET_LIMIT_MS = 40000; // the server sends a heartbeat every 15 s of quiet

export class EventStream {
  /** onEvent({kind, id, data, replayed}); onState("connecting" | "live" | "reconnecting" |
   * "off", error?) */
  constructor(onEvent, onState) {
    this.onEvent = onEvent;
    this.onState = onState;
    this.lastId = null;
    this.replayedUntil = 0;
    this.running = false;
    this.abort = null;
  }

  start() {
    if (this.running) return;
    this.running = true;
    this.loop();
  }

  stop() {
    this.running = false;
    if (this.abort) this.abort.abort();
  }

  async loop() {
    let delay = 500;
    this.onState("connecting");
    while (this.running) {
      this.abort = new AbortController();
      try {
        const headers = api.authHeaders();
        let url = "/control/events";
        if (this.lastId === null) url += "?after=0";
        else headers["Last-Event-ID"] = String(this.lastId);
        const resp = await fetch(url, {headers, signal: this.abort.signal, cache: "no-store"});
        if (resp.status === 401) {
          if (await api.askToken(await api.errorOf(resp))) continue;
          this.running = false;
          this.onState("off", new api.ApiError(401, "unauthorized",
            "live updates need the control token"));
          return;
        }
        if (!resp.ok) throw await api.errorOf(resp);
        delay = 500;
        await this.read(resp.body);
        throw new Error("the event stream ended");
      } catch (err) {
        if (!this.running) return;
        this.onState("reconnecting", err);
        await new Promise((resolve) => setTimeout(resolve, delay));
        delay = Math.min(delay * 2, 8000);
      }
    }
  }

  async read(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let frame = {};
    let watchdog = null;
    const quiet = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => this.abort.abort(), QUIET_LIMIT_MS);
    };
    quiet();
    try {
      for (;;) {
        const {value, done} = await reader.read();
        if (done) return;
        quiet();
        buffer += decoder.decode(value, {stream: true});
        let end;
        while ((end = buffer.indexOf("\n")) >= 0) {
          let line = buffer.slice(0, end);
          buffer = buffer.slice(end + 1);
          if (line.endsWith("\r")) line = line.slice(0, -1);
          if (line === "") {
            if (frame.event || frame.data !== undefined) this.dispatch(frame);
            frame = {};
          } else if (!line.startsWith(":")) {
            const colon = line.indexOf(":");
            const name = colon < 0 ? line : line.slice(0, colon);
            let value = colon < 0 ? "" : line.slice(colon + 1);
            if (value.startsWith(" ")) value = value.slice(1);
            if (name === "data") frame.data = frame.data === undefined ? value : `${frame.data}\n${value}`;
            else if (name === "event" || name === "id") frame[name] = value;
          }
        }
      }
    } finally {
      clearTimeout(watchdog);
    }
  }

  dispatch(frame) {
    const kind = frame.event || "message";
    let data = {};
    try {
      data = JSON.parse(frame.data || "{}");
    } catch {
      return;
    }
    if (frame.id !== undefined && frame.id !== "") this.lastId = Number(frame.id);
    if (kind === "hello") {
      // A restarted host numbers its events afresh (reset): what it sends first is history,
      // as on a first connection; its "reset" event has the page reload its view.
      if (this.replayedUntil === 0 || data.reset) this.replayedUntil = data.last_id || 0;
      this.onState("live");
    }
    const id = frame.id ? Number(frame.id) : null;
    // A reset always asks for a reload, whatever its id.
    const replayed = kind !== "reset" && id !== null && id <= this.replayedUntil;
    this.onEvent({kind, id, data, replayed});
  }
}
