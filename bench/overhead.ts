/**
 * What warmkv costs over a bare onnxruntime-node loop, on the same model and the same greedy tokens, in
 * one process tree and interleaved (every repetition runs each mode once, so load on the shared machine
 * hits all of them alike): this process runs the bare loop and the engine in-process; a server child
 * (src/main.ts with bench/probes/server-probe.ts preloaded) serves HTTP to a plain fetch (non-streaming)
 * and to the openai client (SSE). Reported as ratios of per-repetition pairs:
 *
 * - tok/s (completion tokens / request wall time) of the engine, HTTP and SSE over the bare loop, and
 *   CPU time per token (bare and engine: this process; HTTP and SSE: the server's), which load from
 *   other processes on shared cores distorts far less than wall time;
 * - warm follow-up TTFT over SSE (`--cached` tokens in the session + `--new` new ones) over a bare
 *   prefill of the same new tokens after the same cached ones, and the same over a plain node:http client
 *   (the server's part: the openai client's own work is not in it);
 * - event-loop delay p99 in the server while `--clients` streams run (next to a bare loop's in this
 *   process for as long, the machine's floor), and their aggregate tok/s over one's;
 * - the server's peak RSS over a bare loop's (bench/probes/bare-rss.ts) holding the same caches.
 *
 * Both children (the server and the memory floor) run compiled to JavaScript, as the images run the
 * server (bench/compiled.ts); `--runtime tsx` runs them as `npm start` does.
 *
 *   npm run bench -- overhead [--models default,stories] [--model DIR] [--threads N] [--tokens 128]
 *     [--repeats 7] [--warm-samples 5] [--clients 8] [--runtime compiled|tsx] [--tag overhead]
 *
 * `stories` is a builder llama the size of Karpathy's stories260K (5 layers, 64 wide, 8/4 heads, vocab 512).
 */
import { fork, execFileSync } from 'node:child_process';
import { Agent, request as httpRequest } from 'node:http';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import OpenAI from 'openai';
import { silentLogger } from '../src/lib/logger.ts';
import { loadModel, type LoadedModel } from '../src/model/index.ts';
import { buildModelFolder } from '../tools/model-builder/index.ts';
import { childScripts } from './compiled.ts';
import { parseBenchArgs } from './cli.ts';
import { DEFAULT_MODEL, benchConfig, emptyKv, forward, greedyRequest, lastArgmax, median, serving, table, writeResult } from './common.ts';

const SUMMARY = 'warmkv (engine in-process, HTTP, SSE) against a bare onnxruntime loop: tok/s, warm TTFT, event-loop delay, RSS, concurrency.';
const values = parseBenchArgs('overhead', SUMMARY, {
  models: { type: 'string', default: 'default,stories', value: 'LIST', help: 'default (the --model folder) and/or stories (a stories260K-size builder llama)' },
  model: { type: 'string', default: DEFAULT_MODEL, value: 'DIR', help: 'the default model folder' },
  threads: { type: 'string', default: '1', value: 'N', help: 'onnxruntime intra-op threads, for every mode alike' },
  tokens: { type: 'string', default: '128', value: 'N', help: 'completion tokens per request (ignore_eos)' },
  'prompt-tokens': { type: 'string', default: '32', value: 'N', help: 'prompt tokens of the throughput requests' },
  cached: { type: 'string', default: '400', value: 'N', help: 'tokens in the session before the warm follow-up' },
  new: { type: 'string', default: '16', value: 'N', help: 'new tokens of the warm follow-up' },
  repeats: { type: 'string', default: '7', value: 'N', help: 'interleaved repetitions' },
  'warm-samples': { type: 'string', default: '5', value: 'N', help: 'warm follow-ups per repetition and mode (each on a new session); a repetition counts their median' },
  clients: { type: 'string', default: '8', value: 'N', help: 'concurrent streaming clients' },
  tag: { type: 'string', default: 'overhead', value: 'NAME', help: 'result name: bench/results/NAME.json' },
  'server-profile': { type: 'string', default: '', value: 'DIR', help: 'write the server child\'s CPU profile (node --cpu-prof) into DIR' },
  'semi-space': { type: 'string', default: '64', value: 'MB', help: 'the server child\'s --max-semi-space-size (npm start uses 64); 0: node\'s default' },
  'old-space': { type: 'string', default: '128', value: 'MB', help: 'the server child\'s --initial-old-space-size (npm start uses 128); 0: node\'s default' },
  runtime: { type: 'string', default: 'compiled', value: 'compiled|tsx', help: 'how the server child and the memory floor run: compiled to JavaScript as the images run it (bench/compiled.ts), or under tsx as npm start does' },
});
const threads = Number(values.threads);
const tokens = Number(values.tokens);
const repeats = Number(values.repeats);
const clients = Number(values.clients);
const cachedTokens = Number(values.cached);
const newTokens = Number(values.new);
const warmSamples = Number(values['warm-samples']);
const profileArgs = values['server-profile'] ? ['--cpu-prof', '--cpu-prof-dir', String(values['server-profile'])] : [];
const heapArgs = Number(values['semi-space']) > 0 ? [`--max-semi-space-size=${Number(values['semi-space'])}`] : [];
if (Number(values['old-space']) > 0) heapArgs.push(`--initial-old-space-size=${Number(values['old-space'])}`);
const STORIES_DIR = '/tmp/warmkv-bench-stories260k';
const childScript = childScripts(values.runtime, ['src/main.ts', 'bench/probes/server-probe.ts', 'bench/probes/bare-rss.ts']);

async function modelDir(name: string): Promise<string> {
  if (name === 'default') return values.model;
  if (!existsSync(join(STORIES_DIR, 'config.json'))) {
    await buildModelFolder(STORIES_DIR, { family: 'llama', hiddenSize: 64, numLayers: 5, numHeads: 8, numKvHeads: 4, vocabSize: 512, tokenizerMerges: 253, maxPositions: 1024 });
  }
  return STORIES_DIR;
}

/** Token ids of ordinary text (no special tokens), `count` long. */
function promptOf(model: LoadedModel, count: number, salt: number): number[] {
  const text = `Once upon a time, in a village by the sea, lived a girl named Mia number ${salt}. She liked to walk on the sand and look at the boats. `;
  const ids: number[] = [];
  while (ids.length < count) ids.push(...model.tokenizer.encode(text, false));
  return ids.slice(0, count);
}

async function bareGenerate(model: LoadedModel, prompt: number[], n: number) {
  const started = performance.now();
  let out = await forward(model.decoder, prompt, emptyKv(model.decoder.io.kv, 1));
  let next = lastArgmax(out.logits, prompt.length, model.vocabSize);
  const ids = [next];
  for (let i = 1; i < n; i++) {
    out = await forward(model.decoder, [next], out.present);
    next = lastArgmax(out.logits, 1, model.vocabSize);
    ids.push(next);
  }
  return { ids, ms: performance.now() - started };
}

/**
 * This process's event-loop delay p99 (ms) while a bare greedy loop runs for `ms`: what the machine
 * alone does to a loop that runs one onnxruntime step per turn, the floor for the server's number.
 */
async function bareLoopDelayP99(model: LoadedModel, prompt: number[], ms: number): Promise<number> {
  const histogram = monitorEventLoopDelay({ resolution: 1 });
  histogram.enable();
  for (const until = performance.now() + ms; performance.now() < until; ) await bareGenerate(model, prompt, tokens);
  histogram.disable();
  return histogram.percentile(99) / 1e6;
}

/** A timed mode that runs `sample` `count` times and counts the median: one warm follow-up is noise. */
function medianOf(count: number, sample: () => Promise<number>): () => Promise<number> {
  return async () => {
    const times: number[] = [];
    for (let i = 0; i < count; i++) times.push(await sample());
    return median(times);
  };
}

function ownCpuMs(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
}

interface Child {
  url: string;
  ask(type: 'reset' | 'sample'): Promise<Record<string, number>>;
  stop(): Promise<void>;
}

async function startServer(dir: string): Promise<Child> {
  const env = { ...process.env, MODEL_DIR: dir, PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', DRAIN_SECONDS: '1', INTRA_OP_THREADS: String(threads) };
  const main = childScript('src/main.ts');
  const probe = `./${childScript('bench/probes/server-probe.ts').file}`;
  const child = fork(main.file, [], { env, execArgv: [...heapArgs, ...profileArgs, ...main.preload, '--import', probe], stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const port = await new Promise<number>((resolve, reject) => {
    let buffer = '';
    child.stdout!.on('data', (data: Buffer) => {
      buffer += data.toString();
      const match = /"port":(\d+)/.exec(buffer);
      if (match) resolve(Number(match[1]));
    });
    void exited.then(() => reject(new Error(`the server exited during start:\n${buffer}`)));
  });
  const url = `http://127.0.0.1:${port}`;
  for (let ready = false; !ready; await new Promise((r) => setTimeout(r, 100))) ready = (await fetch(`${url}/readyz`).catch(() => null))?.status === 200;
  return {
    url,
    ask: (type) =>
      new Promise((resolve) => {
        child.once('message', (message) => resolve(message as Record<string, number>));
        child.send({ type });
      }),
    stop: async () => {
      if (child.exitCode !== null) return;
      child.kill('SIGTERM');
      await exited;
    },
  };
}

async function postJson(url: string, body: unknown): Promise<Record<string, any>> {
  const response = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
  const json = (await response.json()) as Record<string, any>;
  if (response.status !== 200) throw new Error(`HTTP ${response.status}: ${JSON.stringify(json)}`);
  return json;
}

/** Deletes a session once its sample is taken, so the server holds the caches a bare loop holds (RSS is compared). */
async function deleteSession(url: string, id: string): Promise<void> {
  const response = await fetch(`${url}/v1/sessions/${id}`, { method: 'DELETE' });
  if (response.status !== 200) throw new Error(`DELETE session ${id}: HTTP ${response.status}`);
  await response.arrayBuffer();
}

/**
 * Time to the first body bytes of a streamed completion over a plain keep-alive node:http client: the
 * server's part of a warm TTFT (the openai client's own request building and SSE parsing add about
 * 3 ms on this machine, which no server change can remove). The first bytes carry the first token.
 */
const rawAgent = new Agent({ keepAlive: true, maxSockets: 1 });
function rawStreamFirstMs(url: string, body: unknown): Promise<{ firstMs: number; text: string }> {
  return new Promise((resolve, reject) => {
    const payload = JSON.stringify(body);
    const started = performance.now();
    const target = new URL(`${url}/v1/completions`);
    const req = httpRequest({ host: target.hostname, port: target.port, path: target.pathname, method: 'POST', agent: rawAgent, headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(payload) } }, (res) => {
      let firstMs = NaN;
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        if (Number.isNaN(firstMs)) firstMs = performance.now() - started;
        text += chunk;
      });
      res.on('end', () => (res.statusCode === 200 ? resolve({ firstMs, text }) : reject(new Error(`HTTP ${res.statusCode}: ${text}`))));
    });
    req.on('error', reject);
    req.end(payload);
  });
}

/** One SSE completion through the openai client: wall ms, time to the first text, the text. */
let servedModel = '';
async function streamCompletion(client: OpenAI, prompt: number[], n: number, extra: Record<string, unknown> = {}) {
  const started = performance.now();
  let firstMs = NaN;
  let text = '';
  let cached = NaN;
  const stream = await client.completions.create({ model: servedModel, prompt, max_tokens: n, temperature: 0, stream: true, stream_options: { include_usage: true }, ignore_eos: true, ...extra } as unknown as OpenAI.CompletionCreateParamsStreaming);
  for await (const chunk of stream) {
    const piece = chunk.choices[0]?.text ?? '';
    if ((piece || chunk.choices[0]?.finish_reason) && Number.isNaN(firstMs)) firstMs = performance.now() - started;
    text += piece;
    if (chunk.usage) cached = (chunk.usage as { prompt_tokens_details?: { cached_tokens: number } }).prompt_tokens_details?.cached_tokens ?? NaN;
  }
  return { ms: performance.now() - started, firstMs, text, cached };
}

async function measure(name: string) {
  const dir = await modelDir(name);
  const model = await loadModel(dir, { logger: silentLogger, intraOpThreads: threads });
  const server = await startServer(dir);
  try {
    return await measureWith(name, dir, model, server);
  } finally {
    await server.stop();
  }
}

async function measureWith(name: string, dir: string, model: LoadedModel, server: Child) {
  const engine = serving(benchConfig({ INTRA_OP_THREADS: String(threads) }), model).engine;
  const prompt = promptOf(model, Number(values['prompt-tokens']), 1);
  const base = promptOf(model, cachedTokens, 2);
  const follow = promptOf(model, newTokens, 3);
  servedModel = ((await (await fetch(`${server.url}/v1/models`)).json()) as { data: Array<{ id: string }> }).data[0].id;
  const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const expected = (await bareGenerate(model, prompt, tokens)).ids;
  const expectedText = model.tokenizer.decode(expected);

  // CPU time per request (this process for bare and engine, the server's for HTTP and SSE).
  const cpuMs = { bare: [] as number[], engine: [] as number[], http: [] as number[], sse: [] as number[] };
  const modes = {
    bare: async () => {
      const cpu = ownCpuMs();
      const { ms } = await bareGenerate(model, prompt, tokens);
      cpuMs.bare.push(ownCpuMs() - cpu);
      return ms;
    },
    engine: async () => {
      const cpu = ownCpuMs();
      const started = performance.now();
      const submitted = await engine.submit(greedyRequest(prompt, { maxTokens: tokens }));
      if (!submitted.ok) throw new Error(submitted.error.message);
      const ids: number[] = [];
      for await (const event of submitted.events) if (event.type === 'token') ids.push(event.tokenId);
      if (ids.join() !== expected.join()) throw new Error('the engine produced other tokens than the bare loop');
      const ms = performance.now() - started;
      cpuMs.engine.push(ownCpuMs() - cpu);
      return ms;
    },
    http: async () => {
      const cpu = (await server.ask('sample')).cpuMs;
      const started = performance.now();
      const body = await postJson(server.url, { prompt, max_tokens: tokens, temperature: 0, ignore_eos: true });
      if (body.choices[0].text !== expectedText) throw new Error('HTTP produced another text than the bare loop');
      const ms = performance.now() - started;
      cpuMs.http.push((await server.ask('sample')).cpuMs - cpu);
      return ms;
    },
    sse: async () => {
      const cpu = (await server.ask('sample')).cpuMs;
      const run = await streamCompletion(client, prompt, tokens);
      if (run.text !== expectedText) throw new Error('SSE produced another text than the bare loop');
      cpuMs.sse.push((await server.ask('sample')).cpuMs - cpu);
      return run.ms;
    },
    bareWarm: medianOf(warmSamples, async () => {
      const past = (await forward(model.decoder, base, emptyKv(model.decoder.io.kv, 1))).present;
      const started = performance.now();
      const out = await forward(model.decoder, follow, past);
      lastArgmax(out.logits, follow.length, model.vocabSize);
      return performance.now() - started;
    }),
    sseWarm: medianOf(warmSamples, async () => {
      const session = `warm-${Math.random().toString(36).slice(2)}`;
      await postJson(server.url, { prompt: base, max_tokens: 1, temperature: 0, session_id: session });
      const run = await streamCompletion(client, [...base, ...follow], 1, { session_id: session });
      if (run.cached < cachedTokens) throw new Error(`the follow-up found ${run.cached} cached tokens, not ${cachedTokens}`);
      await deleteSession(server.url, session);
      return run.firstMs;
    }),
    rawWarm: medianOf(warmSamples, async () => {
      const session = `warm-${Math.random().toString(36).slice(2)}`;
      await postJson(server.url, { prompt: base, max_tokens: 1, temperature: 0, session_id: session });
      const run = await rawStreamFirstMs(server.url, { model: servedModel, prompt: [...base, ...follow], max_tokens: 1, temperature: 0, stream: true, stream_options: { include_usage: true }, session_id: session });
      const cached = /"cached_tokens":(\d+)/.exec(run.text);
      if (!cached || Number(cached[1]) < cachedTokens) throw new Error(`the raw follow-up found ${cached?.[1]} cached tokens, not ${cachedTokens}`);
      await deleteSession(server.url, session);
      return run.firstMs;
    }),
  };
  type Mode = keyof typeof modes;
  const times = Object.fromEntries(Object.keys(modes).map((m) => [m, [] as number[]])) as Record<Mode, number[]>;
  for (const mode of Object.keys(modes) as Mode[]) await modes[mode]();
  for (let r = 0; r < repeats; r++) {
    const order = Object.keys(modes) as Mode[];
    // Rotate the order so no mode always runs right after the same neighbour.
    for (let i = 0; i < order.length; i++) {
      const mode = order[(i + r) % order.length];
      times[mode].push(await modes[mode]());
    }
    console.error(`${name} #${r + 1}: ${order.map((m) => `${m} ${times[m].at(-1)!.toFixed(1)}`).join(', ')} ms`);
  }

  // Concurrency, interleaved with one client: aggregate tok/s and the server's event-loop delay.
  const single: number[] = [];
  const many: number[] = [];
  const loopP99: number[] = [];
  const loopMax: number[] = [];
  const bareLoopP99: number[] = [];
  for (let r = 0; r < Math.max(3, Math.ceil(repeats / 2)); r++) {
    single.push(tokens / ((await streamCompletion(client, prompt, tokens)).ms / 1000));
    await server.ask('reset');
    const started = performance.now();
    await Promise.all(Array.from({ length: clients }, () => streamCompletion(client, prompt, tokens)));
    many.push((clients * tokens) / ((performance.now() - started) / 1000));
    const manyMs = performance.now() - started;
    const sample = await server.ask('sample');
    loopP99.push(sample.loopDelayP99Ms);
    loopMax.push(sample.loopDelayMaxMs);
    bareLoopP99.push(await bareLoopDelayP99(model, prompt, manyMs));
  }
  const memory = await server.ask('sample');
  const floor = childScript('bench/probes/bare-rss.ts');
  const bareRss = JSON.parse(
    execFileSync(process.execPath, [...floor.preload, floor.file, '--model', dir, '--threads', String(threads), '--prompt', prompt.join(','), '--tokens', String(tokens), '--caches', String(clients), '--warm', base.join(','), '--follow', follow.join(',')], { encoding: 'utf8' }),
  ) as { maxRssMiB: number };

  // The warm-up round above is not counted.
  for (const list of Object.values(cpuMs)) list.splice(0, list.length - repeats);
  const cpuUsPerToken = (list: number[]) => (median(list) / tokens) * 1000;
  const pairs = (a: Mode, b: Mode) => median(times[a].map((t, i) => t / times[b][i]));
  const bareStepMs = median(times.bare) / tokens;
  return {
    model: name === 'default' ? dir : 'builder llama, stories260K size (hidden 64, 5 layers, 8 heads / 4 KV heads, vocab 512)',
    threads,
    tokens,
    bareStepMs,
    timesMs: times,
    tokPerSecRatio: { engine: pairs('bare', 'engine'), http: pairs('bare', 'http'), sse: pairs('bare', 'sse') },
    overheadPerTokenUs: { engine: ((median(times.engine) - median(times.bare)) / tokens) * 1000, http: ((median(times.http) - median(times.bare)) / tokens) * 1000, sse: ((median(times.sse) - median(times.bare)) / tokens) * 1000 },
    cpuUsPerToken: { bare: cpuUsPerToken(cpuMs.bare), engine: cpuUsPerToken(cpuMs.engine), http: cpuUsPerToken(cpuMs.http), sse: cpuUsPerToken(cpuMs.sse) },
    warmTtft: { bareMs: median(times.bareWarm), sseMs: median(times.sseWarm), ratio: pairs('sseWarm', 'bareWarm'), rawMs: median(times.rawWarm), rawRatio: pairs('rawWarm', 'bareWarm') },
    concurrency: { clients, singleTokPerSec: single, aggregateTokPerSec: many, ratio: median(many.map((m, i) => m / single[i])) },
    loopDelay: { p99Ms: median(loopP99), maxMs: Math.max(...loopMax), p99PerRepeatMs: loopP99, bareP99Ms: median(bareLoopP99), bareP99PerRepeatMs: bareLoopP99 },
    rss: { serverMiB: memory.maxRssMiB, serverHeapUsedMiB: memory.heapUsedMiB, bareMiB: bareRss.maxRssMiB, ratio: memory.maxRssMiB / bareRss.maxRssMiB },
  };
}

const results = [];
for (const name of values.models.split(',')) results.push(await measure(name));
rawAgent.destroy();
const x = (v: number) => `${v.toFixed(2)}x`;
const markdown = table(
  ['model', 'bare step, ms', 'engine tok/s / bare', 'HTTP tok/s / bare', 'SSE tok/s / bare', 'SSE us/token over bare', 'CPU us/token bare / engine / HTTP / SSE', 'warm TTFT SSE / bare (ms)', 'warm TTFT raw HTTP / bare (ms)', `loop delay p99 at ${clients} / bare loop, ms`, 'peak RSS / bare (MiB)', `${clients} clients tok/s / 1`],
  results.map((r) => [
    r.model,
    r.bareStepMs.toFixed(3),
    x(r.tokPerSecRatio.engine),
    x(r.tokPerSecRatio.http),
    x(r.tokPerSecRatio.sse),
    r.overheadPerTokenUs.sse.toFixed(0),
    [r.cpuUsPerToken.bare, r.cpuUsPerToken.engine, r.cpuUsPerToken.http, r.cpuUsPerToken.sse].map((v) => v.toFixed(0)).join(' / '),
    `${x(r.warmTtft.ratio)} (${r.warmTtft.sseMs.toFixed(2)} / ${r.warmTtft.bareMs.toFixed(2)})`,
    `${x(r.warmTtft.rawRatio)} (${r.warmTtft.rawMs.toFixed(2)})`,
    `${r.loopDelay.p99Ms.toFixed(1)} / ${r.loopDelay.bareP99Ms.toFixed(1)}`,
    `${x(r.rss.ratio)} (${r.rss.serverMiB.toFixed(0)} / ${r.rss.bareMiB.toFixed(0)})`,
    x(r.concurrency.ratio),
  ]),
);
console.log(`${threads} intra-op thread(s), ${tokens} tokens per request, medians of ${repeats} interleaved repetitions (warm TTFT: ${warmSamples} follow-ups each), children run ${values.runtime === 'tsx' ? 'under tsx' : 'compiled'}\n\n${markdown}`);
console.error(`wrote ${writeResult(values.tag, { runtime: values.runtime, threads, tokens, repeats, warmSamples, results })}`);
