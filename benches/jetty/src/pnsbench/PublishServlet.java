package pnsbench;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import javax.servlet.http.HttpServlet;
import javax.servlet.http.HttpServletRequest;
import javax.servlet.http.HttpServletResponse;
import org.eclipse.jetty.util.ajax.JSON;

/**
 * {@code POST /pub?channel=CH} with the data as body: appends the message and answers every
 * poll parked on the channel from this request's thread (the usual Servlet-3 long-poll
 * pattern), then acknowledges {@code {"ok":true,"id":".."}}.
 *
 * <p>A body that is JSON is stored as is; any other body is stored as a JSON string, so an
 * answer is always valid JSON.
 */
final class PublishServlet extends HttpServlet {
    private static final long serialVersionUID = 1L;

    /** Largest body accepted, as pnsd's publish line limit. */
    static final int MAX_BODY = 65_536;

    private final transient Broker broker;

    PublishServlet(Broker broker) {
        this.broker = broker;
    }

    @Override
    protected void doPost(HttpServletRequest req, HttpServletResponse resp) throws IOException {
        Map<String, String> q = Query.parse(req.getQueryString());
        String channel = q == null ? null : q.get("channel");
        if (!Query.validChannel(channel)) {
            PollServlet.error(resp, "bad_channel", "channel missing or not 1-128 of [A-Za-z0-9_.:@-]");
            return;
        }
        byte[] raw;
        try (InputStream in = req.getInputStream()) {
            raw = in.readNBytes(MAX_BODY + 1);
        }
        if (raw.length > MAX_BODY) {
            PollServlet.error(resp, "too_large", "body over 65536 bytes");
            return;
        }
        String text = new String(raw, StandardCharsets.UTF_8).trim();
        String json = text.isEmpty() ? "null" : asJson(text);
        List<Waiter> woken = new ArrayList<>();
        long id = broker.publish(channel, json, woken);
        for (Waiter w : woken) {
            w.answer();
        }
        byte[] ack = ("{\"ok\":true,\"id\":\"" + id + "\"}").getBytes(StandardCharsets.UTF_8);
        resp.setStatus(HttpServletResponse.SC_OK);
        resp.setContentType("application/json");
        resp.setContentLength(ack.length);
        resp.getOutputStream().write(ack);
    }

    private static String asJson(String text) {
        try {
            JSON.parse(text);
            return text;
        } catch (RuntimeException e) {
            return JSON.toString(text);
        }
    }
}
