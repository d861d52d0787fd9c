/**
 * Constrained decoding: single-stream decode tokens/s with a JSON-schema grammar against the same
 * request without one, and grammar compile time and cache hits. Goal (issue 18): at least 0.9 of
 * unconstrained on the default model; a typical schema compiles in under 50 ms and is cached.
 *
 *   npm run bench -- constrained [--model DIR] [--threads N] [--repeats N] [--tokens N]
 */
import { performance } from 'node:perf_hooks';
import type { GrammarSpec } from '../src/engine/grammar.ts';
import type { Serving } from '../src/serving.ts';
import { benchConfig, benchModel, greedyRequest, median, serving, table, writeResult } from './common.ts';
import { parseBenchArgs } from './cli.ts';

const values = parseBenchArgs('constrained', 'Decode tokens/s with a JSON-schema grammar against without one (goal: at least 0.9), grammar compile time and cache hits.', {
  model: { type: 'string', value: 'DIR', help: 'model folder' },
  threads: { type: 'string', default: '2', value: 'N', help: 'onnxruntime intra-op threads' },
  repeats: { type: 'string', default: '5', value: 'N', help: 'runs per measurement (the median is reported)' },
  tokens: { type: 'string', default: '128', value: 'N', help: 'tokens generated per run' },
});

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

/** Decode tokens/s of one greedy stream (first token to last, so the prefill is not counted). */
async function decodeRate(parts: Serving, tokens: number, grammar: GrammarSpec | undefined): Promise<{ rate: number; generated: number }> {
  const prompt = Array.from({ length: 32 }, (_, i) => (i * 37) % 500);
  const submitted = await parts.engine.submit(greedyRequest(prompt, { maxTokens: tokens, grammar }));
  if (!submitted.ok) throw new Error(submitted.error.message);
  let first = 0;
  let generated = 0;
  for await (const event of submitted.events) {
    if (event.type !== 'token') continue;
    generated++;
    if (generated === 1) first = performance.now();
  }
  return { rate: (generated - 1) / ((performance.now() - first) / 1000), generated };
}

async function main(): Promise<void> {
  const threads = Number(values.threads);
  const repeats = Number(values.repeats);
  const tokens = Number(values.tokens);
  const { model, source } = await benchModel(values.model, threads);
  const parts = serving(benchConfig({ KV_CACHE_BYTES: '1GiB' }), model);
  const schema: GrammarSpec = { kind: 'json_schema', schema: LONG_SCHEMA };

  const setupStart = performance.now();
  await decodeRate(parts, 2, schema); // loads xgrammar, builds its tokenizer info, compiles LONG_SCHEMA
  const firstRequestMs = performance.now() - setupStart;
  const setup = parts.engine.grammarCounters()!;
  await decodeRate(parts, 16, undefined);

  const plain: number[] = [];
  const constrained: number[] = [];
  let constrainedTokens = 0;
  for (let i = 0; i < repeats; i++) {
    plain.push((await decodeRate(parts, tokens, undefined)).rate);
    const run = await decodeRate(parts, tokens, schema);
    constrained.push(run.rate);
    constrainedTokens = run.generated;
  }

  const compileMs: number[] = [];
  for (let i = 0; i < 5; i++) {
    const before = parts.engine.grammarCounters()!.compileMs;
    await decodeRate(parts, 1, { kind: 'json_schema', schema: toolSchema(i) });
    compileMs.push(parts.engine.grammarCounters()!.compileMs - before);
  }
  const beforeHits = parts.engine.grammarCounters()!;
  for (let i = 0; i < 5; i++) await decodeRate(parts, 1, { kind: 'json_schema', schema: toolSchema(i) });
  const after = parts.engine.grammarCounters()!;
  const repeatCompiles = after.compiles - beforeHits.compiles;
  const hitRate = after.cacheHits / (after.cacheHits + after.cacheMisses);

  const ratio = median(constrained) / median(plain);
  const markdown = table(
    ['streams', 'tokens', 'plain (tok/s)', 'JSON schema (tok/s)', 'ratio (goal >= 0.9)', 'xgrammar setup (ms)', 'tool schema compile, median (ms)', 'compiles on repeat', 'cache hit rate'],
    [[1, constrainedTokens, median(plain).toFixed(1), median(constrained).toFixed(1), ratio.toFixed(3), setup.setupMs.toFixed(1), median(compileMs).toFixed(1), repeatCompiles, hitRate.toFixed(2)]],
  );
  console.log(markdown);
  const file = writeResult('constrained', {
    model: source, threads, repeats, tokens, plain, constrained, ratio, constrainedTokens,
    setupMs: setup.setupMs, firstSchemaCompileMs: setup.compileMs, firstRequestMs, toolSchemaCompileMs: compileMs, repeatCompiles, counters: after, markdown,
  });
  console.error(`wrote ${file}`);
}

await main();
