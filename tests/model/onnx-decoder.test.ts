import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { buildModelBytes, type BuildOptions } from '../../tools/model-builder/index.ts';
import { argmax } from '../../src/engine/sampler.ts';
import type { Logger } from '../../src/lib/logger.ts';
import { emptyKv, ExecutionProviderError, OnnxDecoder, type Decoder } from '../../src/model/index.ts';
import { LLAMA, GPT2, collect, fullRecompute, makeEngine, randomTokens, request, testModel, testModelDir } from '../support/fixtures.ts';
import { type TestDecoder, wrapDecoder } from '../support/test-decoder.ts';

// The CUDA tests below expect the provider to fail on this CPU-only machine; onnxruntime would print
// that expected failure itself, in red, on stderr. Its own log (not the decoder's errors) only at fatal.
ort.env.logLevel = 'fatal';

interface LogEntry {
  level: string;
  fields: Record<string, unknown>;
  message: string;
}

function capturingLogger(entries: LogEntry[]): Logger {
  const logger: Logger = {
    debug: (fields, message) => entries.push({ level: 'debug', fields, message }),
    info: (fields, message) => entries.push({ level: 'info', fields, message }),
    warn: (fields, message) => entries.push({ level: 'warn', fields, message }),
    error: (fields, message) => entries.push({ level: 'error', fields, message }),
    child: () => logger,
  };
  return logger;
}

describe('OnnxDecoder execution providers on a CPU-only machine', () => {
  test('cuda without fallback fails with ExecutionProviderError and logs no fallback', async () => {
    const dir = await testModelDir(LLAMA);
    const logs: LogEntry[] = [];
    await assert.rejects(
      OnnxDecoder.load(join(dir, 'onnx', 'model.onnx'), {}, { executionProvider: 'cuda', fallbackToCpu: false, intraOpThreads: 1, logger: capturingLogger(logs) }),
      (error: unknown) => {
        assert.ok(error instanceof ExecutionProviderError, `got ${String(error)}`);
        assert.equal(error.name, 'ExecutionProviderError');
        assert.match(error.message, /execution provider "cuda" could not start/);
        assert.match(error.message, /EXECUTION_PROVIDER_FALLBACK=true/);
        return true;
      },
    );
    assert.deepEqual(logs.filter((l) => l.level === 'warn'), []);
    assert.equal(logs.filter((l) => l.message === 'decoder loaded').length, 0);
  });

  test('cuda with fallbackToCpu runs on the CPU and logs a warning naming cuda', async () => {
    const dir = await testModelDir(LLAMA);
    const logs: LogEntry[] = [];
    const decoder = await OnnxDecoder.load(join(dir, 'onnx', 'model.onnx'), {}, {
      executionProvider: 'cuda',
      fallbackToCpu: true,
      intraOpThreads: 1,
      logger: capturingLogger(logs),
    });
    try {
      assert.equal(decoder.executionProvider, 'cpu');
      const warnings = logs.filter((l) => l.level === 'warn');
      assert.equal(warnings.length, 1);
      assert.equal(warnings[0].fields.requested, 'cuda');
      assert.equal(typeof warnings[0].fields.reason, 'string');
      assert.match(warnings[0].message, /falling back to cpu/);
      const loaded = logs.find((l) => l.message === 'decoder loaded');
      assert.equal(loaded?.fields.provider, 'cpu');
      // And it computes.
      const logits = await fullRecompute(decoder, [1, 2, 3]);
      assert.ok(logits.every(Number.isFinite), 'logits.every(Number.isFinite)');
    } finally {
      await decoder.dispose();
    }
  });

  test('a broken model on the CPU is an ExecutionProviderError without the fallback hint', async () => {
    await assert.rejects(
      OnnxDecoder.load(new Uint8Array([1, 2, 3, 4]), {}, { executionProvider: 'cpu', fallbackToCpu: true, intraOpThreads: 1, logger: capturingLogger([]) }),
      (error: unknown) => error instanceof ExecutionProviderError && /"cpu"/.test(error.message) && !/FALLBACK/.test(error.message),
    );
  });
});

describe('builder layouts through the engine', () => {
  test('the builder gives equal weights for equal options whatever the layout or position_ids input', () => {
    for (const family of ['llama', 'gpt2'] as const) {
      const base = buildModelBytes({ family, seed: 7 });
      for (const variant of [{ layout: 'merged' }, { positionIds: false }, { layout: 'merged', positionIds: false }] as const) {
        const other = buildModelBytes({ family, seed: 7, ...variant });
        assert.deepEqual([...other.weights.keys()], [...base.weights.keys()]);
        for (const [name, weight] of base.weights) {
          assert.deepEqual(other.weights.get(name)!.data, weight.data, `${family} ${JSON.stringify(variant)}: ${name}`);
        }
      }
      // The check can fail: another seed gives other weights.
      const reseeded = buildModelBytes({ family, seed: 8 });
      const name = [...base.weights.keys()][0];
      assert.notDeepEqual(reseeded.weights.get(name)!.data, base.weights.get(name)!.data);
    }
  });

  const variants: Array<[string, BuildOptions, BuildOptions, (d: Decoder) => void]> = [
    ['llama merged (use_cache_branch)', LLAMA, { ...LLAMA, layout: 'merged' }, (d) => assert.equal(d.io.names.useCacheBranch, 'use_cache_branch')],
    ['llama without position_ids', LLAMA, { ...LLAMA, positionIds: false }, (d) => assert.equal(d.io.names.positionIds, null)],
    ['gpt2 without position_ids', GPT2, { ...GPT2, positionIds: false }, (d) => assert.equal(d.io.names.positionIds, null)],
    ['gpt2 stacked past_N (ORT GPT-2 exporter), float32 mask', GPT2, { ...GPT2, kvPacking: 'stacked', maskDtype: 'float32' }, (d) => {
      assert.equal(d.io.names.kvPacking, 'stacked');
      assert.equal(d.io.names.pastKeys[1], 'past_1');
      assert.equal(d.io.inputTypes.attentionMask, 'float32');
    }],
    ['llama stacked fp16 past_N without position_ids', { ...LLAMA, kvDtype: 'float16' }, { ...LLAMA, kvDtype: 'float16', kvPacking: 'stacked', positionIds: false }, (d) => {
      assert.equal(d.io.names.kvPacking, 'stacked');
      assert.equal(d.io.names.presentValues[0], 'present_0');
    }],
    ['gpt2 merged without position_ids', GPT2, { ...GPT2, layout: 'merged', positionIds: false }, (d) => {
      assert.equal(d.io.names.positionIds, null);
      assert.equal(d.io.names.useCacheBranch, 'use_cache_branch');
    }],
  ];
  for (const [name, plainOptions, variantOptions, checkIo] of variants) {
    test(`${name}: greedy generation equals the plain layout (single, batched, appended turn)`, async () => {
      const plain = await makeEngine({ model: plainOptions });
      const variant = await makeEngine({ model: variantOptions });
      checkIo(variant.decoder);
      assert.deepEqual(variant.decoder.io.kv, plain.decoder.io.kv);

      const prompt = plain.model.tokenizer.encode('It was a bright cold day in April, and the clocks were striking thirteen.');
      const a = await collect(plain.engine.submit(request(prompt, { maxTokens: 24 })));
      const b = await collect(variant.engine.submit(request(prompt, { maxTokens: 24 })));
      assert.equal(b.tokens.length, 24);
      assert.deepEqual(b.tokens, a.tokens);
      assert.equal(b.text, a.text);

      // Left-padded batch of different lengths: the positions must follow the mask in both layouts.
      const prompts = [randomTokens(3, 11), randomTokens(29, 12), randomTokens(50, 13)];
      const plainBatch = await Promise.all(prompts.map((p) => collect(plain.engine.submit(request(p, { maxTokens: 12 })))));
      const variantBatch = await Promise.all(prompts.map((p) => collect(variant.engine.submit(request(p, { maxTokens: 12 })))));
      for (let i = 0; i < prompts.length; i++) assert.deepEqual(variantBatch[i].tokens, plainBatch[i].tokens, `batched prompt ${i}`);

      // A second turn on a session runs with a non-empty past (use_cache_branch true in merged models).
      const session = `layout-${name}`;
      for (const fixture of [plain, variant]) {
        await collect(fixture.engine.submit(request(randomTokens(10, 21), { sessionId: session, maxTokens: 6 })));
      }
      const turn = plain.model.tokenizer.encode(' and then');
      const plainTurn = await collect(plain.engine.submit(request(turn, { sessionId: session, mode: 'append', maxTokens: 10 })));
      const variantTurn = await collect(variant.engine.submit(request(turn, { sessionId: session, mode: 'append', maxTokens: 10 })));
      assert.ok(variantTurn.usage.cachedTokens > 0, 'the second turn reused the cache');
      assert.deepEqual(variantTurn.tokens, plainTurn.tokens);
    });
  }
});

describe('stacked past_N layout', () => {
  test('cached greedy decoding equals full recomputation, step for step', async () => {
    const { engine, model } = await makeEngine({ model: { ...GPT2, kvPacking: 'stacked', maskDtype: 'float32' } });
    const prompt = model.tokenizer.encode('The quick brown fox jumps over the lazy dog');
    const result = await collect(engine.submit(request(prompt, { maxTokens: 20 })));
    assert.equal(result.tokens.length, 20);
    const sequence = prompt.slice();
    for (let step = 0; step < result.tokens.length; step++) {
      assert.equal(result.tokens[step], argmax(await fullRecompute(model.decoder, sequence), model.vocabSize), `step ${step}`);
      sequence.push(result.tokens[step]);
    }
  });
});

describe('float16 KV cache through the engine', () => {
  test('fp16 KV layout is detected and the cache holds float16 bit patterns', async () => {
    const model = await testModel({ ...LLAMA, kvDtype: 'float16' });
    assert.equal(model.decoder.io.kv.dtype, 'float16');
    assert.equal(model.decoder.io.kv.bytesPerToken, 2 * 2 * 2 * 16 * 2);
    const out = await model.decoder.run({
      batchSize: 1,
      seqLength: 2,
      inputIds: BigInt64Array.of(5n, 6n),
      attentionMask: BigInt64Array.of(1n, 1n),
      positionIds: BigInt64Array.of(0n, 1n),
      past: emptyKv(model.decoder.io.kv, 1),
    });
    assert.ok(out.present.layers[0].key instanceof Uint16Array, 'out.present.layers[0].key instanceof Uint16Array');
    assert.equal(out.present.layers[0].key.length, 2 * 2 * 16);
    assert.equal(out.present.length, 2);
  });

  for (const family of [LLAMA, GPT2]) {
    test(`${family.family}: greedy decoding with an fp16 cache stays close to full recomputation (40 steps)`, async () => {
      let recorder!: TestDecoder;
      const { engine, model } = await makeEngine({
        model: { ...family, kvDtype: 'float16' },
        wrapDecoder: (d) => (recorder = wrapDecoder(d, { record: true })),
      });
      const prompt = model.tokenizer.encode('Once upon a time there was a small village by the sea');
      const steps = 40;
      const result = await collect(engine.submit(request(prompt, { maxTokens: steps })));
      assert.equal(result.tokens.length, steps);
      assert.equal(recorder.recorded.length, steps);
      const sequence = prompt.slice();
      let maxDiff = 0;
      let agreed = 0;
      for (let step = 0; step < steps; step++) {
        const { output, step: input } = recorder.recorded[step];
        // A prefill chunk's logits are cut to its last position where the decoder can (logitsToKeep).
        const positions = output.logitPositions ?? input.seqLength;
        const cached = (output.logits as Float32Array).subarray((positions - 1) * output.vocabSize, positions * output.vocabSize);
        const full = await fullRecompute(model.decoder, sequence);
        let stepDiff = 0;
        for (let i = 0; i < full.length; i++) stepDiff = Math.max(stepDiff, Math.abs(full[i] - cached[i]));
        maxDiff = Math.max(maxDiff, stepDiff);
        // Where the top two logits are further apart than the noise, the greedy choice must agree.
        const best = argmax(full, model.vocabSize);
        let second = -Infinity;
        for (let i = 0; i < model.vocabSize; i++) if (i !== best) second = Math.max(second, full[i]);
        if (full[best] - second > 4 * stepDiff) {
          assert.equal(result.tokens[step], best, `step ${step}`);
          agreed++;
        }
        sequence.push(result.tokens[step]);
      }
      // The prefill is exact; decode steps read the float16-rounded cache (README: about 1e-3).
      assert.ok(maxDiff < 2e-3, `max logit difference ${maxDiff}`);
      assert.ok(maxDiff > 0, 'an fp16 cache cannot be bit-identical to fp32 recomputation');
      assert.ok(agreed >= steps - 2, `only ${agreed} of ${steps} steps had a clear winner`);
    });
  }
});
