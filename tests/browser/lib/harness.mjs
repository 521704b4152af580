// Test harness for the browser tests: the real pnsd binary on port 0, a publisher on its Unix
// socket, a static file server on another port (so pages are cross-origin to pnsd, or
// same-origin through its optional /pns/ proxy), and headless Chromium driven by playwright-core.
// Everything a test starts is registered with `cleanup` and stopped, last first, when the test ends.
import { spawn, execFileSync } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { staticHandler, EXAMPLE_DIRS } from "../../../examples/webmail/serve.mjs";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
export const CHROMIUM = process.env.PNSD_CHROMIUM || "/usr/bin/chromium";
/** Flags for a quiet, self-contained headless Chromium (no network of its own, no updates). */
export const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** The pnsd binary: $PNSD_BIN, else the newest of target/debug and target/release. */
export function pnsdBin() {
  if (process.env.PNSD_BIN) return process.env.PNSD_BIN;
  const found = ["debug", "release"]
    .map((p) => path.join(ROOT, "target", p, "pnsd"))
    .filter((p) => fs.existsSync(p))
    .sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs);
  if (!found.length) throw new Error("no pnsd binary: run `cargo build` first (or ./test-all)");
  return found[0];
}

const stacks = new WeakMap();
/**
 * Registers `fn` to run when test `t` ends, in reverse order of registration (the browser
 * closes before its profile is removed, pnsd dies before its directory goes), each awaited.
 */
export function cleanup(t, fn) {
  let stack = stacks.get(t);
  if (!stack) {
    stack = [];
    stacks.set(t, stack);
    t.after(async () => {
      while (stack.length) {
        try {
          await stack.pop()();
        } catch (e) {
          console.error(`# cleanup: ${e.message}`);
        }
      }
    });
  }
  stack.push(fn);
}

export function tempDir(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "pnsd-browser-"));
  cleanup(t, () => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Resolves when `cond()` (sync or async) is truthy; rejects after `ms` naming `what`. */
export async function waitFor(cond, what, ms = 10000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Starts pnsd. `opts.args` are extra serve options; `opts.port` pins the port (restart on the
 * same port); `opts.dir` holds the publish socket. Resolves once the start-up line is read.
 */
export async function startPnsd(t, opts = {}) {
  const dir = opts.dir || tempDir(t);
  const sock = path.join(dir, "pnsd.sock");
  const args = ["--listen", `127.0.0.1:${opts.port || 0}`, "--publish-socket", sock, "--threads", "2", ...(opts.args || [])];
  const proc = spawn(pnsdBin(), args, { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  proc.stderr.on("data", (d) => (stderr += d));
  const exited = new Promise((r) => proc.on("exit", (code, signal) => r({ code, signal })));
  cleanup(t, async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill("SIGKILL");
      await exited;
    }
  });
  const port = await new Promise((resolve, reject) => {
    let out = "";
    proc.stdout.on("data", (d) => {
      out += d;
      const m = /pnsd listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    exited.then(({ code }) => reject(new Error(`pnsd exited ${code} before listening: ${stderr.trim()}`)));
  });
  const server = {
    proc,
    port,
    dir,
    sock,
    args: opts.args || [],
    origin: `http://127.0.0.1:${port}`,
    pollUrl: `http://127.0.0.1:${port}/pns/poll`,
    exited,
    stderr: () => stderr,
    /** Sends `signal` and waits for the exit. */
    async stop(signal = "SIGTERM") {
      proc.kill(signal);
      return exited;
    },
  };
  return server;
}

/** `pnsd token` for the test's secret file. */
export function mintToken(secretFile, channels, ttl = 3600) {
  const args = ["token", "--secret-file", secretFile, "--ttl", String(ttl)];
  for (const c of channels) args.push("--channel", c);
  return execFileSync(pnsdBin(), args, { encoding: "utf8" }).trim();
}

export function writeSecret(dir) {
  const file = path.join(dir, "secret");
  fs.writeFileSync(file, "browser-test-secret-" + Math.random().toString(36).slice(2) + "\n");
  return file;
}

/** A publisher connection on the Unix socket: NDJSON lines out, acks back in order. */
export async function connectPublisher(t, sockPath) {
  const conn = net.connect(sockPath);
  await new Promise((resolve, reject) => {
    conn.once("connect", resolve);
    conn.once("error", reject);
  });
  conn.on("error", () => {});
  cleanup(t, () => conn.destroy());
  const waiting = [];
  let buf = "";
  conn.on("data", (d) => {
    buf += d;
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      const w = waiting.shift();
      if (w) w(JSON.parse(line));
    }
  });
  const send = (obj) =>
    new Promise((resolve) => {
      waiting.push(resolve);
      conn.write(JSON.stringify(obj) + "\n");
    });
  const pub = {
    send,
    /** Publishes one message; resolves with its ack (throws on ok:false). */
    async publish(channel, data, type) {
      const req = { channel, data };
      if (type != null) req.type = type;
      const ack = await send(req);
      if (!ack.ok) throw new Error(`publish refused: ${JSON.stringify(ack)}`);
      return ack;
    },
    /** Pipelines many publishes (one write each, no wait in between); resolves with the acks. */
    async burst(reqs) {
      const acks = await Promise.all(reqs.map((r) => send(r)));
      for (const a of acks) if (!a.ok) throw new Error(`publish refused: ${JSON.stringify(a)}`);
      return acks;
    },
    stats: () => send({ op: "stats" }),
    async waitParked(n = 1) {
      return waitFor(async () => (await send({ op: "stats" })).parked >= n, `${n} parked poll(s)`);
    },
    close: () => conn.end(),
  };
  return pub;
}

/**
 * The static server: what examples/webmail/serve.mjs serves, and tests/browser/, plus
 * `routes` (path → handler) and, with `proxyPort()`, /pns/* forwarded to pnsd so the page is
 * same-origin with it. Every request is logged with its start time and, for /pns/, its status.
 */
export async function startStatic(t, { routes = {}, proxyPort = null } = {}) {
  const files = staticHandler(ROOT, [...EXAMPLE_DIRS, "tests/browser"]);
  const log = [];
  const sockets = new Set();
  const server = http.createServer((req, res) => {
    const entry = { url: req.url, start: performance.now(), status: null, end: null };
    const pathname = new URL(req.url, "http://x").pathname;
    if (routes[pathname]) return routes[pathname](req, res);
    if (proxyPort && pathname.startsWith("/pns/")) {
      log.push(entry);
      relay(req, proxyPort(), entry, sockets);
      return;
    }
    files(req, res);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  cleanup(t, () => {
    for (const s of sockets) s.destroy();
    server.closeAllConnections();
    return new Promise((r) => server.close(r));
  });
  const port = server.address().port;
  return { port, origin: `http://127.0.0.1:${port}`, log };
}

/**
 * Forwards one request to pnsd over a fresh connection and relays the answer's bytes, then
 * closes both (the request goes upstream with `Connection: close`). The request is written only
 * after the connection has been quiet for RELAY_QUIET_MS: pnsd answers an over-capacity
 * connection with its 503 at accept and closes it without reading, and a request already sent
 * would turn that close into a reset (a proxy would then see ECONNRESET, not the 503).
 */
const RELAY_QUIET_MS = 25;
function relay(req, port, entry, sockets) {
  const client = req.socket;
  const up = net.connect(port, "127.0.0.1");
  let spoken = false;
  const send = () => {
    if (spoken) return;
    spoken = true;
    let head = `${req.method} ${req.url} HTTP/1.1\r\n`;
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      if (!/^connection$/i.test(req.rawHeaders[i])) head += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
    }
    up.write(head + "Connection: close\r\n\r\n");
  };
  up.on("connect", () => setTimeout(send, RELAY_QUIET_MS));
  up.on("data", (d) => {
    spoken = true;
    if (entry.status == null) {
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(d.toString("latin1"));
      entry.status = m ? Number(m[1]) : 0;
    }
    client.write(d);
  });
  up.on("end", () => {
    entry.end = performance.now();
    client.end();
  });
  up.on("error", (e) => {
    entry.error = e.code;
    if (entry.status == null) entry.status = 502;
    entry.end = performance.now();
    client.destroy();
  });
  client.on("close", () => up.destroy());
  sockets.add(up);
  up.on("close", () => sockets.delete(up));
}

/**
 * A fresh headless Chromium (its own --user-data-dir) for one test, or null after a loud skip
 * line when Chromium or playwright-core is missing (a failure under PNSD_REQUIRE_ALL=1).
 */
export async function launchBrowser(t) {
  let chromium;
  try {
    ({ chromium } = await import("playwright-core"));
  } catch (_) {
    return missing(t, "playwright-core (run `npm ci` in tests/browser, or ./test-all)");
  }
  if (!fs.existsSync(CHROMIUM)) return missing(t, `${CHROMIUM} (apt-get install chromium, or ./test-all)`);
  const profile = tempDir(t);
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_FLAGS,
    viewport: { width: 960, height: 640 },
  });
  cleanup(t, () => context.close());
  const page = context.pages()[0] || (await context.newPage());
  page.on("pageerror", (e) => console.error(`# page error: ${e.message}`));
  return { context, page };
}

function missing(t, what) {
  const line = `SKIPPED browser test: missing ${what}`;
  if (process.env.PNSD_REQUIRE_ALL === "1") throw new Error(`${line} (PNSD_REQUIRE_ALL=1)`);
  console.error(`#### ${line} ####`);
  t.skip(line);
  return null;
}

/**
 * Publishes `{n}` for n in 0..count-1 (type 70) on `channel`: bursts of 50 pipelined, each
 * followed by up to 50 singles acknowledged one by one with `gapMs` between them, so some land
 * while the subscriber is between two polls.
 */
export async function publishMixed(pub, channel, count, gapMs) {
  let n = 0;
  while (n < count) {
    const burst = Math.min(50, count - n);
    await pub.burst(range(n, n + burst).map((k) => ({ channel, type: 70, data: { n: k } })));
    n += burst;
    for (let i = 0; i < 50 && n < count; i++, n++) {
      await pub.publish(channel, { n }, 70);
      if (gapMs) await sleep(gapMs);
    }
  }
}

/** Starts pnsd again on `old`'s port and directory (retried while the port is still taken). */
export async function restartPnsd(t, old, args) {
  let again;
  await waitFor(async () => {
    try {
      again = await startPnsd(t, { port: old.port, dir: old.dir, args });
      return true;
    } catch (_) {
      return false;
    }
  }, "pnsd to start again on the same port");
  return again;
}

/** Opens tests/browser/client-page.html of `site`; with `cfg`, starts a client with it. */
export async function openClient(page, site, cfg) {
  await page.goto(`${site.origin}/tests/browser/client-page.html`);
  await page.waitForFunction(() => window.ready === true);
  if (cfg) await page.evaluate((c) => window.startClient(c), cfg);
}

/** What the client page's callbacks recorded. */
export const seen = (page) => page.evaluate(() => window.seen);

/** Waits for `n` messages in the client page, then a little more (a duplicate would show). */
export async function waitMessages(page, n, ms = 20000) {
  await waitFor(async () => (await page.evaluate(() => window.seen.messages.length)) >= n, `${n} messages in the page`, ms);
  await sleep(300);
  return seen(page);
}

/** The `n` values of the messages a page collected, for order/duplicate checks. */
export const ns = (msgs) => msgs.map((m) => m.data.n);
export const range = (a, b) => Array.from({ length: b - a }, (_, i) => a + i);
