package pnsbench;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.Map;
import javax.servlet.AsyncContext;
import javax.servlet.http.HttpServlet;
import javax.servlet.http.HttpServletRequest;
import javax.servlet.http.HttpServletResponse;

/**
 * {@code GET /pns/poll?channel=CH&cursor=CURSOR&hold=S}: answers at once when the channel holds
 * messages after the cursor, otherwise parks the request with {@code startAsync()} for the hold
 * time (Servlet 3 async; no thread is held while parked).
 */
final class PollServlet extends HttpServlet {
    private static final long serialVersionUID = 1L;

    /** Hold when the client names none: pnsd's {@code --hold} default, seconds. */
    static final long DEFAULT_HOLD_S = 30;
    /** Longest hold a client may ask for: pnsd's {@code --max-hold} default, seconds. */
    static final long MAX_HOLD_S = 120;

    private final transient Broker broker;

    PollServlet(Broker broker) {
        this.broker = broker;
    }

    @Override
    protected void doGet(HttpServletRequest req, HttpServletResponse resp) throws IOException {
        Map<String, String> q = Query.parse(req.getQueryString());
        if (q == null) {
            error(resp, "bad_query", "query does not decode");
            return;
        }
        String channel = q.get("channel");
        if (!Query.validChannel(channel)) {
            error(resp, "bad_channel", "channel missing or not 1-128 of [A-Za-z0-9_.:@-]");
            return;
        }
        long hold = DEFAULT_HOLD_S;
        String h = q.get("hold");
        if (h != null) {
            if (!h.matches("[0-9]{1,9}")) {
                error(resp, "bad_hold", "hold is not a non-negative integer");
                return;
            }
            hold = Math.min(Long.parseLong(h), MAX_HOLD_S);
        }
        long newest = broker.newest();
        long cursor = newest;
        String c = q.get("cursor");
        if (c == null || c.isEmpty()) {
            c = ifNoneMatch(req);
        }
        if (c != null && !c.isEmpty()) {
            if (!c.matches("[0-9]{1,18}") || Long.parseLong(c) > newest) {
                error(resp, "bad_cursor", "cursor does not parse or is in the future");
                return;
            }
            cursor = Long.parseLong(c);
        }
        Waiter w = new Waiter(broker, channel, cursor);
        final long holdMs = hold * 1000;
        Broker.Answer now = broker.pollOrPark(w, hold > 0, () -> {
            AsyncContext ac = req.startAsync();
            ac.setTimeout(holdMs);
            ac.addListener(w);
            w.parked(ac);
        });
        if (now != null) {
            Waiter.write(resp, now);
        }
    }

    private static String ifNoneMatch(HttpServletRequest req) {
        String v = req.getHeader("If-None-Match");
        if (v == null) {
            return null;
        }
        v = v.trim();
        if (v.startsWith("W/")) {
            v = v.substring(2);
        }
        if (v.length() >= 2 && v.startsWith("\"") && v.endsWith("\"")) {
            v = v.substring(1, v.length() - 1);
        }
        return v;
    }

    static void error(HttpServletResponse resp, String code, String message) throws IOException {
        byte[] body = ("{\"errorcode\":\"" + code + "\",\"message\":\"" + message + "\"}")
                .getBytes(StandardCharsets.UTF_8);
        resp.setStatus(HttpServletResponse.SC_BAD_REQUEST);
        resp.setContentType("application/json");
        resp.setContentLength(body.length);
        resp.getOutputStream().write(body);
    }
}
