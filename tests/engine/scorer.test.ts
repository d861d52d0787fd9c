import assert from 'node:assert/strict';
import { test } from 'node:test';
import { resolveWindowPolicy } from '../../src/cache/window.ts';
import { scoreTokens } from '../../src/engine/scorer.ts';
import { LLAMA, collect, makeEngine, randomTokens, request, runFromScratch, testModel } from '../support/fixtures.ts';

test('dense scoring in chunks equals the log-likelihood of one full forward pass', async () => {
  const model = await testModel(LLAMA);
  const tokens = randomTokens(90, 4);
  const scored = await scoreTokens(model.decoder, tokens, { window: null, positionEncoding: model.folder.positionEncoding, chunkTokens: 16 });
  const out = await runFromScratch(model.decoder, tokens);
  const logits = out.logits as Float32Array;
  let nll = 0;
  for (let i = 0; i < tokens.length - 1; i++) {
    const row = logits.subarray(i * out.vocabSize, (i + 1) * out.vocabSize);
    const max = Math.max(...row);
    const logSum = Math.log(row.reduce((s, x) => s + Math.exp(x - max), 0)) + max;
    nll += logSum - row[tokens[i + 1]];
  }
  assert.equal(scored.count, tokens.length - 1);
  assert.ok(Math.abs(scored.totalNll - nll) < 1e-3, `${scored.totalNll} vs ${nll}`);
});

for (const strategy of ['shift', 'recompute'] as const) {
  test(`windowed scoring (${strategy}) predicts exactly what the engine generated under the same window`, async () => {
    const { engine, model } = await makeEngine({ capacity: 40, window: { sinkTokens: 4, dropTokens: 10, strategy } });
    const prompt = randomTokens(25, 8);
    const generated = await collect(engine.submit(request(prompt, { maxTokens: 60 })));
    const window = resolveWindowPolicy(40, { sinkTokens: 4, dropTokens: 10, strategy }, model.folder.positionEncoding);
    // Chunks of one token reproduce decoding; the drops then happen at the same points.
    const scored = await scoreTokens(model.decoder, [...prompt, ...generated.tokens], { window, positionEncoding: model.folder.positionEncoding, chunkTokens: 1 });
    assert.ok(scored.dropEvents >= 4);
    assert.ok(scored.maxAttended <= 40);
    const predicted = Array.from(scored.top1.slice(prompt.length - 1));
    assert.deepEqual(predicted, generated.tokens);
  });
}

test('int8 round trips between chunks keep perplexity close on a random model', async () => {
  const model = await testModel(LLAMA);
  const tokens = randomTokens(200, 5);
  const options = { window: null, positionEncoding: model.folder.positionEncoding, chunkTokens: 20 };
  const base = await scoreTokens(model.decoder, tokens, options);
  const int8 = await scoreTokens(model.decoder, tokens, { ...options, int8: { keyMode: 'channel' as const } });
  assert.ok(Math.abs(int8.perplexity / base.perplexity - 1) < 0.05, `${int8.perplexity} vs ${base.perplexity}`);
  assert.notEqual(int8.totalNll, base.totalNll, 'the round trip changes the cache');
});
