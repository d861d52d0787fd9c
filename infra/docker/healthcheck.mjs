// Docker HEALTHCHECK: exit 0 when GET /healthz answers 2xx within 2 s, else 1.
//
//   node healthcheck.mjs [PID]        (PID of the server, default 1: the container's entry point)
//
// The port and host come from the server's own configuration, read the way the server reads it:
// its environment and its arguments (/proc/PID/environ and /proc/PID/cmdline) through the server's
// loadConfig, so `docker run warmkv --port 9000` and `-e PORT=9000` are both probed where the
// server listens. /healthz is liveness (the process answers), not readiness: it stays 200 while
// the model loads and while the server drains, so Docker never restarts a container that is
// finishing its streams. Uses Node's own fetch: the CUDA base image has no curl or wget.
import { existsSync, readFileSync } from 'node:fs';

const pid = process.argv[2] ?? '1';

/** NUL-separated /proc file -> its fields. */
function procFields(name) {
  return readFileSync(`/proc/${pid}/${name}`, 'latin1').split('\0').filter((field) => field !== '');
}

/** The server's own arguments: what follows the script in `node [node options] SCRIPT ARGS...`. */
function serverArguments(cmdline) {
  const script = cmdline.findIndex((arg, index) => index > 0 && !arg.startsWith('-') && /\.(m?js|ts)$/.test(arg));
  return script === -1 ? [] : cmdline.slice(script + 1);
}

/** The compiled config in the image; the TypeScript source when run with tsx from a checkout. */
async function loadConfigModule() {
  const compiled = new URL('../../dist/config.js', import.meta.url);
  return import(existsSync(compiled) ? compiled.href : new URL('../../src/config.ts', import.meta.url).href);
}

/** Where to connect: a wildcard listen address is reached on loopback. */
function probeHost(host) {
  if (host === '0.0.0.0') return '127.0.0.1';
  if (host === '::' || host === '[::]') return '[::1]';
  return host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
}

try {
  const env = Object.fromEntries(
    procFields('environ').map((entry) => {
      const equals = entry.indexOf('=');
      return [entry.slice(0, equals), entry.slice(equals + 1)];
    }),
  );
  const { loadConfig } = await loadConfigModule();
  const config = loadConfig(env, serverArguments(procFields('cmdline')));
  const url = `http://${probeHost(config.host)}:${config.port}/healthz`;
  const response = await fetch(url, { signal: AbortSignal.timeout(2000) });
  process.exit(response.ok ? 0 : 1);
} catch (error) {
  console.error(`healthcheck: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
}
