/**
 * The prefill lane (PREFILL_LANE=worker, src/engine/prefill-lane.ts): long prompts' chunks on a second
 * decoder, on a worker thread, while the loop's decoder keeps stepping the running streams. On a builder
 * llama, in both KV modes: a stream decoding, a long prompt and a short one give the tokens each gives
 * alone; the long one's chunks ran on the lane with decode steps started while they were in flight; a
 * lone prompt with nothing decoding stays inline. A request cancelled while its chunk is on the lane
 * ends cancelled, and its session's next turn equals a one-shot run of the committed transcript.
 */
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import type { Engine } from '../../src/engine/engine.ts';
import { closeLaneDecoders, collect, makeEngine, randomTokens, request, type Collected } from '../support/fixtures.ts';

after(() => closeLaneDecoders());

/** Each prompt alone on an engine without a lane: the reference tokens. */
async function alone(kvMode: 'concat' | 'inplace', prompts: Array<{ input: number[]; maxTokens: number }>): Promise<number[][]> {
  const { engine } = await makeEngine({ kvMode });
  const out: number[][] = [];
  for (const { input, maxTokens } of prompts) out.push((await collect(engine.submit(request(input, { maxTokens })))).tokens);
  return out;
}

/** Resolves once `engine` has started `count` chunks on its lane. */
async function laneStarted(engine: Engine, count: number): Promise<void> {
  while (engine.counters().laneChunks < count) await new Promise((resolve) => setImmediate(resolve));
}

for (const kvMode of ['inplace', 'concat'] as const) {
  describe(`prefill lane, KV_MODE=${kvMode}`, () => {
    test('a stream, a long prompt and a short one: the tokens each gives alone; the long chunks ran beside decode steps', async () => {
      const stream = { input: randomTokens(12, 1), maxTokens: 120 };
      const long = { input: randomTokens(700, 2), maxTokens: 8 };
      const short = { input: randomTokens(10, 3), maxTokens: 8 };
      const expected = await alone(kvMode, [stream, long, short]);

      const { engine } = await makeEngine({ kvMode, prefillLane: true });
      const laneChunks: Array<{ start: number; end: number; tokens: number }> = [];
      const decodeStarts: number[] = [];
      engine.addObserver({
        prefillChunk: (_s, info) => void (info.lane && laneChunks.push({ start: info.startMs, end: info.startMs + info.durationMs, tokens: info.tokens })),
        decodeStep: (info) => void decodeStarts.push(info.startMs),
      });
      const streaming = await engine.submit(request(stream.input, { maxTokens: stream.maxTokens }));
      assert.ok(streaming.ok);
      const events = streaming.events[Symbol.asyncIterator]();
      await events.next(); // start
      await events.next(); // the first token: the stream is decoding
      const longRun = collect(engine.submit(request(long.input, { maxTokens: long.maxTokens })));
      await laneStarted(engine, 1);
      const shortRun = await collect(engine.submit(request(short.input, { maxTokens: short.maxTokens })));
      const rest: number[] = [];
      let end: Collected['end'] | undefined;
      for (let next = await events.next(); !next.done; next = await events.next()) {
        if (next.value.type === 'token') rest.push(next.value.tokenId);
        else if (next.value.type === 'end') end = next.value;
      }
      assert.equal(end?.finishReason, 'length');
      const longOut = await longRun;

      assert.deepEqual(longOut.tokens, expected[1], 'the long prompt, prefilled on the lane');
      assert.deepEqual(shortRun.tokens, expected[2], 'the short prompt, prefilled inline meanwhile');
      assert.equal(rest.length, stream.maxTokens - 1);
      assert.deepEqual(rest, expected[0].slice(1), 'the running stream');
      assert.ok(laneChunks.length >= 2, `lane chunks: ${laneChunks.length}`);
      assert.ok(laneChunks.every((c) => c.tokens <= 64), 'full chunks of PREFILL_CHUNK_TOKENS at most');
      const beside = decodeStarts.filter((t) => laneChunks.some((c) => t > c.start && t < c.end)).length;
      assert.ok(beside > 0, 'decode steps started while a lane chunk was in flight');
      assert.equal(engine.counters().laneChunks, laneChunks.length);
    });

    test('with nothing decoding, a long prompt runs inline on the loop decoder', async () => {
      const { engine } = await makeEngine({ kvMode, prefillLane: true });
      const out = await collect(engine.submit(request(randomTokens(300, 4), { maxTokens: 4 })));
      assert.equal(out.tokens.length, 4);
      assert.equal(engine.counters().laneChunks, 0);
    });

    test('cancelled while its chunk is on the lane: ends cancelled; the next turn equals a one-shot run of the transcript', async () => {
      const { engine, store } = await makeEngine({ kvMode, prefillLane: true });
      const sessionId = `lane-${kvMode}`;
      const first = await collect(engine.submit(request(randomTokens(20, 5), { sessionId, maxTokens: 6 })));
      assert.equal(first.end.finishReason, 'length');

      const stream = new AbortController();
      const streaming = collect(engine.submit(request(randomTokens(8, 6), { maxTokens: 100_000, signal: stream.signal })));
      while (engine.counters().decodeSteps < 2) await new Promise((resolve) => setImmediate(resolve));
      const controller = new AbortController();
      const before = engine.counters().laneChunks;
      const turn = collect(engine.submit(request(randomTokens(500, 7), { sessionId, mode: 'append', maxTokens: 6, signal: controller.signal })));
      await laneStarted(engine, before + 1);
      controller.abort();
      assert.equal((await turn).end.finishReason, 'cancelled');
      stream.abort();
      await streaming;

      const transcript = [...store.get('', sessionId)!.tokens];
      const next = randomTokens(9, 8);
      const resumed = await collect(engine.submit(request(next, { sessionId, mode: 'append', maxTokens: 8 })));
      assert.equal(resumed.usage.cachedTokens, transcript.length, 'the cache held the whole committed transcript');
      const [oneShot] = await alone(kvMode, [{ input: [...transcript, ...next], maxTokens: 8 }]);
      assert.deepEqual(resumed.tokens, oneShot);
    });
  });
}
