// A tiny static file server for the webmail example (and the browser tests), Node only, no
// dependencies. It serves files under one root directory, never outside it (no "..", no
// symlinks out), GET and HEAD only, with no caching so an edited page is seen at once.
//
//   node examples/webmail/serve.mjs [--port 8000] [--host 127.0.0.1]
//
// serves the repository root, so the page is http://HOST:PORT/examples/webmail/ and it loads
// the client from /clients/js/pnsd.js.
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

/** A request handler serving files under `root`; answers 404 for anything else. */
export function staticHandler(root) {
  const base = fs.realpathSync(root);
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
      if (err || (real !== base && !real.startsWith(base + path.sep))) {
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
  const server = http.createServer(staticHandler(root));
  server.listen(port, host, () => {
    const a = server.address();
    console.log(`serving ${root} on http://${a.address}:${a.port}/ — open http://${a.address}:${a.port}/examples/webmail/`);
  });
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) main();
