// The seed webmail's polling loop (ported; the Webmail object is the stubbed framework).
// It keeps no cursor: the server answers each poll with what arrives while it is parked.
(function () {
  var PNS_NEXT_POLL_MS = 500; // after an answer
  var PNS_ERROR_RETRY_MS = 1003 * 1000; // after an errorcode answer or a failed request
  var PNS_TYPE_NEWMAIL = 70;

  function pnsUrl() {
    return Webmail.config.pnsBase + "/pns/poll?sid=" + encodeURIComponent(Webmail.session.sid) + "&comefrom=100";
  }

  function pnsPoll() {
    var xhr = new XMLHttpRequest();
    xhr.open("GET", pnsUrl(), true);
    xhr.onreadystatechange = function () {
      if (xhr.readyState != 4) return;
      var answer = null;
      try {
        answer = JSON.parse(xhr.responseText);
      } catch (e) {
        answer = null;
      }
      if (xhr.status == 401) {
        // The session is over (logged out elsewhere, expired): stop polling.
        Webmail.pnsError(answer, xhr.status);
        Webmail.sessionOver();
        return;
      }
      if (!answer || answer.errorcode) {
        Webmail.pnsError(answer, xhr.status);
        Webmail.status("push error, retrying in " + PNS_ERROR_RETRY_MS / 1000 + " s");
        Webmail.later(pnsPoll, PNS_ERROR_RETRY_MS);
        return;
      }
      for (var i = 0; i < answer.c; i++) {
        var msg = answer.msg[i];
        if (msg.type == PNS_TYPE_NEWMAIL) Webmail.newMail(msg.data);
        else Webmail.otherEvent(msg);
      }
      Webmail.status("connected");
      Webmail.later(pnsPoll, PNS_NEXT_POLL_MS);
    };
    Webmail.record.requests++;
    xhr.send(null);
  }

  pnsPoll();
})();
