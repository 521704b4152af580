// pnsd.js: browser client for pnsd (https://…/pns/poll), one ES module, no dependencies.
//
// Invariants:
// - onMessage receives every message of the subscribed channels exactly once, in the server's
//   order, as long as the server still holds it: the client always asks "after CURSOR", where
//   CURSOR is the id of the last message it handed to onMessage (or the cursor of the last empty
//   answer), and advances it message by message, so a stop() inside onMessage loses nothing.
// - When the server cannot continue exactly (restart, eviction, a cursor it refuses), onReset is
//   called once, before the first message that follows the gap.
// - At most one request or stream is in flight per client; stop() cancels it and every timer,
//   and no callback runs after stop() returns (a generation number guards late answers).
// - Failures never spin: network errors and 5xx wait a full-jitter exponential delay
//   (at most maxBackoffMs), and at least the server's Retry-After when it sends one.

/** Delay of the first retry's jitter window; doubles per consecutive failure up to the cap. */
const BASE_BACKOFF_MS = 1000;
/** The seed's webmail retried after minutes; 2 minutes bounds a client's silence after an outage. */
const DEFAULT_MAX_BACKOFF_MS = 120000;
/** A stream that ended after being open reconnects within this window (spreads a restart's herd). */
const SSE_RECONNECT_SPREAD_MS = 1000;

/** An error reported through onError. `status` is the HTTP status, 0 when none was readable. */
export class PnsError extends Error {
  constructor(message, { status = 0, code = "network", fatal = false, retryInMs = null, transport = null } = {}) {
    super(message);
    this.name = "PnsError";
    this.status = status;
    this.code = code;
    this.fatal = fatal;
    this.retryInMs = retryInMs;
    this.transport = transport;
  }
}

/** Parses Retry-After (delta-seconds or an HTTP date) into milliseconds, or null. */
export function retryAfterMs(value, now = Date.now()) {
  if (value == null || value === "") return null;
  const text = String(value).trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const at = Date.parse(text);
  return Number.isNaN(at) ? null : Math.max(0, at - now);
}

/** Full jitter: a uniform delay in [0, min(cap, base * 2^attempt)). */
export function jitterMs(attempt, capMs, random = Math.random) {
  const ceiling = Math.min(capMs, BASE_BACKOFF_MS * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

export class PnsClient {
  /**
   * @param {string} url the poll endpoint itself, e.g. "https://push.example/pns/poll"
   * @param {object} [options] see clients/js/README.md
   */
  constructor(url, options = {}) {
    if (typeof url !== "string" || url === "") throw new TypeError("PnsClient: url is required");
    const o = options;
    this.url = url;
    this.channels = Array.isArray(o.channels) ? o.channels.slice() : o.channels ? [o.channels] : [];
    this.token = o.token || null;
    this.getToken = typeof o.getToken === "function" ? o.getToken : null;
    this.hold = o.hold == null ? null : o.hold;
    this.storage = o.storage || null;
    this.storageKey = o.storageKey || `pnsd:${url}|${this.channels.join(",")}`;
    this.maxBackoffMs = o.maxBackoffMs == null ? DEFAULT_MAX_BACKOFF_MS : o.maxBackoffMs;
    this.onMessage = o.onMessage || (() => {});
    this.onReset = o.onReset || (() => {});
    this.onError = o.onError || (() => {});
    this.onState = o.onState || (() => {});
    const wanted = o.transport || "auto";
    if (!["auto", "sse", "poll"].includes(wanted)) throw new TypeError(`PnsClient: unknown transport ${wanted}`);
    this.requested = wanted;
    this.transport = null;
    this.state = "stopped";
    this._shown = "stopped null";
    this.cursor = null;
    this._gen = 0;
    this._failures = 0;
    this._authFailures = 0;
    this._timer = null;
    this._abort = null;
    this._source = null;
    this._pendingReset = false;
  }

  /** Starts (or restarts) receiving. Reads the stored cursor if `storage` is set. */
  start() {
    this.stop();
    this._gen += 1;
    this._failures = 0;
    this._authFailures = 0;
    this.cursor = this._load();
    const sse = typeof EventSource === "function";
    if (this.requested === "sse" && !sse) {
      this._fatal(new PnsError("EventSource is not available in this environment", { code: "sse_unavailable" }));
      return;
    }
    this.transport = this.requested === "poll" || (this.requested === "auto" && !sse) ? "poll" : "sse";
    this._connect(this._gen);
  }

  /** Stops: cancels the request or stream and every timer; keeps the cursor (and stores it). */
  stop() {
    this._gen += 1;
    clearTimeout(this._timer);
    this._timer = null;
    if (this._abort) this._abort.abort();
    this._abort = null;
    if (this._source) this._source.close();
    this._source = null;
    this._save();
    this._setState("stopped");
  }

  // ---- shared

  _connect(gen) {
    if (gen !== this._gen) return;
    this._setState("connecting");
    // SSE starts with a plain poll (hold=0): it reports a refused origin, token or overload with
    // its status (EventSource hides it), and yields a cursor, so the stream never starts
    // cursor-less; a server without SSE would answer the stream's request with messages that
    // EventSource cannot hand over, and the cursor lets the next poll fetch them again.
    this._poll(gen, this.transport === "sse" ? "before" : null);
  }

  _query(extra) {
    const u = new URL(this.url, typeof location === "object" ? location.href : undefined);
    for (const c of this.channels) u.searchParams.append("channel", c);
    if (this.cursor) u.searchParams.set("cursor", this.cursor);
    for (const [k, v] of Object.entries(extra)) if (v != null) u.searchParams.set(k, String(v));
    return u.toString();
  }

  /** Hands one answer's messages over, advancing the cursor message by message. */
  _deliver(gen, body) {
    if (body.reset || this._pendingReset) {
      this._pendingReset = false;
      this._call(this.onReset, { cursor: this.cursor, reason: body.reset ? "reset" : "cursor_refused" });
      if (gen !== this._gen) return false;
    }
    for (const msg of body.msg || []) {
      this.cursor = msg.id;
      this._call(this.onMessage, msg);
      if (gen !== this._gen) {
        this._save();
        return false;
      }
    }
    if (body.cursor) this.cursor = body.cursor;
    this._save();
    return true;
  }

  _call(fn, arg) {
    try {
      fn(arg);
    } catch (e) {
      // A throwing callback must not stall delivery; report it and continue.
      try {
        this.onError(new PnsError(`callback threw: ${e && e.message}`, { code: "callback", transport: this.transport }));
      } catch (_) {
        /* nothing left to tell */
      }
    }
  }

  /** Waits, then reconnects: full jitter, at least Retry-After when the server sent one. */
  _retry(gen, err, raMs) {
    if (gen !== this._gen) return;
    let delay = jitterMs(this._failures, this.maxBackoffMs);
    if (raMs != null) delay = Math.max(raMs, Math.min(raMs + delay, Math.max(raMs, this.maxBackoffMs)));
    this._failures += 1;
    err.retryInMs = delay;
    this._setState("backoff", delay);
    this._call(this.onError, err);
    if (gen !== this._gen) return;
    this._timer = setTimeout(() => this._connect(gen), delay);
  }

  /** 401/403: stop, or ask getToken for a fresh token and go on. */
  async _auth(gen, err) {
    if (!this.getToken) {
      this._fatal(err);
      return;
    }
    this._authFailures += 1;
    this._call(this.onError, err);
    if (gen !== this._gen) return;
    if (this._authFailures > 1) {
      // The fresh token was refused as well: do not hammer the token issuer.
      const delay = jitterMs(this._authFailures - 2, this.maxBackoffMs);
      this._setState("backoff", delay);
      await new Promise((resolve) => {
        this._timer = setTimeout(resolve, delay);
      });
      if (gen !== this._gen) return;
    }
    let fresh;
    try {
      fresh = await this.getToken();
    } catch (e) {
      fresh = null;
    }
    if (gen !== this._gen) return;
    if (!fresh) {
      this._fatal(new PnsError("getToken gave no token", { status: err.status, code: "no_token", transport: this.transport }));
      return;
    }
    this.token = fresh;
    this._connect(gen);
  }

  _fatal(err) {
    this.stop();
    err.fatal = true;
    this._call(this.onError, err);
  }

  _ok() {
    this._failures = 0;
    this._authFailures = 0;
    this._setState("open");
  }

  _setState(state, retryInMs = null) {
    const shown = `${state} ${this.transport}`;
    if (this._shown === shown && state !== "backoff") return;
    this._shown = shown;
    this.state = state;
    this._call(this.onState, { state, transport: this.transport, retryInMs });
  }

  _load() {
    if (!this.storage) return this.cursor;
    try {
      return this.storage.getItem(this.storageKey) || this.cursor;
    } catch (_) {
      return this.cursor;
    }
  }

  _save() {
    if (!this.storage || !this.cursor) return;
    try {
      this.storage.setItem(this.storageKey, this.cursor);
    } catch (_) {
      /* storage full or denied: the cursor still lives in memory */
    }
  }

  // ---- long-poll transport

  /**
   * One poll. `probe` is "before" for the poll that precedes an SSE stream, "failed" when a
   * stream failed before opening: the same request as a plain poll with hold=0 tells why
   * (status, Retry-After, or a server without SSE).
   */
  async _poll(gen, probe) {
    const abort = new AbortController();
    this._abort = abort;
    const headers = { Accept: "application/json" };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    // While not yet open (start, or after a failure) ask with hold=0: a refused origin, a bad
    // token or a down server shows at once instead of after a whole hold time.
    const hold = probe || this.state !== "open" ? 0 : this.hold;
    let res;
    let body = null;
    try {
      res = await fetch(this._query({ hold }), {
        headers,
        cache: "no-store",
        credentials: "omit",
        signal: abort.signal,
      });
      const text = await res.text();
      try {
        body = JSON.parse(text);
      } catch (_) {
        body = null;
      }
    } catch (e) {
      if (gen !== this._gen) return;
      this._abort = null;
      const why = e && e.message ? e.message : String(e);
      this._retry(gen, this._err(`request failed (${why}): server unreachable, or it refused this page's origin (CORS)`, 0, "network"), null);
      return;
    }
    if (gen !== this._gen) return;
    this._abort = null;
    const status = res.status;
    if (status === 200 && body && Array.isArray(body.msg)) {
      this._ok();
      if (!this._deliver(gen, body)) return;
      if (probe === "before") {
        this._openStream(gen);
        return;
      }
      if (probe === "failed") {
        this._probed(gen);
        return;
      }
      this._poll(gen, null);
      return;
    }
    const code = (body && body.errorcode) || (status === 200 ? "bad_answer" : `http_${status}`);
    const text = (body && body.message) || `HTTP ${status}`;
    const err = this._err(`${text} (${code})`, status, code);
    if (status === 401 || status === 403) {
      this._auth(gen, err);
    } else if (status === 400 && code === "bad_cursor" && this.cursor) {
      // A cursor the server refuses (a stored one from elsewhere): start over, announced as a reset.
      this.cursor = null;
      this._pendingReset = true;
      this._retry(gen, err, 0);
    } else if (status >= 500 || status === 408 || status === 429 || status === 200) {
      this._retry(gen, err, retryAfterMs(res.headers.get("Retry-After")));
    } else {
      this._fatal(err);
    }
  }

  _err(message, status, code) {
    return new PnsError(message, { status, code, transport: this.transport });
  }

  // ---- SSE transport

  _openStream(gen) {
    const es = new EventSource(this._query({ sid: this.token }));
    this._source = es;
    let opened = false;
    es.onopen = () => {
      if (gen !== this._gen) return;
      opened = true;
      this._ok();
    };
    es.onmessage = (ev) => {
      if (gen !== this._gen) return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch (_) {
        this._call(this.onError, this._err("unreadable SSE event", 200, "bad_event"));
        return;
      }
      if (msg.id == null && ev.lastEventId) msg.id = ev.lastEventId;
      this._deliver(gen, { msg: [msg], cursor: ev.lastEventId || msg.id });
    };
    es.addEventListener("reset", () => {
      if (gen !== this._gen) return;
      this._pendingReset = false;
      this._call(this.onReset, { cursor: this.cursor, reason: "reset" });
    });
    es.onerror = () => {
      if (gen !== this._gen) return;
      // Reconnect ourselves, with the current cursor in the URL: the browser's own reconnect
      // would resend the first URL's cursor beside Last-Event-ID.
      es.close();
      this._source = null;
      if (opened) {
        this._failures = 0;
        const delay = Math.floor(Math.random() * SSE_RECONNECT_SPREAD_MS);
        this._timer = setTimeout(() => this._openStream(gen), delay);
      } else {
        // EventSource hides the status: ask with a plain poll what went wrong.
        this._setState("connecting");
        this._poll(gen, "failed");
      }
    };
  }

  /** A probe poll answered 200: the server has no SSE on this endpoint, or it was transient. */
  _probed(gen) {
    if (this.requested === "auto") {
      this.transport = "poll";
      this._setState("open");
      this._poll(gen, null);
      return;
    }
    this._retry(gen, this._err("the server answered the SSE request without an event stream", 200, "sse_refused"), null);
  }
}
