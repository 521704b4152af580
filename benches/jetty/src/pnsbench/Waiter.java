package pnsbench;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.atomic.AtomicBoolean;
import javax.servlet.AsyncContext;
import javax.servlet.AsyncEvent;
import javax.servlet.AsyncListener;
import javax.servlet.http.HttpServletResponse;

/**
 * One poll parked with {@code request.startAsync()}.
 *
 * <p>Invariant: exactly one of publish, hold timeout and connection error answers or forgets a
 * waiter; {@code done} is claimed first, so the others see it taken and do nothing.
 *
 * <p>Jetty 9.4 does not read from a connection while its request is suspended, so a client that
 * hangs up while parked is noticed only when its answer is written (publish or hold expiry):
 * until then its socket stays open in CLOSE_WAIT and counts against the open-file limit. This
 * is stock Jetty behaviour, kept as a Jetty user would have it.
 */
final class Waiter implements AsyncListener {
    final String channel;
    final long cursor;
    private final Broker broker;
    private final AtomicBoolean done = new AtomicBoolean();
    private volatile AsyncContext async;

    Waiter(Broker broker, String channel, long cursor) {
        this.broker = broker;
        this.channel = channel;
        this.cursor = cursor;
    }

    /** Called under the broker's monitor, before any publish can see this waiter. */
    void parked(AsyncContext ac) {
        async = ac;
    }

    /** Answers with whatever the channel holds after the cursor now (possibly nothing). */
    void answer() {
        if (!done.compareAndSet(false, true)) {
            return;
        }
        Broker.Answer a = broker.takeAnswer(this);
        AsyncContext ac = async;
        try {
            write((HttpServletResponse) ac.getResponse(), a);
        } catch (IOException | IllegalStateException e) {
            // The client went away while parked: nothing more to do than complete.
        } finally {
            try {
                ac.complete();
            } catch (IllegalStateException e) {
                // Already completed by the container after an error.
            }
        }
    }

    /** Writes one answer with pnsd's headers; Content-Length, so no chunked encoding. */
    static void write(HttpServletResponse resp, Broker.Answer a) throws IOException {
        byte[] bytes = a.body().getBytes(StandardCharsets.UTF_8);
        resp.setStatus(HttpServletResponse.SC_OK);
        resp.setContentType("application/json");
        resp.setHeader("Cache-Control", "no-store");
        resp.setHeader("ETag", "\"" + a.cursor() + "\"");
        resp.setContentLength(bytes.length);
        resp.getOutputStream().write(bytes);
    }

    @Override
    public void onTimeout(AsyncEvent event) {
        answer();
    }

    @Override
    public void onError(AsyncEvent event) {
        if (done.compareAndSet(false, true)) {
            broker.forget(this);
        }
    }

    @Override
    public void onComplete(AsyncEvent event) {}

    @Override
    public void onStartAsync(AsyncEvent event) {}
}
