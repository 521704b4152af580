// A tiny static file server for the webmail example (and the browser tests), Node only, no
// dependencies. It serves only files under the listed directories of one root, never outside
// them (no "..", no symlinks out), GET and HEAD only, with no caching so an edited page is seen
// at once.
//
//   node examples/webmail/serve.mjs [--port 8000] [--host 127.0.0.1]
//
// serves examples/webmail/ and clients/js/ of the repository, so the page is
// http://HOST:PORT/examples/webmail/ and it loads the client from /clients/js/pnsd.js. Nothing
// else of the repository is served (a ./secret or ./pnsd.sock beside it stays private).
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".png": "image/png",
  ".svg": "image/svg+xml",
  ".md": "text/plain; charset=utf-8",
};

/** The directories of the repository the example needs. */
export const EXAMPLE_DIRS = ["examples/webmail", "clients/js"];

/**
 * A request handler serving files under `dirs` (paths relative to `root`); answers 404 for
 * anything else.
 */
export function staticHandler(root, dirs) {
  const base = fs.realpathSync(root);
  const allowed = dirs.map((d) => fs.realpathSync(path.join(base, d)));
  const inside = (real) => allowed.some((a) => real === a || real.startsWith(a + path.sep));
  return (req, res) => {
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { Allow: "GET, HEAD" }).end();
      return;
    }
    let rel;
    try {
      rel = decodeURIComponent(new URL(req.url, "http://x").pathname);
    } catch (_) {
      res.writeHead(400).end();
      return;
    }
    let file = path.join(base, rel);
    fs.realpath(file, (err, real) => {
      if (err || !inside(real)) {
        res.writeHead(404, { "Content-Type": "text/plain" }).end("not found\n");
        return;
      }
      fs.stat(real, (err, st) => {
        if (!err && st.isDirectory()) {
          if (!rel.endsWith("/")) {
            res.writeHead(301, { Location: rel + "/" }).end();
            return;
          }
          real = path.join(real, "index.html");
        }
        fs.readFile(real, (err, bytes) => {
          if (err) {
            res.writeHead(404, { "Content-Type": "text/plain" }).end("not found\n");
            return;
          }
          const type = TYPES[path.extname(real)] || "application/octet-stream";
          res.writeHead(200, { "Content-Type": type, "Cache-Control": "no-store" });
          res.end(req.method === "HEAD" ? undefined : bytes);
        });
      });
    });
  };
}

function main() {
  const args = process.argv.slice(2);
  let port = 8000;
  let host = "127.0.0.1";
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--port") port = Number(args[++i]);
    else if (args[i] === "--host") host = args[++i];
    else {
      console.error(`usage: node serve.mjs [--port N] [--host ADDR]  (unknown: ${args[i]})`);
      process.exit(2);
    }
  }
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
  const server = http.createServer(staticHandler(root, EXAMPLE_DIRS));
  server.listen(port, host, () => {
    const a = server.address();
    console.log(`serving ${EXAMPLE_DIRS.join(", ")} on http://${a.address}:${a.port}/ — open http://${a.address}:${a.port}/examples/webmail/`);
  });
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) main();
