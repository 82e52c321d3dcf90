// The page talks to the API like any other client. The bearer token lives in sessionStorage:
// it is gone when the tab closes, and other tabs do not see it.

const TOKEN_KEY = 'stepwise.token';

/** An error answer of the API: `{"error": {"code", "message"}}` with its HTTP status. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** The token of this tab, or null. */
export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** Keeps `t` for this tab's session. */
export function setToken(t) {
  sessionStorage.setItem(TOKEN_KEY, t);
}

/** Forgets the token. */
export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

// Called with the ApiError of any 401, so the app can ask for a token again.
let onUnauthorized = () => {};

/** Sets what happens when the server refuses the token. */
export function whenUnauthorized(f) {
  onUnauthorized = f;
}

function headers(extra) {
  const h = { Accept: 'application/json', ...extra };
  const t = token();
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

async function errorOf(r) {
  let code = 'http_' + r.status;
  let message = `${r.status} ${r.statusText}`;
  try {
    const body = await r.json();
    if (body?.error) ({ code, message } = body.error);
  } catch {
    // Not JSON (a proxy's page, say): the status line says enough.
  }
  return new ApiError(r.status, code, message);
}

/** Calls the API; resolves to the JSON answer, rejects with an ApiError. */
export async function api(method, path, body) {
  const init = { method, headers: headers(body === undefined ? {} : { 'Content-Type': 'application/json' }), cache: 'no-store' };
  if (body !== undefined) init.body = JSON.stringify(body);
  const r = await fetch(path, init);
  if (!r.ok) {
    const e = await errorOf(r);
    if (r.status === 401) onUnauthorized(e);
    throw e;
  }
  return r.json();
}

/**
 * Follows a run's events: history, then live, until the run ends. An EventSource cannot send an
 * Authorization header, so the stream is read with fetch; a dropped connection is resumed with
 * Last-Event-ID, so no event is lost or seen twice.
 *
 * `onEvent(event)` gets each RunEvent in seq order; `onStatus(text)` says how the stream is.
 * Returns a function that stops following.
 */
export function followEvents(runId, onEvent, onStatus) {
  const stop = new AbortController();
  let last = 0;
  let ended = false;
  const url = `/v1/runs/${encodeURIComponent(runId)}/events`;

  async function readOnce() {
    const extra = { Accept: 'text/event-stream' };
    if (last > 0) extra['Last-Event-ID'] = String(last);
    const r = await fetch(url, { headers: headers(extra), signal: stop.signal, cache: 'no-store' });
    if (!r.ok) {
      const e = await errorOf(r);
      if (r.status === 401) onUnauthorized(e);
      throw e;
    }
    onStatus('live');
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value.replace(/\r\n?/g, '\n');
      let cut;
      while ((cut = buf.indexOf('\n\n')) >= 0) {
        const frame = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        handleFrame(frame);
      }
    }
  }

  function handleFrame(frame) {
    let type = 'message';
    const data = [];
    for (const line of frame.split('\n')) {
      if (line.startsWith(':')) continue; // keep-alive comment
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'event') type = value;
      else if (field === 'data') data.push(value);
    }
    if (!data.length) return;
    const payload = JSON.parse(data.join('\n'));
    if (type === 'error') throw new ApiError(503, payload?.error?.code, payload?.error?.message);
    if (payload.seq <= last) return;
    last = payload.seq;
    if (['RunCompleted', 'RunFailed', 'RunCancelled'].includes(payload.type)) ended = true;
    onEvent(payload);
  }

  (async () => {
    let delay = 500;
    while (!ended && !stop.signal.aborted) {
      try {
        await readOnce();
        delay = 500;
      } catch (e) {
        if (stop.signal.aborted) return;
        if (e instanceof ApiError && (e.status === 401 || e.status === 404)) {
          onStatus(e.message, e);
          return;
        }
        onStatus(`reconnecting: ${e.message}`);
      }
      if (ended || stop.signal.aborted) break;
      // The stream ended without a terminal event (server restart, proxy timeout): resume.
      await new Promise((res) => setTimeout(res, delay));
      delay = Math.min(delay * 2, 8000);
    }
    if (ended) onStatus('ended');
  })();

  return () => stop.abort();
}
