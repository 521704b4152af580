// The seed webmail's polling loop (seed-page.js, unmodified apart from the stubbed framework)
// in headless Chromium against the real pnsd, from another origin.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  startPnsd,
  startStatic,
  connectPublisher,
  launchBrowser,
  mintToken,
  writeSecret,
  tempDir,
  waitFor,
  sleep,
  range,
  publishMixed,
} from "./lib/harness.mjs";

const T = { timeout: 120000 };

/** pnsd (with `args`) and the seed page polling it with `sid`. */
async function seedPage(t, { args = [], sid }) {
  const b = await launchBrowser(t);
  if (!b) return null;
  const site = await startStatic(t);
  const dir = tempDir(t);
  const extra = typeof args === "function" ? args(dir) : args;
  const pnsd = await startPnsd(t, { dir, args: ["--cors-origin", site.origin, ...extra] });
  const pub = await connectPublisher(t, pnsd.sock);
  const requests = { n: 0 };
  b.page.on("request", (r) => {
    if (r.url().startsWith(pnsd.pollUrl)) requests.n += 1;
  });
  const open = async (theSid) => {
    const q = new URLSearchParams({ sid: typeof theSid === "function" ? theSid(dir) : theSid, pns: pnsd.origin });
    await b.page.goto(`${site.origin}/tests/browser/seed-page.html?${q}`);
  };
  return { ...b, site, pnsd, pub, dir, requests, open, record: () => b.page.evaluate(() => window.Webmail.record) };
}

const mails = (s) => s.page.evaluate(() => window.Webmail.record.mails.length);

test("seed page with a pnsd token in sid: new mail published while it waits arrives once, in order", T, async (t) => {
  let secret;
  const s = await seedPage(t, { args: (dir) => ["--secret-file", (secret = writeSecret(dir))] });
  if (!s) return;
  await s.open(mintToken(secret, ["user:42"]));
  const N = 12;
  for (let n = 0; n < N; n++) {
    // Every third message is preceded by another type, which the page must not show as mail.
    // One message per poll: the seed keeps no cursor, so only what arrives while it is parked
    // is certain to reach it.
    if (n % 3 === 2) {
      await s.pub.waitParked(1);
      await s.pub.publish("user:42", { n, other: true }, 71);
      await waitFor(async () => (await s.record()).other.length === Math.floor(n / 3) + 1, `event ${n} in the page`);
    }
    await s.pub.waitParked(1);
    await s.pub.publish("user:42", { n, subject: `mail ${n}` }, 70);
    await waitFor(async () => (await mails(s)) === n + 1, `mail ${n} in the page`);
  }
  await sleep(700);
  const r = await s.record();
  assert.deepEqual(r.mails.map((d) => d.n), range(0, N));
  assert.ok(r.other.every((m) => m.type === 71));
  assert.deepEqual(r.errors, []);
  assert.ok(r.scheduled.length >= N && r.scheduled.every((ms) => ms === 500), "next poll 500 ms after each answer");
  assert.equal(await s.page.textContent("#newmail"), String(N));
});

test("seed page without --secret-file, a sid that names no session: 401 session_unknown, its logged-out path", T, async (t) => {
  const s = await seedPage(t, { args: [] });
  if (!s) return;
  await s.open("anything");
  await waitFor(async () => (await s.record()).loggedOut, "the page to log out");
  await sleep(1000);
  const r = await s.record();
  assert.equal(r.errors.length, 1);
  assert.equal(r.errors[0].status, 401);
  assert.equal(r.errors[0].answer.errorcode, "session_unknown");
  assert.deepEqual(r.scheduled, []);
  assert.equal(s.requests.n, 1, "one request, then no more");
});

test("seed page without --secret-file, a sid outside the session charset: 400 no_channel, and the page backs off for 1003 s", T, async (t) => {
  const s = await seedPage(t, { args: [] });
  if (!s) return;
  // A dot is never in a session id: without --secret-file such a sid is ignored (contract v1).
  await s.open("not.a.session");
  await waitFor(async () => (await s.record()).errors.length >= 1, "the page to see an error");
  await sleep(1500);
  const r = await s.record();
  assert.equal(r.errors.length, 1);
  assert.equal(r.errors[0].status, 400);
  assert.equal(r.errors[0].answer.errorcode, "no_channel");
  assert.deepEqual(r.scheduled, [1003000]);
  assert.equal(s.requests.n, 1, "one request, then minutes of silence");
});

test("seed page with a refused token: 401 is its logged-out path, polling stops", T, async (t) => {
  const s = await seedPage(t, { args: (dir) => ["--secret-file", writeSecret(dir)] });
  if (!s) return;
  await s.open("not.a.token");
  await waitFor(async () => (await s.record()).loggedOut, "the page to log out");
  await sleep(1000);
  const r = await s.record();
  assert.equal(r.errors[0].status, 401);
  assert.deepEqual(r.scheduled, []);
  assert.equal(s.requests.n, 1);
  assert.equal(await s.page.textContent("#status"), "logged out");
});

test("seed page in session mode: 200 messages, bursts of 50 and publishes during its 500 ms pause, each exactly once in order", T, async (t) => {
  const s = await seedPage(t, { args: ["--buffer", "256"] });
  if (!s) return;
  const ack = await s.pub.send({ op: "session", sid: "S1", channels: ["user:42"], ttl: 600 });
  assert.equal(ack.ok, true);
  await s.open("S1");
  await s.pub.waitParked(1);
  // Singles 20 ms apart: many land in the page's 500 ms pauses.
  await publishMixed(s.pub, "user:42", 200, 20);
  await waitFor(async () => (await mails(s)) >= 200, "200 mails in the page", 60000);
  await sleep(1200);
  const r = await s.record();
  assert.deepEqual(r.mails.map((d) => d.n), range(0, 200));
  assert.deepEqual(r.errors, []);
});

test("seed page in session mode: ending the session answers its poll at once and the page stops", T, async (t) => {
  const s = await seedPage(t, { args: [] });
  if (!s) return;
  assert.equal((await s.pub.send({ op: "session", sid: "S2", channels: ["user:42"], ttl: 600 })).ok, true);
  await s.open("S2");
  await s.pub.waitParked(1);
  await s.pub.publish("user:42", { n: 0 }, 70);
  await waitFor(async () => (await mails(s)) === 1, "the first mail");
  await s.pub.waitParked(1);
  const before = s.requests.n;
  assert.equal((await s.pub.send({ op: "end_session", sid: "S2" })).ok, true);
  await waitFor(async () => (await s.record()).loggedOut, "the page to log out", 3000);
  await sleep(1000);
  assert.equal(s.requests.n, before, "no poll after the session ended");
  assert.equal((await s.record()).errors.at(-1).status, 401);
});
