import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { argmax } from '../../src/engine/sampler.ts';
import { GPT2, LLAMA, collect, fullRecompute, makeEngine, randomTokens, request, sampling, testModel } from '../support/fixtures.ts';
import { type TestDecoder, wrapDecoder } from '../support/test-decoder.ts';

for (const [family, modelOptions] of [['llama', LLAMA], ['gpt2', GPT2]] as const) {
  describe(`engine on a ${family} builder model`, () => {
    test('greedy decoding with the KV cache equals full recomputation at every step (64 steps, logits within 1e-4)', async () => {
      let recorder!: TestDecoder;
      const { engine, model } = await makeEngine({
        model: modelOptions,
        wrapDecoder: (d) => (recorder = wrapDecoder(d, { record: true })),
      });
      const prompt = model.tokenizer.encode('The quick brown fox jumps over the lazy dog. It was a bright cold day');
      const result = await collect(engine.submit(request(prompt, { maxTokens: 64 })));
      assert.equal(result.tokens.length, 64);
      assert.equal(result.end.finishReason, 'length');
      assert.equal(recorder.recorded.length, 64, 'one prefill call and 63 single-token decode calls');

      const sequence = prompt.slice();
      let maxDiff = 0;
      for (let step = 0; step < 64; step++) {
        const { output, step: input } = recorder.recorded[step];
        // A prefill chunk's logits are cut to its last position where the decoder can (logitsToKeep).
        const positions = output.logitPositions ?? input.seqLength;
        const cached = (output.logits as Float32Array).subarray((positions - 1) * output.vocabSize, positions * output.vocabSize);
        const full = await fullRecompute(model.decoder, sequence);
        for (let i = 0; i < full.length; i++) maxDiff = Math.max(maxDiff, Math.abs(full[i] - cached[i]));
        assert.equal(argmax(full, model.vocabSize), result.tokens[step], `token ${step} differs from full recomputation`);
        sequence.push(result.tokens[step]);
      }
      assert.ok(maxDiff < 1e-4, `max logit difference ${maxDiff}`);
    });

    test('a three-turn append session equals one call on the whole transcript, reusing every cached token', async () => {
      const { engine, store, model } = await makeEngine({ model: modelOptions });
      const turns = ['Once upon a time', ' and then the king said', ' so they left the castle'].map((t) => model.tokenizer.encode(t));
      const sessionId = `three-turns-${family}`;
      let previousCached = 0;
      const outputs = [];
      for (let i = 0; i < turns.length; i++) {
        const result = await collect(
          engine.submit(request(turns[i], { sessionId, mode: 'append', maxTokens: 12 + i })),
        );
        assert.equal(result.usage.cachedTokens, previousCached, `turn ${i + 1} reuses everything cached before`);
        const session = store.get('', sessionId)!;
        // Everything but the last sampled token (never fed to the model) is cached.
        assert.equal(session.cachedLength, session.tokens.length - 1);
        previousCached = session.cachedLength;
        outputs.push(result);
      }
      const transcript = [...turns[0], ...outputs[0].tokens, ...turns[1], ...outputs[1].tokens, ...turns[2]];
      const oneShot = await collect(engine.submit(request(transcript, { maxTokens: 14 })));
      assert.deepEqual(oneShot.tokens, outputs[2].tokens);
      assert.equal(oneShot.usage.cachedTokens, 0);
      assert.equal(outputs[2].usage.promptTokens, transcript.length);
    });

    test('batched decoding of sessions with different lengths equals running them one by one', async () => {
      const prompts = [randomTokens(5, 1), randomTokens(37, 2), randomTokens(80, 3), randomTokens(12, 4)];
      const alone = [];
      const single = await makeEngine({ model: modelOptions, maxBatchSize: 1 });
      for (const p of prompts) alone.push(await collect(single.engine.submit(request(p, { maxTokens: 20 + p.length % 7 }))));
      const batched = await makeEngine({ model: modelOptions, maxBatchSize: 8 });
      const together = await Promise.all(prompts.map((p) => collect(batched.engine.submit(request(p, { maxTokens: 20 + p.length % 7 })))));
      for (let i = 0; i < prompts.length; i++) assert.deepEqual(together[i].tokens, alone[i].tokens, `prompt ${i}`);
    });
  });
}

describe('sessions and the budget', () => {
  test('idle sessions are evicted in exact LRU order, the budget is never exceeded, and an evicted session resumes identically', async () => {
    // 512 bytes per token and 16-token blocks: each finished 32-token session holds 16 KiB.
    const budgetBytes = 3 * 16 * 1024;
    const { engine, store, model } = await makeEngine({ budgetBytes });
    assert.equal(model.decoder.io.kv.bytesPerToken, 512);
    const evicted: string[] = [];
    store.onTierMove((e) => evicted.push(e.session.id));
    let peak = 0;
    engine.addObserver({ decodeStep: () => (peak = Math.max(peak, store.budget.reservedBytes)) });
    const run = async (id: string, seed: number) => {
      const r = await collect(engine.submit(request(randomTokens(20, seed), { sessionId: id, maxTokens: 12 })));
      peak = Math.max(peak, store.budget.reservedBytes);
      return r;
    };
    await run('a', 1);
    await run('b', 2);
    await run('c', 3);
    assert.deepEqual(evicted, []);
    await run('d', 4); // needs room: a is least recently used
    assert.deepEqual(evicted, ['a']);
    await run('b', 5); // b becomes most recent (a new prompt on b)
    await run('e', 6); // c is now least recently used
    assert.deepEqual(evicted, ['a', 'c']);
    await run('f', 7);
    assert.deepEqual(evicted, ['a', 'c', 'd']);
    assert.ok(peak <= budgetBytes, `peak reservation ${peak} over budget ${budgetBytes}`);
    assert.equal(store.get('', 'a')!.tier, 'evicted');

    // Resume the evicted session a with a new turn, and compare with a session that never left memory.
    const next = model.tokenizer.encode(' next turn');
    const resumed = await collect(engine.submit(request(next, { sessionId: 'a', mode: 'append', maxTokens: 10 })));
    assert.equal(resumed.usage.cachedTokens, 0, 'an evicted session is recomputed');
    const roomy = await makeEngine({});
    await collect(roomy.engine.submit(request(randomTokens(20, 1), { sessionId: 'a', maxTokens: 12 })));
    const warm = await collect(roomy.engine.submit(request(next, { sessionId: 'a', mode: 'append', maxTokens: 10 })));
    assert.ok(warm.usage.cachedTokens > 0);
    assert.deepEqual(resumed.tokens, warm.tokens);
    assert.deepEqual(store.get('', 'a')!.tokens, roomy.store.get('', 'a')!.tokens);
  });

  test('a request that cannot fit even an empty cache is refused as a value', async () => {
    const { engine } = await makeEngine({ budgetBytes: 8 * 1024 });
    const result = await collect(engine.submit(request(randomTokens(30, 9), { maxTokens: 30 })));
    assert.equal(result.end.finishReason, 'error');
    assert.equal(result.end.error?.kind, 'request_too_large');
    assert.equal(result.tokens.length, 0);
  });

  test('a second request on a busy session is refused with session_busy', async () => {
    const { engine } = await makeEngine({});
    const first = engine.submit(request(randomTokens(10, 1), { sessionId: 'busy', maxTokens: 20 }));
    const second = await engine.submit(request(randomTokens(10, 2), { sessionId: 'busy' }));
    assert.equal(second.ok, false);
    assert.equal(!second.ok && second.error.kind, 'session_busy');
    await collect(first);
    const third = await collect(engine.submit(request(randomTokens(10, 2), { sessionId: 'busy' })));
    assert.equal(third.end.finishReason, 'length');
  });

  test('unknown sessions are created or refused as asked, and owners never see each other', async () => {
    const { engine, store } = await makeEngine({});
    const refused = await engine.submit(request([1, 2, 3], { sessionId: 'nope', onUnknownSession: 'fail' }));
    assert.equal(!refused.ok && refused.error.kind, 'session_not_found');
    await collect(engine.submit(request(randomTokens(10, 3), { sessionId: 'shared-name', owner: 'alice' })));
    const bob = await collect(engine.submit(request(randomTokens(10, 3), { sessionId: 'shared-name', owner: 'bob' })));
    assert.equal(bob.usage.cachedTokens, 0, 'cache reuse never crosses owners');
    assert.notEqual(store.get('alice', 'shared-name'), store.get('bob', 'shared-name'));
  });

  test('truncation "error" refuses sequences longer than the context', async () => {
    const { engine } = await makeEngine({ capacity: 64 });
    const result = await engine.submit(request(randomTokens(60, 1), { maxTokens: 10, truncation: 'error' }));
    assert.equal(!result.ok && result.error.kind, 'context_length_exceeded');
  });

  test('a refused submit removes the session it created and leaves an existing one as it was', async () => {
    const { engine, store } = await makeEngine({ capacity: 64 });
    const tooLong = { maxTokens: 10, truncation: 'error' as const };
    const refused = await engine.submit(request(randomTokens(60, 1), { ...tooLong, sessionId: 'new-one' }));
    assert.equal(!refused.ok && refused.error.kind, 'context_length_exceeded');
    assert.equal(store.get('', 'new-one'), undefined, 'no empty session is left behind');

    const prompt = randomTokens(8, 2);
    await collect(engine.submit(request(prompt, { maxTokens: 4, sessionId: 'kept' })));
    const before = store.get('', 'kept')!.tokens.slice();
    const refusedOnExisting = await engine.submit(request(randomTokens(60, 3), { ...tooLong, sessionId: 'kept' }));
    assert.equal(!refusedOnExisting.ok && refusedOnExisting.error.kind, 'context_length_exceeded');
    assert.deepEqual(store.get('', 'kept')?.tokens, before, 'the existing session keeps its transcript');
  });

  test('tokens outside the vocabulary are refused', async () => {
    const { engine, model } = await makeEngine({});
    const result = await engine.submit(request([1, model.vocabSize]));
    assert.equal(!result.ok && result.error.kind, 'invalid_request');
  });
});

describe('sampling, stops and cancellation', () => {
  test('seeded sampling is reproducible and different seeds differ', async () => {
    const { engine } = await makeEngine({});
    const params = sampling({ temperature: 1, topK: 50, topP: 0.95, minP: 0.01, repetitionPenalty: 1.1 });
    const run = (seed: number) => collect(engine.submit(request(randomTokens(12, 5), { sampling: params, seed, maxTokens: 40 })));
    const a = await run(42);
    const b = await run(42);
    const c = await run(43);
    assert.deepEqual(a.tokens, b.tokens);
    assert.notDeepEqual(a.tokens, c.tokens);
  });

  test('a stop string split across tokens is caught and never emitted', async () => {
    const { engine, model } = await makeEngine({});
    const prompt = model.tokenizer.encode('Hello there, my friend. How are you');
    const pieces: string[] = [];
    const free = await engine.submit(request(prompt, { maxTokens: 40 }));
    if (!free.ok) throw new Error('submit failed');
    let full = '';
    for await (const event of free.events) {
      if (event.type === 'token') {
        pieces.push(event.text);
        full += event.text;
      } else if (event.type === 'end') full += event.text;
    }
    // A stop string made of the end of one token's text and the start of the next one's.
    const boundary = pieces.findIndex((p, i) => i > 2 && p.length >= 2 && (pieces[i + 1] ?? '').length >= 2 && !full.slice(0, pieces.slice(0, i).join('').length).includes(p.slice(-2) + pieces[i + 1].slice(0, 2)));
    assert.ok(boundary > 0, 'found two adjacent multi-character pieces');
    const stop = pieces[boundary].slice(-2) + pieces[boundary + 1].slice(0, 2);
    const stopAt = full.indexOf(stop);
    const stopped = await collect(engine.submit(request(prompt, { maxTokens: 40, stop: ['zzzz-never', stop] })));
    assert.equal(stopped.end.finishReason, 'stop');
    assert.equal(stopped.text, full.slice(0, stopAt));
    assert.ok(!stopped.text.includes(stop));
  });

  test('aborting a request stops generation within a step and keeps the session consistent', async () => {
    const { engine, store, model } = await makeEngine({});
    const controller = new AbortController();
    const result = await engine.submit(request(randomTokens(10, 8), { sessionId: 'abort', maxTokens: 500, signal: controller.signal }));
    if (!result.ok) throw new Error('submit failed');
    let tokens = 0;
    let tokensAtAbort = 0;
    let end;
    for await (const event of result.events) {
      if (event.type === 'token' && ++tokens === 5) {
        controller.abort();
        tokensAtAbort = tokens;
      }
      if (event.type === 'end') end = event;
    }
    assert.equal(end!.finishReason, 'cancelled');
    assert.ok(tokens - tokensAtAbort <= 1, `generated ${tokens - tokensAtAbort} tokens after the abort`);
    const session = store.get('', 'abort')!;
    assert.equal(session.tokens.length, 10 + tokens);
    assert.equal(session.cachedLength, session.tokens.length - 1);
    assert.equal(session.busy, false);
    // The session's cache is right: a continuation equals a one-shot run of the transcript.
    const cachedBefore = session.cachedLength;
    const more = model.tokenizer.encode(' more');
    const continued = await collect(engine.submit(request(more, { sessionId: 'abort', mode: 'append', maxTokens: 8 })));
    assert.equal(continued.usage.cachedTokens, cachedBefore);
    const oneShot = await collect(engine.submit(request([...session.tokens.slice(0, -continued.tokens.length)], { maxTokens: 8 })));
    assert.deepEqual(continued.tokens, oneShot.tokens);
  });

  test('a model failure ends the stream with an error and rolls the session back', async () => {
    let failNext = false;
    const { engine, store } = await makeEngine({
      wrapDecoder: (inner) => wrapDecoder(inner, { failWhen: (step) => failNext && step.seqLength === 1, faultMessage: 'injected fault' }),
    });
    const first = await collect(engine.submit(request(randomTokens(10, 1), { sessionId: 'fault', maxTokens: 6 })));
    const before = store.get('', 'fault')!.tokens.slice();
    failNext = true;
    const failed = await collect(engine.submit(request(randomTokens(5, 2), { sessionId: 'fault', mode: 'append', maxTokens: 6 })));
    assert.equal(failed.end.finishReason, 'error');
    assert.equal(failed.end.error?.kind, 'internal');
    const session = store.get('', 'fault')!;
    assert.deepEqual(session.tokens, before);
    assert.ok(session.cachedLength <= before.length);
    failNext = false;
    const after = await collect(engine.submit(request(randomTokens(5, 2), { sessionId: 'fault', mode: 'append', maxTokens: 6 })));
    assert.equal(after.end.finishReason, 'length');
    assert.equal(first.tokens.length, 6);
  });
});

test('the test model is lively enough for greedy comparisons', async () => {
  const model = await testModel(LLAMA);
  assert.ok(model.vocabSize > 600);
});
