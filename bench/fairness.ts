/**
 * Fairness of chunked prefill: does one long prompt stall the others?
 *
 * - TTFT of a short request (16 tokens) sent while a long prompt (4,096 tokens) prefills, divided by
 *   its TTFT on an idle engine. Goal <= 3x.
 * - Inter-token latency p99 of a running stream while that long prompt prefills, divided by its p99
 *   with nothing else running: the same stream's 150 gaps right before each long prompt, pooled over
 *   the repeats (a lone stream's p99, measured once at the start, swung 2-121 ms between runs). Goal <= 3x.
 *
 * Both prefill orders are measured: `shortest` (the default: the prefilling request with the fewest
 * prompt tokens left gets the next chunk) and `arrival` (the earliest admitted, the order before).
 *
 *   npm run bench -- fairness [--model DIR] [--threads N] [--long 4096] [--short 16] [--repeats 3] [--kv-mode inplace|concat] [--lane-threads N] [--min-chunk N]
 *
 * `--lane-threads N` (N > 0) runs with the prefill lane (PREFILL_LANE=worker, src/engine/prefill-lane.ts):
 * long prompts' chunks on a second session with N threads, beside the decode steps.
 *
 * Writes bench/results/fairness-<kv-mode>[-lane].json (or `--tag`'s name).
 */
import { tmpdir } from 'node:os';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Engine } from '../src/engine/engine.ts';
import { loadModel } from '../src/model/index.ts';
import { silentLogger } from '../src/lib/logger.ts';
import { buildModelFolder } from '../tools/model-builder/index.ts';
import { benchConfig, greedyRequest, median, percentile, serving, table, writeResult } from './common.ts';
import { KV_MODE_OPTION, kvModeOf, parseBenchArgs } from './cli.ts';

const SUMMARY = 'TTFT of a short request and ITL p99 of a running stream while a long prompt prefills, against an idle engine.';
const values = parseBenchArgs('fairness', SUMMARY, {
  model: { type: 'string', value: 'DIR', help: 'model folder (default: a builder llama with an 8,192-token context)' },
  threads: { type: 'string', default: '2', value: 'N', help: 'onnxruntime intra-op threads' },
  long: { type: 'string', default: '4096', value: 'N', help: 'tokens of the long prompt' },
  short: { type: 'string', default: '16', value: 'N', help: 'tokens of the short request' },
  repeats: { type: 'string', default: '3', value: 'N', help: 'long prefills per prefill order (one short request each)' },
  ...KV_MODE_OPTION,
  'lane-threads': { type: 'string', default: '0', value: 'N', help: 'the prefill lane with N intra-op threads (0: no lane)' },
  'min-chunk': { type: 'string', value: 'N', help: "smallest prefill chunk while streams decode (the engine's minPrefillChunkTokens; default the engine's)" },
  tag: { type: 'string', value: 'NAME', help: 'result file name (default fairness-<kv-mode>[-lane])' },
});
const laneThreads = Number(values['lane-threads']);
const kvMode = kvModeOf(values['kv-mode']);

const longTokens = Number(values.long);
const shortTokens = Number(values.short);
const repeats = Number(values.repeats);
const context = Math.max(8192, longTokens + 1024);

async function model() {
  let dir = values.model;
  if (!dir) {
    dir = join(tmpdir(), `warmkv-bench-fairness-llama-${context}`);
    if (!existsSync(join(dir, 'config.json'))) {
      await buildModelFolder(dir, { family: 'llama', hiddenSize: 256, numLayers: 6, numHeads: 8, numKvHeads: 2, vocabSize: 4096, maxPositions: context });
    }
  }
  return { dir, loaded: await loadModel(dir, { logger: silentLogger, intraOpThreads: Number(values.threads), newRowOutputs: kvMode === 'inplace', prefillLaneThreads: laneThreads > 0 ? laneThreads : undefined }) };
}

const tokens = (n: number, salt: number) => Array.from({ length: n }, (_, i) => (i * 131 + salt * 17) % 4000 + 1);

/** Submits a greedy request; resolves when its first token arrives (ms since submit) and when it ends. */
async function start(engine: Engine, input: number[], maxTokens: number, id: string) {
  const sent = performance.now();
  const controller = new AbortController();
  const submitted = await engine.submit(greedyRequest(input, { requestId: id, maxTokens, ignoreEos: true, signal: controller.signal }));
  if (!submitted.ok) throw new Error(submitted.error.message);
  const arrivals: number[] = [];
  let firstToken!: (ms: number) => void;
  const ttft = new Promise<number>((resolve) => (firstToken = resolve));
  const done = (async () => {
    for await (const event of submitted.events) {
      if (event.type !== 'token') continue;
      arrivals.push(performance.now());
      if (arrivals.length === 1) firstToken(arrivals[0] - sent);
    }
  })();
  return { ttft, done, arrivals, stop: () => controller.abort() };
}

const gapsOf = (arrivals: number[], from = 0, to = Infinity) =>
  arrivals.slice(1).map((t, i) => [arrivals[i], t - arrivals[i]] as const).filter(([at]) => at >= from && at <= to).map(([, gap]) => gap);

interface OrderResult {
  order: 'shortest' | 'arrival';
  shortTtftMs: number[];
  longTtftMs: number[];
  itlP99DuringMs: number;
  /** The long prompt's chunks while the stream decoded: tokens, the cache before each, ms (median and max). */
  longChunks: { count: number; medianTokens: number; medianMs: number; maxMs: number; maxMsPast: number };
  /** Decode steps while the long prompt prefilled (median ms). */
  decodeStepMedianMs: number;
  ttftRatio: number;
  /** The running streams' ITL p99 over their idle windows (IDLE_WINDOW gaps before each long prompt). */
  idleItlP99Ms: number;
  itlRatio: number;
  /** Chunks that ran on the prefill lane (0 without one). */
  laneChunks: number;
  /** The running stream's tokens per second while the long prompts prefilled, and alone (its idle windows). */
  streamTokensPerSecondDuring: number;
  streamTokensPerSecondIdle: number;
}

/** Gaps of the running stream measured before each long prompt arrives: its idle baseline. */
const IDLE_WINDOW = 150;

async function main(): Promise<void> {
  const { dir, loaded } = await model();
  const parts = serving(benchConfig({ KV_CACHE_BYTES: '2GiB', MAX_CONTEXT_TOKENS: String(context), KV_MODE: kvMode }), loaded);
  if (kvMode === 'inplace' && !loaded.decoder.io.newRows) throw new Error('the model has no new-row outputs: it cannot run KV_MODE=inplace');
  const base = parts.engine;
  const minChunk = values['min-chunk'] === undefined ? {} : { minPrefillChunkTokens: Number(values['min-chunk']) };
  const engineFor = (order: 'shortest' | 'arrival') => new Engine(base.model, base.store, { ...base.options, ...minChunk, prefillOrder: order });

  // Idle baselines (on the default engine): short TTFT alone, and a stream's ITL alone.
  const idle = engineFor('shortest');
  await (await start(idle, tokens(64, 99), 4, 'warm')).done;
  const idleTtft: number[] = [];
  for (let i = 0; i < 5; i++) {
    const run = await start(idle, tokens(shortTokens, i), 1, `idle-${i}`);
    idleTtft.push(await run.ttft);
    await run.done;
  }
  const lone = await start(idle, tokens(32, 7), 200, 'idle-stream');
  await lone.done;
  const idleTtftMs = median(idleTtft);
  const loneItlP99Ms = percentile(gapsOf(lone.arrivals), 99);
  console.error(`idle: short TTFT ${idleTtftMs.toFixed(1)} ms, a lone stream's ITL p99 ${loneItlP99Ms.toFixed(1)} ms`);
  /** The running stream's gaps just before each long prompt: its idle ITL in the same conditions, pooled over repeats. */
  const idleGaps: number[] = [];

  const results: OrderResult[] = [];
  for (const order of ['shortest', 'arrival'] as const) {
    const engine = engineFor(order);
    const shortTtft: number[] = [];
    const longTtft: number[] = [];
    const during: number[] = [];
    const chunkLog: Array<{ tokens: number; past: number; ms: number }> = [];
    const decodeMs: number[] = [];
    let longRunning = false;
    let duringMs = 0;
    engine.addObserver({
      prefillChunk: (s, info) => {
        if (s.request.requestId.startsWith('long-')) chunkLog.push({ tokens: info.tokens, past: info.kvTokens - info.tokens, ms: info.durationMs });
      },
      decodeStep: (info) => void (longRunning && decodeMs.push(info.durationMs)),
    });
    for (let r = 0; r < repeats; r++) {
      // A running stream, then the long prompt, then (once the long prefill is under way) the short one.
      const stream = await start(engine, tokens(32, 50 + r), 100_000, `stream-${order}-${r}`);
      await stream.ttft;
      // Its idle ITL first: IDLE_WINDOW gaps after a short warm-up, on the same stream, right before the long prompt.
      while (stream.arrivals.length < 10 + IDLE_WINDOW) await new Promise((resolve) => setTimeout(resolve, 5));
      idleGaps.push(...gapsOf(stream.arrivals.slice(9)));
      let chunks = 0;
      engine.addObserver({ prefillChunk: (s) => void (s.request.requestId === `long-${order}-${r}` && chunks++) });
      const longFrom = performance.now();
      longRunning = true;
      const long = await start(engine, tokens(longTokens, 200 + r), 1, `long-${order}-${r}`);
      while (chunks < 2) await new Promise((resolve) => setImmediate(resolve));
      const short = await start(engine, tokens(shortTokens, 300 + r), 1, `short-${order}-${r}`);
      shortTtft.push(await short.ttft);
      longTtft.push(await long.ttft);
      const longTo = performance.now();
      longRunning = false;
      during.push(...gapsOf(stream.arrivals, longFrom, longTo));
      duringMs += longTo - longFrom;
      await Promise.all([short.done, long.done]);
      // The stream runs until cancelled.
      stream.stop();
      await stream.done;
      console.error(`${order} #${r + 1}: short TTFT ${shortTtft.at(-1)!.toFixed(1)} ms, long TTFT ${longTtft.at(-1)!.toFixed(0)} ms`);
    }
    const itlP99DuringMs = percentile(during, 99);
    const idleWindows = idleGaps.splice(0);
    const idleItlP99Ms = percentile(idleWindows, 99);
    const slowest = chunkLog.reduce((a, b) => (b.ms > a.ms ? b : a), chunkLog[0]);
    const longChunks = {
      count: chunkLog.length,
      medianTokens: median(chunkLog.map((c) => c.tokens)),
      medianMs: median(chunkLog.map((c) => c.ms)),
      maxMs: slowest.ms,
      maxMsPast: slowest.past,
    };
    const decodeStepMedianMs = median(decodeMs);
    console.error(`${order}: long chunks ${JSON.stringify(longChunks)}, decode step median ${decodeStepMedianMs.toFixed(1)} ms, fit ${JSON.stringify(engine.stepCosts())}`);
    results.push({
      order,
      shortTtftMs: shortTtft,
      longTtftMs: longTtft,
      itlP99DuringMs,
      longChunks,
      decodeStepMedianMs,
      ttftRatio: median(shortTtft) / idleTtftMs,
      idleItlP99Ms,
      itlRatio: itlP99DuringMs / idleItlP99Ms,
      laneChunks: engine.counters().laneChunks,
      streamTokensPerSecondDuring: (during.length / duringMs) * 1000,
      streamTokensPerSecondIdle: (idleWindows.length / idleWindows.reduce((a, b) => a + b, 0)) * 1000,
    });
  }

  const markdown = table(
    ['prefill order', `short (${shortTokens}) TTFT median, ms`, 'TTFT / idle', `long (${longTokens}) TTFT median, ms`, 'stream ITL p99 idle / during, ms', 'ITL p99 / idle', 'stream tok/s idle / during', 'long chunks: median tokens / median ms / max ms', 'decode step median, ms'],
    results.map((r) => [r.order, median(r.shortTtftMs).toFixed(1), `${r.ttftRatio.toFixed(2)}x`, median(r.longTtftMs).toFixed(0), `${r.idleItlP99Ms.toFixed(1)} / ${r.itlP99DuringMs.toFixed(1)}`, `${r.itlRatio.toFixed(2)}x`, `${r.streamTokensPerSecondIdle.toFixed(0)} / ${r.streamTokensPerSecondDuring.toFixed(0)}`, `${r.longChunks.medianTokens} / ${r.longChunks.medianMs.toFixed(1)} / ${r.longChunks.maxMs.toFixed(1)}`, r.decodeStepMedianMs.toFixed(1)]),
  );
  console.log(`idle: short TTFT ${idleTtftMs.toFixed(1)} ms; a lone stream's ITL p99 ${loneItlP99Ms.toFixed(1)} ms; the ITL baseline is each running stream's own ${IDLE_WINDOW} gaps before its long prompt (goal: both ratios <= 3x)\n\n${markdown}`);
  const file = writeResult(values.tag ?? `fairness-${kvMode}${laneThreads > 0 ? '-lane' : ''}`, {
    kvMode,
    laneThreads,
    model: values.model ?? `builder llama (hidden 256, 6 layers, 8 heads / 2 KV heads, vocab 4096, context ${context})`,
    modelDir: values.model ? dir : undefined,
    threads: Number(values.threads),
    prefillChunkTokens: base.options.prefillChunkTokens,
    minPrefillChunkTokens: minChunk.minPrefillChunkTokens ?? base.options.minPrefillChunkTokens ?? 16,
    longTokens,
    shortTokens,
    repeats,
    idle: { shortTtftMs: idleTtft, shortTtftMedianMs: idleTtftMs, loneStreamItlP99Ms: loneItlP99Ms, itlWindowGaps: IDLE_WINDOW },
    results,
    goal: { ttftRatio: 3, itlRatio: 3 },
  });
  console.error(`wrote ${file}`);
  await loaded.prefillDecoder?.dispose();
  await loaded.decoder.dispose();
}

await main();
