package pnsbench;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import javax.servlet.http.HttpServlet;
import javax.servlet.http.HttpServletRequest;
import javax.servlet.http.HttpServletResponse;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import org.eclipse.jetty.servlet.ServletContextHandler;
import org.eclipse.jetty.servlet.ServletHolder;
import org.eclipse.jetty.util.thread.QueuedThreadPool;

/**
 * The Jetty 9.4 peer of pnsd for benches/peers.sh: a plain embedded Jetty with a
 * QueuedThreadPool, one ServerConnector and Servlet-3 async long polls, set up the way a
 * production Jetty user would (Jetty's defaults except where a long-poll server must differ).
 *
 * <p>Usage: {@code java -cp CLASSPATH pnsbench.PollServer PORT [HOST]} (HOST defaults to
 * 127.0.0.1). Prints {@code jetty-poll listening on http://HOST:PORT} once it accepts.
 *
 * <p>Endpoints: {@code GET /pns/poll}, {@code POST /pub?channel=CH}, {@code GET /pns/health}.
 */
public final class PollServer {
    /** Jetty's own default pool size; parked polls hold no thread, so it is never exhausted. */
    static final int MAX_THREADS = 200;
    /** Jetty's own default number of idle threads kept. */
    static final int MIN_THREADS = 8;
    /**
     * Connection idle timeout, ms: longer than the longest hold (120 s) so the connector never
     * times out a parked poll before its own hold timer answers it; 10 s of slack.
     */
    static final long IDLE_TIMEOUT_MS = (PollServlet.MAX_HOLD_S + 10) * 1000;
    /** Listen backlog (jetty.http.acceptQueueSize); nginx's default is 511, Linux caps at somaxconn. */
    static final int ACCEPT_QUEUE = 1024;

    private PollServer() {}

    public static void main(String[] args) throws Exception {
        if (args.length < 1 || args.length > 2) {
            System.err.println("usage: pnsbench.PollServer PORT [HOST]");
            System.exit(2);
        }
        int port = Integer.parseInt(args[0]);
        String host = args.length > 1 ? args[1] : "127.0.0.1";

        QueuedThreadPool pool = new QueuedThreadPool(MAX_THREADS, MIN_THREADS);
        pool.setName("jetty-poll");
        Server server = new Server(pool);
        ServerConnector connector = new ServerConnector(server);
        connector.setHost(host);
        connector.setPort(port);
        connector.setIdleTimeout(IDLE_TIMEOUT_MS);
        connector.setAcceptQueueSize(ACCEPT_QUEUE);
        server.addConnector(connector);

        Broker broker = new Broker();
        ServletContextHandler context = new ServletContextHandler(ServletContextHandler.NO_SESSIONS);
        context.setContextPath("/");
        ServletHolder poll = new ServletHolder("poll", new PollServlet(broker));
        poll.setAsyncSupported(true);
        context.addServlet(poll, "/pns/poll");
        context.addServlet(new ServletHolder("publish", new PublishServlet(broker)), "/pub");
        context.addServlet(new ServletHolder("health", new Health()), "/pns/health");
        server.setHandler(context);
        server.setStopAtShutdown(true);
        server.start();
        System.out.println("jetty-poll listening on http://" + host + ":" + connector.getLocalPort());
        System.out.flush();
        server.join();
    }

    /** {@code GET /pns/health}: {@code {"ok":true}}, for the script's readiness check. */
    static final class Health extends HttpServlet {
        private static final long serialVersionUID = 1L;

        @Override
        protected void doGet(HttpServletRequest req, HttpServletResponse resp) throws IOException {
            byte[] body = "{\"ok\":true}".getBytes(StandardCharsets.UTF_8);
            resp.setContentType("application/json");
            resp.setContentLength(body.length);
            resp.getOutputStream().write(body);
        }
    }
}
