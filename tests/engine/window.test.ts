import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { resolveWindowPolicy, WindowConfigError } from '../../src/cache/window.ts';
import type { Session } from '../../src/cache/session.ts';
import type { DecoderStep } from '../../src/model/index.ts';
import { GPT2, LLAMA, collect, makeEngine, randomTokens, request, runFromScratch, testModel } from '../support/fixtures.ts';
import { type TestDecoder, wrapDecoder } from '../support/test-decoder.ts';

/** The transcript tokens a windowed session's cache holds, slot by slot. */
function cachedTokensOf(session: Session, sinks: number): number[] {
  const dropped = session.window.droppedTokens;
  if (dropped === 0) return session.tokens.slice(0, session.cachedLength);
  return session.tokens.slice(0, sinks).concat(session.tokens.slice(sinks + dropped, dropped + session.cachedLength));
}

/** The most unmasked slots of any row of a call (`attention_mask` is `[batch, past + seqLength]`). */
function attendedTokens(step: DecoderStep): number {
  const width = step.past.length + step.seqLength;
  let most = 0;
  for (let r = 0; r < step.batchSize; r++) {
    let ones = 0;
    for (let i = r * width; i < (r + 1) * width; i++) ones += Number(step.attentionMask[i]);
    most = Math.max(most, ones);
  }
  return most;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

const WINDOW = { sinkTokens: 4, dropTokens: 12 };

describe('sliding window with attention sinks', () => {
  test('after shifts, layer-0 keys equal keys computed fresh at the new positions (rotation math)', async () => {
    const { engine, store, model } = await makeEngine({ capacity: 32, window: { sinkTokens: 4, dropTokens: 8, strategy: 'shift' } });
    assert.equal(engine.options.window.strategy, 'shift');
    await collect(engine.submit(request(randomTokens(20, 11), { sessionId: 'rot', maxTokens: 45 })));
    const session = store.get('', 'rot')!;
    assert.ok(session.window.dropEvents >= 3, `only ${session.window.dropEvents} drops`);
    const cached = cachedTokensOf(session, 4);
    const fresh = await runFromScratch(model.decoder, cached);
    // Layer 0 depends only on each token and its position, so shifted keys must equal fresh ones.
    const keyDiff = maxAbsDiff(session.kv!.layers[0].key, fresh.present.layers[0].key);
    const valueDiff = maxAbsDiff(session.kv!.layers[0].value, fresh.present.layers[0].value);
    assert.ok(keyDiff < 1e-4, `layer-0 key difference ${keyDiff}`);
    assert.ok(valueDiff < 1e-5, `layer-0 value difference ${valueDiff}`);
    // Keys one position off are far from these: the comparison is sensitive to the rotation.
    const offByOne = await runFromScratch(model.decoder, cached, 1);
    assert.ok(maxAbsDiff(session.kv!.layers[0].key, offByOne.present.layers[0].key) > 1e-2);
  });

  test('a session generates ten times the context length in bounded memory', async () => {
    let recorder!: TestDecoder;
    const capacity = 64;
    const { engine, store } = await makeEngine({ capacity, window: WINDOW, wrapDecoder: (d) => (recorder = wrapDecoder(d, { record: true })) });
    let peakReserved = 0;
    engine.addObserver({ decodeStep: () => (peakReserved = Math.max(peakReserved, store.budget.reservedBytes)) });
    const result = await collect(engine.submit(request(randomTokens(30, 5), { sessionId: 'long', maxTokens: 10 * capacity })));
    assert.equal(result.tokens.length, 10 * capacity);
    // Tokens a row attends to (in place, the past is the buffer's capacity with unused slots masked out).
    const maxAttended = Math.max(...recorder.recorded.map((c) => attendedTokens(c.step)));
    assert.ok(maxAttended <= capacity, `the model saw ${maxAttended} tokens`);
    assert.ok(Math.max(...recorder.recorded.map((c) => c.step.past.length)) <= capacity, 'no buffer grew past the context');
    const session = store.get('', 'long')!;
    assert.ok(session.cachedLength <= capacity);
    assert.equal(session.window.droppedTokens + session.cachedLength, session.tokens.length - 1);
    assert.equal(result.usage.droppedTokens, session.window.droppedTokens);
    assert.ok(peakReserved <= store.budget.bytesFor(capacity, 512), `reserved ${peakReserved} bytes`);
  });

  for (const [name, modelOptions, strategy] of [
    ['llama shift', LLAMA, 'shift'],
    ['llama recompute', LLAMA, 'recompute'],
    ['gpt2 recompute', { ...GPT2, maxPositions: 48 }, 'auto'],
  ] as const) {
    test(`${name}: a multi-turn session past the context equals a one-shot run, also after eviction`, async () => {
      const options = { model: modelOptions, capacity: 48, window: { ...WINDOW, strategy } };
      const { engine, store, model } = await makeEngine(options);
      const turns = [randomTokens(30, 21), randomTokens(10, 22), randomTokens(8, 23)];
      const outputs = [];
      for (let i = 0; i < turns.length; i++) {
        outputs.push(await collect(engine.submit(request(turns[i], { sessionId: 'multi', mode: 'append', maxTokens: 20 - i * 2 }))));
      }
      const session = store.get('', 'multi')!;
      assert.ok(session.window.dropEvents >= 3, `${session.window.dropEvents} drops`);
      assert.ok(outputs[1].usage.cachedTokens > 0 && outputs[2].usage.cachedTokens > 0);

      const transcript = [...turns[0], ...outputs[0].tokens, ...turns[1], ...outputs[1].tokens, ...turns[2]];
      const oneShot = await collect(engine.submit(request(transcript, { maxTokens: 16 })));
      assert.deepEqual(oneShot.tokens, outputs[2].tokens, 'one-shot equals the resumed session');

      // Evict after turn 2 and resume: the recomputed cache gives the same turn 3.
      const evicting = await makeEngine(options);
      for (let i = 0; i < 2; i++) {
        await collect(evicting.engine.submit(request(turns[i], { sessionId: 'multi', mode: 'append', maxTokens: 20 - i * 2 })));
      }
      assert.ok(evicting.store.demoteOne());
      assert.equal(evicting.store.get('', 'multi')!.tier, 'evicted');
      const resumed = await collect(evicting.engine.submit(request(turns[2], { sessionId: 'multi', mode: 'append', maxTokens: 16 })));
      assert.equal(resumed.usage.cachedTokens, 0);
      assert.deepEqual(resumed.tokens, outputs[2].tokens, 'resumed after eviction equals never evicted');
      assert.deepEqual(evicting.store.get('', 'multi')!.tokens, session.tokens);
      assert.equal(model.vocabSize > 0, true);
    });
  }

  test('a stateless request that extends a shifted session reuses its cache', async () => {
    const { engine, store } = await makeEngine({ capacity: 48, window: WINDOW });
    await collect(engine.submit(request(randomTokens(40, 3), { sessionId: 'stateless', maxTokens: 30 })));
    const session = store.get('', 'stateless')!;
    assert.ok(session.window.droppedTokens > 0);
    const cacheEnd = session.window.droppedTokens + session.cachedLength;
    const next = [...session.tokens, ...randomTokens(5, 4)];
    const reused = await collect(engine.submit(request(next, { sessionId: 'stateless', maxTokens: 5 })));
    assert.equal(reused.usage.cachedTokens, cacheEnd);
    // Diverging before the latest drop means the cache cannot be trusted: it is rebuilt.
    const diverged = [...next.slice(0, 10), 1, ...next.slice(11)];
    const rebuilt = await collect(engine.submit(request(diverged, { sessionId: 'stateless', maxTokens: 5 })));
    assert.equal(rebuilt.usage.cachedTokens, 0);
  });

  test('a prompt longer than the context is streamed through the window and equals splitting it', async () => {
    const { engine } = await makeEngine({ capacity: 48, window: WINDOW });
    const prompt = randomTokens(150, 9);
    const whole = await collect(engine.submit(request(prompt, { maxTokens: 12 })));
    assert.ok(whole.usage.droppedTokens >= 100);
    await collect(engine.submit(request(prompt.slice(0, 100), { sessionId: 'split', mode: 'append', maxTokens: 1 })));
    // The split run generated one token after the first part; one-shot the same transcript instead.
    const splitSession = await collect(engine.submit(request(prompt.slice(100), { sessionId: 'split', mode: 'append', maxTokens: 12 })));
    const reference = await collect(engine.submit(request([...prompt.slice(0, 100), ...[]], { maxTokens: 1 })));
    const oneShot = await collect(engine.submit(request([...prompt.slice(0, 100), reference.tokens[0], ...prompt.slice(100)], { maxTokens: 12 })));
    assert.deepEqual(splitSession.tokens, oneShot.tokens);
  });

  test('learned-position models use recompute and never exceed their position table', async () => {
    let recorder!: TestDecoder;
    const gpt2 = { ...GPT2, maxPositions: 40 };
    const model = await testModel(gpt2);
    assert.equal(model.folder.positionEncoding.kind, 'learned');
    assert.throws(() => resolveWindowPolicy(40, { sinkTokens: 4, strategy: 'shift' }, model.folder.positionEncoding), WindowConfigError);
    const { engine } = await makeEngine({ model: gpt2, capacity: 40, window: { sinkTokens: 4 }, wrapDecoder: (d) => (recorder = wrapDecoder(d, { record: true })) });
    assert.equal(engine.options.window.strategy, 'recompute');
    const result = await collect(engine.submit(request(randomTokens(20, 2), { maxTokens: 200 })));
    assert.equal(result.tokens.length, 200);
    const maxPosition = Math.max(...recorder.recorded.flatMap((c) => Array.from(c.step.positionIds, Number)));
    assert.ok(maxPosition < 40, `position ${maxPosition}`);
  });
});
