import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { loadConfig } from '../../src/config.ts';
import { measureInt8 } from '../../src/engine/int8-gate.ts';
import { silentLogger } from '../../src/lib/logger.ts';
import { assemble, decideInt8 } from '../../src/runtime.ts';
import type { Decoder } from '../../src/model/types.ts';
import { collect, GPT2, LLAMA, randomTokens, request, testModel } from '../support/fixtures.ts';

describe('the int8 gate', () => {
  test('measures greedy agreement and perplexity drift of an int8 round trip through the real decoder, deterministically', async () => {
    const model = await testModel(LLAMA);
    const options = { vocabSize: model.vocabSize, keyMode: 'channel' as const, promptTokens: 48, continuationTokens: 24 };
    const result = await measureInt8(model.decoder, options);
    assert.equal(result.positions, 23);
    assert.ok(result.agreement >= 0 && result.agreement <= 1);
    assert.ok(result.perplexityDrift >= 0 && Number.isFinite(result.perplexityDrift));
    assert.ok(result.maxLogitDrift > 0, 'int8 is lossy: some logit moves');
    const again = await measureInt8(model.decoder, options);
    assert.deepEqual({ ...again, ms: 0 }, { ...result, ms: 0 });
    // The decision follows the thresholds.
    assert.equal((await measureInt8(model.decoder, { ...options, minAgreement: 0, maxPerplexityDrift: Infinity })).enabled, true);
    assert.equal((await measureInt8(model.decoder, { ...options, minAgreement: 1.01 })).enabled, false);
    assert.equal((await measureInt8(model.decoder, { ...options, minAgreement: 0, maxPerplexityDrift: -1 })).enabled, false);
  });

  test('on an export that cannot take several tokens over a past, the gate scores one token per call and decides', async () => {
    const limited = await testModel({ family: 'llama', seed: 7, quirks: ['no-multi-token-past'] });
    assert.equal(limited.capabilities.multiTokenOverPast, false);
    const config = loadConfig({ MODEL_DIR: '/unused', INT8_TIER: 'auto', KV_CACHE_BYTES: '64MiB' });
    const decision = await decideInt8(config, limited, silentLogger);
    assert.ok(decision.gate, 'the gate ran');
    // The same numbers as one call per continuation on the unlimited model (same weights, same seed).
    const full = await testModel(LLAMA);
    const options = { vocabSize: full.vocabSize, keyMode: 'channel' as const, promptTokens: 32, continuationTokens: 12 };
    const oneCall = await measureInt8(full.decoder, options);
    const perToken = await measureInt8(full.decoder, { ...options, multiTokenOverPast: false });
    assert.equal(perToken.agreement, oneCall.agreement);
    assert.ok(Math.abs(perToken.perplexityDrift - oneCall.perplexityDrift) < 1e-3);
  });

  test('in place, the token-by-token calls share one input shape and measure what the concat past measures', async () => {
    for (const family of [LLAMA, GPT2]) {
      const model = await testModel(family, true);
      assert.ok(model.decoder.io.newRows, 'loaded with new-row outputs');
      const maskWidths: number[] = [];
      const counting: Decoder = { ...model.decoder, io: model.decoder.io, run: (step, runOptions) => {
        if (step.seqLength === 1) maskWidths.push(step.attentionMask.length);
        return model.decoder.run(step, runOptions);
      } };
      for (const multiTokenOverPast of [true, false]) {
        const options = { vocabSize: model.vocabSize, keyMode: 'channel' as const, promptTokens: 40, continuationTokens: 16, multiTokenOverPast };
        maskWidths.length = 0;
        const inPlace = await measureInt8(counting, { ...options, inPlace: true });
        assert.equal(maskWidths.length, multiTokenOverPast ? 15 : 15 + 2 * 16, 'one call per decoded (and, per token, scored) token');
        assert.equal(new Set(maskWidths).size, 1, `every token-by-token call has the same shape: ${[...new Set(maskWidths)]}`);
        maskWidths.length = 0;
        const concat = await measureInt8(counting, { ...options, inPlace: false });
        assert.ok(new Set(maskWidths).size >= 15, 'the concat past grows a slot a call: a new shape each');
        assert.equal(inPlace.positions, concat.positions);
        assert.equal(inPlace.agreement, concat.agreement);
        assert.equal(inPlace.enabled, concat.enabled);
        assert.ok(Math.abs(inPlace.perplexityDrift - concat.perplexityDrift) < 1e-4, `${inPlace.perplexityDrift} against ${concat.perplexityDrift}`);
      }
    }
  });

  test('INT8_TIER=true|false is taken as set; auto runs the gate; /metrics shows the decision and counts int8 resumes', async () => {
    const loaded = await testModel(LLAMA);
    const config = (int8: string) => loadConfig({ MODEL_DIR: '/unused', INT8_TIER: int8, KV_CACHE_BYTES: '64MiB' });
    assert.equal(loadConfig({}).int8Tier, 'auto', 'auto is the default');
    assert.deepEqual(await decideInt8(config('false'), loaded, silentLogger), { enabled: false, gate: null });
    assert.deepEqual(await decideInt8(config('true'), loaded, silentLogger), { enabled: true, gate: null });
    const auto = await decideInt8(config('auto'), loaded, silentLogger);
    assert.ok(auto.gate);
    assert.equal(auto.enabled, auto.gate.enabled);

    const parts = assemble(config('true'), loaded, { processMetrics: false }, { enabled: true, gate: null });
    await collect(parts.engine.submit(request(randomTokens(30, 1), { sessionId: 'q', maxTokens: 4 })));
    assert.ok(parts.store.demoteOne());
    assert.equal(parts.store.get('', 'q')!.tier, 'int8');
    await collect(parts.engine.submit(request([1, 2], { sessionId: 'q', mode: 'append', maxTokens: 2 })));
    const { body } = await parts.metrics.render();
    assert.match(body, /^warmkv_int8_tier_enabled 1$/m);
    assert.match(body, /^warmkv_int8_resumes_total 1$/m);
    const off = assemble(config('auto'), loaded, { processMetrics: false });
    assert.match((await off.metrics.render()).body, /^warmkv_int8_tier_enabled 0$/m, 'auto without a measurement is off');
  });
});
