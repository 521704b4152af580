// Stub of the webmail framework the seed's push loop runs in: the session, the configuration
// and the inbox widget. Records what the loop does in window.Webmail.record for the tests.
(function () {
  var q = new URLSearchParams(location.search);
  var record = { mails: [], other: [], errors: [], scheduled: [], requests: 0, loggedOut: false };
  window.Webmail = {
    record: record,
    session: { sid: q.get("sid") || "" },
    config: { pnsBase: q.get("pns") || "" },
    newMail: function (data) {
      record.mails.push(data);
      document.getElementById("newmail").textContent = String(record.mails.length);
      var li = document.createElement("li");
      li.textContent = (data && data.subject) || JSON.stringify(data);
      document.getElementById("inbox").appendChild(li);
    },
    otherEvent: function (msg) {
      record.other.push(msg);
    },
    status: function (text) {
      document.getElementById("status").textContent = text;
    },
    sessionOver: function () {
      record.loggedOut = true;
      document.getElementById("status").textContent = "logged out";
    },
    pnsError: function (answer, status) {
      record.errors.push({ status: status, answer: answer });
    },
    // The framework's timer: the loop schedules through it so the tests can see each delay.
    later: function (fn, ms) {
      record.scheduled.push(ms);
      return window.setTimeout(fn, ms);
    },
  };
})();
