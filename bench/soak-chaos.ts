/**
 * Chaos soak (`npm run bench -- soak --chaos`): the server as a real process (src/main.ts) under N
 * greedy clients for M minutes, SIGKILLed every K seconds and restarted on the same SNAPSHOT_DIR, with
 * slow clients beside it (header trickle, body trickle, readers that take one chunk a second). Every
 * greedy answer is compared with a separate reference server in this process (no snapshots, a large
 * KV budget) given the same whole prompt. Clients resend their whole conversation each turn (as
 * OpenAI clients do), so a cache restored after a kill must give exactly what a recomputation gives.
 * Some turns stream, are cut after a few events and resumed with Last-Event-ID: the joined events
 * must be the uninterrupted ones, each once.
 *
 *   npm run bench -- soak --chaos [--clients 8] [--minutes 2] [--kill-every 25] [--max-tokens 16] [--tag soak-chaos]
 *
 * Reports: exact-match rate, 5xx, hangs (a request unanswered for 30 s while the server was up),
 * resumed streams exactly-once, slow sockets closed by the server, peak RSS of the server processes.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../src/config.ts';
import { Rng } from '../src/lib/rng.ts';
import { Runtime } from '../src/runtime.ts';
import { createApp } from '../src/server/app.ts';
import { startServerProcess, type ServerProcess } from '../tests/support/server-process.ts';
import { benchModel, table, writeResult } from './common.ts';
import { parseBenchArgs } from './cli.ts';

const values = parseBenchArgs('soak', 'Chaos soak: the server process killed with -9 and restarted on the same SNAPSHOT_DIR, slow clients, every greedy answer checked against a reference server.', {
  chaos: { type: 'boolean', help: 'this mode' },
  clients: { type: 'string', default: '8', value: 'N', help: 'concurrent greedy clients' },
  minutes: { type: 'string', default: '2', value: 'M', help: 'how long the load runs' },
  'kill-every': { type: 'string', default: '25', value: 'S', help: 'seconds between kill -9s' },
  model: { type: 'string', value: 'DIR', help: 'model folder' },
  'kv-cache-bytes': { type: 'string', default: '2MiB', value: 'SIZE', help: 'KV budget of the server under test (small: sessions move to disk)' },
  'max-tokens': { type: 'string', default: '16', value: 'N', help: 'tokens per reply' },
  tag: { type: 'string', default: 'soak-chaos', value: 'NAME', help: 'result name: bench/results/NAME.json' },
});
const CLIENTS = Number(values.clients);
const DURATION_MS = Number(values.minutes) * 60_000;
const KILL_EVERY_MS = Number(values['kill-every']) * 1000;
const MAX_TOKENS = Number(values['max-tokens']);
const HANG_MS = 30_000;

const { model } = await benchModel(values.model, 2);
const KEY = `sk-chaos-${randomBytes(12).toString('hex')}`;
const snapshotDir = mkdtempSync(join(tmpdir(), 'warmkv-chaos-'));
const reference = new Runtime(loadConfig({}, ['--model', model.folder.dir, '--kv-cache-bytes', '256MiB']), { load: async () => model, processMetrics: false });
await reference.ready;
const referenceApp = createApp(reference, {});
const CONTEXT = reference.serving!.model.contextLength;

const env = {
  MODEL_DIR: model.folder.dir, SNAPSHOT_DIR: snapshotDir, KV_CACHE_BYTES: values['kv-cache-bytes']!, API_KEYS: KEY, INT8_TIER: 'false',
  LOG_LEVEL: 'info', HEADERS_TIMEOUT_SECONDS: '3', REQUEST_TIMEOUT_SECONDS: '6', INTRA_OP_THREADS: '2', MAX_TOKENS_LIMIT: '64',
};
const stats = {
  requests: 0, compared: 0, exact: 0, status5xx: 0, hangs: 0, refusedWhileDown: 0, lostToKill: 0, other4xx: 0,
  resumes: 0, resumesExactlyOnce: 0, resumeFailures: [] as string[], mismatches: [] as string[],
  kills: 0, restartsMs: [] as number[], slowOpened: 0, slowClosedByServer: 0, peakRssMiB: 0,
};
let server!: ServerProcess;
let url = '';
let up = false;
let killedAt = 0;

async function startServer(): Promise<void> {
  const began = Date.now();
  server = startServerProcess({ env: { ...env, PORT: '0' } });
  url = await server.ready(120_000);
  stats.restartsMs.push(Date.now() - began);
  up = true;
}

function sampleRss(): void {
  try {
    const status = readFileSync(`/proc/${server.child.pid}/status`, 'utf8');
    const kib = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
    stats.peakRssMiB = Math.max(stats.peakRssMiB, Math.round(kib / 1024));
  } catch {
    // Between a kill and the restart there is no process to read.
  }
}

const headers = { 'Content-Type': 'application/json', Authorization: `Bearer ${KEY}` };
const greedy = (prompt: number[], extra: object = {}) => ({ prompt, max_tokens: MAX_TOKENS, temperature: 0, ignore_eos: true, ...extra });

async function referenceText(prompt: number[]): Promise<string> {
  const res = await referenceApp.request('/v1/completions', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(greedy(prompt, { truncation: 'auto' })) });
  const body = (await res.json()) as any;
  return body.choices[0].text as string;
}

/** One request to the server under test; null when it was lost to a kill (or sent while down). */
async function call(path: string, body: object, init: RequestInit = {}): Promise<Response | null> {
  stats.requests++;
  const sentAt = Date.now();
  try {
    const res = await fetch(`${url}${path}`, { method: 'POST', headers, body: JSON.stringify(body), signal: AbortSignal.timeout(HANG_MS), ...init });
    if (res.status >= 500) stats.status5xx++;
    return res;
  } catch (error) {
    if (killedAt >= sentAt || !up) stats.lostToKill++;
    else if ((error as Error).name === 'TimeoutError') stats.hangs++;
    else stats.lostToKill++;
    return null;
  }
}

function parseEvents(text: string): Array<{ id: number; data: string }> {
  const events: Array<{ id: number; data: string }> = [];
  for (const block of text.split('\n\n')) {
    const id = /^id: ?(\d+)$/m.exec(block)?.[1];
    const data = /^data: ?(.*)$/m.exec(block)?.[1];
    if (id !== undefined && data !== undefined) events.push({ id: Number(id), data });
  }
  return events;
}

const textOf = (events: Array<{ data: string }>) =>
  events.map((e) => (e.data === '[DONE]' ? '' : ((JSON.parse(e.data) as any).choices?.[0]?.text ?? ''))).join('');

/** A stream cut after a few events, resumed with Last-Event-ID; true when the joined events are the whole stream, each once. */
async function cutAndResume(prompt: number[], sessionId: string, expected: string): Promise<void> {
  const abort = new AbortController();
  const res = await call('/v1/completions', greedy(prompt, { session_id: sessionId, stream: true }), { signal: abort.signal });
  if (!res || res.status !== 200 || !res.body) return;
  const streamId = res.headers.get('x-stream-id');
  const reader = res.body.getReader();
  let text = '';
  try {
    while (parseEvents(text).length < 3) {
      const { done, value } = await reader.read();
      if (done) break;
      text += Buffer.from(value).toString('utf8');
    }
  } catch {
    return;
  }
  abort.abort();
  const before = parseEvents(text.slice(0, text.lastIndexOf('\n\n') + 2));
  if (!streamId || before.length === 0) return;
  stats.resumes++;
  let rest: Response;
  try {
    rest = await fetch(`${url}/v1/streams/${streamId}`, { headers: { Authorization: `Bearer ${KEY}`, 'Last-Event-ID': String(before.at(-1)!.id) }, signal: AbortSignal.timeout(HANG_MS) });
  } catch {
    stats.resumes--;
    stats.lostToKill++;
    return;
  }
  if (rest.status >= 500) stats.status5xx++;
  const restText = rest.status === 200 ? await rest.text().catch(() => null) : '';
  if (restText === null) {
    // Cut by a kill while replaying.
    stats.resumes--;
    stats.lostToKill++;
    return;
  }
  const after = parseEvents(restText);
  const ids = [...before, ...after].map((e) => e.id);
  const once = ids.every((id, i) => id === i) && after.at(-1)?.data === '[DONE]';
  if (once && textOf([...before, ...after]) === expected) stats.resumesExactlyOnce++;
  else if (rest.status === 404 && killedAt > 0) stats.resumes--; // the stream died with its process
  else stats.resumeFailures.push(`${streamId}: status ${rest.status}, ids ${ids.join(',')}`);
}

async function client(index: number, endAt: number): Promise<void> {
  const rng = new Rng(index + 1);
  let conversation: number[] = [];
  let sessionId = `chaos-${index}-0`;
  for (let turn = 0; Date.now() < endAt; turn++) {
    if (!up) {
      stats.refusedWhileDown++;
      await new Promise((resolve) => setTimeout(resolve, 200));
      continue;
    }
    if (conversation.length > CONTEXT / 2) {
      conversation = [];
      sessionId = `chaos-${index}-${turn}`;
    }
    const prompt = conversation.concat(Array.from({ length: 4 + Math.floor(rng.next() * 12) }, () => 1 + Math.floor(rng.next() * (model.vocabSize - 2))));
    const expected = await referenceText(prompt);
    if (rng.next() < 0.15) {
      await cutAndResume(prompt, sessionId, expected);
      conversation = [];
      sessionId = `chaos-${index}-${turn}-r`;
      continue;
    }
    const res = await call('/v1/completions', greedy(prompt, { session_id: sessionId }));
    if (!res) continue;
    if (res.status !== 200) {
      if (res.status < 500) stats.other4xx++;
      await res.text().catch(() => {});
      continue;
    }
    const body = (await res.json().catch(() => null)) as any;
    if (!body) continue;
    stats.compared++;
    const text = body.choices[0].text as string;
    if (text === expected) stats.exact++;
    else if (stats.mismatches.length < 10) stats.mismatches.push(`${sessionId} turn ${turn}: ${JSON.stringify(text)} vs ${JSON.stringify(expected)}`);
    conversation = prompt.concat(model.tokenizer.encode(text, false));
  }
}

/** Header trickle, body trickle and a reader taking a chunk a second, one of each every second. */
async function slowClients(endAt: number): Promise<void> {
  const sockets: Array<Promise<void>> = [];
  for (let i = 0; Date.now() < endAt; i++) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    if (!up) continue;
    const port = Number(new URL(url).port);
    const kind = i % 3;
    if (kind === 2) {
      const res = await call('/v1/completions', greedy([1, 2, 3], { stream: true }));
      if (res?.body) sockets.push((async () => {
        const reader = res.body!.getReader();
        try {
          while (!(await reader.read()).done) await new Promise((resolve) => setTimeout(resolve, 1000));
        } catch {
          // Cut by a kill.
        }
      })());
      continue;
    }
    const socket = net.connect(port, '127.0.0.1');
    socket.on('error', () => {});
    stats.slowOpened++;
    const text = kind === 0 ? 'POST /v1/completions HTTP/1.1\r\nHost: x\r\n' : `POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${KEY}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{`;
    let at = 0;
    const startedAt = Date.now();
    const timer = setInterval(() => socket.writable && socket.write(kind === 0 && at >= text.length ? 'X' : text[at++] ?? ' '), 300);
    sockets.push(new Promise<void>((resolve) => socket.once('close', () => {
      clearInterval(timer);
      if (Date.now() - startedAt < 15_000 && killedAt < startedAt) stats.slowClosedByServer++;
      else if (killedAt >= startedAt) stats.slowOpened--; // closed by a kill, not by a timeout
      resolve();
    })));
  }
  await Promise.race([Promise.all(sockets), new Promise((resolve) => setTimeout(resolve, 20_000))]);
}

await startServer();
const rssTimer = setInterval(sampleRss, 500);
const endAt = Date.now() + DURATION_MS;
const killer = (async () => {
  while (Date.now() + KILL_EVERY_MS < endAt) {
    await new Promise((resolve) => setTimeout(resolve, KILL_EVERY_MS));
    up = false;
    killedAt = Date.now();
    server.kill('SIGKILL');
    await server.exited;
    stats.kills++;
    await startServer();
  }
})();
await Promise.all([...Array.from({ length: CLIENTS }, (_, i) => client(i, endAt)), slowClients(endAt), killer]);
clearInterval(rssTimer);
await server.stop();

const exactRate = stats.compared ? stats.exact / stats.compared : 0;
const result = {
  clients: CLIENTS, minutes: Number(values.minutes), killEverySeconds: KILL_EVERY_MS / 1000, kvCacheBytes: values['kv-cache-bytes'], maxTokens: MAX_TOKENS,
  ...stats, exactRate, restartsMs: { count: stats.restartsMs.length, max: Math.max(...stats.restartsMs) },
  checks: {
    allExact: stats.compared > 0 && stats.exact === stats.compared,
    no5xx: stats.status5xx === 0,
    noHangs: stats.hangs === 0,
    resumesExactlyOnce: stats.resumeFailures.length === 0,
    slowSocketsClosed: stats.slowClosedByServer === stats.slowOpened,
  },
};
writeResult(values.tag!, result);
console.log(table(
  ['requests', 'compared', 'exact', '5xx', 'hangs', 'kills', 'lost to kills', 'resumed exactly-once', 'slow sockets closed', 'peak RSS MiB'],
  [[stats.requests, stats.compared, `${stats.exact} (${(100 * exactRate).toFixed(2)} %)`, stats.status5xx, stats.hangs, stats.kills, stats.lostToKill, `${stats.resumesExactlyOnce} of ${stats.resumes}`, `${stats.slowClosedByServer} of ${stats.slowOpened}`, stats.peakRssMiB]],
));
if (stats.mismatches.length) console.log(stats.mismatches.join('\n'));
if (stats.resumeFailures.length) console.log(stats.resumeFailures.join('\n'));
process.exitCode = Object.values(result.checks).every(Boolean) ? 0 : 1;
