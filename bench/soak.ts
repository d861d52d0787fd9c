/**
 * Soak test (a script, not a unit test). The real HTTP server listens on 127.0.0.1 (in this process, so
 * the checker can read every session's token transcript) and N concurrent clients with two API keys work
 * on it for M minutes: native append turns (warm resumes), OpenAI-style resends (completions and chat,
 * the whole conversation each turn), streams dropped mid-way (then resumed through /v1/streams/{id}, or
 * left to finish), one-off requests, session deletions, and bad requests that must get their 4xx
 * (malformed JSON, limits, wrong types, no key, and probes of the other key's sessions).
 *
 * Checks, all reported:
 * - zero 5xx, and no server_error chunk in any stream; every bad request gets its expected status;
 * - zero lost or corrupted sessions: each turn's usage shows the transcript the client expects, and at
 *   the end every session's transcript is checked turn by turn against a one-shot greedy recomputation
 *   of the same prefix (token ids, and the text the client received). Turns that ran on a cache restored
 *   from the int8 or disk tier are compared too but only reported: int8 is approximate by design;
 * - the KV budget is never exceeded (the store, sampled every 100 ms, and warmkv_kv_cache_utilization
 *   from /metrics every 2 s);
 * - RSS growth is bounded: the peak of the last third of the run is at most 64 MiB (or 15 %) above the
 *   middle third's (the first third is warm-up).
 *
 *   npm run bench -- soak [--clients 8] [--minutes 2] [--model DIR] [--kv-cache-bytes 24MiB] [--max-tokens 24] [--seed 1] [--tag soak]
 *
 * Writes bench/results/<tag>.json and <tag>.md, prints the table, and exits 1 when a check failed.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { serve } from '@hono/node-server';
import { loadConfig } from '../src/config.ts';
import { GREEDY } from '../src/engine/sampler.ts';
import { Rng } from '../src/lib/rng.ts';
import type { Logger } from '../src/lib/logger.ts';
import { Runtime } from '../src/runtime.ts';
import { createApp } from '../src/server/app.ts';
import { keyId } from '../src/server/auth.ts';
import type { ChatMessage } from '../src/model/chat-template.ts';
import { RESULTS_DIR, benchModel, percentile, table, writeResult } from './common.ts';
import { parseBenchArgs } from './cli.ts';

if (process.argv.includes('--chaos')) {
  // The chaos mode runs the server as a process it kills; its own file (soak-chaos.ts) keeps both readable.
  await import('./soak-chaos.ts');
  process.exit(process.exitCode ?? 0);
}
const values = parseBenchArgs('soak', 'Soak test: the real server and concurrent clients with two API keys for M minutes (appends, resends, dropped and resumed streams, deletions, bad requests); every session is checked against a one-shot recomputation.', {
  clients: { type: 'string', default: '8', value: 'N', help: 'concurrent clients' },
  minutes: { type: 'string', default: '2', value: 'M', help: 'how long the load runs' },
  model: { type: 'string', value: 'DIR', help: 'model folder' },
  threads: { type: 'string', default: '2', value: 'N', help: 'onnxruntime intra-op threads' },
  'kv-cache-bytes': { type: 'string', default: '24MiB', value: 'SIZE', help: 'KV budget (small, so sessions move between tiers)' },
  'max-tokens': { type: 'string', default: '24', value: 'N', help: 'tokens per reply' },
  seed: { type: 'string', default: '1', value: 'N', help: 'seed of the client schedule' },
  tag: { type: 'string', default: 'soak', value: 'NAME', help: 'result name: bench/results/NAME.json' },
});

const CLIENTS = Number(values.clients);
const MINUTES = Number(values.minutes);
const MAX_TOKENS = Number(values['max-tokens']);
const SEED = Number(values.seed);
if (!(CLIENTS >= 1 && MINUTES > 0 && MAX_TOKENS >= 1)) throw new Error('--clients, --minutes and --max-tokens must be positive');
// The whole run, verification included, stops by itself.
setTimeout(() => {
  console.error('soak: hard time limit reached');
  process.exit(3);
}, (MINUTES * 60 + 900) * 1000).unref();

// ---------------------------------------------------------------------------------------------------
// The server.

interface LogCounts {
  byLevel: Record<string, number>;
  warnings: Record<string, number>;
}
function countingLogger(counts: LogCounts): Logger {
  const at = (level: string) => (_fields: Record<string, unknown>, message: string) => {
    counts.byLevel[level] = (counts.byLevel[level] ?? 0) + 1;
    if (level === 'warn' || level === 'error') counts.warnings[`${level}: ${message}`] = (counts.warnings[`${level}: ${message}`] ?? 0) + 1;
  };
  const logger: Logger = { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error'), child: () => logger };
  return logger;
}

const threads = Number(values.threads);
const { model, source } = await benchModel(values.model, threads);
const snapshotDir = mkdtempSync(join(tmpdir(), 'warmkv-soak-'));
const KEYS = [`sk-soak-a-${randomBytes(12).toString('hex')}`, `sk-soak-b-${randomBytes(12).toString('hex')}`];
const OWNERS = KEYS.map(keyId);
const settings: Record<string, string> = {
  'kv-cache-bytes': values['kv-cache-bytes']!,
  'snapshot-dir': snapshotDir,
  'api-keys': KEYS.join(','),
  'max-tokens-limit': '256',
  'max-body-bytes': '256KiB',
  'max-stop-sequences': '4',
  'max-sessions-per-key': '512',
  'queue-timeout-seconds': '60',
  'log-level': 'info',
};
const argv = ['--model', model.folder.dir, '--host', '127.0.0.1', '--port', '0'];
for (const [key, value] of Object.entries(settings)) argv.push(`--${key}`, value);
const logCounts: LogCounts = { byLevel: {}, warnings: {} };
const logger = countingLogger(logCounts);
const runtime = new Runtime(loadConfig({}, argv), { load: async () => model, logger, processMetrics: true });
const serving = await runtime.ready;
const app = createApp(runtime, { logger });
const server = await new Promise<ReturnType<typeof serve>>((resolve) => {
  const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(s));
});
const URL_BASE = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
const tokenizer = serving.model.loaded.tokenizer;
const vocabSize = serving.model.loaded.vocabSize;

/** Which requests ran on a cache restored from int8 or disk (approximate by design), per session. */
const taintedSessions = new Set<string>();
const taintedRequests = new Set<string>();
serving.engine.addObserver({
  requestStarted(sequence, info) {
    const request = sequence.request;
    if (request.sessionId === undefined) return;
    const key = `${request.owner}\u0000${request.sessionId}`;
    if (sequence.cachedTokens === 0) taintedSessions.delete(key);
    else if (info.restoredFrom === 'int8' || info.restoredFrom === 'disk') taintedSessions.add(key);
    if (taintedSessions.has(key)) taintedRequests.add(request.requestId);
  },
});

// ---------------------------------------------------------------------------------------------------
// Figures.

const stats = {
  requests: 0,
  streams: 0,
  disconnects: 0,
  resumes: { completed: 0, unavailable: 0 },
  byStatus: {} as Record<string, number>,
  badRequests: { expected: 0, unexpected: 0 },
  serverErrors: 0,
  streamServerErrors: 0,
  unexpected: [] as string[],
  continuityFailures: 0,
  warmTurns: 0,
  resendTurns: 0,
  sessionsCreated: 0,
  sessionsDeleted: 0,
  latency: { ttftMs: [] as number[], streamMs: [] as number[], jsonMs: [] as number[], badMs: [] as number[] },
  verify: { sessions: 0, turns: 0, exactMismatches: 0, approxMismatches: 0, approxTurns: 0, lost: 0, corrupted: 0, details: [] as string[] },
  budget: { samples: 0, violations: 0, maxUtilization: 0, maxMetricsUtilization: 0, metricsSamples: 0 },
  rss: [] as Array<{ t: number; rss: number }>,
};

function note(problem: string): void {
  if (stats.unexpected.length < 30) stats.unexpected.push(problem);
}

function count(status: number, code?: string): void {
  const key = code ? `${status} ${code}` : String(status);
  stats.byStatus[key] = (stats.byStatus[key] ?? 0) + 1;
  if (status >= 500) stats.serverErrors++;
}

// ---------------------------------------------------------------------------------------------------
// HTTP with timing; streams are parsed as they arrive.

interface Answer {
  status: number;
  code?: string;
  json?: any;
  ms: number;
  /** Streams: */
  text?: string;
  usage?: { prompt_tokens: number; completion_tokens: number; prompt_tokens_details: { cached_tokens: number } };
  completionId?: string;
  lastEventId?: string;
  done?: boolean;
  errorChunk?: { type: string; code: string };
  ttftMs?: number;
  aborted?: boolean;
}

let requestCounter = 0;

async function readSse(res: Response, started: number, answer: Answer, format: 'completion' | 'chat', abortAfter: number | null, controller: AbortController | null): Promise<void> {
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let events = 0;
  answer.text = '';
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let split: number;
      while ((split = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, split);
        buffer = buffer.slice(split + 2);
        let data = '';
        for (const line of block.split('\n')) {
          if (line.startsWith('id: ')) answer.lastEventId = line.slice(4);
          else if (line.startsWith('data: ')) data += line.slice(6);
        }
        if (!data) continue;
        if (data === '[DONE]') {
          answer.done = true;
          continue;
        }
        const chunk = JSON.parse(data);
        if (chunk.error) {
          answer.errorChunk = chunk.error;
          continue;
        }
        answer.completionId ??= chunk.id;
        if (chunk.usage) answer.usage = chunk.usage;
        const piece = format === 'chat' ? (chunk.choices?.[0]?.delta?.content ?? '') : (chunk.choices?.[0]?.text ?? '');
        if (piece) {
          answer.ttftMs ??= performance.now() - started;
          answer.text += piece;
        }
        events++;
        if (abortAfter !== null && events >= abortAfter && controller) {
          answer.aborted = true;
          controller.abort();
          await reader.cancel().catch(() => {});
          return;
        }
      }
    }
  } catch (error) {
    if (!answer.aborted) throw error;
  }
}

async function call(
  method: string,
  path: string,
  options: { body?: unknown; key?: number | null; stream?: boolean; format?: 'completion' | 'chat'; abortAfter?: number; headers?: Record<string, string>; requestId?: string } = {},
): Promise<Answer> {
  const requestId = options.requestId ?? `soak-${++requestCounter}`;
  const headers: Record<string, string> = { 'X-Request-Id': requestId, ...options.headers };
  if (options.key !== null) headers.Authorization = `Bearer ${KEYS[options.key ?? 0]}`;
  if (options.body !== undefined) headers['Content-Type'] = 'application/json';
  const controller = options.abortAfter !== undefined ? new AbortController() : null;
  const started = performance.now();
  stats.requests++;
  const res = await fetch(`${URL_BASE}${path}`, {
    method,
    headers,
    body: options.body === undefined ? undefined : typeof options.body === 'string' ? options.body : JSON.stringify(options.body),
    signal: controller?.signal,
  });
  const answer: Answer = { status: res.status, ms: 0 };
  if (res.headers.get('content-type') === 'text/event-stream') {
    stats.streams++;
    await readSse(res, started, answer, options.format ?? 'completion', options.abortAfter ?? null, controller);
    if (answer.errorChunk?.type === 'server_error') {
      stats.streamServerErrors++;
      note(`${method} ${path}: server_error chunk in a stream`);
    }
  } else {
    const text = await res.text();
    try {
      answer.json = text ? JSON.parse(text) : undefined;
    } catch {
      note(`${method} ${path} -> ${res.status}: a body that is not JSON`);
    }
    answer.code = answer.json?.error?.code;
  }
  answer.ms = performance.now() - started;
  count(answer.status, answer.code);
  return answer;
}

// ---------------------------------------------------------------------------------------------------
// Clients.

const WORDS = (
  'the a king river castle old town bells rang over water and she said that they would go home before night ' +
  'fell on hills where wind moved through grass while dogs slept near fires of wood smoke rising into cold ' +
  'air under stars above quiet roads leading north to cities full of people working trading singing'
).split(' ');

function words(rng: Rng, count: number): string {
  let out = '';
  for (let i = 0; i < count; i++) out += ` ${WORDS[Math.floor(rng.next() * WORDS.length)]}`;
  return out;
}

const int = (rng: Rng, n: number) => Math.floor(rng.next() * n);

interface Turn {
  requestId: string;
  start: number;
  end: number;
  /** Output text as the client saw it; null when the client did not see all of it (or stop strings hid some). */
  text: string | null;
}

interface TrackedSession {
  kind: 'native' | 'completions' | 'chat';
  id: string;
  key: number;
  /** Transcript length the client expects. */
  length: number;
  /** Turns still in the transcript (a resend replaces the transcript, so only its last turn stays). */
  turns: Turn[];
  /** completions: the conversation text; chat: the messages. */
  prompt: string;
  messages: ChatMessage[];
}

const finishedSessions: TrackedSession[] = [];
const liveSessions = new Set<TrackedSession>();
const deadline = performance.now() + MINUTES * 60_000;

function storeSession(s: TrackedSession) {
  return serving.store.get(OWNERS[s.key], s.id);
}

async function idle(s: TrackedSession): Promise<boolean> {
  const until = performance.now() + 60_000;
  while (performance.now() < until) {
    const session = storeSession(s);
    if (!session || !session.busy) return true;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  note(`session ${s.id} stayed busy for 60 s`);
  return false;
}

function generationBody(extra: Record<string, unknown>, stream: boolean, maxTokens: number) {
  return { max_tokens: maxTokens, temperature: 0, ignore_eos: true, stream, ...(stream ? { stream_options: { include_usage: true } } : {}), ...extra };
}

function recordLatency(answer: Answer, stream: boolean) {
  if (answer.status !== 200) return;
  if (stream) {
    if (answer.ttftMs !== undefined && !answer.aborted) stats.latency.ttftMs.push(answer.ttftMs);
    if (!answer.aborted) stats.latency.streamMs.push(answer.ms);
  } else stats.latency.jsonMs.push(answer.ms);
}

function usageOf(answer: Answer, stream: boolean) {
  return stream ? answer.usage : answer.json?.usage;
}

function outputOf(answer: Answer, stream: boolean, format: 'completion' | 'chat'): string {
  if (stream) return answer.text ?? '';
  return format === 'chat' ? answer.json.choices[0].message.content : answer.json.choices[0].text;
}

async function runClient(c: number): Promise<void> {
  const rng = new Rng(SEED * 7919 + c);
  const key = c % 2;
  const natives: TrackedSession[] = [];
  let resend: TrackedSession | null = null;
  let chat: TrackedSession | null = null;

  const track = (s: TrackedSession) => {
    liveSessions.add(s);
    stats.sessionsCreated++;
    return s;
  };

  const newNative = async () => {
    const id = `soak-${c}-${randomBytes(6).toString('hex')}`;
    const answer = await call('POST', '/v1/sessions', { key, body: { session_id: id, prompt: words(rng, 20 + int(rng, 60)) } });
    if (answer.status !== 201) return note(`create session -> ${answer.status} ${answer.code ?? ''}`);
    natives.push(track({ kind: 'native', id, key, length: answer.json.tokens, turns: [], prompt: '', messages: [] }));
  };

  const retire = async (s: TrackedSession) => {
    if (!(await idle(s))) return;
    await verifySession(s);
    liveSessions.delete(s);
    const answer = await call('DELETE', `/v1/sessions/${s.id}`, { key });
    if (answer.status !== 200) note(`delete ${s.id} -> ${answer.status}`);
    else stats.sessionsDeleted++;
    const gone = await call('GET', `/v1/sessions/${s.id}`, { key });
    if (gone.status !== 404) note(`deleted session ${s.id} -> ${gone.status}`);
  };

  const nativeTurn = async (s: TrackedSession, disconnect: boolean) => {
    if (!(await idle(s))) return;
    const prompt = words(rng, 3 + int(rng, 10));
    const expectedStart = s.length + tokenizer.encode(prompt, false).length;
    const stream = disconnect || rng.next() < 0.6;
    const requestId = `soak-${c}-${++requestCounter}`;
    const maxTokens = disconnect ? 32 : 4 + int(rng, MAX_TOKENS);
    const answer = await call('POST', `/v1/sessions/${s.id}/completions`, {
      key,
      stream,
      requestId,
      body: generationBody({ prompt }, stream, maxTokens),
      abortAfter: disconnect ? 2 : undefined,
    });
    if (answer.status !== 200) return note(`append ${s.id} -> ${answer.status} ${answer.code ?? ''}`);
    recordLatency(answer, stream);
    let text: string | null = answer.text ?? null;
    if (disconnect && answer.aborted) {
      stats.disconnects++;
      text = null;
      if (rng.next() < 0.5 && answer.completionId) {
        // Come back for the rest of the stream.
        const resumed = await call('GET', `/v1/streams/${answer.completionId}`, { key, headers: { 'Last-Event-ID': answer.lastEventId ?? '' } });
        if (resumed.status === 200 && resumed.done) {
          stats.resumes.completed++;
          text = (answer.text ?? '') + (resumed.text ?? '');
        } else {
          stats.resumes.unavailable++;
          if (resumed.status >= 500) note(`resume -> ${resumed.status}`);
        }
      }
      if (!(await idle(s))) return;
      const session = storeSession(s);
      if (!session) return note(`session ${s.id} vanished after a disconnect`);
      s.turns.push({ requestId, start: expectedStart, end: session.tokens.length, text });
      s.length = session.tokens.length;
      return;
    }
    const usage = usageOf(answer, stream);
    if (!usage) return note(`append ${s.id}: no usage`);
    if (usage.prompt_tokens !== expectedStart) {
      stats.continuityFailures++;
      note(`append ${s.id}: prompt_tokens ${usage.prompt_tokens}, expected ${expectedStart}`);
    }
    if (usage.prompt_tokens_details.cached_tokens > 0) stats.warmTurns++;
    const end = usage.prompt_tokens + usage.completion_tokens;
    s.turns.push({ requestId, start: usage.prompt_tokens, end, text });
    s.length = end;
  };

  const resendTurn = async (format: 'completion' | 'chat') => {
    let s = format === 'chat' ? chat : resend;
    if (!s || s.length > 900) {
      if (s) {
        liveSessions.delete(s);
        finishedSessions.push(s);
      }
      const id = `soak-${format}-${c}-${randomBytes(6).toString('hex')}`;
      s = track({ kind: format === 'chat' ? 'chat' : 'completions', id, key, length: 0, turns: [], prompt: words(rng, 10 + int(rng, 30)), messages: [] });
      if (format === 'chat') chat = s;
      else resend = s;
    }
    if (!(await idle(s))) return;
    const stream = rng.next() < 0.6;
    const requestId = `soak-${c}-${++requestCounter}`;
    const maxTokens = 4 + int(rng, MAX_TOKENS);
    let expectedPrompt: number;
    let answer: Answer;
    if (format === 'chat') {
      const messages: ChatMessage[] = [...s.messages, { role: 'user', content: words(rng, 4 + int(rng, 12)).trim() }];
      expectedPrompt = tokenizer.encode(serving.model.chatTemplate.render(messages, true), false).length;
      answer = await call('POST', '/v1/chat/completions', { key, stream, requestId, format: 'chat', body: generationBody({ messages, session_id: s.id }, stream, maxTokens) });
      if (answer.status === 200) s.messages = [...messages, { role: 'assistant', content: outputOf(answer, stream, 'chat') }];
    } else {
      const prompt = s.prompt + words(rng, 3 + int(rng, 10));
      expectedPrompt = tokenizer.encode(prompt, true).length;
      answer = await call('POST', '/v1/completions', { key, stream, requestId, body: generationBody({ prompt, session_id: s.id }, stream, maxTokens) });
      if (answer.status === 200) s.prompt = prompt + outputOf(answer, stream, 'completion');
    }
    if (answer.status !== 200) return note(`${format} resend ${s.id} -> ${answer.status} ${answer.code ?? ''}`);
    recordLatency(answer, stream);
    const usage = usageOf(answer, stream);
    if (!usage) return note(`${format} resend ${s.id}: no usage`);
    if (usage.prompt_tokens !== expectedPrompt) {
      stats.continuityFailures++;
      note(`${format} resend ${s.id}: prompt_tokens ${usage.prompt_tokens}, expected ${expectedPrompt}`);
    }
    stats.resendTurns++;
    if (usage.prompt_tokens_details.cached_tokens > 0) stats.warmTurns++;
    const end = usage.prompt_tokens + usage.completion_tokens;
    // Chat stop strings hide text: compare token ids only.
    s.turns = [{ requestId, start: usage.prompt_tokens, end, text: format === 'chat' ? null : outputOf(answer, stream, 'completion') }];
    s.length = end;
  };

  const badRequest = async () => {
    const own = natives[0]?.id ?? 'none-yet';
    const cases: Array<() => { method?: string; path: string; body?: unknown; key?: number | null; expect: number }> = [
      () => ({ path: '/v1/completions', body: '{"prompt": "unterminated', expect: 400 }),
      () => ({ path: '/v1/completions', body: { prompt: 'x', max_tokens: 100_000 }, expect: 400 }),
      () => ({ path: '/v1/completions', body: { prompt: [1, vocabSize + 7] }, expect: 400 }),
      () => ({ path: '/v1/completions', body: { prompt: 'x', stop: ['a', 'b', 'c', 'd', 'e'] }, expect: 400 }),
      () => ({ path: '/v1/completions', body: { prompt: 'x', temperature: 'hot' }, expect: 400 }),
      () => ({ path: '/v1/completions', body: { prompt: 'x', n: 3 }, expect: 400 }),
      () => ({ path: '/v1/chat/completions', body: { messages: [] }, expect: 400 }),
      () => ({ path: '/v1/completions', body: { prompt: 'x' }, key: null, expect: 401 }),
      () => ({ method: 'GET', path: `/v1/sessions/${own}`, key: 1 - key, expect: 404 }),
      () => ({ path: `/v1/sessions/${own}/completions`, body: { prompt: ' intruder', max_tokens: 2 }, key: 1 - key, expect: 404 }),
      () => ({ method: 'DELETE', path: `/v1/sessions/${own}`, key: 1 - key, expect: 404 }),
      () => ({ path: '/v1/sessions/no-such-session/completions', body: { prompt: 'x' }, expect: 404 }),
      () => ({ path: '/v1/completions', body: JSON.stringify({ prompt: 'x'.repeat(300 * 1024) }), expect: 413 }),
    ];
    const pick = cases[int(rng, cases.length)]();
    const answer = await call(pick.method ?? 'POST', pick.path, { key: pick.key === undefined ? key : pick.key, body: pick.body });
    stats.latency.badMs.push(answer.ms);
    if (answer.status === pick.expect) stats.badRequests.expected++;
    else {
      stats.badRequests.unexpected++;
      note(`bad request ${pick.method ?? 'POST'} ${pick.path}: expected ${pick.expect}, got ${answer.status} ${answer.code ?? ''}`);
    }
  };

  const oneOff = async () => {
    const stream = rng.next() < 0.5;
    const answer = await call('POST', '/v1/completions', { key, stream, body: generationBody({ prompt: words(rng, 5 + int(rng, 30)) }, stream, 4 + int(rng, MAX_TOKENS)) });
    if (answer.status !== 200) note(`one-off -> ${answer.status} ${answer.code ?? ''}`);
    recordLatency(answer, stream);
  };

  await newNative();
  for (let step = 0; performance.now() < deadline && step < 1_000_000; step++) {
    const roll = rng.next();
    try {
      if (natives.length === 0) await newNative();
      else if (roll < 0.3) await nativeTurn(natives[int(rng, natives.length)], false);
      else if (roll < 0.42) await resendTurn('completion');
      else if (roll < 0.52) await resendTurn('chat');
      else if (roll < 0.62) await nativeTurn(natives[int(rng, natives.length)], true);
      else if (roll < 0.77) await badRequest();
      else if (roll < 0.87) {
        const retiring = natives.find((s) => s.length > 1200) ?? (natives.length >= 3 ? natives[0] : null);
        if (retiring) {
          natives.splice(natives.indexOf(retiring), 1);
          await retire(retiring);
        } else await newNative();
      } else await oneOff();
    } catch (error) {
      note(`client ${c}: ${(error as Error).message}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Verification: every turn still in a transcript equals a one-shot greedy computation of its prefix.

let verifyCounter = 0;
async function oneShot(input: number[], maxTokens: number): Promise<{ ids: number[]; text: string }> {
  const submitted = await serving.engine.submit({
    requestId: `soak-verify-${++verifyCounter}`,
    owner: 'soak-verifier',
    onUnknownSession: 'create',
    mode: 'replace',
    input,
    maxTokens,
    sampling: GREEDY,
    stop: [],
    ignoreEos: true,
    truncation: 'auto',
  });
  if (!submitted.ok) throw new Error(`verification refused: ${submitted.error.message}`);
  const ids: number[] = [];
  let text = '';
  for await (const event of submitted.events) {
    if (event.type === 'token') {
      ids.push(event.tokenId);
      text += event.text;
    } else if (event.type === 'end') {
      text += event.text;
      if (event.finishReason === 'error') throw new Error(`verification failed: ${event.error?.message}`);
    }
  }
  return { ids, text };
}

async function verifySession(s: TrackedSession): Promise<void> {
  stats.verify.sessions++;
  const session = storeSession(s);
  if (!session) {
    stats.verify.lost++;
    stats.verify.details.push(`${s.id}: lost`);
    return;
  }
  if (session.busy || session.tokens.length !== s.length) {
    stats.verify.corrupted++;
    stats.verify.details.push(`${s.id}: ${session.busy ? 'busy' : `${session.tokens.length} tokens, expected ${s.length}`}`);
    return;
  }
  const tokens = session.tokens.slice();
  for (const turn of s.turns) {
    if (turn.end <= turn.start) continue;
    stats.verify.turns++;
    const approx = taintedRequests.has(turn.requestId);
    if (approx) stats.verify.approxTurns++;
    const reference = await oneShot(tokens.slice(0, turn.start), turn.end - turn.start);
    const expected = tokens.slice(turn.start, turn.end);
    const same = reference.ids.length === expected.length && reference.ids.every((t, i) => t === expected[i]) && (turn.text === null || turn.text === reference.text);
    if (same) continue;
    if (approx) stats.verify.approxMismatches++;
    else {
      stats.verify.exactMismatches++;
      if (stats.verify.details.length < 20) stats.verify.details.push(`${s.kind} ${s.id} turn ${turn.requestId} [${turn.start}, ${turn.end}): differs from a one-shot recomputation`);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Samplers.

const started = performance.now();
const budget = serving.store.budget;
const budgetTimer = setInterval(() => {
  stats.budget.samples++;
  const utilization = budget.reservedBytes / budget.capacityBytes;
  stats.budget.maxUtilization = Math.max(stats.budget.maxUtilization, utilization);
  if (budget.reservedBytes > budget.capacityBytes) stats.budget.violations++;
}, 100);
const rssTimer = setInterval(() => stats.rss.push({ t: (performance.now() - started) / 1000, rss: process.memoryUsage().rss }), 500);
const metricsTimer = setInterval(() => {
  void fetch(`${URL_BASE}/metrics`)
    .then((res) => res.text())
    .then((text) => {
      const line = text.split('\n').find((l) => l.startsWith('warmkv_kv_cache_utilization'));
      if (!line) return;
      const value = Number(line.slice(line.lastIndexOf(' ') + 1));
      stats.budget.metricsSamples++;
      stats.budget.maxMetricsUtilization = Math.max(stats.budget.maxMetricsUtilization, value);
      if (value > 1) stats.budget.violations++;
    })
    .catch(() => {});
}, 2000);

console.log(`soak: ${CLIENTS} clients for ${MINUTES} min on ${URL_BASE}; model: ${source}; KV budget ${budget.capacityBytes} bytes`);
await Promise.all(Array.from({ length: CLIENTS }, (_, c) => runClient(c)));
const runSeconds = (performance.now() - started) / 1000;
clearInterval(budgetTimer);
clearInterval(rssTimer);
clearInterval(metricsTimer);

// Let dropped streams run out, then check every session.
const settleUntil = performance.now() + 120_000;
while ((serving.engine.stats().running > 0 || serving.engine.stats().waiting > 0) && performance.now() < settleUntil) await new Promise((r) => setTimeout(r, 50));
const verifyStarted = performance.now();
for (const s of [...liveSessions, ...finishedSessions]) await verifySession(s);
const busy = [...serving.store.inLruOrder()].filter((s) => s.busy).length;
const verifySeconds = (performance.now() - verifyStarted) / 1000;

await new Promise<void>((resolve) => {
  (server as { closeAllConnections?: () => void }).closeAllConnections?.();
  server.close(() => resolve());
});
rmSync(snapshotDir, { recursive: true, force: true });

// ---------------------------------------------------------------------------------------------------
// Report.

const MiB = 1024 * 1024;
// The first third is warm-up (the KV budget fills, onnxruntime's arenas grow): growth is the last
// third's peak over the middle third's.
const third = runSeconds / 3;
const middle = stats.rss.filter((s) => s.t > third && s.t <= 2 * third).map((s) => s.rss);
const last = stats.rss.filter((s) => s.t > 2 * third).map((s) => s.rss);
const peakRss = Math.max(...stats.rss.map((s) => s.rss));
const rssGrowth = middle.length && last.length ? Math.max(...last) - Math.max(...middle) : 0;
const RSS_GROWTH_LIMIT = Math.max(64 * MiB, 0.15 * Math.max(...middle, 0));
const round = (n: number, digits = 1) => (Number.isFinite(n) ? Math.round(n * 10 ** digits) / 10 ** digits : null);
const p = (values: number[]) => ({ p50: round(percentile(values, 50)), p99: round(percentile(values, 99)), n: values.length });

const checks = {
  zero5xx: stats.serverErrors === 0 && stats.streamServerErrors === 0,
  badRequestsAnswered: stats.badRequests.unexpected === 0,
  noUnexpected: stats.unexpected.length === 0,
  noLostOrCorruptedSessions: stats.verify.lost === 0 && stats.verify.corrupted === 0 && stats.verify.exactMismatches === 0 && stats.continuityFailures === 0 && busy === 0,
  kvBudgetNeverExceeded: stats.budget.violations === 0,
  rssGrowthBounded: rssGrowth <= RSS_GROWTH_LIMIT,
};
const passed = Object.values(checks).every(Boolean);

const result = {
  settings: { clients: CLIENTS, minutes: MINUTES, maxTokens: MAX_TOKENS, seed: SEED, threads, kvCacheBytes: budget.capacityBytes, server: settings },
  model: source,
  runSeconds: round(runSeconds),
  verifySeconds: round(verifySeconds),
  requests: stats.requests,
  streams: stats.streams,
  disconnects: stats.disconnects,
  resumes: stats.resumes,
  sessions: { created: stats.sessionsCreated, deleted: stats.sessionsDeleted, verified: stats.verify.sessions, busyAtEnd: busy },
  turns: { warm: stats.warmTurns, resends: stats.resendTurns, verified: stats.verify.turns, onApproximateCache: stats.verify.approxTurns, approximateMismatches: stats.verify.approxMismatches, exactMismatches: stats.verify.exactMismatches },
  byStatus: Object.fromEntries(Object.entries(stats.byStatus).sort()),
  badRequests: stats.badRequests,
  serverErrors: stats.serverErrors,
  streamServerErrors: stats.streamServerErrors,
  continuityFailures: stats.continuityFailures,
  latencyMs: { streamTtft: p(stats.latency.ttftMs), streamTotal: p(stats.latency.streamMs), nonStreaming: p(stats.latency.jsonMs), badRequests: p(stats.latency.badMs) },
  kv: { maxUtilizationSampled: round(stats.budget.maxUtilization, 3), maxMetricsUtilization: round(stats.budget.maxMetricsUtilization, 3), samples: stats.budget.samples, metricsSamples: stats.budget.metricsSamples, violations: stats.budget.violations, tiersAtEnd: serving.tiers.counts().sessions },
  /** [seconds, MiB] every 10 s. */
  rssSeriesMiB: stats.rss.filter((_, i) => i % 20 === 0).map((s) => [round(s.t, 0), round(s.rss / MiB)]),
  rssMiB: { start: round((stats.rss[0]?.rss ?? 0) / MiB), peak: round(peakRss / MiB), middleThirdPeak: round(Math.max(...middle) / MiB), lastThirdPeak: round(Math.max(...last) / MiB), growth: round(rssGrowth / MiB), limit: round(RSS_GROWTH_LIMIT / MiB) },
  logs: logCounts,
  problems: [...stats.unexpected, ...stats.verify.details],
  checks,
  passed,
};

const file = writeResult(values.tag!, result);
const statusRows = Object.entries(result.byStatus).map(([status, n]) => [status, n]);
const markdown = [
  `Soak: ${CLIENTS} clients, ${MINUTES} min (${result.runSeconds} s), ${source}.`,
  '',
  table(
    ['requests', 'streams', 'disconnects', 'resumed', 'sessions', 'turns verified', '5xx', 'unexpected', 'TTFT p50 / p99 ms', 'stream p99 ms', 'non-stream p99 ms', 'peak RSS MiB', 'RSS growth MiB', 'max KV util'],
    [[
      result.requests, result.streams, result.disconnects, result.resumes.completed, result.sessions.created, result.turns.verified,
      result.serverErrors + result.streamServerErrors, stats.unexpected.length,
      `${result.latencyMs.streamTtft.p50} / ${result.latencyMs.streamTtft.p99}`, String(result.latencyMs.streamTotal.p99), String(result.latencyMs.nonStreaming.p99),
      String(result.rssMiB.peak), String(result.rssMiB.growth), String(result.kv.maxMetricsUtilization),
    ]],
  ),
  '',
  table(['status', 'responses'], statusRows),
  '',
  `Checks: ${Object.entries(checks).map(([k, v]) => `${k} ${v ? 'ok' : 'FAILED'}`).join(', ')}.`,
  result.turns.onApproximateCache > 0 ? `Turns on an int8/disk-restored cache: ${result.turns.onApproximateCache}, of which ${result.turns.approximateMismatches} differ from the exact recomputation (int8 is approximate).` : '',
  '',
].join('\n');
mkdirSync(RESULTS_DIR, { recursive: true });
writeFileSync(join(RESULTS_DIR, `${values.tag}.md`), markdown);
console.log(markdown);
if (result.problems.length) console.log(`problems:\n  ${result.problems.join('\n  ')}`);
console.log(`wrote ${file}`);
process.exit(passed ? 0 : 1);
