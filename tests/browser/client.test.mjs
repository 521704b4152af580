// clients/js/pnsd.js in headless Chromium against the real pnsd, long-poll transport, from a page
// on another origin (the static server) unless a test says otherwise.
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import {
  startPnsd,
  startStatic,
  connectPublisher,
  launchBrowser,
  mintToken,
  writeSecret,
  tempDir,
  cleanup,
  waitFor,
  sleep,
  ns,
  range,
  publishMixed,
  restartPnsd,
  openClient,
  seen,
  waitMessages,
} from "./lib/harness.mjs";

const T = { timeout: 90000 };

/** Counts the page's GET requests to `prefix`. */
function countRequests(page, prefix) {
  const c = { n: 0 };
  page.on("request", (r) => {
    if (r.method() === "GET" && r.url().startsWith(prefix)) c.n += 1;
  });
  return c;
}

/** A poll parked by the test itself (it fills a --max-connections 1), as a raw socket. */
function holdPoll(t, port) {
  const held = net.connect(port, "127.0.0.1");
  held.on("error", () => {});
  cleanup(t, () => held.destroy());
  held.write("GET /pns/poll?channel=held&hold=60 HTTP/1.1\r\nHost: t\r\n\r\n");
  return held;
}

/** A cross-origin setup: static site, pnsd allowing exactly that site's origin. */
async function crossOrigin(t, args = []) {
  const b = await launchBrowser(t);
  if (!b) return null;
  const site = await startStatic(t);
  const pnsd = await startPnsd(t, { args: ["--cors-origin", site.origin, ...args] });
  const pub = await connectPublisher(t, pnsd.sock);
  return { ...b, site, pnsd, pub };
}

test("long-poll: 200 messages, bursts of 50 and publishes while it re-polls, each exactly once in order", T, async (t) => {
  const s = await crossOrigin(t, ["--buffer", "256"]);
  if (!s) return;
  await openClient(s.page, s.site, { url: s.pnsd.pollUrl, channels: ["user:42"], transport: "poll" });
  await s.pub.waitParked(1);
  await publishMixed(s.pub, "user:42", 200, 1);
  const got = await waitMessages(s.page, 200);
  assert.deepEqual(ns(got.messages), range(0, 200));
  assert.equal(new Set(got.messages.map((m) => m.id)).size, 200, "every id once");
  assert.ok(got.messages.every((m) => m.channel === "user:42" && m.type === 70));
  assert.equal(got.resets.length, 0);
  assert.deepEqual(got.errors, []);
});

test("auto transport delivers against the server as it is (falls back to long-poll without SSE)", T, async (t) => {
  const s = await crossOrigin(t);
  if (!s) return;
  await openClient(s.page, s.site, { url: s.pnsd.pollUrl, channels: ["user:42"], transport: "auto" });
  await s.pub.waitParked(1);
  for (let n = 0; n < 20; n++) await s.pub.publish("user:42", { n });
  const got = await waitMessages(s.page, 20);
  assert.deepEqual(ns(got.messages), range(0, 20));
  assert.equal(got.resets.length, 0);
  const transport = await s.page.evaluate(() => window.client.transport);
  console.log(`# auto transport chose: ${transport}`);
});

test("SIGTERM and restart on the same port: error, back-off, recovery, onReset before the new run's messages", T, async (t) => {
  const s = await crossOrigin(t);
  if (!s) return;
  await openClient(s.page, s.site, { url: s.pnsd.pollUrl, channels: ["user:42"], transport: "poll" });
  await s.pub.waitParked(1);
  for (let n = 0; n < 5; n++) await s.pub.publish("user:42", { n });
  await waitMessages(s.page, 5);

  const { code } = await s.pnsd.stop("SIGTERM");
  assert.equal(code, 0, "pnsd drains and exits 0");
  await waitFor(async () => (await seen(s.page)).errors.some((e) => e.status === 0), "the client to see the refused re-poll");

  const again = await restartPnsd(t, s.pnsd, ["--cors-origin", s.site.origin]);
  const pub = await connectPublisher(t, again.sock);
  for (let n = 5; n < 10; n++) await pub.publish("user:42", { n });
  const got = await waitMessages(s.page, 10);
  assert.deepEqual(ns(got.messages), range(0, 10));
  assert.equal(got.resets.length, 1, "one reset: the epoch changed");
  assert.equal(got.resets[0].before, 5, "onReset comes before the new run's first message");
  assert.ok(got.states.some((st) => st.state === "backoff"), "the client backed off");
  assert.ok(got.errors.every((e) => !e.fatal && e.retryInMs != null), "errors were retried");
  // Still live after recovery: a message published while it is parked arrives.
  await pub.waitParked(1);
  await pub.publish("user:42", { n: 10 });
  assert.deepEqual(ns((await waitMessages(s.page, 11)).messages), range(0, 11));
});

test("503 with Retry-After (same origin through a proxy): the client waits at least Retry-After, then recovers", T, async (t) => {
  const b = await launchBrowser(t);
  if (!b) return;
  let pnsd;
  const site = await startStatic(t, { proxyPort: () => pnsd.port });
  pnsd = await startPnsd(t, { args: ["--max-connections", "1"] });
  const pub = await connectPublisher(t, pnsd.sock);
  // The one connection pnsd admits: a poll parked by the test.
  const held = holdPoll(t, pnsd.port);
  await pub.waitParked(1);

  await openClient(b.page, site, { url: `${site.origin}/pns/poll`, channels: ["user:42"], transport: "poll" });
  await waitFor(() => site.log.filter((e) => e.status === 503).length >= 3, "three 503 answers", 20000);
  held.destroy();
  await waitFor(async () => (await pub.stats()).connections === 0, "the held poll to go");
  // The client's next try comes after Retry-After plus its jitter (up to 8 s after three 503s).
  await waitFor(async () => (await pub.stats()).parked >= 1, "the client to park", 20000);
  await pub.publish("user:42", { n: 0 });
  const got = await waitMessages(b.page, 1);
  assert.deepEqual(ns(got.messages), [0]);

  const log = site.log.slice();
  for (let i = 0; i < log.length - 1; i++) {
    if (log[i].status !== 503) continue;
    const gap = log[i + 1].start - log[i].end;
    assert.ok(gap >= 1000, `request ${i + 1} came ${gap.toFixed(0)} ms after a 503 with Retry-After: 1`);
  }
  const refused = got.errors.filter((e) => e.status === 503);
  assert.ok(refused.length >= 3 && refused.every((e) => e.retryInMs >= 1000 && !e.fatal));
});

test("401: onError reports it, the client stops and sends nothing more", T, async (t) => {
  const b = await launchBrowser(t);
  if (!b) return;
  const site = await startStatic(t);
  const dir = tempDir(t);
  const pnsd = await startPnsd(t, { dir, args: ["--cors-origin", site.origin, "--secret-file", writeSecret(dir)] });
  const polls = countRequests(b.page, pnsd.pollUrl);
  await openClient(b.page, site, { url: pnsd.pollUrl, channels: ["user:42"], token: "not.a.token", transport: "poll" });
  await waitFor(async () => (await seen(b.page)).errors.length >= 1, "onError");
  await sleep(1500);
  const got = await seen(b.page);
  assert.equal(got.errors.length, 1);
  assert.equal(got.errors[0].status, 401);
  assert.equal(got.errors[0].fatal, true);
  assert.equal(await b.page.evaluate(() => window.client.state), "stopped");
  assert.equal(polls.n, 1, "no request after the 401");
  assert.match(await b.page.textContent("#error"), /^stopped: /);
});

test("getToken: an expired token is replaced and no message is lost across the refresh", T, async (t) => {
  const b = await launchBrowser(t);
  if (!b) return;
  const dir = tempDir(t);
  const secret = writeSecret(dir);
  let issued = 0;
  const site = await startStatic(t, {
    routes: {
      "/token": (req, res) => {
        issued += 1;
        res.writeHead(200, { "Content-Type": "text/plain", "Cache-Control": "no-store" }).end(mintToken(secret, ["user:42"]));
      },
    },
  });
  const pnsd = await startPnsd(t, { dir, args: ["--cors-origin", site.origin, "--secret-file", secret] });
  const pub = await connectPublisher(t, pnsd.sock);
  const shortLived = mintToken(secret, ["user:42"], 2);
  await openClient(b.page, site, {
    url: pnsd.pollUrl,
    channels: ["user:42"],
    token: shortLived,
    tokenUrl: "/token",
    hold: 1,
    transport: "poll",
  });
  await pub.waitParked(1);
  for (let n = 0; n < 5; n++) await pub.publish("user:42", { n });
  await waitMessages(b.page, 5);
  await waitFor(() => issued >= 1, "the client to ask for a fresh token", 10000);
  for (let n = 5; n < 10; n++) await pub.publish("user:42", { n });
  const got = await waitMessages(b.page, 10);
  assert.deepEqual(ns(got.messages), range(0, 10));
  assert.equal(got.resets.length, 0);
  assert.ok(got.errors.length >= 1 && got.errors.every((e) => e.status === 401 && !e.fatal));
  assert.equal(await b.page.evaluate(() => window.client.state), "open");
});

test("the cursor kept in localStorage: a page reload misses nothing and repeats nothing", T, async (t) => {
  const s = await crossOrigin(t);
  if (!s) return;
  const cfg = { url: s.pnsd.pollUrl, channels: ["user:42"], transport: "poll", useStorage: true, storageKey: "inbox" };
  await openClient(s.page, s.site, cfg);
  await s.pub.waitParked(1);
  for (let n = 0; n < 5; n++) await s.pub.publish("user:42", { n });
  assert.deepEqual(ns((await waitMessages(s.page, 5)).messages), range(0, 5));

  await s.page.goto("about:blank");
  await waitFor(async () => (await s.pub.stats()).parked === 0, "the old page's poll to go");
  for (let n = 5; n < 10; n++) await s.pub.publish("user:42", { n });
  await openClient(s.page, s.site, cfg);
  const got = await waitMessages(s.page, 5);
  assert.deepEqual(ns(got.messages), range(5, 10), "exactly what was published while the page was away");
  assert.equal(got.resets.length, 0);
  const stored = await s.page.evaluate(() => localStorage.getItem("inbox"));
  assert.equal(stored, got.messages[4].id);
});

test("CORS: a wrong --cors-origin is reported through onError, and the client keeps retrying", T, async (t) => {
  const b = await launchBrowser(t);
  if (!b) return;
  const site = await startStatic(t);
  const pnsd = await startPnsd(t, { args: ["--cors-origin", "http://wrong.example"] });
  await openClient(b.page, site, { url: pnsd.pollUrl, channels: ["user:42"], transport: "poll" });
  await waitFor(async () => (await seen(b.page)).errors.length >= 2, "two reported failures");
  const got = await seen(b.page);
  assert.ok(got.errors.every((e) => e.status === 0 && e.code === "network" && !e.fatal && e.retryInMs >= 0));
  assert.match(await b.page.textContent("#error"), /CORS/);
  assert.equal(await b.page.evaluate(() => window.client.state), "backoff");
});

test("CORS on errors: a mistyped endpoint shows its JSON error to the page (404 not_found, not status 0)", T, async (t) => {
  const s = await crossOrigin(t);
  if (!s) return;
  await openClient(s.page, s.site, { url: s.pnsd.origin + "/pns/pol", channels: ["user:42"], transport: "poll" });
  await waitFor(async () => (await seen(s.page)).errors.length >= 1, "onError");
  const e = (await seen(s.page)).errors[0];
  assert.equal(e.status, 404);
  assert.equal(e.code, "not_found");
  assert.equal(e.fatal, true);
});

test("503 with Retry-After across origins: the client reads Retry-After and waits at least that long", T, async (t) => {
  const s = await crossOrigin(t, ["--max-connections", "1"]);
  if (!s) return;
  const held = holdPoll(t, s.pnsd.port);
  // The publisher is connection one; the held poll fills the limit only once it is parked.
  await s.pub.waitParked(1);
  await openClient(s.page, s.site, { url: s.pnsd.pollUrl, channels: ["user:42"], transport: "poll" });
  await waitFor(async () => (await seen(s.page)).errors.length >= 2, "two 503s");
  held.destroy();
  const got = await seen(s.page);
  assert.ok(got.errors.every((e) => e.status === 503 && e.retryInMs >= 1000));
});

test("repeatable --cors-origin: pages on two origins both receive", T, async (t) => {
  const b = await launchBrowser(t);
  if (!b) return;
  const a = await startStatic(t);
  const c = await startStatic(t);
  const pnsd = await startPnsd(t, { args: ["--cors-origin", a.origin, "--cors-origin", c.origin] });
  const pub = await connectPublisher(t, pnsd.sock);
  const other = await b.context.newPage();
  await openClient(b.page, a, { url: pnsd.pollUrl, channels: ["user:42"], transport: "poll" });
  await openClient(other, c, { url: pnsd.pollUrl, channels: ["user:42"], transport: "poll" });
  await pub.waitParked(2);
  for (let n = 0; n < 3; n++) await pub.publish("user:42", { n });
  assert.deepEqual(ns((await waitMessages(b.page, 3)).messages), range(0, 3));
  assert.deepEqual(ns((await waitMessages(other, 3)).messages), range(0, 3));
});
