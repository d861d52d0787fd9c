/**
 * In-place KV (issue 25): the buffers on plain arrays (join, mask, append, growth in blocks, extract),
 * then on builder models loaded with new-row outputs: a batch of rows of different lengths decoded in
 * place, fetching only logits and new rows, gives the concat path's logits (1e-4) and recompute's
 * (float32 KV), token for token the same as each row alone, and copies O(new rows) bytes per step.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { BuildOptions } from '../../tools/model-builder/index.ts';
import { dropAndShift, rotaryInverseFrequencies } from '../../src/cache/kv-ops.ts';
import { InPlaceKv } from '../../src/engine/inplace-kv.ts';
import { argmax } from '../../src/engine/sampler.ts';
import { silentLogger } from '../../src/lib/logger.ts';
import { halfArrayToFloat } from '../../src/lib/float16.ts';
import { loadModel, type Decoder, type KvData, type KvLayout, type KvTensors, type LoadedModel } from '../../src/model/index.ts';
import { fullRecompute, randomTokens, runFromScratch, testModelDir } from '../support/fixtures.ts';
import { LAYOUT, ownKv, slots } from '../support/inplace-arrays.ts';

describe('in-place KV buffers on plain arrays', () => {
  test('join copies once into the row; the mask covers valid slots and the new token; append writes after them', () => {
    const kv = new InPlaceKv(LAYOUT, 3, 4);
    assert.equal(kv.capacity, 0);
    kv.join(0, ownKv([1, 2, 3]));
    kv.join(2, ownKv([5]));
    assert.equal(kv.capacity, 4, 'capacity is a multiple of the block with room for the next token');
    assert.deepEqual(slots(kv, 0, 0), [1, 2, 3, 0]);
    assert.deepEqual(slots(kv, 0, 1), [-1, -2, -3, 0]);
    assert.deepEqual(slots(kv, 2, 0), [5, 0, 0, 0]);
    assert.deepEqual(Array.from(kv.attentionMask(), Number), [1, 1, 1, 0, 1, /* free row */ 0, 0, 0, 0, 1, 1, 0, 0, 0, 1]);
    assert.throws(() => kv.join(0, ownKv([9])), /taken/);

    // One step's new rows [rows, heads, 1, dim]: the free row's output is never written.
    kv.append({ batchSize: 3, length: 1, layers: [{ key: Float32Array.of(4, -4, 99, 99, 6, -6), value: Float32Array.of(40, -40, 0, 0, 60, -60) }] });
    assert.deepEqual(kv.lengths, [4, 0, 2]);
    assert.deepEqual(slots(kv, 0, 0), [1, 2, 3, 4]);
    assert.deepEqual(slots(kv, 1, 0), [0, 0, 0, 0]);
    assert.deepEqual(slots(kv, 2, 1), [-5, -6, 0, 0]);
  });

  test('a growth share grows the capacity by at least that share of it, in whole blocks, never past the cap', () => {
    const kv = new InPlaceKv(LAYOUT, 1, 4, 40);
    kv.growthShare = 0.25;
    kv.join(0, ownKv([1, 2, 3]));
    assert.equal(kv.capacity, 4);
    const capacities = [kv.capacity];
    for (let length = 4; length < 40; length++) {
      kv.ensureCapacity(length + 1);
      if (kv.capacity !== capacities.at(-1)) capacities.push(kv.capacity);
    }
    // 4 -> 8 (one block is more than a quarter) ... 16 -> 20, 20 -> 28 (a quarter of 20, rounded up to blocks), up to the cap.
    assert.deepEqual(capacities, [4, 8, 12, 16, 20, 28, 36, 40]);
    assert.deepEqual(slots(kv, 0, 0).slice(0, 3), [1, 2, 3], 'the rows survive every growth');
    kv.growthShare = 0;
    const blockwise = new InPlaceKv(LAYOUT, 1, 4);
    blockwise.join(0, ownKv([1, 2, 3]));
    blockwise.ensureCapacity(21);
    assert.equal(blockwise.capacity, 24, 'without a share: the next whole block');
  });

  test('a window shift inside the buffers equals dropAndShift on the row as its own cache (other rows untouched)', () => {
    const layout: KvLayout = { numLayers: 2, numKvHeads: 2, headDim: 4, dtype: 'float32', bytesPerToken: 64 };
    const own = (length: number, seed: number): KvTensors => ({
      batchSize: 1,
      length,
      layers: Array.from({ length: 2 }, (_, l) => ({
        key: Float32Array.from({ length: 2 * length * 4 }, (_, i) => Math.sin(seed + l * 7 + i * 0.37)),
        value: Float32Array.from({ length: 2 * length * 4 }, (_, i) => Math.cos(seed + l * 5 + i * 0.21)),
      })),
    });
    const frequencies = rotaryInverseFrequencies(10000, 4);
    const kv = new InPlaceKv(layout, 2, 8);
    kv.join(0, own(13, 1));
    kv.join(1, own(9, 2));
    const before = own(9, 2);
    kv.shiftRow(0, 2, 5, frequencies);
    assert.equal(kv.lengths[0], 8);
    const expected = dropAndShift(layout, own(13, 1), 2, 5, frequencies);
    const got = kv.extract(0);
    for (let l = 0; l < 2; l++) {
      for (const part of ['key', 'value'] as const) {
        const [a, b] = [got.layers[l][part] as Float32Array, expected.layers[l][part] as Float32Array];
        assert.equal(a.length, b.length);
        assert.ok(a.every((x, i) => Math.abs(x - b[i]) < 1e-6), `layer ${l} ${part}s`);
      }
    }
    assert.deepEqual(kv.extract(1), before, 'the other row is as it was');
  });

  test('buffers lost with a decoder thread (lent to a step that never came back) give no cache, never stale bytes', () => {
    const kv = new InPlaceKv(LAYOUT, 2, 4);
    kv.join(0, ownKv([1, 2, 3]));
    kv.join(1, ownKv([4]));
    assert.ok(kv.intact);
    // What a worker that died mid-step leaves: every buffer moved away (detached), as postMessage's transfer does.
    structuredClone(kv.layers, { transfer: kv.layers.flatMap(({ key, value }) => [key.buffer as ArrayBuffer, value.buffer as ArrayBuffer]) });
    assert.equal(kv.intact, false);
    assert.equal(kv.takeOut(0), null);
    assert.equal(kv.live[0], false, 'the row is freed');
    const whole = new InPlaceKv(LAYOUT, 1, 4);
    whole.join(0, ownKv([7, 8]));
    assert.deepEqual(whole.takeOut(0), ownKv([7, 8]), 'an intact buffer gives its row back');
  });

  test('capacity grows by whole blocks and keeps every row; extract returns a row as its own cache and frees it', () => {
    const kv = new InPlaceKv(LAYOUT, 2, 4);
    kv.join(0, ownKv([1, 2, 3]));
    kv.join(1, ownKv([7, 8]));
    kv.append({ batchSize: 2, length: 1, layers: [{ key: Float32Array.of(4, -4, 9, -9), value: Float32Array.of(40, -40, 90, -90) }] });
    assert.equal(kv.capacity, 4);
    kv.ensureCapacity(kv.lengths[0] + 1);
    assert.equal(kv.capacity, 8);
    assert.deepEqual(slots(kv, 0, 1), [-1, -2, -3, -4, 0, 0, 0, 0]);
    assert.deepEqual(slots(kv, 1, 0), [7, 8, 9, 0, 0, 0, 0, 0]);
    const out = kv.extract(1);
    assert.equal(out.length, 3);
    assert.deepEqual(Array.from(out.layers[0].key), [7, 8, 9, -7, -8, -9]);
    assert.deepEqual(Array.from(out.layers[0].value), [70, 80, 90, -70, -80, -90]);
    assert.deepEqual([kv.live[1], kv.lengths[1]], [false, 0]);
    assert.throws(() => new InPlaceKv(LAYOUT, 1, 0), /block/);
  });
});

function asFloat(data: KvData): Float32Array {
  return data instanceof Float32Array ? data : halfArrayToFloat(data, new Float32Array(data.length));
}

function maxDiff(a: Float32Array, b: Float32Array): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst;
}

/** Decodes `steps` greedy tokens for each prompt in one in-place batch (a free middle row when `freeRow`). */
async function decodeInPlace(decoder: Decoder, prompts: number[][], steps: number, block: number, freeRow = false) {
  const layout = decoder.io.kv;
  const rowOf = prompts.map((_, i) => (freeRow && i > 0 ? i + 1 : i));
  const kv = new InPlaceKv(layout, prompts.length + (freeRow ? 1 : 0), block);
  const next: number[] = [];
  const logitsPerStep: Float32Array[][] = [];
  for (const [i, prompt] of prompts.entries()) {
    const out = await runFromScratch(decoder, prompt);
    kv.join(rowOf[i], out.present);
    const logits = asFloat(out.logits);
    next.push(argmax(logits.subarray((prompt.length - 1) * out.vocabSize), out.vocabSize));
  }
  const tokens = prompts.map((_, i) => [next[i]]);
  let bytesOutPerStep = 0;
  for (let step = 0; step < steps; step++) {
    kv.ensureCapacity(Math.max(...kv.lengths) + 1);
    const inputIds = new BigInt64Array(kv.rows);
    const positionIds = new BigInt64Array(kv.rows);
    prompts.forEach((_, i) => {
      inputIds[rowOf[i]] = BigInt(tokens[i].at(-1)!);
      positionIds[rowOf[i]] = BigInt(kv.lengths[rowOf[i]]);
    });
    const out = await decoder.run({ batchSize: kv.rows, seqLength: 1, inputIds, positionIds, attentionMask: kv.attentionMask(), past: kv.past, fetch: 'new-rows' });
    assert.equal(out.present.length, 1, 'only the new rows come back');
    kv.append(out.present);
    bytesOutPerStep = out.logits.byteLength + out.present.layers.reduce((sum, l) => sum + l.key.byteLength + l.value.byteLength, 0);
    const logits = asFloat(out.logits);
    logitsPerStep.push(prompts.map((_, i) => logits.slice(rowOf[i] * out.vocabSize, (rowOf[i] + 1) * out.vocabSize)));
    prompts.forEach((_, i) => tokens[i].push(argmax(logitsPerStep[step][i], out.vocabSize)));
  }
  return { tokens, logitsPerStep, bytesOutPerStep, capacity: kv.capacity };
}

const MODELS: Array<[string, BuildOptions]> = [
  ['llama float32 KV', { family: 'llama', seed: 7 }],
  ['gpt2, positions from the mask', { family: 'gpt2', seed: 7, positionIds: false }],
  ['llama float16 KV', { family: 'llama', seed: 7, kvDtype: 'float16' }],
];

describe('in-place decoding on builder models (new-row outputs)', () => {
  const loaded = new Map<string, Promise<LoadedModel>>();
  const load = (options: BuildOptions) => {
    const key = JSON.stringify(options);
    if (!loaded.has(key)) loaded.set(key, testModelDir(options).then((dir) => loadModel(dir, { logger: silentLogger, intraOpThreads: 1, newRowOutputs: true })));
    return loaded.get(key)!;
  };

  for (const [name, options] of MODELS) {
    test(`${name}: batched in place == concat path (1e-4) == each row alone, token for token`, async () => {
      const { decoder } = await load(options);
      assert.ok(decoder.io.newRows, 'the builder graph has the Concat shape');
      const prompts = [randomTokens(11, 21), randomTokens(4, 22), randomTokens(17, 23)];
      const steps = 10;
      // Block 8: the capacity grows twice during the run.
      const batched = await decodeInPlace(decoder, prompts, steps, 8, true);
      assert.ok(batched.capacity >= 24);
      for (const [i, prompt] of prompts.entries()) {
        const alone = await decodeInPlace(decoder, [prompt], steps, 256);
        assert.deepEqual(batched.tokens[i], alone.tokens[0], `row ${i}: batched == alone`);
        // The concat path on the same tokens: present fed back whole.
        let past = (await runFromScratch(decoder, prompt)).present;
        for (let step = 0; step < steps; step++) {
          const length = past.length;
          const out = await decoder.run({
            batchSize: 1, seqLength: 1, past,
            inputIds: BigInt64Array.of(BigInt(batched.tokens[i][step])),
            positionIds: BigInt64Array.of(BigInt(length)),
            attentionMask: new BigInt64Array(length + 1).fill(1n),
          });
          past = out.present;
          const diff = maxDiff(batched.logitsPerStep[step][i], asFloat(out.logits));
          assert.ok(diff <= 1e-4, `row ${i} step ${step}: in place vs concat differ by ${diff}`);
        }
        if (options.kvDtype !== 'float16') {
          const recompute = await fullRecompute(decoder, [...prompt, ...batched.tokens[i].slice(0, steps)]);
          const diff = maxDiff(batched.logitsPerStep[steps - 1][i], recompute);
          assert.ok(diff <= 1e-4, `row ${i}: in place vs recompute differ by ${diff}`);
        }
      }
      const layout = decoder.io.kv;
      const logitsBytes = (options.logitsDtype === 'float16' ? 2 : 4) * 4 * batched.logitsPerStep[0][0].length;
      assert.equal(batched.bytesOutPerStep, logitsBytes + 4 * layout.bytesPerToken, 'per step: the logits and one slot per row, whatever the context');
    });
  }

  test('a graph without new-row outputs refuses fetch new-rows; stacked KV loads on the concat path', async () => {
    const { decoder } = await load({ family: 'llama', seed: 7, kvPacking: 'stacked' });
    assert.equal(decoder.io.newRows, undefined);
    const out = runFromScratch(decoder, [1, 2, 3]).then((o) =>
      decoder.run({ batchSize: 1, seqLength: 1, inputIds: BigInt64Array.of(4n), positionIds: BigInt64Array.of(3n), attentionMask: new BigInt64Array(4).fill(1n), past: o.present, fetch: 'new-rows' }),
    );
    await assert.rejects(out, /no new-row outputs/);
  });
});
