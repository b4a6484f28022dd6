#!/usr/bin/env node
// A tiny static file server for an `onnxfix web` site, on 127.0.0.1 only.
//
//   const { serve } = require('./serve.js');
//   const server = await serve('/path/to/site');   // an ephemeral port
//   ... server.url ...  (http://127.0.0.1:PORT/)
//   await server.close();
//
// or from a shell: node web/serve.js SITE [PORT]
'use strict';
const fs = require('fs');
const http = require('http');
const path = require('path');

const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.wasm': 'application/wasm',
  '.css': 'text/css; charset=utf-8',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
  '.txt': 'text/plain; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.onnx': 'application/octet-stream',
  '.npz': 'application/octet-stream',
};

function mimeType(file) {
  return MIME[path.extname(file).toLowerCase()] || 'application/octet-stream';
}

function inside(root, file) {
  return file === root || file.startsWith(root + path.sep);
}

/** The file a request path names under root, or an HTTP status when there is none. */
function resolveRequest(root, rawUrl) {
  let pathname;
  try {
    pathname = decodeURIComponent(new URL(rawUrl, 'http://127.0.0.1').pathname);
  } catch (e) {
    return { status: 400 };
  }
  if (pathname.includes('\0')) return { status: 400 };
  const file = path.resolve(root, '.' + path.posix.normalize('/' + pathname));
  if (!inside(root, file)) return { status: 403 };
  let real;
  try {
    real = fs.realpathSync(file);
  } catch (e) {
    return { status: 404 };
  }
  if (!inside(root, real)) return { status: 403 }; // a link out of the root
  let stat = fs.statSync(real);
  let target = real;
  if (stat.isDirectory()) {
    target = path.join(real, 'index.html');
    try {
      stat = fs.statSync(target);
    } catch (e) {
      return { status: 404 };
    }
  }
  if (!stat.isFile()) return { status: 404 };
  return { file: target, size: stat.size };
}

/**
 * Serve `root` on 127.0.0.1 (port 0: an ephemeral one). Resolves to {url, port, server, close()}.
 * options.headers: extra response headers for every file.
 */
function serve(root, options = {}) {
  const base = fs.realpathSync(path.resolve(root));
  const extra = options.headers || {};
  const server = http.createServer((req, res) => {
    const send = (status, text) => {
      res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8', 'Cache-Control': 'no-store' });
      res.end(req.method === 'HEAD' ? undefined : text + '\n');
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('Allow', 'GET, HEAD');
      send(405, 'method not allowed');
      return;
    }
    const found = resolveRequest(base, req.url);
    if (found.status) {
      send(found.status, { 400: 'bad request', 403: 'forbidden', 404: 'not found' }[found.status]);
      return;
    }
    res.writeHead(200, {
      'Content-Type': mimeType(found.file),
      'Content-Length': found.size,
      'Cache-Control': 'no-store',
      'X-Content-Type-Options': 'nosniff',
      ...extra,
    });
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    const stream = fs.createReadStream(found.file);
    stream.on('error', () => res.destroy());
    stream.pipe(res);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port || 0, '127.0.0.1', () => {
      const port = server.address().port;
      resolve({
        url: `http://127.0.0.1:${port}/`,
        port,
        server,
        close: () => new Promise((done) => {
          if (server.closeAllConnections) server.closeAllConnections();
          server.close(() => done());
        }),
      });
    });
  });
}

module.exports = { serve, mimeType, resolveRequest };

if (require.main === module) {
  const [site, port] = process.argv.slice(2);
  if (!site) {
    process.stderr.write('usage: node serve.js SITE [PORT]\n');
    process.exit(2);
  }
  serve(site, { port: port ? Number(port) : 0 }).then((s) => {
    process.stdout.write(`serving ${path.resolve(site)} at ${s.url} (Ctrl-C stops)\n`);
  }, (e) => {
    process.stderr.write(`serve.js: ${e.message}\n`);
    process.exit(1);
  });
}
