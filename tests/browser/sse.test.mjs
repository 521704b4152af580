// PENDING until pnsd speaks Server-Sent Events (issue 11 item 2): every test here is skipped with
// that reason, so none is counted as passing. The integrator removes the `skip` (one constant
// below) when the server lands. The tests follow the description of the stream:
// `Accept: text/event-stream` on GET /pns/poll, `id:` = the message's cursor, `data:` = the
// message object as one JSON line, event name `message`, `event: reset` before the messages of a
// reset, a `retry:` line, comment heartbeats (--sse-heartbeat), a clean end after --sse-max SECS.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  startPnsd,
  startStatic,
  connectPublisher,
  launchBrowser,
  waitFor,
  sleep,
  ns,
  range,
  publishMixed,
  restartPnsd,
  openClient,
  waitMessages,
} from "./lib/harness.mjs";

const PENDING = { timeout: 120000, skip: "pending: pnsd does not speak SSE yet (issue 11 item 2)" };

async function setup(t, args = []) {
  const b = await launchBrowser(t);
  if (!b) return null;
  const site = await startStatic(t);
  const pnsd = await startPnsd(t, { args: ["--cors-origin", site.origin, "--buffer", "256", ...args] });
  const pub = await connectPublisher(t, pnsd.sock);
  await openClient(b.page, site);
  return { ...b, site, pnsd, pub };
}

test("SSE transport: 200 messages with bursts of 50, each exactly once in order", PENDING, async (t) => {
  const s = await setup(t);
  if (!s) return;
  await s.page.evaluate((url) => window.startClient({ url, channels: ["user:42"], transport: "sse" }), s.pnsd.pollUrl);
  await waitFor(() => s.page.evaluate(() => window.client.state === "open"), "the stream to open");
  await publishMixed(s.pub, "user:42", 200, 2);
  const got = await waitMessages(s.page, 200);
  assert.deepEqual(ns(got.messages), range(0, 200));
  assert.equal(new Set(got.messages.map((m) => m.id)).size, 200);
  assert.equal(got.resets.length, 0);
  assert.deepEqual(got.errors, [], "no error (a server without SSE shows as sse_refused)");
  assert.equal(await s.page.evaluate(() => window.client.transport), "sse");
});

test("auto transport uses SSE where EventSource exists", PENDING, async (t) => {
  const s = await setup(t);
  if (!s) return;
  await s.page.evaluate((url) => window.startClient({ url, channels: ["user:42"], transport: "auto" }), s.pnsd.pollUrl);
  await waitFor(() => s.page.evaluate(() => window.client.state === "open"), "the stream to open");
  await s.pub.publish("user:42", { n: 0 }, 70);
  assert.deepEqual(ns((await waitMessages(s.page, 1)).messages), [0]);
  assert.equal(await s.page.evaluate(() => window.client.transport), "sse");
});

test("SSE: streams that end after --sse-max reconnect with the cursor; nothing lost or repeated", PENDING, async (t) => {
  const s = await setup(t, ["--sse-max", "2"]);
  if (!s) return;
  await s.page.evaluate((url) => window.startClient({ url, channels: ["user:42"], transport: "sse" }), s.pnsd.pollUrl);
  await waitFor(() => s.page.evaluate(() => window.client.state === "open"), "the stream to open");
  // About 7 s of publishing: at least three stream ends fall inside it.
  await publishMixed(s.pub, "user:42", 300, 40);
  const got = await waitMessages(s.page, 300);
  assert.deepEqual(ns(got.messages), range(0, 300));
  assert.equal(got.resets.length, 0);
  assert.deepEqual(got.errors, []);
});

test("SSE: a plain EventSource resumes from Last-Event-ID after the server ends the stream", PENDING, async (t) => {
  const s = await setup(t, ["--sse-max", "2"]);
  if (!s) return;
  await s.page.evaluate((url) => {
    window.raw = { data: [], opens: 0, resets: 0 };
    const es = new EventSource(url + "?channel=user:42");
    es.onopen = () => (window.raw.opens += 1);
    es.onmessage = (e) => window.raw.data.push(JSON.parse(e.data).data.n);
    es.addEventListener("reset", () => (window.raw.resets += 1));
  }, s.pnsd.pollUrl);
  await waitFor(() => s.page.evaluate(() => window.raw.opens >= 1), "the stream to open");
  for (let n = 0; n < 120; n++) {
    await s.pub.publish("user:42", { n }, 70);
    await sleep(50);
  }
  await waitFor(() => s.page.evaluate(() => window.raw.data.length >= 120), "120 events", 20000);
  await sleep(300);
  const raw = await s.page.evaluate(() => window.raw);
  assert.ok(raw.opens >= 3, `the browser reconnected (${raw.opens} opens)`);
  assert.deepEqual(raw.data, range(0, 120));
  assert.equal(raw.resets, 0);
});

test("SSE: SIGTERM and restart: onReset before the new run's messages, which come over SSE", PENDING, async (t) => {
  const s = await setup(t);
  if (!s) return;
  await s.page.evaluate((url) => window.startClient({ url, channels: ["user:42"], transport: "sse" }), s.pnsd.pollUrl);
  await waitFor(() => s.page.evaluate(() => window.client.state === "open"), "the stream to open");
  for (let n = 0; n < 5; n++) await s.pub.publish("user:42", { n });
  await waitMessages(s.page, 5);
  assert.equal((await s.pnsd.stop("SIGTERM")).code, 0);
  const again = await restartPnsd(t, s.pnsd, ["--cors-origin", s.site.origin]);
  const pub = await connectPublisher(t, again.sock);
  for (let n = 5; n < 10; n++) await pub.publish("user:42", { n });
  const got = await waitMessages(s.page, 10);
  assert.deepEqual(ns(got.messages), range(0, 10));
  assert.equal(got.resets.length, 1);
  assert.equal(got.resets[0].before, 5);
  assert.ok(!got.errors.some((e) => e.code === "sse_refused"), "the messages came over SSE");
});
