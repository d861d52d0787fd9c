/**
 * The engine with KV_MODE=inplace (issue 25) against the default concat mode on the same requests:
 * concurrent streams of different lengths (joins, leaves, free rows, capacity growth), a session's
 * next turn on its kept cache, and window drops (a shift inside the buffers), give the same tokens in
 * both modes, token for token; float16 KV too. The in-place steps copy far fewer bytes out of onnxruntime per decode step.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { BuildOptions } from '../../tools/model-builder/index.ts';
import { collect, makeEngine, randomTokens, request, sampling } from '../support/fixtures.ts';

const SAMPLED = sampling({ temperature: 0.9, topK: 40, topP: 0.95 });

async function scenario(model: BuildOptions, kvMode: 'concat' | 'inplace') {
  // Capacity 96 with a drop of 24: the longer streams slide their window while others decode.
  const { engine } = await makeEngine({ model, kvMode, kvCapacityBlock: 16, capacity: 96, window: { dropTokens: 24 } });
  const prompts = [randomTokens(30, 41), randomTokens(7, 42), randomTokens(55, 43), randomTokens(12, 44)];
  const first = await Promise.all(
    prompts.map((p, i) => collect(engine.submit(request(p, { sessionId: `s${i}`, sampling: SAMPLED, seed: 100 + i, maxTokens: 20 + 15 * i })))),
  );
  // Next turns on the kept caches, one of them while another stream still runs.
  const second = await Promise.all([
    collect(engine.submit(request(randomTokens(5, 45), { sessionId: 's1', mode: 'append', maxTokens: 30 }))),
    collect(engine.submit(request(randomTokens(9, 46), { sessionId: 's3', mode: 'append', maxTokens: 12 }))),
  ]);
  const counters = engine.counters();
  return { tokens: [...first, ...second].map((c) => c.tokens), cached: second.map((c) => c.usage.cachedTokens), dropped: first.map((c) => c.usage.droppedTokens), counters };
}

describe('engine with in-place KV', () => {
  for (const [name, model] of [
    ['llama (shift window)', { family: 'llama', seed: 7 }],
    ['gpt2 (recompute window)', { family: 'gpt2', seed: 7 }],
    ['llama float16 KV', { family: 'llama', seed: 7, kvDtype: 'float16' }],
  ] as Array<[string, BuildOptions]>) {
    test(`${name}: the same tokens as concat mode, with O(new rows) bytes out per step`, async () => {
      const concat = await scenario(model, 'concat');
      const inplace = await scenario(model, 'inplace');
      assert.deepEqual(inplace.tokens, concat.tokens);
      assert.deepEqual(inplace.cached, concat.cached);
      assert.ok(inplace.cached.every((n) => n > 0), 'the next turns reuse the kept cache');
      assert.deepEqual(inplace.dropped, concat.dropped);
      assert.ok(concat.dropped.some((n) => n > 0), 'some stream slid its window');
      // A shift slides the window inside the buffers (no copy out and back); recompute drops the cache.
      if (name.includes('recompute')) assert.equal(inplace.counters.inPlaceWindowShifts, 0);
      else assert.ok(inplace.counters.inPlaceWindowShifts > 0, 'the window shifted inside the buffers');
      assert.equal(concat.counters.inPlaceWindowShifts, 0);
      const perStep = (c: typeof concat.counters) => c.decodeBytesOut / c.decodeSteps;
      assert.ok(perStep(inplace.counters) * 3 < perStep(concat.counters), `bytes out per step: in place ${perStep(inplace.counters)}, concat ${perStep(concat.counters)}`);
    });
  }
});
