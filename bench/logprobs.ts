/**
 * Logprobs overhead: decode tokens/s of greedy requests asking for logprobs with 20 alternatives
 * (a log-softmax and a top-20 heap over the vocabulary per step) divided by the same requests without.
 * Goal: at least 0.95. Runs alternate so drift in the shared cores hits both sides alike.
 *
 *   npm run bench -- logprobs [--model DIR] [--threads N] [--repeats N] [--tokens N] [--top N]
 */
import { performance } from 'node:perf_hooks';
import type { Serving } from '../src/serving.ts';
import { benchConfig, benchModel, greedyRequest, median, serving, table, writeResult } from './common.ts';
import { MODEL_OPTIONS, parseBenchArgs, repeatsOption } from './cli.ts';

const values = parseBenchArgs('logprobs', 'Logprobs overhead: decode tokens/s with logprobs and N alternatives per token, divided by the same run without (goal: at least 0.95).', {
  ...MODEL_OPTIONS,
  repeats: repeatsOption('5'),
  tokens: { type: 'string', default: '256', value: 'N', help: 'tokens generated per run' },
  top: { type: 'string', default: '20', value: 'N', help: 'alternatives per token (top_logprobs)' },
});

let counter = 0;

/** One request of `tokens` tokens; decode tokens/s (from the first token on, so prefill is left out). */
async function run(parts: Serving, tokens: number, logprobs: number | undefined): Promise<number> {
  const prompt = Array.from({ length: 32 }, (_, i) => (i * 37) % 500);
  const submitted = await parts.engine.submit(greedyRequest(prompt, { requestId: `logprobs-${counter++}`, maxTokens: tokens, ...(logprobs === undefined ? {} : { logprobs }) }));
  if (!submitted.ok) throw new Error(submitted.error.message);
  let first = 0;
  let decoded = 0;
  let withLogprob = 0;
  for await (const event of submitted.events) {
    if (event.type !== 'token') continue;
    if (decoded === 0) first = performance.now();
    decoded++;
    if (event.logprob) withLogprob++;
  }
  if (logprobs !== undefined && withLogprob !== decoded) throw new Error('a token came without its logprob');
  return (decoded - 1) / ((performance.now() - first) / 1000);
}

async function main(): Promise<void> {
  const threads = Number(values.threads);
  const repeats = Number(values.repeats);
  const tokens = Number(values.tokens);
  const top = Number(values.top);
  const { model, source } = await benchModel(values.model, threads);
  const parts = serving(benchConfig({ KV_CACHE_BYTES: '1GiB' }), model);
  await run(parts, 32, undefined);
  await run(parts, 32, top);
  const off: number[] = [];
  const on: number[] = [];
  for (let i = 0; i < repeats; i++) {
    off.push(await run(parts, tokens, undefined));
    on.push(await run(parts, tokens, top));
  }
  const ratio = median(on) / median(off);
  console.error(`logprobs off ${median(off).toFixed(1)} tok/s, on (top ${top}) ${median(on).toFixed(1)} tok/s, ratio ${ratio.toFixed(3)}`);
  const markdown = table(
    ['tokens', 'vocabulary', 'without logprobs (tok/s)', `with logprobs, top ${top} (tok/s)`, 'ratio (goal >= 0.95)'],
    [[tokens, model.vocabSize, median(off).toFixed(1), median(on).toFixed(1), ratio.toFixed(3)]],
  );
  console.log(markdown);
  const file = writeResult('logprobs', { model: source, threads, repeats, tokens, top, vocabSize: model.vocabSize, off, on, ratio, markdown });
  console.error(`wrote ${file}`);
}

await main();
