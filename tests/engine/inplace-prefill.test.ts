/**
 * In-place prefill (issue 25): a prefilling or lone sequence's own one-row buffer (own-buffer.ts). On
 * plain arrays: multi-token appends and masks, capacity grown in whole blocks and capped at the context,
 * a buffer's row joining another buffer, and an owner's cache in and out. On builder models: several
 * chunks over a past written in place give the concat path's logits (1e-4) and full recompute's. Through
 * the engine, in both KV modes: chunks over a kept cache, chunks after window drops, lone rows (an export
 * that cannot batch), with the buffers grown in blocks and capped at the context, give the same tokens, and in
 * place each prefill chunk copies only its logits and new rows out of onnxruntime.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { BuildOptions } from '../../tools/model-builder/index.ts';
import { InPlaceKv } from '../../src/engine/inplace-kv.ts';
import { OwnBuffers, settleOwnBuffer, type BufferOwner } from '../../src/engine/own-buffer.ts';
import { halfArrayToFloat } from '../../src/lib/float16.ts';
import { emptyKv, type Decoder, type KvData, type KvTensors } from '../../src/model/index.ts';
import { collect, fullRecompute, makeEngine, randomTokens, request, sampling, testModel } from '../support/fixtures.ts';
import { LAYOUT, ownKv, slots } from '../support/inplace-arrays.ts';
import { type TestDecoder, wrapDecoder } from '../support/test-decoder.ts';

describe('own in-place buffers on plain arrays', () => {
  test('a chunk of several tokens: mask over valid slots and the chunk, new rows written after the valid slots', () => {
    const kv = new InPlaceKv(LAYOUT, 1, 4, 10);
    kv.join(0, ownKv([1, 2, 3]), 2);
    assert.equal(kv.capacity, 8, 'room for the chunk: two blocks');
    assert.deepEqual(Array.from(kv.attentionMask(2), Number), [1, 1, 1, 0, 0, 0, 0, 0, 1, 1]);
    // New rows `[1, heads, 2, dim]`: head 0's two slots, then head 1's.
    kv.append({ batchSize: 1, length: 2, layers: [{ key: Float32Array.of(4, 5, -4, -5), value: Float32Array.of(40, 50, -40, -50) }] });
    assert.deepEqual(kv.lengths, [5]);
    assert.deepEqual(slots(kv, 0, 0), [1, 2, 3, 4, 5, 0, 0, 0]);
    assert.deepEqual(slots(kv, 0, 1), [-1, -2, -3, -4, -5, 0, 0, 0]);
  });

  test('capacity grows to the next whole block and stops at the cap (the context), keeping every slot', () => {
    const kv = new InPlaceKv(LAYOUT, 1, 4, 10);
    kv.join(0, ownKv([1]));
    assert.equal(kv.capacity, 4);
    kv.ensureCapacity(5);
    assert.equal(kv.capacity, 8);
    kv.ensureCapacity(9);
    assert.equal(kv.capacity, 10, 'capped at 10, not 12');
    assert.deepEqual(slots(kv, 0, 1), [-1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert.throws(() => kv.ensureCapacity(11), /cap of 10/);
    const big = new InPlaceKv(LAYOUT, 1, 4);
    big.ensureCapacity(33);
    assert.equal(big.capacity, 36, 'uncapped: the next multiple of the block, not a power of two');
  });

  test("an owner's cache goes into its buffer once and comes back whole; a buffer row joins a batch buffer", () => {
    const owners = new OwnBuffers(LAYOUT, 4, 64);
    const owner: BufferOwner = { kv: ownKv([1, 2]), buffer: null };
    const buffer = owners.take(owner, 3);
    assert.equal(owner.kv, null);
    assert.equal(owners.take(owner, 1), buffer, 'the same buffer on the next step');
    assert.deepEqual([buffer.capacity, buffer.lengths[0]], [8, 2]);
    buffer.append({ batchSize: 1, length: 1, layers: [{ key: Float32Array.of(3, -3), value: Float32Array.of(30, -30) }] });

    const batch = new InPlaceKv(LAYOUT, 2, 4);
    batch.join(0, ownKv([7]));
    batch.joinFrom(1, buffer, 0);
    assert.deepEqual(batch.lengths, [1, 3]);
    assert.deepEqual(slots(batch, 1, 1), [-1, -2, -3, 0]);

    settleOwnBuffer(owner);
    assert.equal(owner.buffer, null);
    assert.deepEqual(Array.from(owner.kv!.layers[0].key), [1, 2, 3, -1, -2, -3]);
    assert.deepEqual(Array.from(owner.kv!.layers[0].value), [10, 20, 30, -10, -20, -30]);

    const fresh: BufferOwner = { kv: null, buffer: null };
    assert.deepEqual(owners.take(fresh, 5).lengths, [0], 'no cache yet: an empty buffer with room for the chunk');
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

/** Runs `tokens` in chunks of `chunks` sizes, in place (own buffer, new rows only) or concat (the whole present fed back). */
async function prefillInChunks(decoder: Decoder, tokens: number[], chunks: number[], inPlace: InPlaceKv | null) {
  let past: KvTensors = emptyKv(decoder.io.kv, 1);
  inPlace?.join(0, past, chunks[0]);
  const logits: Float32Array[] = [];
  const pastLengths: number[] = [];
  let done = 0;
  for (const count of chunks) {
    const inputIds = BigInt64Array.from(tokens.slice(done, done + count), BigInt); // [1, count]
    const positionIds = BigInt64Array.from({ length: count }, (_, i) => BigInt(done + i)); // [1, count]
    if (inPlace) {
      inPlace.ensureCapacity(done + count);
      pastLengths.push(inPlace.capacity);
      const out = await decoder.run({ batchSize: 1, seqLength: count, inputIds, positionIds, attentionMask: inPlace.attentionMask(count), past: inPlace.past, fetch: 'new-rows' });
      assert.equal(out.present.length, count, 'only the chunk\'s new rows come back');
      inPlace.append(out.present);
      logits.push(asFloat(out.logits).slice());
    } else {
      const attentionMask = new BigInt64Array(done + count).fill(1n); // [1, past + count]
      const out = await decoder.run({ batchSize: 1, seqLength: count, inputIds, positionIds, attentionMask, past });
      past = out.present;
      logits.push(asFloat(out.logits).slice());
    }
    done += count;
  }
  return { logits, pastLengths };
}

const MODELS: Array<[string, BuildOptions]> = [
  ['llama float32 KV', { family: 'llama', seed: 7 }],
  ['gpt2, positions from the mask', { family: 'gpt2', seed: 7, positionIds: false }],
  ['llama float16 KV', { family: 'llama', seed: 7, kvDtype: 'float16' }],
];

describe('chunks over a past in place on builder models', () => {
  for (const [name, options] of MODELS) {
    test(`${name}: each chunk's logits equal the concat path's (1e-4), the last equals full recompute`, async () => {
      const { decoder } = await testModel(options, true);
      assert.ok(decoder.io.newRows);
      const tokens = randomTokens(40, 71);
      const chunks = [7, 16, 1, 16];
      const concat = await prefillInChunks(decoder, tokens, chunks, null);
      // Block 16, capped at 44: 16, 32, 32 then 44 (the cap, not 48), with unused slots between the past and each chunk.
      const inPlace = await prefillInChunks(decoder, tokens, chunks, new InPlaceKv(decoder.io.kv, 1, 16, 44));
      assert.deepEqual(inPlace.pastLengths, [16, 32, 32, 44]);
      for (let c = 0; c < chunks.length; c++) {
        const diff = maxDiff(inPlace.logits[c], concat.logits[c]);
        assert.ok(diff < 1e-4, `chunk ${c}: in place differs from concat by ${diff}`);
      }
      if (decoder.io.kv.dtype === 'float32') {
        const reference = await fullRecompute(decoder, tokens);
        const last = inPlace.logits.at(-1)!;
        const vocab = reference.length;
        const diff = maxDiff(last.subarray(last.length - vocab), reference);
        assert.ok(diff < 1e-4, `in place differs from full recompute by ${diff}`);
      }
    });
  }
});

const SAMPLED = sampling({ temperature: 0.8, topK: 40 });

/** Turn 1 in several chunks, turn 2 over its kept cache past the context (drops between chunks), a one-shot prompt longer than the context. */
async function chunkedScenario(model: BuildOptions, kvMode: 'concat' | 'inplace') {
  let recorder!: TestDecoder;
  const fixture = await makeEngine({
    model, kvMode, kvCapacityBlock: 8, capacity: 80, prefillChunkTokens: 16, window: { dropTokens: 20 },
    wrapDecoder: (d) => (recorder = wrapDecoder(d, { record: true })),
  });
  const { engine } = fixture;
  const turn1 = await collect(engine.submit(request(randomTokens(50, 81), { sessionId: 'chat', maxTokens: 10 })));
  const turn2 = await collect(engine.submit(request(randomTokens(25, 82), { sessionId: 'chat', mode: 'append', maxTokens: 30, sampling: SAMPLED, seed: 5 })));
  const long = await collect(engine.submit(request(randomTokens(130, 83), { sessionId: 'long', maxTokens: 12 })));
  const results = [turn1, turn2, long];
  return {
    tokens: results.map((r) => r.tokens),
    usage: results.map((r) => r.usage),
    counters: engine.counters(),
    inPlaceCalls: recorder.recorded.filter((c) => c.step.fetch === 'new-rows').map((c) => c.step),
    fixture,
  };
}

describe('engine prefill in place against concat', () => {
  for (const [name, model] of [
    ['llama (shift window)', { family: 'llama', seed: 7 }],
    ['gpt2 (recompute window)', { family: 'gpt2', seed: 7 }],
    ['llama float16 KV', { family: 'llama', seed: 7, kvDtype: 'float16' }],
  ] as Array<[string, BuildOptions]>) {
    test(`${name}: chunks over a kept cache and after window drops give the same tokens; buffers grow in blocks up to the context`, async () => {
      const concat = await chunkedScenario(model, 'concat');
      const inplace = await chunkedScenario(model, 'inplace');
      assert.deepEqual(inplace.tokens, concat.tokens);
      assert.deepEqual(inplace.usage, concat.usage);
      assert.ok(concat.usage[1].cachedTokens > 0, 'turn 2 reuses the kept cache');
      assert.ok(concat.usage[1].droppedTokens > 0 && concat.usage[2].droppedTokens > 0, 'the window dropped during turn 2 and the long prompt');
      assert.equal(concat.inPlaceCalls.length, 0);
      assert.equal(inplace.counters.prefillChunks, concat.counters.prefillChunks);

      // Every in-place call: capacity whole blocks of 8 up to the context (80), never past it.
      const capacities = new Set(inplace.inPlaceCalls.map((s) => s.past.length));
      assert.ok([...capacities].every((c) => c % 8 === 0 && c <= 80), `capacities ${[...capacities]}`);
      // A fresh prompt's first chunk runs over an empty buffer: no masked slots, it attends to itself alone.
      const overEmpty = inplace.inPlaceCalls.filter((s) => s.past.length === 0);
      assert.ok(overEmpty.length >= 2 && overEmpty.every((s) => s.seqLength > 1 && s.attentionMask.length === s.seqLength), 'the first chunk of each fresh prompt, unmasked');
      assert.ok(capacities.has(80), 'the buffers reached the context');
      assert.ok(inplace.inPlaceCalls.some((s) => s.seqLength > 1 && s.past.length > 0), 'chunks over a past ran in place');

      // In place a chunk copies out its last position's logits (the rewritten head) and its new rows
      // only; concat every position's logits and the whole present as well.
      const { kv: layout, logitsDtype, logitsToKeep } = inplace.fixture.decoder.io;
      assert.ok(logitsToKeep, 'the in-place decoder can cut its logits');
      const logitBytes = inplace.fixture.model.vocabSize * (logitsDtype === 'float16' ? 2 : 4);
      const tokens = inplace.counters.prefillTokens;
      assert.equal(inplace.counters.prefillBytesOut, inplace.counters.prefillChunks * logitBytes + tokens * layout.bytesPerToken);
      assert.ok(inplace.inPlaceCalls.filter((s) => s.seqLength > 1).every((s) => s.logitsToKeep === 1), 'every chunk asks for its last position only');
      const concatKvBytes = concat.counters.prefillBytesOut - tokens * logitBytes;
      assert.ok(concatKvBytes > 3 * tokens * layout.bytesPerToken, `KV bytes out of the prefill chunks: in place ${tokens * layout.bytesPerToken}, concat ${concatKvBytes}`);
    });
  }

  test('lone rows (an export that cannot batch) decode on their own buffers: the same tokens, one slot per row out', async () => {
    const model: BuildOptions = { family: 'llama', seed: 7, quirks: ['no-batch'] };
    const run = async (kvMode: 'concat' | 'inplace') => {
      let recorder!: TestDecoder;
      const { engine, model: loaded } = await makeEngine({ model, kvMode, kvCapacityBlock: 8, wrapDecoder: (d) => (recorder = wrapDecoder(d, { record: true })) });
      assert.equal(loaded.capabilities.batched, false);
      const prompts = [randomTokens(5, 91), randomTokens(23, 92), randomTokens(40, 93)];
      const results = await Promise.all(prompts.map((p, i) => collect(engine.submit(request(p, { maxTokens: 12 + 4 * i, sampling: SAMPLED, seed: 10 + i })))));
      const { kv: layout, logitsDtype } = loaded.decoder.io;
      const perToken = loaded.vocabSize * (logitsDtype === 'float16' ? 2 : 4) + layout.bytesPerToken;
      return { tokens: results.map((r) => r.tokens), counters: engine.counters(), calls: recorder.recorded.map((c) => c.step), perToken };
    };
    const concat = await run('concat');
    const inplace = await run('inplace');
    assert.deepEqual(inplace.tokens, concat.tokens);
    assert.ok(inplace.calls.every((s) => s.batchSize === 1 && s.fetch === 'new-rows'), 'every call in place, one row each');
    const perStep = (c: typeof concat.counters) => c.decodeBytesOut / c.decodeSteps;
    assert.equal(perStep(inplace.counters), inplace.perToken, 'a lone step copies out its logits and one slot');
    assert.ok(perStep(concat.counters) > 3 * perStep(inplace.counters), `bytes out per step: in place ${perStep(inplace.counters)}, concat ${perStep(concat.counters)}`);
  });
});

describe('an export that cannot take several tokens over a past, in place', () => {
  test('the prompt runs over an empty buffer, every later step one token in place: the same tokens as concat mode', async () => {
    const model: BuildOptions = { family: 'llama', seed: 7, quirks: ['no-multi-token-past'] };
    const run = async (kvMode: 'concat' | 'inplace') => {
      let recorder!: TestDecoder;
      const { engine, model: loaded } = await makeEngine({ model, kvMode, prefillChunkTokens: 16, wrapDecoder: (d) => (recorder = wrapDecoder(d, { record: true })) });
      assert.equal(loaded.capabilities.multiTokenOverPast, false);
      const turn1 = await collect(engine.submit(request(randomTokens(30, 95), { sessionId: 'q', maxTokens: 8 })));
      const turn2 = await collect(engine.submit(request(randomTokens(12, 96), { sessionId: 'q', mode: 'append', maxTokens: 8 })));
      for (const r of [turn1, turn2]) assert.equal(r.end.error, undefined, JSON.stringify(r.end.error));
      return { tokens: [turn1.tokens, turn2.tokens], cached: turn2.usage.cachedTokens, calls: recorder.recorded.map((c) => c.step) };
    };
    const concat = await run('concat');
    const inplace = await run('inplace');
    assert.deepEqual(inplace.tokens, concat.tokens);
    assert.ok(inplace.cached > 0);
    assert.ok(inplace.calls.every((s) => s.fetch === 'new-rows' && (s.seqLength === 1 || s.past.length === 0)), 'every call in place, multi-token calls only over an empty past');
  });
});
