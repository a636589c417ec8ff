'use strict';
// Sample app for the patchagent sandbox: plain HTTP, dual stack, graceful stop.
//
// Env: PORT (default 443), KEEPALIVE_MS (default 5000, Node's own default),
// FAIL_HEALTH=1 makes /health-check answer 500.
const http = require('http');

const port = Number(process.env.PORT || 443);
const keepAliveMs = Number(process.env.KEEPALIVE_MS || 5000);
const failHealth = process.env.FAIL_HEALTH === '1';
const maxSlowMs = 600000;

let inFlight = 0;
let closing = false;

function reply(res, code, body) {
  res.writeHead(code, { 'Content-Type': 'text/plain; charset=utf-8' });
  res.end(body + '\n');
}

const server = http.createServer((req, res) => {
  inFlight++;
  res.on('close', () => {
    inFlight--;
    // While closing, a keep-alive socket that just went idle is closed at once
    // so server.close() can complete.
    if (closing) server.closeIdleConnections();
  });
  const url = new URL(req.url, 'http://localhost');
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    return reply(res, 405, 'method not allowed');
  }
  switch (url.pathname) {
    case '/health-check':
      return failHealth ? reply(res, 500, 'unhealthy') : reply(res, 200, 'ok');
    case '/':
      return reply(res, 200, `patchagent sample app pid=${process.pid}`);
    case '/slow': {
      let ms = Number(url.searchParams.get('ms') || 1000);
      if (!Number.isFinite(ms) || ms < 0) ms = 0;
      if (ms > maxSlowMs) ms = maxSlowMs;
      const t = setTimeout(() => reply(res, 200, `slept ${ms}ms pid=${process.pid}`), ms);
      res.on('close', () => clearTimeout(t));
      return;
    }
    default:
      return reply(res, 404, 'not found');
  }
});
server.keepAliveTimeout = keepAliveMs;

function shutdown(sig) {
  if (closing) return;
  closing = true;
  console.log(`${sig}: closing, ${inFlight} request(s) in flight`);
  // Stop accepting; exit once every connection is gone (Node >= 19 closes
  // idle keep-alive sockets in close(), in-flight requests finish first).
  server.close(() => process.exit(0));
  server.closeIdleConnections();
}
process.on('SIGINT', () => shutdown('SIGINT'));
process.on('SIGTERM', () => shutdown('SIGTERM'));

server.on('error', (err) => {
  console.error(`listen on [::]:${port}: ${err.message}`);
  process.exit(1);
});
server.listen({ port, host: '::', ipv6Only: false }, () => {
  console.log(`listening on [::]:${port} pid=${process.pid} keepAliveTimeout=${keepAliveMs}ms`);
});
