import assert from 'node:assert/strict';
import * as ort from 'onnxruntime-node';
import { describe, test } from 'node:test';
import { silentLogger, type Logger } from '../../src/lib/logger.ts';
import { emptyKv, ExecutionProviderError, loadModel, OnnxDecoder, WorkerDecoder, type Decoder, type DecoderOutput, type DecoderStep, type KvTensors } from '../../src/model/index.ts';
import { GPT2, LLAMA, collect, makeEngine, randomTokens, request, testModelDir } from '../support/fixtures.ts';
import type { BuildOptions } from '../../tools/model-builder/index.ts';

async function bothDecoders(options: BuildOptions, newRowOutputs: boolean): Promise<{ main: Decoder; worker: Decoder }> {
  const dir = await testModelDir(options);
  const main = (await loadModel(dir, { logger: silentLogger, intraOpThreads: 1, newRowOutputs })).decoder;
  const worker = (await loadModel(dir, { logger: silentLogger, intraOpThreads: 1, newRowOutputs, decoderThread: 'worker' })).decoder;
  return { main, worker };
}

/** A prefill of `prompt` then `steps` greedy decode steps, each step's full output kept. */
async function greedyRun(decoder: Decoder, prompt: number[], steps: number): Promise<DecoderOutput[]> {
  const outputs: DecoderOutput[] = [];
  let past: KvTensors = emptyKv(decoder.io.kv, 1);
  let ids = prompt;
  for (let step = 0; step <= steps; step++) {
    const total = past.length + ids.length;
    const output = await decoder.run({
      batchSize: 1,
      seqLength: ids.length,
      inputIds: BigInt64Array.from(ids, BigInt),
      attentionMask: new BigInt64Array(total).fill(1n),
      positionIds: BigInt64Array.from(ids, (_, i) => BigInt(past.length + i)),
      past,
    });
    outputs.push(output);
    past = output.present;
    const last = output.logits.subarray((ids.length - 1) * output.vocabSize, ids.length * output.vocabSize);
    let best = 0;
    for (let i = 1; i < last.length; i++) if (last[i] > last[best]) best = i;
    ids = [best];
  }
  return outputs;
}

/** One token (17) after a 9-token past `layers`, fetching logits and new rows. */
function tokenAfterNine(layers: KvTensors['layers']): DecoderStep {
  return {
    batchSize: 1,
    seqLength: 1,
    inputIds: BigInt64Array.of(17n),
    attentionMask: new BigInt64Array(10).fill(1n),
    positionIds: BigInt64Array.of(9n),
    past: { batchSize: 1, length: 9, layers },
    fetch: 'new-rows',
  };
}

// The CUDA load below is expected to fail on this CPU-only machine; onnxruntime (on both threads) would print it.
ort.env.logLevel = 'fatal';

describe('WorkerDecoder: onnxruntime on its own thread', () => {
  for (const [name, options] of [['llama', LLAMA], ['gpt2', GPT2]] as const) {
    test(`${name}: the same logits and present as on the main thread, bit for bit`, async () => {
      const { main, worker } = await bothDecoders(options, false);
      try {
        assert.equal(worker.io.kv.numLayers, main.io.kv.numLayers);
        assert.deepEqual(worker.io.names, main.io.names);
        const prompt = randomTokens(23, 3, 200);
        const [fromMain, fromWorker] = [await greedyRun(main, prompt, 6), await greedyRun(worker, prompt, 6)];
        for (let step = 0; step < fromMain.length; step++) {
          assert.deepEqual(fromWorker[step].logits, fromMain[step].logits, `logits at step ${step}`);
          assert.equal(fromWorker[step].present.length, fromMain[step].present.length);
          assert.deepEqual(fromWorker[step].present.layers, fromMain[step].present.layers, `present at step ${step}`);
        }
      } finally {
        await Promise.all([main.dispose(), worker.dispose()]);
      }
    });
  }

  test('a past that is a view of a larger buffer, or in shared memory, crosses as its own values', async () => {
    const { main, worker } = await bothDecoders(LLAMA, true);
    try {
      const [prefill] = await greedyRun(main, randomTokens(9, 5, 200), 0);
      const kv = main.io.kv;
      // The same past twice: inside a larger buffer (only the view's bytes may cross) and in shared memory
      // (which onnxruntime-node refuses as a tensor, so it must arrive as a copy).
      const inLarger = prefill.present.layers.map(({ key, value }) => {
        const host = new Float32Array(key.length + value.length + 64);
        host.set(key as Float32Array, 32);
        host.set(value as Float32Array, 32 + key.length);
        return { key: host.subarray(32, 32 + key.length), value: host.subarray(32 + key.length, 32 + key.length + value.length) };
      });
      const inShared = prefill.present.layers.map(({ key, value }) => {
        const sharedKey = new Float32Array(new SharedArrayBuffer(key.byteLength));
        const sharedValue = new Float32Array(new SharedArrayBuffer(value.byteLength));
        sharedKey.set(key as Float32Array);
        sharedValue.set(value as Float32Array);
        return { key: sharedKey, value: sharedValue };
      });
      const step = (layers: KvTensors['layers']) => tokenAfterNine(layers);
      const expected = await main.run(step(prefill.present.layers));
      for (const layers of [inLarger, inShared]) {
        const got = await worker.run(step(layers));
        assert.deepEqual(got.logits, expected.logits);
        assert.equal(got.present.length, 1);
        assert.deepEqual(got.present.layers, expected.present.layers);
      }
      assert.equal(kv.numLayers, inShared.length);
    } finally {
      await Promise.all([main.dispose(), worker.dispose()]);
    }
  });

  test('a lent past (the engine in-place buffers) moves to the thread and back, not copied: the same bytes in new views', async () => {
    const { main, worker } = await bothDecoders(LLAMA, true);
    try {
      const [prefill] = await greedyRun(main, randomTokens(9, 7, 200), 0);
      const own = () => prefill.present.layers.map(({ key, value }) => ({ key: key.slice(), value: value.slice() }));
      const step = (layers: KvTensors['layers'], lendPast: boolean) => ({ ...tokenAfterNine(layers), lendPast });
      const expected = await main.run(step(own(), false));
      const lent = own();
      const originals = lent.map(({ key, value }) => ({ key, value }));
      const running = worker.run(step(lent, true));
      // While the step runs, the bytes are on the worker's side: the engine's views are empty.
      assert.ok(originals.every(({ key, value }) => key.length === 0 && value.length === 0), 'the past was moved, not copied');
      const got = await running;
      assert.deepEqual(got.logits, expected.logits);
      assert.deepEqual(got.present.layers, expected.present.layers);
      assert.ok(lent.every(({ key }, layer) => key !== originals[layer].key), 'the layers hold new views');
      assert.deepEqual(lent, own(), 'the same bytes came back');
      // A failed step hands the past back too.
      const failing = own();
      await assert.rejects(worker.run({ ...step(failing, true), attentionMask: BigInt64Array.of(1n) }, { quiet: true }));
      assert.deepEqual(failing, own());
      // A past that cannot move whole (two layers in one buffer) is copied, as without lending.
      const shared = own();
      const joined = new Float32Array(shared[0].key.length * 2);
      shared[0] = { key: joined.subarray(0, shared[0].key.length), value: joined.subarray(shared[0].key.length) };
      shared[0].key.set(prefill.present.layers[0].key as Float32Array);
      shared[0].value.set(prefill.present.layers[0].value as Float32Array);
      assert.deepEqual((await worker.run(step(shared, true))).logits, expected.logits);
      assert.equal(shared[0].key.length, prefill.present.layers[0].key.length, 'a copied past stays where it was');
    } finally {
      await Promise.all([main.dispose(), worker.dispose()]);
    }
  });

  test('the event loop keeps running while a step computes', async () => {
    const dir = await testModelDir({ family: 'llama', seed: 3, hiddenSize: 256, numLayers: 4, maxPositions: 4096 });
    const { decoder } = await loadModel(dir, { logger: silentLogger, intraOpThreads: 1, decoderThread: 'worker' });
    try {
      const prompt = randomTokens(1500, 11, 200);
      let ticks = 0;
      const timer = setInterval(() => ticks++, 2);
      const started = performance.now();
      await greedyRun(decoder, prompt, 0);
      const elapsed = performance.now() - started;
      clearInterval(timer);
      // A 1,500-token prefill takes well over 20 ms; on the main thread no timer could fire during it.
      assert.ok(elapsed > 20, `the prefill took only ${elapsed.toFixed(1)} ms: make the model bigger`);
      assert.ok(ticks >= 3, `${ticks} timer ticks in ${elapsed.toFixed(1)} ms of compute`);
    } finally {
      await decoder.dispose();
    }
  });

  test('a failed step rejects that step only; the decoder keeps working', async () => {
    const { worker } = await bothDecoders(LLAMA, false);
    try {
      const bad = { batchSize: 1, seqLength: 2, inputIds: BigInt64Array.of(1n, 2n), attentionMask: BigInt64Array.of(1n), positionIds: BigInt64Array.of(0n, 1n), past: emptyKv(worker.io.kv, 1) };
      await assert.rejects(worker.run(bad, { quiet: true }), (error: Error) => error.message.length > 0);
      const outputs = await greedyRun(worker, [5, 6, 7], 1);
      assert.equal(outputs[1].present.length, 4);
    } finally {
      await worker.dispose();
    }
  });

  test('load errors come back as the same errors; dispose ends the thread and later runs fail clearly', async () => {
    const dir = await testModelDir(LLAMA);
    const warnings: string[] = [];
    const logger: Logger = { ...silentLogger, warn: (_fields, message) => warnings.push(message), child: () => logger };
    await assert.rejects(
      WorkerDecoder.load(`${dir}/onnx/model.onnx`, {}, { executionProvider: 'cuda', fallbackToCpu: false, intraOpThreads: 1, logger }),
      (error: unknown) => error instanceof ExecutionProviderError && /execution provider "cuda" could not start/.test(error.message),
    );
    await assert.rejects(WorkerDecoder.load(`${dir}/onnx/missing.onnx`, {}, { executionProvider: 'cpu', fallbackToCpu: false, intraOpThreads: 1, logger }), /missing\.onnx|load|file/i);
    const decoder = await WorkerDecoder.load(`${dir}/onnx/model.onnx`, {}, { executionProvider: 'cuda', fallbackToCpu: true, intraOpThreads: 1, logger });
    assert.equal(decoder.executionProvider, 'cpu');
    assert.ok(warnings.some((message) => /falling back to cpu/.test(message)), 'the worker\'s warning reaches the main thread\'s logger');
    await decoder.dispose();
    await assert.rejects(greedyRun(decoder, [1, 2], 0), /disposed/);
  });

  test('DECODER_THREAD=auto: a probe step under the threshold stays on the main thread, one over it moves to a worker, and the log says why', async () => {
    const dir = await testModelDir(LLAMA);
    const place = async (workerMinStepMs: number, workerProbeMinWeightBytes?: number) => {
      const records: Array<Record<string, unknown>> = [];
      const logger: Logger = { ...silentLogger, info: (fields, message) => message.startsWith('decoder thread chosen') && records.push(fields), child: () => logger };
      const { decoder } = await loadModel(dir, { logger, intraOpThreads: 1, decoderThread: 'auto', workerMinStepMs, workerProbeMinWeightBytes });
      return { decoder, record: records[0] };
    };
    const stays = await place(60_000);
    const moves = await place(0);
    // Weights over the size limit are probed where large models run: on a worker, moved back when the step is short.
    const movesBack = await place(60_000, 0);
    const staysOnWorker = await place(0, 0);
    try {
      assert.ok(stays.decoder instanceof OnnxDecoder, 'a step far under the threshold stays on the main thread');
      assert.equal(stays.record.decoderThread, 'main');
      assert.equal(stays.record.probedOn, 'main', 'small weights are probed on the main thread: one load');
      assert.ok(moves.decoder instanceof WorkerDecoder, 'a threshold of 0 ms moves any model to the worker');
      assert.equal(moves.record.decoderThread, 'worker');
      assert.equal(moves.record.probedOn, 'main');
      assert.ok(typeof moves.record.probeStepMs === 'number' && moves.record.probeStepMs > 0);
      assert.equal(moves.decoder.intraOpThreads, 1, 'the worker keeps the thread count');
      assert.ok(movesBack.decoder instanceof OnnxDecoder);
      assert.deepEqual([movesBack.record.probedOn, movesBack.record.decoderThread], ['worker', 'main']);
      assert.ok(staysOnWorker.decoder instanceof WorkerDecoder);
      assert.deepEqual([staysOnWorker.record.probedOn, staysOnWorker.record.decoderThread], ['worker', 'worker']);
      const prompt = randomTokens(12, 9, 200);
      const expected = (await greedyRun(stays.decoder, prompt, 3)).map((o) => o.logits);
      for (const placed of [moves, movesBack, staysOnWorker]) assert.deepEqual((await greedyRun(placed.decoder, prompt, 3)).map((o) => o.logits), expected);
    } finally {
      await Promise.all([stays, moves, movesBack, staysOnWorker].map((placed) => placed.decoder.dispose()));
    }
  });

  for (const kvMode of ['inplace', 'concat'] as const) {
    test(`an engine on the worker decoder streams the same tokens as on the main thread (KV_MODE=${kvMode})`, async () => {
      const dir = await testModelDir(LLAMA);
      const onWorker = await loadModel(dir, { logger: silentLogger, intraOpThreads: 1, decoderThread: 'worker', newRowOutputs: kvMode === 'inplace' });
      try {
        const onMain = await makeEngine({ model: LLAMA, kvMode });
        const viaWorker = await makeEngine({ model: LLAMA, kvMode, wrapDecoder: () => onWorker.decoder });
        const prompts = [randomTokens(40, 1, 200), randomTokens(7, 2, 200), randomTokens(90, 4, 200)];
        const expected = await Promise.all(prompts.map((input, i) => collect(onMain.engine.submit(request(input, { sessionId: `m${i}`, maxTokens: 20 })))));
        const got = await Promise.all(prompts.map((input, i) => collect(viaWorker.engine.submit(request(input, { sessionId: `w${i}`, maxTokens: 20 })))));
        assert.deepEqual(got.map((c) => c.tokens), expected.map((c) => c.tokens));
        const next = await collect(viaWorker.engine.submit(request([...prompts[0], ...got[0].tokens, 9, 10], { sessionId: 'w0', maxTokens: 10 })));
        const nextMain = await collect(onMain.engine.submit(request([...prompts[0], ...expected[0].tokens, 9, 10], { sessionId: 'm0', maxTokens: 10 })));
        assert.deepEqual(next.tokens, nextMain.tokens);
        assert.ok(next.usage.cachedTokens > 0, 'the second turn reused the cache');
        // In place, a decode step copies out only logits and one new row per layer: far less than the past.
        const { decodeBytesOut, decodeRows } = viaWorker.engine.counters();
        const pastBytes = 90 * onWorker.decoder.io.kv.bytesPerToken;
        if (kvMode === 'inplace') assert.ok(decodeBytesOut / decodeRows < pastBytes / 4, `${decodeBytesOut / decodeRows} bytes out per decode row`);
      } finally {
        await onWorker.decoder.dispose();
      }
    });
  }
});
