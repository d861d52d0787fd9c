/**
 * Tracing overhead: decode tokens/s with every step traced (always-on sampler, a span per decode
 * step, batched export to a collector that discards) divided by the same runs with tracing off.
 * Goal: at least 0.95.
 *
 *   npm run bench -- tracing [--model DIR] [--threads N] [--repeats N] [--tokens N] [--streams N]
 */
import { performance } from 'node:perf_hooks';
import { AlwaysOnSampler, BasicTracerProvider, BatchSpanProcessor } from '@opentelemetry/sdk-trace-base';
import type { Serving } from '../src/serving.ts';
import { Tracing } from '../src/telemetry/tracing.ts';
import { CountingExporter, benchConfig, benchModel, greedyRequest, median, serving, table, writeResult } from './common.ts';
import { MODEL_OPTIONS, parseBenchArgs, repeatsOption } from './cli.ts';

const values = parseBenchArgs('tracing', 'Tracing overhead: decode tokens/s with every step traced and exported, divided by the same run untraced (goal: at least 0.95).', {
  ...MODEL_OPTIONS,
  repeats: repeatsOption('5'),
  tokens: { type: 'string', default: '256', value: 'N', help: 'tokens generated per stream' },
  streams: { type: 'string', default: '1', value: 'N', help: 'concurrent streams (decode batch size)' },
});

let counter = 0;

/**
 * `streams` concurrent requests of `tokens` tokens; returns aggregate decode tokens/s. `tracing` opens
 * and closes the request spans (the server does this per HTTP request).
 */
async function run(parts: Serving, tracing: Tracing, tokens: number, streams: number): Promise<number> {
  const prompt = Array.from({ length: 32 }, (_, i) => (i * 37) % 500);
  const started = performance.now();
  let decoded = 0;
  await Promise.all(
    Array.from({ length: streams }, async () => {
      const requestId = `trace-${counter++}`;
      const request = greedyRequest(prompt, { requestId, maxTokens: tokens });
      tracing.startRequest(request, { headers: {}, stream: true });
      const submitted = await parts.engine.submit(request);
      if (!submitted.ok) throw new Error(submitted.error.message);
      for await (const event of submitted.events) {
        if (event.type === 'token') decoded++;
        if (event.type === 'end') tracing.endRequest(request, { finishReason: event.finishReason, usage: event.usage });
      }
    }),
  );
  return decoded / ((performance.now() - started) / 1000);
}

async function main(): Promise<void> {
  const threads = Number(values.threads);
  const repeats = Number(values.repeats);
  const tokens = Number(values.tokens);
  const streams = Number(values.streams);
  const { model, source } = await benchModel(values.model, threads);
  const parts = serving(benchConfig({ KV_CACHE_BYTES: '1GiB' }), model);
  const exporter = new CountingExporter();
  const provider = new BasicTracerProvider({ sampler: new AlwaysOnSampler(), spanProcessors: [new BatchSpanProcessor(exporter, { maxQueueSize: 65536, maxExportBatchSize: 4096 })] });

  // Off: the runtime's own Tracing on the OpenTelemetry API without an SDK (what runs when no OTLP
  // endpoint is configured). On: a Tracing on an always-on SDK tracer, with every step a span.
  const traced = new Tracing(provider.getTracer('warmkv-bench'), parts.model.id);
  parts.engine.addObserver(traced);
  await run(parts, parts.tracing, 32, streams);
  await run(parts, traced, 32, streams);
  const off: number[] = [];
  const on: number[] = [];
  for (let i = 0; i < repeats; i++) {
    off.push(await run(parts, parts.tracing, tokens, streams));
    on.push(await run(parts, traced, tokens, streams));
  }
  await provider.forceFlush();
  exporter.spans -= 32 * streams + 3 * streams; // the warm-up's spans
  const ratio = median(on) / median(off);
  const spansPerRun = exporter.spans / repeats;
  console.error(`tracing off ${median(off).toFixed(1)} tok/s, on ${median(on).toFixed(1)} tok/s, ratio ${ratio.toFixed(3)} (${spansPerRun.toFixed(0)} spans per run)`);
  const markdown = table(
    ['streams', 'tokens per stream', 'tracing off (tok/s)', 'tracing on, every step (tok/s)', 'ratio (goal >= 0.95)', 'spans per run'],
    [[streams, tokens, median(off).toFixed(1), median(on).toFixed(1), ratio.toFixed(3), spansPerRun.toFixed(0)]],
  );
  console.log(markdown);
  const file = writeResult(`tracing-${streams}x${tokens}`, { model: source, threads, repeats, tokens, streams, off, on, ratio, spansPerRun, markdown });
  console.error(`wrote ${file}`);
  await provider.shutdown();
}

await main();
