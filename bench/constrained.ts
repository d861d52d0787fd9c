/**
 * Constrained decoding: decode tokens/s with a JSON-schema grammar against the same requests without
 * one, 1 and 8 concurrent streams, on the default model and on a builder model with a 150k-token
 * vocabulary; grammar compile time per tool schema and the compiled-grammar cache's hit rate. Goals
 * (issue 18): at least 0.9 of unconstrained on the default model, 0.8 at 150k; a typical tool schema
 * compiles in under 50 ms and is cached. Plain and constrained runs alternate (paired) on a shared machine.
 *
 *   npm run bench -- constrained [--model DIR] [--threads N] [--repeats N] [--tokens N] [--large-vocab N]
 */
import { performance } from 'node:perf_hooks';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { GrammarSpec } from '../src/engine/grammar.ts';
import { loadModel } from '../src/model/index.ts';
import { silentLogger } from '../src/lib/logger.ts';
import { buildModelFolder } from '../tools/model-builder/index.ts';
import type { Serving } from '../src/serving.ts';
import { benchConfig, benchModel, greedyRequest, median, serving, table, writeResult } from './common.ts';
import { parseBenchArgs } from './cli.ts';

const values = parseBenchArgs('constrained', 'Decode tokens/s with a JSON-schema grammar against without one, 1 and 8 streams, default model and a 150k-vocabulary builder model; grammar compile time and cache hits.', {
  model: { type: 'string', value: 'DIR', help: 'model folder' },
  threads: { type: 'string', default: '2', value: 'N', help: 'onnxruntime intra-op threads' },
  repeats: { type: 'string', default: '5', value: 'N', help: 'runs per measurement (the median is reported)' },
  tokens: { type: 'string', default: '128', value: 'N', help: 'tokens generated per run' },
  'large-vocab': { type: 'string', default: '150000', value: 'N', help: 'vocabulary of the builder model (0: skip it)' },
});
const STREAMS = [1, 8];

/**
 * At least 64 strings keep the constrained run going for the whole token budget, like the plain one
 * (the trained model closes a single free-text field within a few tokens).
 */
const LONG_SCHEMA = { type: 'object', properties: { lines: { type: 'array', items: { type: 'string' }, minItems: 64 } }, required: ['lines'], additionalProperties: false };

/** A typical tool-argument schema, varied by `i` so each one compiles afresh. */
function toolSchema(i: number): Record<string, unknown> {
  return {
    type: 'object',
    properties: {
      [`city_${i}`]: { type: 'string', description: 'the city' },
      unit: { enum: ['celsius', 'fahrenheit'] },
      days: { type: 'integer', minimum: 1, maximum: 14 },
      hourly: { type: 'boolean' },
      fields: { type: 'array', items: { enum: ['temp', 'rain', 'wind'] }, maxItems: 3 },
      location: { anyOf: [{ type: 'null' }, { type: 'object', properties: { lat: { type: 'number' }, lon: { type: 'number' } }, required: ['lat', 'lon'], additionalProperties: false }] },
    },
    required: [`city_${i}`, 'unit', 'days', 'hourly', 'fields', 'location'],
    additionalProperties: false,
  };
}

/**
 * Decode tokens/s of `streams` concurrent greedy streams: tokens after each stream's first, over the
 * time from the first stream's first token to the last stream's end (prefills are not counted).
 */
async function decodeRate(parts: Serving, streams: number, tokens: number, grammar: GrammarSpec | undefined): Promise<{ rate: number; generated: number }> {
  let first = Infinity;
  let last = 0;
  let decoded = 0;
  let generated = 0;
  await Promise.all(
    Array.from({ length: streams }, async (_, s) => {
      const prompt = Array.from({ length: 32 }, (_, i) => (i * 37 + s * 11) % 500);
      const submitted = await parts.engine.submit(greedyRequest(prompt, { maxTokens: tokens, grammar }));
      if (!submitted.ok) throw new Error(submitted.error.message);
      let count = 0;
      for await (const event of submitted.events) {
        if (event.type !== 'token') continue;
        if (++count === 1) first = Math.min(first, performance.now());
      }
      last = Math.max(last, performance.now());
      decoded += Math.max(0, count - 1);
      generated += count;
    }),
  );
  return { rate: decoded / ((last - first) / 1000), generated: generated / streams };
}

interface Suite {
  rows: Array<Array<string | number>>;
  data: Record<string, unknown>;
}

async function suite(label: string, parts: Serving, repeats: number, tokens: number): Promise<Suite> {
  const schema: GrammarSpec = { kind: 'json_schema', schema: LONG_SCHEMA };
  const setupStart = performance.now();
  await decodeRate(parts, 1, 2, schema); // loads xgrammar, builds its tokenizer info, compiles LONG_SCHEMA
  const firstRequestMs = performance.now() - setupStart;
  const setup = parts.engine.grammarCounters()!;
  await decodeRate(parts, 1, 16, undefined);

  const compileMs: number[] = [];
  for (let i = 0; i < 5; i++) {
    const before = parts.engine.grammarCounters()!.compileMs;
    await decodeRate(parts, 1, 1, { kind: 'json_schema', schema: toolSchema(i) });
    compileMs.push(parts.engine.grammarCounters()!.compileMs - before);
  }
  const beforeRepeat = parts.engine.grammarCounters()!;
  const cachedMs: number[] = [];
  for (let i = 0; i < 5; i++) {
    const start = performance.now();
    await decodeRate(parts, 1, 1, { kind: 'json_schema', schema: toolSchema(i) });
    cachedMs.push(performance.now() - start);
  }
  const afterRepeat = parts.engine.grammarCounters()!;
  const repeatCompiles = afterRepeat.compiles - beforeRepeat.compiles;

  const rows: Suite['rows'] = [];
  const byStreams: Record<string, unknown> = {};
  for (const streams of STREAMS) {
    const plain: number[] = [];
    const constrained: number[] = [];
    const ratios: number[] = [];
    let constrainedTokens = 0;
    for (let i = 0; i < repeats; i++) {
      const p = (await decodeRate(parts, streams, tokens, undefined)).rate;
      const run = await decodeRate(parts, streams, tokens, schema);
      plain.push(p);
      constrained.push(run.rate);
      ratios.push(run.rate / p);
      constrainedTokens = run.generated;
    }
    const counters = parts.engine.grammarCounters()!;
    const hitRate = counters.cacheHits / (counters.cacheHits + counters.cacheMisses);
    rows.push([label, streams, constrainedTokens, median(plain).toFixed(1), median(constrained).toFixed(1), median(ratios).toFixed(3),
      setup.setupMs.toFixed(1), median(compileMs).toFixed(1), median(cachedMs).toFixed(1), repeatCompiles, hitRate.toFixed(2)]);
    byStreams[streams] = { plain, constrained, ratios, pairedRatio: median(ratios), constrainedTokens, hitRate };
  }
  const data = { setupMs: setup.setupMs, firstSchemaCompileMs: setup.compileMs, firstRequestMs, toolSchemaCompileMs: compileMs, cachedToolRequestMs: cachedMs, repeatCompiles, byStreams, counters: parts.engine.grammarCounters() };
  return { rows, data };
}

/** A small llama builder model whose vocabulary is padded to `vocab` logits (the size of current Qwen/Llama tokenizers). */
async function largeVocabModel(vocab: number, threads: number) {
  const path = `/tmp/warmkv-bench-builder-llama-vocab${vocab}`;
  if (!existsSync(join(path, 'config.json'))) {
    await buildModelFolder(path, { family: 'llama', hiddenSize: 64, numLayers: 2, numHeads: 4, numKvHeads: 2, vocabSize: vocab, maxPositions: 4096 });
  }
  return loadModel(path, { logger: silentLogger, intraOpThreads: threads });
}

async function main(): Promise<void> {
  const threads = Number(values.threads);
  const repeats = Number(values.repeats);
  const tokens = Number(values.tokens);
  const largeVocab = Number(values['large-vocab']);
  const config = benchConfig({ KV_CACHE_BYTES: '1GiB' });
  const { model, source } = await benchModel(values.model, threads);
  const suites: Record<string, Suite> = {};
  suites.default = await suite(`default (vocab ${model.vocabSize})`, serving(config, model), repeats, tokens);
  if (largeVocab > 0) {
    const large = await largeVocabModel(largeVocab, threads);
    suites.largeVocab = await suite(`builder llama (vocab ${large.vocabSize})`, serving(config, large), repeats, tokens);
  }
  const markdown = table(
    ['model', 'streams', 'tokens', 'plain (tok/s)', 'JSON schema (tok/s)', 'paired ratio (goal >= 0.9 default, >= 0.8 at 150k)', 'xgrammar setup (ms)', 'tool schema compile, median (ms)', 'cached tool-schema request (ms)', 'compiles on repeat', 'cache hit rate'],
    Object.values(suites).flatMap((s) => s.rows),
  );
  console.log(markdown);
  const file = writeResult('constrained', { model: source, largeVocab, threads, repeats, tokens, streams: STREAMS, suites: Object.fromEntries(Object.entries(suites).map(([k, s]) => [k, s.data])), markdown });
  console.error(`wrote ${file}`);
}

await main();
