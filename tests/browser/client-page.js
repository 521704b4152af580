// Test page for PnsClient: builds a client from a plain-JSON config (callbacks cannot cross
// from the test runner), records every callback in window.seen and shows state and errors.
import { PnsClient } from "/clients/js/pnsd.js";

window.seen = { messages: [], resets: [], errors: [], states: [], events: [] };
const $ = (id) => document.getElementById(id);

/**
 * cfg: { url, channels, token, transport, hold, maxBackoffMs, useStorage, storageKey,
 *        tokenUrl (getToken fetches a fresh token from this same-origin path) }
 */
window.startClient = (cfg) => {
  const s = window.seen;
  const opts = {
    channels: cfg.channels,
    token: cfg.token,
    transport: cfg.transport || "poll",
    hold: cfg.hold,
    maxBackoffMs: cfg.maxBackoffMs,
    storage: cfg.useStorage ? localStorage : null,
    storageKey: cfg.storageKey,
    onMessage(m) {
      s.messages.push(m);
      s.events.push({ t: performance.now(), kind: "message", id: m.id });
      $("count").textContent = s.messages.length;
    },
    onReset(info) {
      s.resets.push({ ...info, before: s.messages.length });
      s.events.push({ t: performance.now(), kind: "reset" });
      $("resets").textContent = s.resets.length;
    },
    onError(e) {
      s.errors.push({ message: e.message, status: e.status, code: e.code, fatal: e.fatal, retryInMs: e.retryInMs, t: performance.now() });
      $("error").textContent = `${e.fatal ? "stopped: " : ""}${e.message}`;
    },
    onState(st) {
      s.states.push(st);
      $("state").textContent = st.state + (st.transport ? ` (${st.transport})` : "");
    },
  };
  if (cfg.tokenUrl) {
    opts.getToken = async () => {
      const r = await fetch(cfg.tokenUrl, { cache: "no-store" });
      s.events.push({ t: performance.now(), kind: "getToken" });
      return r.ok ? (await r.text()).trim() : null;
    };
  }
  window.client = new PnsClient(cfg.url, opts);
  window.client.start();
  return true;
};
window.ready = true;
