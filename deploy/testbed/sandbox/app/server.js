'use strict';
// Sample app for the patchagent sandbox: HTTP (or HTTPS), dual stack,
// graceful stop, and a few ways to misbehave for the tests.
//
// Env, read once at start:
//   PORT            listen port (default 443)
//   KEEPALIVE_MS    keep-alive timeout (default 5000, Node's own default)
//   HEALTH_MODE     what /health-check does: ok (default, 200) | 500 |
//                   hang (never answers, the socket stays open) |
//                   redirect (302 to /elsewhere)
//   FAIL_HEALTH=1   alias of HEALTH_MODE=500 (HEALTH_MODE wins if both are set)
//   START_DELAY_MS  wait this long before listening (connections are refused
//                   meanwhile; default 0)
//   CRASH_AFTER_MS  exit with code 1 this long after listening (default: never)
//   CRASH_FILE      path of a file read at each start: a whole number N in it
//                   makes the app exit with code 1 once it has been up N ms,
//                   counted from the process's start (CRASH_AFTER_MS counts
//                   from listen); missing or empty: no crash. A test changes
//                   what the next start does (pm2's restart of a crash, or
//                   patchagent exit starting the stopped app) by writing it,
//                   without relaunching the app through pm2
//   TLS_CERT, TLS_KEY  PEM paths: serve HTTPS instead of HTTP on the same port
//
// At start it requires every dependency named in its package.json, so a
// dependency that throws at require time crashes it, as a broken update
// would. GET /deps shows what each one exported (a string or number, an
// object's "version", else its type).
const fs = require('fs');
const http = require('http');
const https = require('https');
const path = require('path');

function fatal(msg) {
  console.error(msg);
  process.exit(2);
}

function msEnv(name) {
  const v = process.env[name];
  if (v === undefined || v === '') return 0;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) fatal(`${name}=${JSON.stringify(v)}: want a whole number of ms`);
  return n;
}

const port = Number(process.env.PORT || 443);
const keepAliveMs = Number(process.env.KEEPALIVE_MS || 5000);
const healthMode = process.env.HEALTH_MODE || (process.env.FAIL_HEALTH === '1' ? '500' : 'ok');
if (!['ok', '500', 'hang', 'redirect'].includes(healthMode)) {
  fatal(`HEALTH_MODE=${JSON.stringify(healthMode)}: want ok, 500, hang or redirect`);
}
const startDelayMs = msEnv('START_DELAY_MS');
const crashAfterMs = msEnv('CRASH_AFTER_MS');

function crashFileMs() {
  const file = process.env.CRASH_FILE || '';
  if (file === '') return 0;
  let text;
  try {
    text = fs.readFileSync(file, 'utf8').trim();
  } catch (err) {
    if (err.code === 'ENOENT') return 0;
    fatal(`CRASH_FILE ${file}: ${err.message}`);
  }
  if (text === '') return 0;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0) fatal(`CRASH_FILE ${file}: ${JSON.stringify(text)}: want a whole number of ms`);
  return n;
}
const crashAtUptimeMs = crashFileMs();
if (crashAtUptimeMs > 0) {
  setTimeout(() => {
    console.error(`CRASH_FILE: up ${crashAtUptimeMs}ms: exiting with code 1`);
    process.exit(1);
  }, Math.max(0, crashAtUptimeMs - process.uptime() * 1000));
}
const tlsCert = process.env.TLS_CERT || '';
const tlsKey = process.env.TLS_KEY || '';
if ((tlsCert === '') !== (tlsKey === '')) fatal('TLS_CERT and TLS_KEY must be set together');
const maxSlowMs = 600000;

function loadDeps() {
  let text;
  try {
    text = fs.readFileSync(path.join(__dirname, 'package.json'), 'utf8');
  } catch (err) {
    if (err.code === 'ENOENT') return {};
    throw err;
  }
  const loaded = {};
  for (const name of Object.keys(JSON.parse(text).dependencies || {})) {
    const mod = require(name);
    if (typeof mod === 'string' || typeof mod === 'number') loaded[name] = String(mod);
    else if (mod && typeof mod.version === 'string') loaded[name] = mod.version;
    else loaded[name] = typeof mod;
  }
  return loaded;
}
const deps = loadDeps();

let inFlight = 0;
let closing = false;
// Requests held open by HEALTH_MODE=hang; destroyed on shutdown.
const hanging = new Set();

function reply(res, code, body, headers) {
  res.writeHead(code, Object.assign({ 'Content-Type': 'text/plain; charset=utf-8' }, headers || {}));
  res.end(body + '\n');
}

function health(res) {
  switch (healthMode) {
    case '500':
      return reply(res, 500, 'unhealthy');
    case 'redirect':
      return reply(res, 302, 'moved', { Location: '/elsewhere' });
    case 'hang':
      hanging.add(res);
      res.on('close', () => hanging.delete(res));
      return;
    default:
      return reply(res, 200, 'ok');
  }
}

function handler(req, res) {
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
      return health(res);
    case '/':
      return reply(res, 200, `patchagent sample app pid=${process.pid}`);
    case '/deps':
      return reply(res, 200, JSON.stringify(deps), { 'Content-Type': 'application/json' });
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
}

let server;
if (tlsCert !== '') {
  let opts;
  try {
    opts = { cert: fs.readFileSync(tlsCert), key: fs.readFileSync(tlsKey) };
  } catch (err) {
    fatal(`reading TLS_CERT/TLS_KEY: ${err.message}`);
  }
  server = https.createServer(opts, handler);
} else {
  server = http.createServer(handler);
}
server.keepAliveTimeout = keepAliveMs;

let listening = false;
function shutdown(sig) {
  if (closing) return;
  closing = true;
  console.log(`${sig}: closing, ${inFlight} request(s) in flight`);
  if (!listening) process.exit(0);
  // A hanging health check would hold server.close() forever.
  for (const res of hanging) res.destroy();
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

function listen() {
  if (closing) return;
  server.listen({ port, host: '::', ipv6Only: false }, () => {
    listening = true;
    console.log(`listening on [::]:${port} pid=${process.pid} ${tlsCert ? 'https' : 'http'} ` +
      `keepAliveTimeout=${keepAliveMs}ms health=${healthMode}`);
    if (crashAfterMs > 0) {
      setTimeout(() => {
        console.error(`CRASH_AFTER_MS=${crashAfterMs}: exiting with code 1`);
        process.exit(1);
      }, crashAfterMs);
    }
  });
}

if (startDelayMs > 0) {
  console.log(`START_DELAY_MS=${startDelayMs}: not listening yet`);
  setTimeout(listen, startDelayMs);
} else {
  listen();
}
