// The client's SSE transport and a plain EventSource against the real pnsd (docs/protocol.md,
// section 15). The tests follow the description of the stream:
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

const T = { timeout: 120000 };

async function setup(t, args = []) {
  const b = await launchBrowser(t);
  if (!b) return null;
  const site = await startStatic(t);
  const pnsd = await startPnsd(t, { args: ["--cors-origin", site.origin, "--buffer", "256", ...args] });
  const pub = await connectPublisher(t, pnsd.sock);
  // EventSource requests the page opened (each stream, and each reconnect, is one).
  const streams = { n: 0 };
  b.page.on("request", (r) => {
    if (r.resourceType() === "eventsource") streams.n += 1;
  });
  await openClient(b.page, site);
  return { ...b, site, pnsd, pub, streams };
}

test("SSE transport: 200 messages with bursts of 50, each exactly once in order", T, async (t) => {
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

test("auto transport uses SSE where EventSource exists", T, async (t) => {
  const s = await setup(t);
  if (!s) return;
  await s.page.evaluate((url) => window.startClient({ url, channels: ["user:42"], transport: "auto" }), s.pnsd.pollUrl);
  await waitFor(() => s.page.evaluate(() => window.client.state === "open"), "the stream to open");
  await s.pub.publish("user:42", { n: 0 }, 70);
  assert.deepEqual(ns((await waitMessages(s.page, 1)).messages), [0]);
  assert.equal(await s.page.evaluate(() => window.client.transport), "sse");
});

test("SSE: streams that end after --sse-max reconnect with the cursor; nothing lost or repeated", T, async (t) => {
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
  assert.ok(s.streams.n >= 3, `the streams ended and the client reopened them (${s.streams.n} streams)`);
});

test("SSE: a plain EventSource resumes from Last-Event-ID after the server ends the stream (the header wins over the URL's cursor)", T, async (t) => {
  const s = await setup(t, ["--sse-max", "2"]);
  if (!s) return;
  // EventSource resends its first URL on every reconnect, cursor included: only Last-Event-ID
  // moves, so a server that let the URL's cursor win would replay from the start each time.
  const start = (await s.pub.publish("user:42", { n: -1 }, 70)).id;
  await s.page.evaluate(({ url, start }) => {
    window.raw = { data: [], opens: 0, resets: 0 };
    const es = new EventSource(`${url}?channel=user:42&cursor=${encodeURIComponent(start)}`);
    es.onopen = () => (window.raw.opens += 1);
    es.onmessage = (e) => window.raw.data.push(JSON.parse(e.data).data.n);
    es.addEventListener("reset", () => (window.raw.resets += 1));
  }, { url: s.pnsd.pollUrl, start });
  await waitFor(() => s.page.evaluate(() => window.raw.opens >= 1), "the stream to open");
  for (let n = 0; n < 120; n++) {
    await s.pub.publish("user:42", { n }, 70);
    await sleep(50);
  }
  await waitFor(() => s.page.evaluate(() => window.raw.data.length >= 120), "120 events", 20000);
  await sleep(300);
  const raw = await s.page.evaluate(() => window.raw);
  assert.deepEqual(raw.data, range(0, 120), "each once, in order (a URL cursor winning replays)");
  assert.ok(raw.opens >= 3, `the browser reconnected (${raw.opens} opens)`);
  assert.equal(raw.resets, 0);
});

test("SSE: SIGTERM and restart: onReset before the new run's messages, which come over SSE", T, async (t) => {
  const s = await setup(t);
  if (!s) return;
  await s.page.evaluate((url) => window.startClient({ url, channels: ["user:42"], transport: "sse" }), s.pnsd.pollUrl);
  await waitFor(() => s.page.evaluate(() => window.client.state === "open"), "the stream to open");
  for (let n = 0; n < 5; n++) await s.pub.publish("user:42", { n });
  await waitMessages(s.page, 5);
  assert.equal((await s.pnsd.stop("SIGTERM")).code, 0);
  const again = await restartPnsd(t, s.pnsd, ["--cors-origin", s.site.origin]);
  const pub = await connectPublisher(t, again.sock);
  // The client is back on a stream of the new run before anything is published, so the new
  // run's messages can only come over it (the client polls only to probe, with hold=0).
  await waitFor(async () => (await pub.stats()).streams >= 1, "the client's stream on the new run");
  for (let n = 5; n < 10; n++) await pub.publish("user:42", { n });
  const got = await waitMessages(s.page, 10);
  assert.deepEqual(ns(got.messages), range(0, 10));
  assert.equal(got.resets.length, 1);
  assert.equal(got.resets[0].before, 5);
  assert.ok(!got.errors.some((e) => e.code === "sse_refused"), "no SSE refusal");
  assert.equal((await pub.stats()).streams, 1, "still on the stream");
  assert.equal(await s.page.evaluate(() => window.client.transport), "sse");
});
