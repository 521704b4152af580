package pnsbench;

import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;
import java.util.regex.Pattern;

/**
 * Query-string helpers. The query is decoded by hand (not {@code getParameter}) so that a POST
 * body is never mistaken for form parameters; the first occurrence of a name wins.
 */
final class Query {
    /** PROTOCOL.md section 2: 1-128 bytes of {@code [A-Za-z0-9_.:@-]}. */
    private static final Pattern CHANNEL = Pattern.compile("[A-Za-z0-9_.:@-]{1,128}");

    private Query() {}

    static Map<String, String> parse(String query) {
        Map<String, String> out = new HashMap<>();
        if (query == null) {
            return out;
        }
        for (String pair : query.split("&")) {
            int eq = pair.indexOf('=');
            String k = eq < 0 ? pair : pair.substring(0, eq);
            String v = eq < 0 ? "" : pair.substring(eq + 1);
            try {
                out.putIfAbsent(
                        URLDecoder.decode(k, StandardCharsets.UTF_8),
                        URLDecoder.decode(v, StandardCharsets.UTF_8));
            } catch (IllegalArgumentException e) {
                return null;
            }
        }
        return out;
    }

    static boolean validChannel(String name) {
        return name != null && CHANNEL.matcher(name).matches();
    }
}
