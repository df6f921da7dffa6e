// Changes as the event stream tells them: each operation's phases (planning, loading, warming
// up, checking, switching, done or failed, then the old models draining), a stepper that shows
// them with their times, and runChange(), which sends a change and follows its progress.

import * as api from "./api.js";
import {errorBox, fill, h, seconds, short} from "./dom.js";

const LABELS = {
  started: "started", planning: "planning", "unloading first": "unloading first",
  loading: "loading", "warming up": "warming up", checking: "checking",
  switching: "switching", done: "done", failed: "failed",
};

export class Operations {
  constructor() {
    this.ops = [];
    this.subscribers = new Set();
  }

  /** Take one event from the stream. */
  take(event) {
    if (event.kind === "reset") {
      this.ops = [];
    } else if (event.kind === "operation") {
      const d = event.data;
      let op = this.ops.find((o) => o.id === d.op);
      if (!op) {
        op = {id: d.op, action: d.action, commit: d.commit, who: d.who, firstId: event.id,
          phases: [], after: [], state: "running"};
        this.ops.push(op);
        if (this.ops.length > 50) this.ops.shift();
      }
      op.phases.push({...d, seenAt: event.replayed ? null : performance.now()});
      if (d.phase === "done" || d.phase === "failed") op.state = d.phase;
    } else if (event.kind === "model") {
      // After a change the models it replaced drain and unload: part of its story.
      const op = this.latest();
      if (op && op.state === "done" && ["draining", "unloaded"].includes(event.data.state)) {
        op.after.push(event.data);
      }
    } else {
      return;
    }
    for (const fn of this.subscribers) fn();
  }

  subscribe(fn) {
    this.subscribers.add(fn);
    return () => this.subscribers.delete(fn);
  }

  latest() {
    return this.ops[this.ops.length - 1] || null;
  }

  running() {
    const op = this.latest();
    return op && op.state === "running" ? op : null;
  }

  /** The first operation that started after event id ``since``. */
  after(since) {
    return this.ops.find((o) => o.firstId > since) || null;
  }
}

/** Words for one operation, as a line: "apply of 3f2a9c1: loading reference (1.2 s)". */
export function summary(op) {
  if (!op) return "none since the page opened";
  const last = op.phases[op.phases.length - 1];
  let text = `${op.action} of ${short(op.commit)}: ${LABELS[last.phase] || last.phase}`;
  if (last.phase === "done") text += ` in ${seconds(last.duration_s)}`;
  if (last.phase === "failed") text += `: ${last.reason}`;
  if (last.model && op.state === "running") text += ` ${last.model}`;
  return text;
}

/** Render ``op`` into the <ol> ``list``; while it runs, the current phase's time ticks. */
export function renderStepper(list, op) {
  list._op = op;
  if (!op) {
    fill(list);
    return;
  }
  list.toggleAttribute("data-running", op.state === "running");
  const items = op.phases.map((p, i) => {
    const next = op.phases[i + 1];
    let took = null;
    if (next) took = next.elapsed_s - p.elapsed_s;
    else if (op.state === "running" && p.seenAt !== null) took = (performance.now() - p.seenAt) / 1000;
    const what = [];
    if (p.model) what.push(` ${p.model}`);
    if (p.instances > 1) what.push(` (instance ${p.instance} of ${p.instances})`);
    const final = p.phase === "done" || p.phase === "failed";
    return h("li", {class: `phase ${p.phase.replace(" ", "-")}`, "data-phase": p.phase},
      h("span", {class: "name"}, LABELS[p.phase] || p.phase), what.join(""),
      p.phase === "done" ? h("span", {class: "time"}, ` in ${seconds(p.duration_s)}`) : null,
      !final && took !== null ? h("span", {class: "time"}, ` ${seconds(took)}`) : null,
      p.expected_s ? h("span", {class: "expected"}, ` (last time ${seconds(p.expected_s)})`) : null,
      p.phase === "failed" ? h("span", {class: "reason"}, `: ${p.reason}`) : null);
  });
  const failed = op.phases.find((p) => p.phase === "failed");
  if (failed) {
    items.push(h("li", {class: "still-serving"},
      failed.still_serving ? `still serving ${short(failed.still_serving)}` : "nothing serves"));
  }
  for (const m of op.after) {
    items.push(h("li", {class: `phase ${m.state}`, "data-phase": m.state},
      h("span", {class: "name"}, m.state === "draining" ? "draining" : "unloaded"),
      ` ${m.name} generation ${m.generation}`,
      m.state === "draining" ? ` (${m.running || 0} running, deadline ${seconds(m.deadline_s, 0)})`
        : ` after ${seconds(m.drained_s)}`));
  }
  fill(list, items);
}

// One clock for every stepper on screen whose operation is still running.
setInterval(() => {
  for (const list of document.querySelectorAll("ol.stepper[data-running]")) {
    renderStepper(list, list._op);
  }
}, 250);

/** Words for a change's reply: "applied 3f2a9c1 in 2.04 s: reference-low loaded in 1.5 s". */
export function describeResult(r) {
  if (r.result === "unchanged") return `Unchanged, still serving ${short(r.commit)}: ${r.message}`;
  const plan = r.plan || {};
  const loaded = r.loaded || {};
  const parts = [];
  for (const [key, word] of [["load", "loaded"], ["reload", "reloaded"]]) {
    for (const name of plan[key] || []) {
      parts.push(`${name} ${word}${typeof loaded[name] === "number" ? ` in ${seconds(loaded[name], 1)}` : ""}`);
    }
  }
  for (const name of plan.unload || []) parts.push(`${name} unloaded`);
  let verb = `Applied ${short(r.commit)}`;
  if (r.action === "reload-model") verb = `Reloaded models at ${short(r.commit)}`;
  if (r.action === "rollback") {
    verb = `Rolled back to ${short(r.rolled_back_to || r.commit)}`
      + (r.rolled_back_to && r.rolled_back_to !== r.commit ? ` (as commit ${short(r.commit)})` : "");
  }
  let text = `${verb} in ${seconds(r.duration_s)}: ${parts.join(", ") || "settings only, no model loaded"}`;
  if (r.branch && r.branch.moved === false) text += `; branch ${r.branch.name} not moved: ${r.branch.reason}`;
  return text;
}

/** POST a change, follow its phases in ``box`` as they happen, then say how it ended. A 409
 * apply_in_progress attaches to the change that is running instead. Resolves to {result} or
 * {error}. */
export async function runChange(app, box, path, body) {
  if (box._unsubscribe) box._unsubscribe();
  const since = app.events.lastId || 0;
  const list = h("ol", {class: "stepper", "aria-label": "Progress"});
  const outcome = h("div", {class: "outcome", role: "status"}, "Working…");
  fill(box, list, outcome);
  let pick = () => app.ops.after(since);
  const draw = () => renderStepper(list, pick());
  box._unsubscribe = app.ops.subscribe(draw);
  draw();
  try {
    const result = await api.post(path, body);
    fill(outcome, h("p", {class: "ok"}, describeResult(result)));
    return {result};
  } catch (err) {
    if (err.code === "apply_in_progress") {
      const d = err.details || {};
      fill(outcome, h("p", {}, `${d.action || "apply"} of ${short(d.commit) === "-" ? "the branch" : short(d.commit)} in progress: `
        + "following it below; try again when it has finished."));
      const running = app.ops.running() || app.ops.latest();
      pick = () => running; // that one, to its end (not whichever change comes next)
      draw();
    } else {
      await app.refresh();
      const serving = app.status && app.status.serving_commit;
      fill(outcome, errorBox(err), serving ? h("p", {class: "still"}, `Still serving ${short(serving)}.`) : null);
    }
    return {error: err};
  } finally {
    app.refresh();
  }
}
