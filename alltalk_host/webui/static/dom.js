// Small helpers every panel uses: building elements, and formatting commits, times and sizes.

/** h("p", {class: "x", onclick: fn}, "text", child) -> an element. Strings become text nodes,
 * so nothing a server sends is ever parsed as HTML. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const short = (commit) => (commit ? String(commit).slice(0, 7) : "-");

export function firstLine(text) {
  return String(text || "").split("\n")[0];
}

export function seconds(value, digits = 2) {
  return typeof value === "number" ? `${value.toFixed(digits)} s` : "-";
}

export function bytes(n) {
  if (typeof n !== "number" || n <= 0) return "-";
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}

/** "3 min ago" from epoch seconds or an ISO date. */
export function age(when) {
  const t = typeof when === "number" ? when * 1000 : Date.parse(when);
  if (!Number.isFinite(t)) return "-";
  const s = Math.max(0, (Date.now() - t) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function clock(epochSeconds) {
  const d = new Date(epochSeconds * 1000);
  return Number.isNaN(d.getTime()) ? "-" : d.toLocaleString();
}

/** An error shown from the server's JSON error body: code, message and details. */
export function errorBox(err) {
  const details = err && err.details;
  const files = details && Array.isArray(details.files) ? details.files : null;
  return h("div", {class: "error", role: "alert"},
    h("p", {}, h("strong", {}, err && err.code ? `${err.code}: ` : "Error: "),
      err && err.message ? err.message : String(err)),
    files ? h("ul", {}, files.map((f) => h("li", {}, f))) : null);
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}
