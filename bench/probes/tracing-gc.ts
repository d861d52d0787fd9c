/**
 * Where tracing's cost goes: one stream, tracing off vs on (a span per decode step, as
 * bench/tracing.ts), with the time per token split into decoder.run, the rest of the loop, and GC
 * pauses, for three span processors: the benchmark's BatchSpanProcessor (queue 65536, batches of
 * 4096), the SDK's default BatchSpanProcessor (what the server uses), and none (spans dropped at end).
 *
 *   node --import tsx bench/probes/tracing-gc.ts [--tokens 1024] [--repeats 5] [--processor bench|default|none]
 */
import { performance, PerformanceObserver } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { AlwaysOnSampler, BasicTracerProvider, BatchSpanProcessor, type SpanProcessor } from '@opentelemetry/sdk-trace-base';
import { Tracing } from '../../src/telemetry/tracing.ts';
import { CountingExporter, benchConfig, benchModel, greedyRequest, median, serving } from '../common.ts';

const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    threads: { type: 'string', default: '2' },
    tokens: { type: 'string', default: '1024' },
    repeats: { type: 'string', default: '5' },
    processor: { type: 'string', default: 'bench' },
  },
});
const tokens = Number(values.tokens);
const repeats = Number(values.repeats);

let gcMs = 0;
let markCompacts = 0;
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) {
    gcMs += entry.duration;
    if (((entry as { detail?: { kind?: number } }).detail)?.kind === 4) markCompacts++;
  }
}).observe({ entryTypes: ['gc'] });

const processors: Record<string, () => SpanProcessor[]> = {
  bench: () => [new BatchSpanProcessor(new CountingExporter(), { maxQueueSize: 65536, maxExportBatchSize: 4096 })],
  default: () => [new BatchSpanProcessor(new CountingExporter())],
  none: () => [],
};
const { model } = await benchModel(values.model, Number(values.threads));
const parts = serving(benchConfig({ KV_CACHE_BYTES: '1GiB' }), model);
const provider = new BasicTracerProvider({ sampler: new AlwaysOnSampler(), spanProcessors: processors[values.processor!]() });
const traced = new Tracing(provider.getTracer('warmkv-probe'), parts.model.id);
parts.engine.addObserver(traced);
const prompt = Array.from({ length: 32 }, (_, i) => (i * 37) % 500);

interface Sample { tokensPerSecond: number; runUs: number; restUs: number; gcUs: number; markCompacts: number }
let counter = 0;
async function run(tracing: Tracing): Promise<Sample> {
  const requestId = `probe-${counter++}`;
  const request = greedyRequest(prompt, { requestId, maxTokens: tokens });
  tracing.startRequest(request, { headers: {}, stream: true });
  const before = parts.engine.counters();
  const [gc0, mc0] = [gcMs, markCompacts];
  const start = performance.now();
  const submitted = await parts.engine.submit(request);
  if (!submitted.ok) throw new Error(submitted.error.message);
  for await (const event of submitted.events) if (event.type === 'end') tracing.endRequest(request, { finishReason: event.finishReason, usage: event.usage });
  const wall = performance.now() - start;
  await new Promise((resolve) => setImmediate(resolve)); // let the last GC entries arrive
  const after = parts.engine.counters();
  const modelMs = after.decodeMs - before.decodeMs + after.prefillMs - before.prefillMs;
  const perToken = (ms: number) => (ms / tokens) * 1000;
  return { tokensPerSecond: tokens / (wall / 1000), runUs: perToken(modelMs), restUs: perToken(wall - modelMs), gcUs: perToken(gcMs - gc0), markCompacts: markCompacts - mc0 };
}

await run(parts.tracing);
await run(traced);
const off: Sample[] = [];
const on: Sample[] = [];
for (let i = 0; i < repeats; i++) {
  off.push(await run(parts.tracing));
  on.push(await run(traced));
}
const summary = (samples: Sample[]) => {
  const m = (key: keyof Sample) => median(samples.map((s) => s[key]));
  return `${m('tokensPerSecond').toFixed(1)} tok/s; per token: decoder.run ${m('runUs').toFixed(0)} us, rest ${m('restUs').toFixed(0)} us, GC pauses ${m('gcUs').toFixed(0)} us; ${m('markCompacts')} mark-compacts per run`;
};
console.log(`processor ${values.processor}, ${tokens} tokens, ${repeats} repeats`);
console.log(`  off: ${summary(off)}`);
console.log(`  on:  ${summary(on)}`);
console.log(`  ratio on/off: ${(median(on.map((s) => s.tokensPerSecond)) / median(off.map((s) => s.tokensPerSecond))).toFixed(3)}`);
await provider.shutdown();
