/**
 * Cost of the sliding window: decode tokens/s of a long generation with truncation events (shift and
 * recompute) against one that never truncates, and the latency of the steps where a drop happened.
 *
 *   npm run bench -- window [--model DIR] [--threads N] [--context 512] [--tokens 2048]
 */
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import type { LoadedModel } from '../src/model/index.ts';
import { benchConfig, benchModel, greedyRequest, median, percentile, serving, table, writeResult } from './common.ts';

const { values } = parseArgs({
  args: process.argv.slice(3),
  options: {
    model: { type: 'string' },
    threads: { type: 'string', default: '2' },
    context: { type: 'string', default: '512' },
    tokens: { type: 'string', default: '2048' },
  },
});

interface Run {
  name: string;
  tokensPerSecond: number;
  medianGapMs: number;
  p99GapMs: number;
  dropEvents: number;
  meanDropGapMs: number;
  maxKvTokens: number;
}

async function generate(model: LoadedModel, name: string, settings: Record<string, string>, tokens: number, promptTokens = 64): Promise<Run> {
  const parts = serving(benchConfig({ KV_CACHE_BYTES: '1GiB', ...settings }), model);
  let dropPending = false;
  const dropSteps = new Set<number>();
  let step = 0;
  let maxKvTokens = 0;
  parts.engine.addObserver({
    windowDrop: () => (dropPending = true),
    decodeStep: (info) => {
      step++;
      maxKvTokens = Math.max(maxKvTokens, info.kvTokens);
      if (dropPending) dropSteps.add(step);
      dropPending = false;
    },
    prefillChunk: (_s, info) => {
      maxKvTokens = Math.max(maxKvTokens, info.kvTokens);
      // With recompute the drop is a prefill; the token after it is sampled from that prefill.
      if (dropPending) dropSteps.add(step + 1);
      dropPending = false;
    },
  });
  const prompt = Array.from({ length: promptTokens }, (_, i) => (i * 131) % 500);
  const submitted = await parts.engine.submit(greedyRequest(prompt, { requestId: `window-${name}`, maxTokens: tokens }));
  if (!submitted.ok) throw new Error(submitted.error.message);
  const arrivals: number[] = [];
  for await (const event of submitted.events) if (event.type === 'token') arrivals.push(performance.now());
  const gaps = arrivals.slice(1).map((t, i) => t - arrivals[i]);
  // gaps[i] is the time to token i + 1, produced by decode step i + 1.
  const dropGaps = gaps.filter((_, i) => dropSteps.has(i + 1));
  const run: Run = {
    name,
    tokensPerSecond: (arrivals.length - 1) / ((arrivals.at(-1)! - arrivals[0]) / 1000),
    medianGapMs: median(gaps),
    p99GapMs: percentile(gaps, 99),
    dropEvents: dropSteps.size,
    meanDropGapMs: dropGaps.length ? dropGaps.reduce((a, b) => a + b, 0) / dropGaps.length : 0,
    maxKvTokens,
  };
  console.error(`${name}: ${run.tokensPerSecond.toFixed(1)} tok/s, median gap ${run.medianGapMs.toFixed(2)} ms, ${run.dropEvents} drops at ${run.meanDropGapMs.toFixed(1)} ms`);
  return run;
}

async function main(): Promise<void> {
  const threads = Number(values.threads);
  const context = Number(values.context);
  const tokens = Number(values.tokens);
  const { model, source } = await benchModel(values.model, threads);
  const windowed = { MAX_CONTEXT_TOKENS: String(context) };
  const runs = [
    // The KV stays between 3/4 and all of the context: the same attention work as the windowed runs.
    await generate(model, `no truncation, ${Math.round(context * 0.75)}..${context} tokens of KV`, { MAX_CONTEXT_TOKENS: String(context) }, Math.round(context * 0.25) - 1, Math.round(context * 0.75)),
    await generate(model, `window ${context}, shift`, { ...windowed, WINDOW_STRATEGY: 'shift' }, tokens),
    await generate(model, `window ${context}, recompute`, { ...windowed, WINDOW_STRATEGY: 'recompute' }, tokens),
    await generate(model, `no truncation, KV growing to ${tokens + 64}`, { MAX_CONTEXT_TOKENS: String(tokens + 128) }, tokens),
  ];
  const markdown = table(
    ['run', 'tokens/s', 'median step (ms)', 'p99 step (ms)', 'drops', 'step with a drop (ms)', 'max KV tokens'],
    runs.map((r) => [r.name, r.tokensPerSecond.toFixed(1), r.medianGapMs.toFixed(2), r.p99GapMs.toFixed(2), r.dropEvents, r.dropEvents ? r.meanDropGapMs.toFixed(1) : '—', r.maxKvTokens]),
  );
  console.log(markdown);
  const file = writeResult('window', { model: source, threads, context, tokens, runs, markdown });
  console.error(`wrote ${file}`);
}

await main();
