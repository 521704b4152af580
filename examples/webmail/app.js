// "New mail" notifications with clients/js/pnsd.js: the seed webmail's scenario, type 70 = new
// mail. Query parameters: pnsd (the poll URL), channel, token, transport (auto|sse|poll).
import { PnsClient } from "/clients/js/pnsd.js";

const TYPE_NEW_MAIL = 70;
const q = new URLSearchParams(location.search);
const url = q.get("pnsd") || "http://127.0.0.1:8080/pns/poll";
const channel = q.get("channel") || "user:42";
const $ = (id) => document.getElementById(id);
let unread = 0;
let toastTimer = null;

$("who").textContent = channel;

function showMail(data) {
  const list = $("mails");
  list.querySelector(".empty")?.remove();
  const li = document.createElement("li");
  li.className = "mail new";
  const from = document.createElement("span");
  from.className = "from";
  from.textContent = data.from || "(unknown sender)";
  const subject = document.createElement("span");
  subject.className = "subject";
  subject.textContent = data.subject || "(no subject)";
  li.append(from, subject);
  list.prepend(li);
  unread += 1;
  document.title = `(${unread}) Inbox · pnsd webmail example`;
  const toast = $("toast");
  toast.textContent = `New mail from ${from.textContent}: ${subject.textContent}`;
  toast.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (toast.hidden = true), 4000);
}

const client = new PnsClient(url, {
  channels: [channel],
  token: q.get("token") || undefined,
  transport: q.get("transport") || "auto",
  storage: localStorage, // a reload continues where the page left off
  onMessage(msg) {
    if (msg.type === TYPE_NEW_MAIL && msg.data && typeof msg.data === "object") showMail(msg.data);
  },
  onReset() {
    // The server could not continue exactly (restart, or we were away too long): a real
    // webmail would reload the folder list here.
    $("error").hidden = false;
    $("error").textContent = "Reconnected after a gap: refresh the folder to be sure.";
  },
  onError(e) {
    $("error").hidden = false;
    $("error").textContent = e.fatal ? `Stopped: ${e.message}` : `${e.message} (retrying in ${Math.round(e.retryInMs / 1000)} s)`;
  },
  onState({ state, transport }) {
    const pill = $("status");
    pill.textContent = state === "open" ? `live (${transport})` : state;
    pill.className = `pill ${state}`;
    if (state === "open") $("error").hidden = true;
  },
});
client.start();
window.pnsClient = client;
