/**
 * The scheduler across sessions: seeded sampling independent of batch neighbours, no starvation of
 * running streams by newcomers, the prefill budget, cancellation at the next iteration, admission
 * (queue and budget), MAX_BATCH_SIZE, no KV re-packing while the batch membership stays the same, and
 * free rows reused by newcomers without changing anybody's output.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { RequestRecord } from '../../src/engine/types.ts';
import { GPT2, LLAMA, collect, makeEngine, randomTokens, request, sampling } from '../support/fixtures.ts';
import { listen, post } from '../server/helpers.ts';
import { type TestDecoder, wrapDecoder } from '../support/test-decoder.ts';

/** What one model call did, in call order, from the engine's observers. */
type CallRecord = { kind: 'decode'; ids: string[]; rows: number } | { kind: 'prefill'; id: string; tokens: number };

function callLog() {
  const calls: CallRecord[] = [];
  const observer = {
    decodeStep: (info: { sequences: readonly RequestRecord[] }) =>
      calls.push({ kind: 'decode', ids: info.sequences.map((s) => s.request.requestId), rows: info.sequences.length }),
    prefillChunk: (sequence: RequestRecord, info: { tokens: number }) => calls.push({ kind: 'prefill', id: sequence.request.requestId, tokens: info.tokens }),
  };
  return { calls, observer };
}

const SAMPLED = sampling({ temperature: 0.9, topK: 40, topP: 0.95, repetitionPenalty: 1.05 });

describe('batching across sessions', () => {
  for (const [family, modelOptions] of [['llama', LLAMA], ['gpt2', GPT2]] as const) {
    test(`${family}: seeded sampling gives the same tokens alone and in a batch with other streams`, async () => {
      const prompt = randomTokens(23, 11);
      const target = () => request(prompt, { sampling: SAMPLED, seed: 1234, maxTokens: 30, requestId: 'target' });
      const alone = await collect((await makeEngine({ model: modelOptions })).engine.submit(target()));

      let recorder!: TestDecoder;
      const { engine } = await makeEngine({ model: modelOptions, wrapDecoder: (d) => (recorder = wrapDecoder(d, { record: true })) });
      const neighbours = [
        request(randomTokens(5, 12), { sampling: SAMPLED, seed: 7, maxTokens: 40 }),
        request(randomTokens(61, 13), { maxTokens: 25 }),
        request(randomTokens(40, 14), { sampling: SAMPLED, maxTokens: 35 }),
      ];
      const results = await Promise.all([...neighbours.slice(0, 2), target(), neighbours[2]].map((r) => collect(engine.submit(r))));
      const batched = results[2];
      assert.equal(batched.tokens.length, 30);
      assert.deepEqual(batched.tokens, alone.tokens);
      assert.ok(Math.max(...recorder.recorded.filter((c) => c.step.seqLength === 1).map((c) => c.step.batchSize)) >= 3, 'the target shared decode steps with neighbours');
    });
  }

  test('a running stream gets a token every iteration while newcomers with long prompts keep arriving', async () => {
    let recorder!: TestDecoder;
    const { engine } = await makeEngine({ prefillChunkTokens: 32, wrapDecoder: (d) => (recorder = wrapDecoder(d, { record: true })) });
    const { calls, observer } = callLog();
    engine.addObserver(observer);
    const running = await engine.submit(request(randomTokens(10, 1), { maxTokens: 80, requestId: 'running' }));
    if (!running.ok) throw new Error('submit failed');
    const newcomers: Array<Promise<unknown>> = [];
    let tokens = 0;
    for await (const event of running.events) {
      if (event.type !== 'token') continue;
      tokens++;
      // A newcomer with a 200-token prompt (7 or more chunks) every 8 tokens: prefills overlap the whole run.
      if (tokens % 8 === 1 && tokens < 70) {
        newcomers.push(collect(engine.submit(request(randomTokens(200, 100 + tokens), { maxTokens: 4, requestId: `newcomer-${tokens}` }))));
      }
    }
    await Promise.all(newcomers);
    assert.equal(tokens, 80);
    assert.equal(calls.length, recorder.recorded.length, 'every model call was observed');

    const mine = calls.flatMap((c, i) => (c.kind === 'decode' && c.ids.includes('running') ? [i] : []));
    assert.equal(mine.length, 79, 'one prefill call and 79 decode steps');
    let prefillsBetween = 0;
    for (let k = 1; k < mine.length; k++) {
      const between = calls.slice(mine[k - 1] + 1, mine[k]);
      assert.ok(between.length <= 1 && between.every((c) => c.kind === 'prefill'), `between token ${k} and ${k + 1}: ${JSON.stringify(between)}`);
      prefillsBetween += between.length;
    }
    assert.ok(prefillsBetween >= 40, `newcomers were prefilled while the stream ran (${prefillsBetween} chunks)`);
    assert.ok(calls.every((c) => c.kind === 'decode' || c.tokens <= 32));
  });

  test('while streams decode, prompts are prefilled in chunks sized by the decode step time; alone, in full chunks', async () => {
    // Decode steps take ~12 ms, prompt tokens ~0.5 ms each: with one stream decoding and one prompt
    // waiting, the budget is 2 x 12 ms, about 48 tokens (the bounds leave room for a busy machine).
    const { engine } = await makeEngine({
      prefillChunkTokens: 256,
      wrapDecoder: (inner) => wrapDecoder(inner, { delayMs: (step) => (step.seqLength === 1 ? 12 : step.seqLength * 0.5) }),
    });
    engine.options.minPrefillChunkTokens = 16;
    const chunks: Array<{ id: string; tokens: number; decoding: number }> = [];
    engine.addObserver({
      prefillChunk: (s, info) => chunks.push({ id: s.request.requestId, tokens: info.tokens, decoding: engine.stats().running - 1 }),
    });
    const running = await engine.submit(request(randomTokens(100, 1), { maxTokens: 12, requestId: 'running' }));
    if (!running.ok) throw new Error('submit failed');
    let tokens = 0;
    let newcomer: Promise<unknown> | undefined;
    for await (const event of running.events) {
      if (event.type === 'token' && ++tokens === 3) newcomer = collect(engine.submit(request(randomTokens(1000, 2), { maxTokens: 2, requestId: 'newcomer' })));
    }
    await newcomer;
    assert.deepEqual(chunks[0], { id: 'running', tokens: 100, decoding: 0 }, 'alone: the whole prompt in one chunk');
    const whileDecoding = chunks.filter((c) => c.id === 'newcomer' && c.decoding > 0);
    assert.ok(whileDecoding.length >= 6, `${whileDecoding.length} chunks while the stream decoded`);
    assert.ok(whileDecoding.reduce((n, c) => n + c.tokens, 0) < 1000 - 256, 'the stream finished well before the prompt was done');
    assert.ok(whileDecoding.every((c) => c.tokens >= 16 && c.tokens <= 128), JSON.stringify(whileDecoding.map((c) => c.tokens)));
    const after = chunks.filter((c) => c.id === 'newcomer' && c.decoding === 0);
    assert.ok(after.length > 0 && after[0].tokens === 256, 'once the stream finished, full chunks again');
  });

  test('a cancelled stream leaves the batch at the next iteration', async () => {
    let recorder!: TestDecoder;
    const { engine } = await makeEngine({ wrapDecoder: (d) => (recorder = wrapDecoder(d, { record: true })) });
    const controller = new AbortController();
    let steps = 0;
    let abortedAfterCall = -1;
    engine.addObserver({
      decodeStep: (info) => {
        if (info.sequences.length === 3 && ++steps === 5) {
          controller.abort();
          abortedAfterCall = recorder.recorded.length;
        }
      },
    });
    const streams = [
      request(randomTokens(8, 1), { maxTokens: 30 }),
      request(randomTokens(30, 2), { maxTokens: 30, signal: controller.signal }),
      request(randomTokens(17, 3), { maxTokens: 30 }),
    ].map((r) => collect(engine.submit(r)));
    const [a, cancelled, c] = await Promise.all(streams);
    assert.equal(cancelled.end.finishReason, 'cancelled');
    assert.equal(a.tokens.length, 30);
    assert.equal(c.tokens.length, 30);
    assert.ok(abortedAfterCall > 0);
    const next = recorder.recorded[abortedAfterCall];
    assert.equal(next.step.seqLength, 1);
    assert.equal(recorder.recorded[abortedAfterCall - 1].step.batchSize, 3);
    assert.equal(next.step.batchSize, 2, 'the next decode call no longer carries the cancelled row (1 free row of 3 is re-packed away)');
  });

  test('a cancelled request leaves the queue at once', async () => {
    const { engine } = await makeEngine({ maxBatchSize: 1, wrapDecoder: (d) => wrapDecoder(d, { delayMs: 5 }) });
    const holder = collect(engine.submit(request(randomTokens(8, 1), { maxTokens: 20 })));
    const controller = new AbortController();
    const queued = collect(engine.submit(request(randomTokens(8, 2), { signal: controller.signal })));
    assert.equal(engine.stats().waiting, 1);
    controller.abort();
    const result = await queued;
    assert.equal(result.end.finishReason, 'cancelled');
    assert.equal(result.start, undefined, 'never admitted');
    assert.equal(engine.stats().waiting, 0);
    assert.equal((await holder).tokens.length, 20);
  });

  test('MAX_BATCH_SIZE bounds the rows of every model call, and the outputs equal one-by-one runs', async () => {
    let recorder!: TestDecoder;
    const { engine } = await makeEngine({ maxBatchSize: 3, wrapDecoder: (d) => (recorder = wrapDecoder(d, { record: true })) });
    const prompts = Array.from({ length: 8 }, (_, i) => randomTokens(4 + 9 * i, 40 + i));
    const results = await Promise.all(prompts.map((p, i) => collect(engine.submit(request(p, { maxTokens: 10 + i })))));
    const rows = recorder.recorded.map((c) => c.step.batchSize);
    assert.equal(Math.max(...rows), 3);
    assert.ok(results.every((r, i) => r.tokens.length === 10 + i));
    const single = await makeEngine({ maxBatchSize: 1 });
    for (let i = 0; i < prompts.length; i++) {
      const alone = await collect(single.engine.submit(request(prompts[i], { maxTokens: 10 + i })));
      assert.deepEqual(results[i].tokens, alone.tokens, `prompt ${i}`);
    }
    // Later requests waited for a free row: their queue time is reported.
    assert.ok(results.slice(3).every((r) => r.start!.queueMs >= 0));
    assert.ok(results.slice(3).some((r) => r.start!.queueMs > 0));
  });

  for (const kvMode of ['concat', 'inplace'] as const) {
    // concat: the previous call's present is fed back as the past; in place: the same buffers are fed again (written in place).
    const fedAsIs = (recorder: TestDecoder, call: number, previous: number) =>
      recorder.recorded[call].step.past.layers[0].key === (kvMode === 'concat' ? recorder.recorded[previous].output.present : recorder.recorded[previous].step.past).layers[0].key;
    test(`${kvMode}: unchanged batch membership feeds the previous KV back as past: no re-packing`, async () => {
      let recorder!: TestDecoder;
      const { engine } = await makeEngine({ kvMode, wrapDecoder: (d) => (recorder = wrapDecoder(d, { record: true })) });
      const { calls, observer } = callLog();
      engine.addObserver(observer);

      // One stream: never a copy, from the prefill onwards (in place, the batch takes the prefill's own
      // buffer; the prefill ran over it empty, and appending its rows grew it, copying nothing).
      await collect(engine.submit(request(randomTokens(12, 1), { maxTokens: 20 })));
      const firstFedAsIs = kvMode === 'concat' ? 1 : 2;
      if (kvMode === 'inplace') assert.equal(recorder.recorded[0].step.past.length, 0, 'the prompt ran over an empty buffer');
      for (let i = firstFedAsIs; i < recorder.recorded.length; i++) assert.ok(fedAsIs(recorder, i, i - 1), `call ${i} reuses the KV of call ${i - 1}`);
      assert.equal(engine.counters().repacks, 0);

      // Four streams of different lengths and lengths of output: copies only when a row joins or leaves.
      const start = recorder.recorded.length;
      const logStart = calls.length;
      await Promise.all([5, 33, 70, 18].map((n, i) => collect(engine.submit(request(randomTokens(n, 10 + i), { maxTokens: 12 + 5 * i })))));
      let previous: { ids: string[]; call: number } | null = null;
      let unchanged = 0;
      let changes = 0;
      for (let i = start; i < recorder.recorded.length; i++) {
        const record = calls[logStart + (i - start)];
        if (record.kind !== 'decode') continue;
        if (previous) {
          if (previous.ids.join() === record.ids.join()) {
            unchanged++;
            assert.ok(fedAsIs(recorder, i, previous.call), `decode call ${i}: unchanged membership, fed back as it is`);
          } else changes++;
        }
        previous = { ids: record.ids, call: i };
      }
      // How many steps keep their membership depends on the prefill order (shortest prompt first); at
      // least 15 of the about 30 decode steps here.
      assert.ok(unchanged >= 15, `${unchanged} steps without a copy`);
      const counters = engine.counters();
      assert.ok(counters.repacks + counters.inPlaceJoins <= changes, `${counters.repacks} re-packs and ${counters.inPlaceJoins} in-place joins for ${changes} changes`);
    });
  }

  for (const [family, modelOptions] of [['llama', LLAMA], ['gpt2', GPT2]] as const) {
    test(`${family}: a stream that leaves frees its row and a newcomer takes it, copying only its own cache; outputs unchanged`, async () => {
      let recorder!: TestDecoder;
      const { engine } = await makeEngine({ model: modelOptions, wrapDecoder: (d) => (recorder = wrapDecoder(d, { record: true })) });
      // Six streams; the shortest one ends first, so its row is the only waste (1 of 6 rows).
      const prompts = [randomTokens(3, 21), randomTokens(20, 22), randomTokens(24, 23), randomTokens(28, 24), randomTokens(31, 25), randomTokens(35, 26)];
      const maxTokens = [14, 40, 40, 40, 40, 40];
      const newcomerPrompt = randomTokens(9, 27);
      let newcomer: Promise<Awaited<ReturnType<typeof collect>>> | undefined;
      let sawFreeRow = false;
      let atJoin: (ReturnType<typeof engine.counters> & { rows: number }) | undefined;
      engine.addObserver({
        requestFinished: (s) => {
          if (s.request.requestId === 'short') newcomer = collect(engine.submit(request(newcomerPrompt, { maxTokens: 12, requestId: 'newcomer' })));
        },
        decodeStep: (info) => {
          if (info.sequences.length === 5 && recorder.recorded.at(-1)!.step.batchSize === 6) sawFreeRow = true;
          if (!atJoin && info.sequences.some((s) => s.request.requestId === 'newcomer')) atJoin = { ...engine.counters(), rows: recorder.recorded.at(-1)!.step.batchSize };
        },
      });
      const results = await Promise.all(prompts.map((p, i) => collect(engine.submit(request(p, { maxTokens: maxTokens[i], requestId: i === 0 ? 'short' : `long-${i}` })))));
      const joined = await newcomer!;
      assert.ok(sawFreeRow, 'after the short stream ended, its row stayed in the batch, free');
      assert.equal(atJoin?.inPlaceJoins, 1, 'the newcomer took the free row');
      assert.equal(atJoin?.repacks, 5, 'full re-packs only while the first six joined');
      assert.equal(atJoin?.rows, 6);
      assert.equal(Math.max(...recorder.recorded.map((c) => c.step.batchSize)), 6);

      const single = await makeEngine({ model: modelOptions, maxBatchSize: 1 });
      for (let i = 0; i < prompts.length; i++) {
        const alone = await collect(single.engine.submit(request(prompts[i], { maxTokens: maxTokens[i] })));
        assert.deepEqual(results[i].tokens, alone.tokens, `stream ${i}`);
      }
      const alone = await collect(single.engine.submit(request(newcomerPrompt, { maxTokens: 12 })));
      assert.deepEqual(joined.tokens, alone.tokens, 'the newcomer in a reused row');
    });
  }
});

describe('admission', () => {
  test('a full queue refuses at once with queue_full and a retry time', async () => {
    const { engine } = await makeEngine({ maxBatchSize: 1, maxQueue: 2, wrapDecoder: (d) => wrapDecoder(d, { delayMs: 2 }) });
    const running = collect(engine.submit(request(randomTokens(8, 1), { maxTokens: 20 })));
    const queued = [collect(engine.submit(request(randomTokens(8, 2)))), collect(engine.submit(request(randomTokens(8, 3))))];
    const refused = await engine.submit(request(randomTokens(8, 4)));
    assert.equal(refused.ok, false);
    assert.ok(!refused.ok && refused.error.kind === 'queue_full' && refused.error.retryAfterSeconds! >= 1);
    const results = await Promise.all([running, ...queued]);
    assert.ok(results.every((r) => r.end.finishReason === 'length'));
    assert.ok(results[2].start!.queueMs >= results[1].start!.queueMs, 'admitted in order');
  });

  // 512 bytes per token, 16-token blocks: 8 KiB per block; the budget holds 4 blocks (64 tokens).
  const BUDGET = 4 * 16 * 512;

  test('no room with only busy sessions: the request waits, then ends with cache_full after the queue timeout', async () => {
    const { engine, store } = await makeEngine({ budgetBytes: BUDGET, queueTimeoutMs: 150, wrapDecoder: (d) => wrapDecoder(d, { delayMs: 10 }) });
    // The holder reserves 10 + 50 tokens (4 blocks) and runs for ~500 ms.
    let holderDone = 0;
    const holder = collect(await engine.submit(request(randomTokens(10, 1), { sessionId: 'holder', maxTokens: 50 }))).then((r) => {
      holderDone = Date.now();
      return r;
    });
    const started = Date.now();
    const waiting = collect(engine.submit(request(randomTokens(10, 2), { maxTokens: 10 })));
    assert.equal(engine.stats().waiting, 1);
    const refused = await waiting;
    assert.equal(refused.end.finishReason, 'error');
    assert.equal(refused.end.error?.kind, 'cache_full');
    assert.ok(refused.end.error!.retryAfterSeconds! >= 1);
    assert.equal(refused.start, undefined);
    const waited = Date.now() - started;
    assert.ok(waited >= 140, `refused after ${waited} ms`);
    assert.equal(holderDone, 0, 'refused while the holder still ran');
    assert.equal((await holder).tokens.length, 50);
    assert.ok(store.budget.reservedBytes <= BUDGET);
  });

  test('a request waiting for room is admitted in the iteration right after room frees', async () => {
    const { engine } = await makeEngine({ budgetBytes: BUDGET, wrapDecoder: (d) => wrapDecoder(d, { delayMs: 3 }) });
    const order: string[] = [];
    engine.addObserver({
      requestStarted: (s) => order.push(`start ${s.request.requestId}`),
      requestFinished: (s) => order.push(`finish ${s.request.requestId}`),
      decodeStep: () => order.push('decode'),
      prefillChunk: () => order.push('prefill'),
    });
    const holder = collect(engine.submit(request(randomTokens(10, 1), { maxTokens: 40, requestId: 'holder' })));
    const waiter = collect(engine.submit(request(randomTokens(10, 2), { maxTokens: 10, requestId: 'waiter' })));
    const [h, w] = await Promise.all([holder, waiter]);
    assert.equal(h.tokens.length, 40);
    assert.equal(w.tokens.length, 10);
    const finished = order.indexOf('finish holder');
    assert.equal(order[finished + 1], 'start waiter', `admitted right after: ${order.slice(finished, finished + 3).join(', ')}`);
    assert.ok(w.start!.queueMs >= 40 * 3, `queue time ${w.start!.queueMs} ms covers the holder's run`);
  });
});

describe('queue time per request', () => {
  test('reaches the client as X-Queue-Time-Ms, on streams and on JSON responses', async () => {
    // One row: the second and third requests wait for the first (20 tokens of >= 10 ms).
    const server = await listen({ settings: { 'max-batch-size': '1' }, wrapDecoder: (d) => wrapDecoder(d, { decodeDelayMs: 10 }) });
    try {
      const body = (stream: boolean) => ({ prompt: 'Once upon a time', max_tokens: 20, stream, ignore_eos: true });
      const first = fetch(`${server.url}/v1/completions`, post(body(true)));
      await new Promise((resolve) => setTimeout(resolve, 20));
      const [a, b, c] = await Promise.all([first, fetch(`${server.url}/v1/completions`, post(body(true))), fetch(`${server.url}/v1/completions`, post(body(false)))]);
      const queued = [a, b, c].map((r) => Number(r.headers.get('x-queue-time-ms')));
      await Promise.all([a.text(), b.text(), c.text()]);
      assert.ok([a, b, c].every((r) => r.status === 200));
      assert.ok(queued.every(Number.isInteger), JSON.stringify(queued));
      assert.ok(queued[0] < 100, `the first request did not wait (${queued[0]} ms)`);
      assert.ok(Math.max(queued[1], queued[2]) >= 200, `the last admitted waited for two others (${queued} ms)`);
    } finally {
      await server.close();
    }
  });
});
