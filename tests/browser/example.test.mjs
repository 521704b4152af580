// examples/webmail in headless Chromium against the real pnsd: new mail appears as it is
// published, and the run saves the page's screenshot as docs/img/webmail.png.
import { test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { ROOT, startPnsd, startStatic, connectPublisher, launchBrowser, waitFor } from "./lib/harness.mjs";

const MAILS = [
  { from: "Ada Lovelace", subject: "Notes on the Analytical Engine" },
  { from: "Grace Hopper", subject: "Re: the first actual bug" },
  { from: "Alan Turing", subject: "Lunch on Thursday?" },
];

test("webmail example: new mail notifications as they arrive; screenshot to docs/img/webmail.png", { timeout: 60000 }, async (t) => {
  const b = await launchBrowser(t);
  if (!b) return;
  const site = await startStatic(t);
  const pnsd = await startPnsd(t, { args: ["--cors-origin", site.origin] });
  const pub = await connectPublisher(t, pnsd.sock);
  // The page's default transport (auto): an event stream in Chromium.
  const q = new URLSearchParams({ pnsd: pnsd.pollUrl, channel: "user:42" });
  await b.page.setViewportSize({ width: 960, height: 400 });
  await b.page.goto(`${site.origin}/examples/webmail/?${q}`);
  await waitFor(async () => (await b.page.textContent("#status")) === "live (sse)", "the page to be live");
  await pub.waitParked(1);
  for (const m of MAILS) {
    await pub.publish("user:42", m, 70);
    // Another type on the same channel is not mail.
    await pub.publish("user:42", { unrelated: true }, 12);
  }
  await waitFor(async () => (await b.page.locator("li.mail").count()) === MAILS.length, "three mails listed");
  const subjects = await b.page.locator("li.mail .subject").allTextContents();
  assert.deepEqual(subjects, MAILS.map((m) => m.subject).reverse(), "newest first");
  assert.match(await b.page.textContent("#toast"), /New mail from Alan Turing/);
  assert.equal(await b.page.title(), "(3) Inbox · pnsd webmail example");
  await b.page.screenshot({ path: path.join(ROOT, "docs/img/webmail.png") });
});
