/**
 * The runner on a builder model, without an engine: the inputs it builds for prefill chunks, lone
 * decode rows and a left-padded batch with a free row, what a step leaves in the sequences and the
 * counters, that a failed call leaves every cache as it was, and sampling from the produced logits.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { KvBudget } from '../../src/cache/budget.ts';
import { SessionStore } from '../../src/cache/session-store.ts';
import { DecodeBatch } from '../../src/engine/batch.ts';
import { Runner, type RunnerCounters, type StepRan, type StepResult } from '../../src/engine/runner.ts';
import { Sequence } from '../../src/engine/sequence.ts';
import { LLAMA, fullRecompute, randomTokens, request, testModel } from '../support/fixtures.ts';
import { wrapDecoder } from '../support/test-decoder.ts';

const counters = (): RunnerCounters => ({
  decodeSteps: 0, decodeRows: 0, decodeMs: 0, batchSlots: 0, paddingSlots: 0, decodeBytesOut: 0, prefillBytesOut: 0, prefillChunks: 0, prefillTokens: 0, prefillMs: 0,
});

async function setup(options: { failWhen?: () => boolean } = {}) {
  const model = await testModel(LLAMA);
  const decoder = wrapDecoder(model.decoder, { record: true, failWhen: options.failWhen });
  const count = counters();
  const runner = new Runner(decoder, model.vocabSize, count);
  const store = new SessionStore(new KvBudget(64 * 1024 * 1024, 16));
  /** A sequence ready to prefill `prompt` from an empty cache. */
  const sequence = (prompt: number[], maxTokens = 8) => {
    const s = new Sequence(request(prompt, { maxTokens }), store.create('', undefined, true), [], 0);
    s.fullInput = prompt.slice();
    s.pending = prompt.slice();
    s.state = 'prefill';
    s.startOutput(model.tokenizer, model.vocabSize);
    return s;
  };
  return { model, decoder, count, runner, sequence };
}

function ran(step: StepResult): StepRan {
  assert.ok(step.ok, `the step failed: ${step.ok ? '' : String(step.error)}`);
  return step;
}

/** Row `row`, position `position` of the logits of a step with `seqLength` tokens per row. */
function logitsAt(step: StepRan, row: number, position = 0, seqLength = 1): Float32Array {
  const offset = (row * seqLength + position) * step.vocabSize;
  return (step.logits as Float32Array).slice(offset, offset + step.vocabSize);
}

function assertClose(actual: Float32Array, expected: Float32Array, tolerance = 1e-4) {
  let worst = 0;
  for (let i = 0; i < expected.length; i++) worst = Math.max(worst, Math.abs(actual[i] - expected[i]));
  assert.ok(worst <= tolerance, `max difference ${worst} > ${tolerance}`);
}

describe('runner', () => {
  test('prefill chunks then a lone decode row: inputs, cache, logits equal to recompute, counters', async () => {
    const { model, decoder, count, runner, sequence } = await setup();
    const prompt = randomTokens(21, 3);
    const s = sequence(prompt);
    const first = ran(await runner.prefill(s, 13));
    assert.equal(first.kvTokens, 13);
    const second = ran(await runner.prefill(s, 8));
    const step = decoder.recorded[1].step;
    assert.deepEqual(Array.from(step.positionIds, Number), [13, 14, 15, 16, 17, 18, 19, 20]);
    assert.deepEqual(Array.from(step.inputIds, Number), prompt.slice(13));
    assert.equal(step.attentionMask.length, 21);
    assert.equal(s.cacheLength, 21);
    assert.equal(s.remainingPending, 0);
    assertClose(logitsAt(second, 0, 7, 8), await fullRecompute(model.decoder, prompt));
    assert.deepEqual([count.prefillChunks, count.prefillTokens, count.decodeSteps], [2, 21, 0]);

    assert.equal(runner.sampleNext(s, second.logits, 7, second.vocabSize), null);
    const next = s.generated[0];
    const decoded = ran(await runner.decodeAlone(s));
    assert.equal(s.cacheLength, 22);
    assert.deepEqual(Array.from(decoder.recorded[2].step.positionIds, Number), [21]);
    assertClose(logitsAt(decoded, 0), await fullRecompute(model.decoder, [...prompt, next]));
    const layout = model.decoder.io.kv;
    const presentBytes = 22 * layout.bytesPerToken;
    assert.deepEqual([count.decodeSteps, count.decodeRows, count.batchSlots, count.paddingSlots], [1, 1, 22, 0]);
    assert.equal(count.decodeBytesOut, decoded.logits.byteLength + presentBytes, 'logits and the whole present come back to JavaScript');
  });

  test('a batch with left padding and a free row: per-row inputs and mask, each live row as alone', async () => {
    const { model, decoder, count, runner, sequence } = await setup();
    const layout = model.decoder.io.kv;
    const lengths = [9, 5, 7, 9, 9, 9];
    const prompts = lengths.map((n, i) => randomTokens(n, 4 + i));
    const sequences = prompts.map((p) => sequence(p));
    for (const s of sequences) {
      const step = ran(await runner.prefill(s, s.remainingPending));
      assert.equal(runner.sampleNext(s, step.logits, s.cacheLength - 1, step.vocabSize), null);
      s.state = 'decode';
    }
    const batch = new DecodeBatch<Sequence>(layout, { repacks: 0, inPlaceJoins: 0, repackMs: 0 });
    batch.sync(sequences);
    // The short row leaves: its row stays, free but still computed (too little waste to re-pack).
    batch.leave(sequences[1]);
    const live = sequences.filter((_, i) => i !== 1);
    const rows = batch.sync(live);
    const freeRow = rows.rows.indexOf(null);
    assert.ok(freeRow >= 0, 'the left row is free, not re-packed away');
    const total = rows.kv.length + 1;
    const expected = rows.rows.map((s) => (s ? { position: s.cacheLength, token: s.pending[0], prompt: prompts[sequences.indexOf(s)] } : null));
    const stepsBefore = count.decodeSteps;
    const paddingBefore = count.paddingSlots;
    const step = ran(await runner.decodeBatch(rows));
    const inputs = decoder.recorded.at(-1)!.step;
    assert.equal(inputs.batchSize, 6);
    assert.deepEqual(Array.from(inputs.positionIds, Number), expected.map((e) => e?.position ?? 0));
    assert.deepEqual(Array.from(inputs.inputIds, Number), expected.map((e) => e?.token ?? 0));
    for (let r = 0; r < 6; r++) {
      const mask = Array.from(inputs.attentionMask.subarray(r * total, (r + 1) * total), Number);
      const attended = expected[r] ? expected[r]!.position + 1 : 1;
      assert.deepEqual(mask, [...new Array(total - attended).fill(0), ...new Array(attended).fill(1)], `row ${r}: left padding masked, a free row attends only to itself`);
    }
    assert.equal(rows.kv.length, total, 'the batch holds the present KV');
    assert.deepEqual(live.map((s) => s.cacheLength), [10, 8, 10, 10, 10]);
    assert.equal(step.kvTokens, 48);
    assert.equal(count.decodeSteps - stepsBefore, 1);
    assert.equal(count.paddingSlots - paddingBefore, 6 * total - 48);
    for (let r = 0; r < 6; r++) {
      const e = expected[r];
      if (e) assertClose(logitsAt(step, r), await fullRecompute(model.decoder, [...e.prompt, e.token]));
    }

    const finished = await runner.sampleRows(rows.rows, step);
    assert.deepEqual(finished, []);
    assert.deepEqual(live.map((s) => s.generated.length), [2, 2, 2, 2, 2]);
  });

  test('a failed call leaves the sequence and its cache as they were, and counts nothing', async () => {
    let fail = false;
    const { count, runner, sequence } = await setup({ failWhen: () => fail });
    const s = sequence(randomTokens(6, 8));
    const prefilled = ran(await runner.prefill(s, 6));
    assert.equal(runner.sampleNext(s, prefilled.logits, 5, prefilled.vocabSize), null);
    const before = { kv: s.kv, cacheLength: s.cacheLength, pendingIndex: s.pendingIndex, ...count };
    fail = true;
    const failed = await runner.decodeAlone(s);
    assert.equal(failed.ok, false);
    assert.match(String((failed as { error: Error }).error.message), /injected fault/);
    assert.deepEqual({ kv: s.kv, cacheLength: s.cacheLength, pendingIndex: s.pendingIndex, ...count }, before);
  });

  test('sampling: greedy takes the arg max; maxTokens ends the sequence with length', async () => {
    const { model, runner, sequence } = await setup();
    const s = sequence([5, 6, 7], 2);
    const logits = new Float32Array(2 * model.vocabSize);
    logits[model.vocabSize + 42] = 3;
    logits[model.vocabSize + 17] = 2;
    assert.equal(runner.sampleNext(s, logits, 1, model.vocabSize), null);
    assert.deepEqual(s.pending, [42]);
    assert.equal(s.pendingIndex, 0);
    logits[model.vocabSize + 17] = 4;
    assert.equal(runner.sampleNext(s, logits, 1, model.vocabSize), 'length');
    assert.deepEqual(s.generated, [42, 17]);
  });
});
