/** Per-row output processing through the engine: penalties, logit_bias, stop ids, min_tokens, kept stop text. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { argmax } from '../../src/engine/sampler.ts';
import { collect, fullRecompute, makeEngine, request, sampling } from '../support/fixtures.ts';

const PROMPT = 'The quick brown fox jumps over the lazy dog. It was a bright cold day';

/** Token texts of a free greedy run, one per token (the end event's held text added to the last). */
async function freeRun(maxTokens: number) {
  const fixture = await makeEngine({});
  const prompt = fixture.model.tokenizer.encode(PROMPT);
  const result = await collect(fixture.engine.submit(request(prompt, { maxTokens })));
  return { ...fixture, prompt, free: result };
}

/** The first position k >= 2 whose token did not appear before it. */
function firstNewToken(tokens: number[]): number {
  const k = tokens.findIndex((t, i) => i >= 2 && !tokens.slice(0, i).includes(t));
  assert.ok(k >= 2, 'a fresh token after the second position');
  return k;
}

describe('output processing per row', () => {
  test('greedy with presence, frequency and logit_bias equals a from-scratch reference of OpenAI\'s formula at every step', async () => {
    const { engine, model, prompt } = await freeRun(1);
    const presence = 0.6;
    const frequency = 0.9;
    const bias: Array<[number, number]> = [[17, 4], [3, -100]];
    const steps = 24;
    const result = await collect(
      engine.submit(request(prompt, { maxTokens: steps, sampling: sampling({ presencePenalty: presence, frequencyPenalty: frequency, logitBias: bias }) })),
    );
    const sequence = prompt.slice();
    const generated: number[] = [];
    for (let step = 0; step < steps; step++) {
      const logits = await fullRecompute(model.decoder, sequence);
      for (let j = 0; j < logits.length; j++) {
        const count = generated.filter((t) => t === j).length;
        logits[j] += (bias.find(([id]) => id === j)?.[1] ?? 0) - count * frequency - (count > 0 ? presence : 0);
      }
      const token = argmax(logits, model.vocabSize);
      assert.equal(result.tokens[step], token, `step ${step}`);
      sequence.push(token);
      generated.push(token);
    }
    const plain = await collect(engine.submit(request(prompt, { maxTokens: steps })));
    assert.notDeepEqual(plain.tokens, result.tokens, 'the penalties changed the output');
  });

  test('a stop token id ends the output, its text kept only with includeStopInOutput', async () => {
    const { engine, model, prompt, free } = await freeRun(16);
    const k = firstNewToken(free.tokens);
    const stopId = free.tokens[k];
    const stopped = await collect(engine.submit(request(prompt, { maxTokens: 16, stopTokenIds: [stopId] })));
    assert.deepEqual(stopped.tokens, free.tokens.slice(0, k + 1));
    assert.equal(stopped.end.finishReason, 'stop');
    assert.equal(stopped.text, model.tokenizer.decode(free.tokens.slice(0, k)));
    const kept = await collect(engine.submit(request(prompt, { maxTokens: 16, stopTokenIds: [stopId], includeStopInOutput: true })));
    assert.equal(kept.text, model.tokenizer.decode(free.tokens.slice(0, k + 1)));
  });

  test('min_tokens masks stop ids and EOS until reached, and nothing else', async () => {
    const { prompt, free } = await freeRun(16);
    const k = firstNewToken(free.tokens);
    const stopId = free.tokens[k];
    // The same id as EOS (ignoreEos off) and as a stop id: both are held off for min_tokens.
    for (const overrides of [{ stopTokenIds: [stopId] }, { ignoreEos: false }]) {
      const { engine } = await makeEngine({ eos: [stopId] });
      const minTokens = k + 3;
      const result = await collect(engine.submit(request(prompt, { maxTokens: 16, minTokens, ...overrides })));
      assert.deepEqual(result.tokens.slice(0, k), free.tokens.slice(0, k), 'before the masked id would have come, nothing changes');
      assert.ok(!result.tokens.slice(0, minTokens).includes(stopId), 'the stop id is masked for min_tokens');
      assert.ok(result.tokens.length >= minTokens);
      const at = result.tokens.indexOf(stopId);
      if (at !== -1) assert.equal(at, result.tokens.length - 1, 'after min_tokens the id stops again');
    }
  });

  test('min_tokens holds off stop strings; includeStopInOutput keeps the stop string', async () => {
    const { engine, prompt, free } = await freeRun(24);
    const stop = free.text.slice(6, 9);
    const plain = await collect(engine.submit(request(prompt, { maxTokens: 24, stop: [stop] })));
    assert.equal(plain.text, free.text.slice(0, free.text.indexOf(stop)));
    const kept = await collect(engine.submit(request(prompt, { maxTokens: 24, stop: [stop], includeStopInOutput: true })));
    assert.equal(kept.text, free.text.slice(0, free.text.indexOf(stop) + stop.length));
    const late = await collect(engine.submit(request(prompt, { maxTokens: 24, stop: [stop], minTokens: 20 })));
    assert.ok(late.tokens.length >= 20, 'no stop before min_tokens');
    assert.ok(late.text.startsWith(free.text.slice(0, free.text.indexOf(stop) + stop.length)));
  });
});
