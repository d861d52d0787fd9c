/**
 * KV that stays in accelerator memory between steps (WebGPU's gpu-buffer outputs), simulated by a real
 * decoder whose outputs can only be fed back once or downloaded: the engine must keep it on the device
 * while a batch decodes unchanged, and bring it to the host for everything else, with identical output.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Decoder } from '../../src/model/index.ts';
import { collect, makeEngine, randomTokens, request, sampling, type EngineFixtureOptions } from '../support/fixtures.ts';
import { type TestDecoder, wrapDecoder } from '../support/test-decoder.ts';

async function pair(options: EngineFixtureOptions = {}) {
  let device!: TestDecoder;
  const onDevice = await makeEngine({ ...options, wrapDecoder: (d: Decoder) => (device = wrapDecoder(options.wrapDecoder ? options.wrapDecoder(d) : d, { deviceLike: true })) });
  const onHost = await makeEngine(options);
  return { onDevice, onHost, device: () => device };
}

describe('KV kept on the device between steps', () => {
  test('a single stream decodes entirely on the device and downloads once, at the end', async () => {
    const { onDevice, onHost, device } = await pair();
    const prompt = randomTokens(30, 1);
    const a = await collect(onDevice.engine.submit(request(prompt, { sessionId: 's', maxTokens: 40 })));
    const b = await collect(onHost.engine.submit(request(prompt, { sessionId: 's', maxTokens: 40 })));
    assert.deepEqual(a.tokens, b.tokens);
    assert.equal(device().deviceSteps, 39, 'every decode step took its past from the device');
    assert.equal(device().downloads, 1, 'the cache came to the host once, for the session');
    // The stored session is host memory and continues like any other.
    const next = randomTokens(5, 2);
    const c = await collect(onDevice.engine.submit(request(next, { sessionId: 's', mode: 'append', maxTokens: 10 })));
    const d = await collect(onHost.engine.submit(request(next, { sessionId: 's', mode: 'append', maxTokens: 10 })));
    assert.equal(c.usage.cachedTokens, d.usage.cachedTokens);
    assert.deepEqual(c.tokens, d.tokens);
  });

  test('batches with joins and leaves, sliding-window drops (shift and recompute) and seeded sampling match the host path', async () => {
    for (const strategy of ['shift', 'recompute'] as const) {
      const options: EngineFixtureOptions = { capacity: 48, window: { sinkTokens: 4, dropTokens: 12, strategy }, maxBatchSize: 4 };
      const { onDevice, onHost } = await pair(options);
      const run = async (engine: typeof onHost.engine) => {
        const runs = [];
        for (let i = 0; i < 6; i++) {
          const params = i % 2 ? sampling({ temperature: 0.9, topP: 0.9 }) : sampling({});
          runs.push(collect(engine.submit(request(randomTokens(5 + i * 9, 60 + i), { sampling: params, seed: i, maxTokens: 25 + i * 9, sessionId: `b${i}` }))));
          await new Promise((resolve) => setTimeout(resolve, 1));
        }
        return (await Promise.all(runs)).map((r) => r.tokens);
      };
      assert.deepEqual(await run(onDevice.engine), await run(onHost.engine), strategy);
    }
  });

  test('cancellation, prefill-only requests, tier demotion and a model failure work with device KV', async () => {
    let failAt = -1;
    let calls = 0;
    const { onDevice } = await pair({
      tiers: {},
      wrapDecoder: (inner) => wrapDecoder(inner, { failWhen: () => ++calls === failAt, faultMessage: 'injected fault' }),
    });
    const { engine, store } = onDevice;
    // Prefill only: the session caches exactly its prompt, in host memory.
    await collect(engine.submit(request(randomTokens(20, 3), { sessionId: 'p', maxTokens: 0 })));
    assert.equal(store.get('', 'p')!.cachedLength, 20);
    assert.ok(store.demoteOne(), 'a hot session made from device KV can be quantized');
    // Cancel mid-stream: the session keeps what was generated.
    const controller = new AbortController();
    const submitted = await engine.submit(request(randomTokens(10, 4), { sessionId: 'c', maxTokens: 500, signal: controller.signal }));
    if (!submitted.ok) throw new Error('submit failed');
    let seen = 0;
    for await (const event of submitted.events) if (event.type === 'token' && ++seen === 5) controller.abort();
    const cancelled = store.get('', 'c')!;
    assert.equal(cancelled.cachedLength, cancelled.tokens.length - 1);
    // A failure on a step whose past is on the device rolls back cleanly.
    failAt = calls + 4;
    const failed = await collect(engine.submit(request(randomTokens(6, 5), { sessionId: 'c', mode: 'append', maxTokens: 20 })));
    assert.equal(failed.end.finishReason, 'error');
    assert.deepEqual(store.get('', 'c')!.tokens, cancelled.tokens);
    const after = await collect(engine.submit(request(randomTokens(6, 5), { sessionId: 'c', mode: 'append', maxTokens: 5 })));
    assert.equal(after.end.finishReason, 'length');
  });
});
