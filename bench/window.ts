/**
 * Cost of the sliding window: decode tokens/s of a long generation with truncation events (shift and
 * recompute) against one that never truncates, and the latency of the steps where a drop happened.
 *
 *   npm run bench -- window [--model DIR] [--threads N] [--context 512] [--tokens 2048]
 */
import { performance } from 'node:perf_hooks';
import type { LoadedModel } from '../src/model/index.ts';
import { benchConfig, benchModel, greedyRequest, median, percentile, serving, table, writeResult } from './common.ts';
import { MODEL_OPTIONS, parseBenchArgs } from './cli.ts';

const values = parseBenchArgs('window', 'Cost of the sliding window: decode tokens/s of a long generation with truncation events (shift and recompute) against one that never truncates.', {
  ...MODEL_OPTIONS,
  context: { type: 'string', default: '512', value: 'N', help: 'context in tokens (small, so the window drops often)' },
  tokens: { type: 'string', default: '2048', value: 'N', help: 'tokens generated' },
});

interface Run {
  name: string;
  tokensPerSecond: number;
  medianGapMs: number;
  /** Median step without the steps that carried a drop. */
  steadyMedianGapMs: number;
  p99GapMs: number;
  dropEvents: number;
  meanDropGapMs: number;
  maxKvTokens: number;
}

async function generate(model: LoadedModel, name: string, settings: Record<string, string>, tokens: number, promptTokens = 64): Promise<Run> {
  const parts = serving(benchConfig({ KV_CACHE_BYTES: '1GiB', ...settings }), model);
  // Indices of the output tokens that a window drop delayed: the drop happens right before the next
  // token is computed (a shift before a decode step; with recompute, a prefill that yields the token),
  // so the delayed token's index is the count generated so far. Counting by decode steps would be
  // wrong after the first recompute drop, whose token comes from a prefill, not a decode step.
  const dropTokens = new Set<number>();
  let maxKvTokens = 0;
  parts.engine.addObserver({
    windowDrop: (sequence) => dropTokens.add(sequence.generated.length),
    decodeStep: (info) => (maxKvTokens = Math.max(maxKvTokens, info.kvTokens)),
    prefillChunk: (_s, info) => (maxKvTokens = Math.max(maxKvTokens, info.kvTokens)),
  });
  const prompt = Array.from({ length: promptTokens }, (_, i) => (i * 131) % 500);
  const submitted = await parts.engine.submit(greedyRequest(prompt, { requestId: `window-${name}`, maxTokens: tokens }));
  if (!submitted.ok) throw new Error(submitted.error.message);
  const arrivals: number[] = [];
  for await (const event of submitted.events) if (event.type === 'token') arrivals.push(performance.now());
  const gaps = arrivals.slice(1).map((t, i) => t - arrivals[i]);
  // gaps[i] is the time from token i to token i + 1.
  const dropGaps = gaps.filter((_, i) => dropTokens.has(i + 1));
  const steadyGaps = gaps.filter((_, i) => !dropTokens.has(i + 1));
  const run: Run = {
    name,
    tokensPerSecond: (arrivals.length - 1) / ((arrivals.at(-1)! - arrivals[0]) / 1000),
    medianGapMs: median(gaps),
    p99GapMs: percentile(gaps, 99),
    dropEvents: dropTokens.size,
    steadyMedianGapMs: median(steadyGaps),
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
