/**
 * Exports that cannot do everything (probed at load, see src/model/probe.ts) still serve every request:
 * the engine feeds what the model cannot take in one call one token per step, and decodes one row per
 * call when the model cannot batch or left-pad. Every result equals the same model without the limit.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { BuildOptions } from '../../tools/model-builder/index.ts';
import { collect, makeEngine, randomTokens, request, type Collected, type EngineFixture } from '../support/fixtures.ts';
import { TestDecoder } from '../support/test-decoder.ts';

/** Like an ONNX Runtime GenAI model-builder export: fp16 KV, external data, no multi-token step over a past. */
const GENAI_LIKE: BuildOptions = { family: 'llama', seed: 7, kvDtype: 'float16', externalData: true, quirks: ['no-multi-token-past'] };
const PLAIN: BuildOptions = { family: 'llama', seed: 7, kvDtype: 'float16', externalData: true };

function assertClean(result: Collected, what: string): void {
  assert.equal(result.end.error, undefined, `${what}: ${JSON.stringify(result.end.error)}`);
  assert.equal(result.end.finishReason, 'length', what);
}

/** Turn 1, then an appended turn 2 on the same session; and the whole transcript one-shot on a fresh session. */
async function turnTwoAgainstOneShot(fixture: EngineFixture, name: string) {
  const { engine } = fixture;
  const first = randomTokens(20, 31);
  const turn1 = await collect(engine.submit(request(first, { sessionId: `${name}-s`, maxTokens: 8 })));
  const follow = randomTokens(12, 32);
  const turn2 = await collect(engine.submit(request(follow, { sessionId: `${name}-s`, mode: 'append', maxTokens: 10 })));
  const oneShot = await collect(engine.submit(request([...first, ...turn1.tokens, ...follow], { sessionId: `${name}-fresh`, maxTokens: 10 })));
  return { turn1, turn2, oneShot };
}

describe('a model without multi-token steps over a past (ORT GenAI export)', () => {
  test('session turn 2 equals a one-shot run of the transcript, and the model without the limit', async () => {
    const limited = await makeEngine({ model: GENAI_LIKE, prefillChunkTokens: 16 });
    assert.equal(limited.model.capabilities.multiTokenOverPast, false);
    const plain = await makeEngine({ model: PLAIN, prefillChunkTokens: 16 });
    const a = await turnTwoAgainstOneShot(limited, 'limited');
    const b = await turnTwoAgainstOneShot(plain, 'plain');
    for (const r of [a.turn1, a.turn2, a.oneShot]) assertClean(r, 'limited');
    assert.ok(a.turn2.usage.cachedTokens >= 27, `turn 2 reused the cache (${a.turn2.usage.cachedTokens})`);
    assert.deepEqual(a.turn2.tokens, a.oneShot.tokens);
    assert.deepEqual(a.turn1.tokens, b.turn1.tokens);
    assert.deepEqual(a.turn2.tokens, b.turn2.tokens);
  });

  test('a prompt longer than one chunk: prefilled whole from the empty past, never a multi-token call over a past', async () => {
    let recorder!: TestDecoder;
    const limited = await makeEngine({ model: GENAI_LIKE, prefillChunkTokens: 64, wrapDecoder: (d) => (recorder = new TestDecoder(d, { record: true })) });
    const plain = await makeEngine({ model: PLAIN, prefillChunkTokens: 16 });
    const prompt = randomTokens(100, 41);
    const a = await collect(limited.engine.submit(request(prompt, { maxTokens: 12 })));
    const b = await collect(plain.engine.submit(request(prompt, { maxTokens: 12 })));
    assertClean(a, 'limited');
    assert.deepEqual(a.tokens, b.tokens);
    for (const { step } of recorder.recorded) assert.ok(step.past.length === 0 || step.seqLength === 1, `a ${step.seqLength}-token call over a past of ${step.past.length}`);
    assert.equal(recorder.recorded[0].step.seqLength, 64, 'the first chunk is a full chunk');
  });

  test('a prompt arriving while another stream decodes', async () => {
    const limited = await makeEngine({ model: GENAI_LIKE, prefillChunkTokens: 256, wrapDecoder: (d) => new TestDecoder(d, { decodeDelayMs: 2 }) });
    const plain = await makeEngine({ model: PLAIN, prefillChunkTokens: 256 });
    const long = randomTokens(10, 51);
    const late = randomTokens(300, 52);
    const expectedLong = await collect(plain.engine.submit(request(long, { maxTokens: 40 })));
    const expectedLate = await collect(plain.engine.submit(request(late, { maxTokens: 8 })));

    const submitted = await limited.engine.submit(request(long, { maxTokens: 40 }));
    assert.ok(submitted.ok);
    const tokens: number[] = [];
    let lateResult: Promise<Collected> | null = null;
    let end;
    for await (const event of submitted.events) {
      if (event.type === 'token') {
        tokens.push(event.tokenId);
        // Once the first stream decodes, the second prompt arrives (its chunks are cut while streams run).
        if (tokens.length === 3) lateResult = collect(limited.engine.submit(request(late, { maxTokens: 8 })));
      } else if (event.type === 'end') end = event;
    }
    assert.equal(end?.error, undefined);
    assert.deepEqual(tokens, expectedLong.tokens);
    const second = await lateResult!;
    assertClean(second, 'late prompt');
    assert.deepEqual(second.tokens, expectedLate.tokens);
  });
});

describe('models that cannot batch or left-pad', () => {
  for (const quirk of ['no-batch', 'right-padding-only'] as const) {
    test(`${quirk}: concurrent streams of different lengths equal the model without the limit`, async () => {
      const model: BuildOptions = { family: 'llama', seed: 7, quirks: [quirk] };
      const limited = await makeEngine({ model });
      assert.equal(quirk === 'no-batch' ? limited.model.capabilities.batched : limited.model.capabilities.leftPadding, false);
      const plain = await makeEngine({ model: { family: 'llama', seed: 7 } });
      const prompts = [randomTokens(5, 61), randomTokens(23, 62), randomTokens(40, 63)];
      const a = await Promise.all(prompts.map((p) => collect(limited.engine.submit(request(p, { maxTokens: 10 })))));
      const b = await Promise.all(prompts.map((p) => collect(plain.engine.submit(request(p, { maxTokens: 10 })))));
      for (let i = 0; i < prompts.length; i++) {
        assertClean(a[i], `prompt ${i}`);
        assert.deepEqual(a[i].tokens, b[i].tokens, `prompt ${i}`);
      }
    });
  }

  for (const strategy of ['shift', 'recompute'] as const) {
    test(`no-batch: streams that cross the sliding window (${strategy}) equal the model without the limit`, async () => {
      const settings = { capacity: 48, window: { strategy, dropTokens: 12 } };
      const limited = await makeEngine({ model: { family: 'llama', seed: 7, quirks: ['no-batch'] }, ...settings });
      const plain = await makeEngine({ model: { family: 'llama', seed: 7 }, ...settings });
      const prompts = [randomTokens(30, 71), randomTokens(12, 72)];
      const a = await Promise.all(prompts.map((p) => collect(limited.engine.submit(request(p, { maxTokens: 40 })))));
      const b = await Promise.all(prompts.map((p) => collect(plain.engine.submit(request(p, { maxTokens: 40 })))));
      for (let i = 0; i < prompts.length; i++) {
        assertClean(a[i], `prompt ${i}`);
        assert.ok(a[i].usage.droppedTokens > 0, 'the window dropped tokens');
        assert.deepEqual(a[i].tokens, b[i].tokens, `prompt ${i}`);
      }
    });
  }
});
