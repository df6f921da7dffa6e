// The API client: same-origin fetch, the control token, and errors read from the JSON body.
//
// The token lives in sessionStorage (this tab only) and travels as an Authorization header,
// never in a URL. A 401 asks for it once (concurrent requests share the one prompt), then the
// request is sent again.

const TOKEN_KEY = "alltalk-host.token";
let prompt = null; // (reason) => Promise<string|null>, set by the app
let asking = null;
let declined = false; // the prompt was cancelled: background reads stop asking

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export function setTokenPrompt(fn) {
  prompt = fn;
}

export function authHeaders() {
  return token() ? {Authorization: `Bearer ${token()}`} : {};
}

/** Ask for the token after a 401; true when the caller should try again. Once the prompt
 * has been cancelled, only what a person does (``force``: a click) asks again. */
export async function askToken(error, force = false) {
  if (!prompt || (declined && !force)) return false;
  if (!asking) {
    asking = prompt(error).finally(() => { asking = null; });
  }
  const given = await asking;
  if (given) setToken(given);
  declined = !given;
  return Boolean(given);
}

/** The error a failed response carries, whichever API's shape it has. */
export async function errorOf(resp) {
  let body = null;
  try {
    body = await resp.json();
  } catch {
    return new ApiError(resp.status, `http_${resp.status}`,
      `the server answered ${resp.status} ${resp.statusText}`.trim());
  }
  const e = body && body.error;
  if (e && typeof e === "object") {
    return new ApiError(resp.status, e.code || e.type || `http_${resp.status}`,
      e.message || JSON.stringify(e), e.details);
  }
  if (typeof e === "string") { // AllTalk's shapes: a bad field, or a failed synthesis
    return new ApiError(resp.status, body.status || "bad_request", e);
  }
  return new ApiError(resp.status, `http_${resp.status}`, JSON.stringify(body));
}

/** fetch with the token; JSON bodies for objects, a form for FormData. Returns the Response
 * (ok) or throws an ApiError. A 401 asks for the token (reads only until it is declined). */
export async function send(method, path, {body, signal, force = method !== "GET"} = {}) {
  for (let attempt = 0; ; attempt++) {
    const headers = {...authHeaders()};
    let payload;
    if (body instanceof FormData) payload = body;
    else if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, {method, headers, body: payload, signal, cache: "no-store"});
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, "unreachable", `cannot reach the server (${err.message})`);
    }
    if (resp.ok) return resp;
    const error = await errorOf(resp);
    if (resp.status === 401 && attempt < 3 && await askToken(error, force)) continue;
    throw error;
  }
}

export async function get(path, options) {
  return (await send("GET", path, options)).json();
}

export async function post(path, body = {}, options = {}) {
  return (await send("POST", path, {...options, body})).json();
}
