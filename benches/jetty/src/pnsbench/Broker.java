package pnsbench;

import java.util.HashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * Channels, their message rings and their parked polls: the state of the Jetty peer.
 *
 * <p>Invariants, all guarded by this object's monitor:
 *
 * <ul>
 *   <li>{@code seq} is the id of the newest message accepted (0 before the first); ids are
 *       1, 2, 3, ... in acceptance order, one global order for the whole process, and an id is
 *       also the cursor "just after that message".
 *   <li>A channel's ring holds at most {@link #RING} messages, oldest first, ids strictly
 *       increasing; {@code evictedThrough} is the id of the newest message pushed out of it.
 *   <li>A waiter is in its channel's waiter set only while it is parked and unanswered; whoever
 *       answers it (publish or timeout) takes it out under the monitor and computes the answer
 *       from the ring at that moment, so no message after its cursor is ever skipped.
 * </ul>
 *
 * <p>Messages are never expired by age (pnsd and nchan drop them after 600 s); a benchmark run
 * is shorter than that, so the ring length is the only bound that matters here.
 */
final class Broker {
    /** Messages kept per channel: pnsd's {@code --buffer} default and nchan's buffer length. */
    static final int RING = 64;

    /** Messages per answer at most, as in pnsd (PROTOCOL.md section 2). */
    static final int MAX_PER_ANSWER = 100;

    /** An answer's JSON body and its cursor (the answer's {@code ETag}). */
    record Answer(String body, long cursor) {}

    /** One channel: a ring of the newest messages and the polls parked on it. */
    private static final class Channel {
        final long[] ids = new long[RING];
        final String[] data = new String[RING];
        int head;
        int len;
        long evictedThrough;
        final Set<Waiter> waiters = new LinkedHashSet<>();
    }

    private long seq;
    private final Map<String, Channel> channels = new HashMap<>();

    /** The newest id, the cursor of "now". */
    synchronized long newest() {
        return seq;
    }

    /**
     * Appends one message (already valid JSON text) to a channel and takes out every poll
     * parked on it; the caller answers those outside the monitor.
     *
     * @return the new message's id
     */
    synchronized long publish(String channel, String json, List<Waiter> woken) {
        Channel ch = channels.computeIfAbsent(channel, k -> new Channel());
        seq += 1;
        int slot;
        if (ch.len == RING) {
            slot = ch.head;
            ch.evictedThrough = ch.ids[slot];
            ch.head = (ch.head + 1) % RING;
        } else {
            slot = (ch.head + ch.len) % RING;
            ch.len += 1;
        }
        ch.ids[slot] = seq;
        ch.data[slot] = json;
        woken.addAll(ch.waiters);
        ch.waiters.clear();
        return seq;
    }

    /**
     * Answers at once if the channel holds messages after the cursor, or the cursor lost some
     * to eviction, or {@code parkAllowed} is false (hold=0); otherwise parks the waiter and
     * returns null. The waiter's async context is started by {@code park.run()} under the
     * monitor, before any publish can see the waiter.
     */
    synchronized Answer pollOrPark(Waiter w, boolean parkAllowed, Runnable park) {
        Channel ch = channels.get(w.channel);
        if (!parkAllowed || (ch != null && (w.cursor < ch.evictedThrough || hasAfter(ch, w.cursor)))) {
            return answerLocked(ch, w);
        }
        if (ch == null) {
            ch = new Channel();
            channels.put(w.channel, ch);
        }
        park.run();
        ch.waiters.add(w);
        return null;
    }

    /** Takes a parked waiter out (if still in) and computes its answer from the ring now. */
    synchronized Answer takeAnswer(Waiter w) {
        Channel ch = channels.get(w.channel);
        if (ch != null) {
            ch.waiters.remove(w);
        }
        return answerLocked(ch, w);
    }

    /** Forgets a waiter whose connection failed; nothing is written to it. */
    synchronized void forget(Waiter w) {
        Channel ch = channels.get(w.channel);
        if (ch != null) {
            ch.waiters.remove(w);
        }
    }

    private static boolean hasAfter(Channel ch, long cursor) {
        return ch.len > 0 && ch.ids[(ch.head + ch.len - 1) % RING] > cursor;
    }

    /** The JSON body of pnsd's answer shape; a message-less answer carries the newest id. */
    private Answer answerLocked(Channel ch, Waiter w) {
        StringBuilder msgs = new StringBuilder(128);
        int count = 0;
        long last = seq;
        boolean reset = false;
        if (ch != null) {
            reset = w.cursor < ch.evictedThrough;
            for (int i = 0; i < ch.len && count < MAX_PER_ANSWER; i++) {
                int slot = (ch.head + i) % RING;
                long id = ch.ids[slot];
                if (id <= w.cursor) {
                    continue;
                }
                if (count > 0) {
                    msgs.append(',');
                }
                msgs.append("{\"id\":\"").append(id).append("\",\"channel\":\"").append(w.channel)
                        .append("\",\"data\":").append(ch.data[slot]).append('}');
                count += 1;
                last = id;
            }
        }
        StringBuilder body = new StringBuilder(msgs.length() + 64);
        body.append("{\"c\":").append(count).append(",\"msg\":[").append(msgs).append("],\"cursor\":\"")
                .append(last).append('"');
        if (reset) {
            body.append(",\"reset\":true");
        }
        return new Answer(body.append('}').toString(), last);
    }
}
