import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { dequantizeKv, int8Bytes, quantizeKv } from '../../src/cache/int8.ts';
import type { SessionTierMove } from '../../src/cache/session-store.ts';
import { halfToFloat } from '../../src/lib/float16.ts';
import { LLAMA, collect, makeEngine, randomTokens, request } from '../support/fixtures.ts';

const tempDir = () => mkdtempSync(join(tmpdir(), 'warmkv-tiers-'));
const moves = (events: SessionTierMove[]) => events.map((e) => `${e.session.id}:${e.from}->${e.to}`);

describe('int8 quantization', () => {
  test('round trip stays within half a quantization step, and memory is at most 0.27x of float32', async () => {
    const { engine, store, model } = await makeEngine({});
    await collect(engine.submit(request(randomTokens(200, 3), { sessionId: 'q', maxTokens: 8 })));
    const kv = store.get('', 'q')!.kv!;
    const layout = model.decoder.io.kv;
    for (const keyMode of ['channel', 'token'] as const) {
      const quantized = quantizeKv(layout, kv, keyMode);
      const restored = dequantizeKv(layout, quantized);
      const { numKvHeads: heads, headDim } = layout;
      for (let l = 0; l < layout.numLayers; l++) {
        for (let h = 0; h < heads; h++) {
          for (let t = 0; t < kv.length; t++) {
            for (let c = 0; c < headDim; c++) {
              const i = (h * kv.length + t) * headDim + c;
              const q = quantized.layers[l];
              const keyScale = halfToFloat(keyMode === 'channel' ? q.keyScales[h * headDim + c] : q.keyScales[h * kv.length + t]);
              const valueScale = halfToFloat(q.valueScales[h * kv.length + t]);
              const keyError = Math.abs(kv.layers[l].key[i] - restored.layers[l].key[i]);
              const valueError = Math.abs(kv.layers[l].value[i] - restored.layers[l].value[i]);
              // Half a step, plus the float16 rounding of the scale at the clamped extremes.
              assert.ok(keyError <= keyScale * 0.5 + keyScale * 127 * 1e-3, `key error ${keyError} > ${keyScale / 2}`);
              assert.ok(valueError <= valueScale * 0.5 + valueScale * 127 * 1e-3, `value error ${valueError}`);
            }
          }
        }
      }
      const ratio = int8Bytes(layout, kv.length, keyMode) / (kv.length * layout.bytesPerToken);
      // Per-token key scales add 2 bytes per head and token: over 0.27x only for heads under 32 wide.
      const bound = keyMode === 'channel' ? 0.27 : (2 * headDim + 4) / (8 * headDim);
      assert.ok(ratio <= bound + 1e-9, `${keyMode}: int8 takes ${ratio.toFixed(3)} of float32`);
    }
  });
});

describe('tiers', () => {
  test('idle sessions move down one tier at a time, least recently used first, and come back', async () => {
    const snapshotDir = tempDir();
    // 512 bytes per token in float32; a finished 32-token session holds 16 KiB hot, 4.4 KiB int8.
    const { engine, store, tiers } = await makeEngine({ budgetBytes: 3 * 16384, tiers: { snapshotDir } });
    const events: SessionTierMove[] = [];
    store.onTierMove((e) => events.push(e));
    const outputs = new Map<string, number[]>();
    for (const [id, seed] of [['a', 1], ['b', 2], ['c', 3]] as const) {
      outputs.set(id, (await collect(engine.submit(request(randomTokens(20, seed), { sessionId: id, maxTokens: 12 })))).tokens);
    }
    assert.deepEqual(moves(events), []);
    await collect(engine.submit(request(randomTokens(8, 4), { sessionId: 'x', maxTokens: 8 }))); // 16 tokens: int8 of a frees enough
    assert.deepEqual(moves(events), ['a:hot->int8']);
    await collect(engine.submit(request(randomTokens(8, 5), { sessionId: 'y', maxTokens: 8 })));
    assert.deepEqual(moves(events), ['a:hot->int8', 'a:int8->disk']);
    await collect(engine.submit(request(randomTokens(20, 6), { sessionId: 'z', maxTokens: 12 })));
    assert.deepEqual(moves(events), ['a:hot->int8', 'a:int8->disk', 'b:hot->int8', 'b:int8->disk']);
    assert.ok(store.budget.reservedBytes <= store.budget.capacityBytes);
    assert.deepEqual(tiers!.counts().sessions, { hot: 4, int8: 0, disk: 2, evicted: 0 });

    // a comes back from disk with its whole cache, and continues exactly like a never-demoted session.
    const a = store.get('', 'a')!;
    const cachedBefore = a.cachedLength;
    const next = randomTokens(6, 7);
    const resumed = await collect(engine.submit(request(next, { sessionId: 'a', mode: 'append', maxTokens: 10 })));
    assert.equal(resumed.start?.restoredFrom, 'disk');
    assert.equal(resumed.usage.cachedTokens, cachedBefore);
    const reference = await makeEngine({});
    await collect(reference.engine.submit(request(randomTokens(20, 1), { sessionId: 'a', maxTokens: 12 })));
    const warm = await collect(reference.engine.submit(request(next, { sessionId: 'a', mode: 'append', maxTokens: 10 })));
    assert.deepEqual(resumed.tokens, warm.tokens);
    assert.deepEqual(outputs.get('a'), (await collect(reference.engine.submit(request(randomTokens(20, 1), { maxTokens: 12 })))).tokens);
  });

  test('without a snapshot directory int8 sessions fall to their transcript and are recomputed', async () => {
    const { engine, store } = await makeEngine({ budgetBytes: 2 * 16384, tiers: {} });
    const events: SessionTierMove[] = [];
    store.onTierMove((e) => events.push(e));
    await collect(engine.submit(request(randomTokens(20, 1), { sessionId: 'a', maxTokens: 12 })));
    await collect(engine.submit(request(randomTokens(20, 2), { sessionId: 'b', maxTokens: 12 })));
    await collect(engine.submit(request(randomTokens(20, 3), { sessionId: 'c', maxTokens: 12 })));
    assert.deepEqual(moves(events), ['a:hot->int8', 'a:int8->evicted']);
    const resumed = await collect(engine.submit(request(randomTokens(3, 9), { sessionId: 'a', mode: 'append', maxTokens: 4 })));
    assert.equal(resumed.usage.cachedTokens, 0);
    assert.equal(resumed.end.finishReason, 'length');
  });

  test('an int8 session resumes from its quantized cache', async () => {
    const { engine, store, tiers } = await makeEngine({ tiers: {} });
    await collect(engine.submit(request(randomTokens(40, 1), { sessionId: 'i', maxTokens: 12 })));
    const session = store.get('', 'i')!;
    const hotBytes = session.reservedBytes;
    assert.ok(store.demoteOne());
    assert.equal(session.tier, 'int8');
    assert.ok(session.reservedBytes < hotBytes * 0.3, `${session.reservedBytes} vs ${hotBytes}`);
    const cached = session.cachedLength;
    const resumed = await collect(engine.submit(request(randomTokens(4, 2), { sessionId: 'i', mode: 'append', maxTokens: 6 })));
    assert.equal(resumed.start?.restoredFrom, 'int8');
    assert.equal(resumed.usage.cachedTokens, cached);
    assert.equal(session.tier, 'hot');
    assert.equal(tiers!.counts().sessions.hot, 1);
  });
});

describe('snapshots across restarts', () => {
  async function snapshotOnce(snapshotDir: string) {
    const first = await makeEngine({ tiers: { snapshotDir } });
    await collect(first.engine.submit(request(randomTokens(30, 1), { sessionId: 'keep', owner: 'k1', maxTokens: 10 })));
    const session = first.store.get('k1', 'keep')!;
    const flushed = await first.tiers!.flushAll();
    assert.deepEqual(flushed, { written: 1, failed: 0 });
    return { path: first.tiers!.pathOf('k1', 'keep'), tokens: session.tokens.slice(), cached: session.cachedLength, first };
  }

  /**
   * What the snapshotted session answers next, from an engine that never wrote a snapshot (a turn on
   * the first engine itself would supersede, i.e. remove, its now older file).
   */
  async function continuation(next: number[], maxTokens: number) {
    const reference = await makeEngine({});
    await collect(reference.engine.submit(request(randomTokens(30, 1), { sessionId: 'keep', owner: 'k1', maxTokens: 10 })));
    return collect(reference.engine.submit(request(next, { sessionId: 'keep', owner: 'k1', mode: 'append', maxTokens })));
  }

  test('a snapshot restored by a new process gives identical greedy output with the whole cache reused', async () => {
    const snapshotDir = tempDir();
    const { cached } = await snapshotOnce(snapshotDir);
    const next = randomTokens(5, 2);
    const expected = await continuation(next, 10);
    const restarted = await makeEngine({ tiers: { snapshotDir } });
    assert.equal(restarted.store.size, 0, 'nothing is loaded at start');
    const resumed = await collect(restarted.engine.submit(request(next, { sessionId: 'keep', owner: 'k1', mode: 'append', maxTokens: 10 })));
    assert.equal(resumed.start?.restoredFrom, 'disk');
    assert.equal(resumed.usage.cachedTokens, cached);
    assert.deepEqual(resumed.tokens, expected.tokens);
    // Another owner never sees the session, even knowing its id.
    const other = await restarted.engine.submit(request(next, { sessionId: 'keep', owner: 'k2', onUnknownSession: 'fail' }));
    assert.equal(!other.ok && other.error.kind, 'session_not_found');
  });

  for (const [damage, expectSession] of [
    ['flipped payload byte', true],
    ['truncated payload', true],
    ['truncated header', false],
    ['garbage file', false],
  ] as const) {
    test(`a snapshot with a ${damage} is rejected safely`, async () => {
      const snapshotDir = tempDir();
      const { path, tokens } = await snapshotOnce(snapshotDir);
      const size = statSync(path).size;
      if (damage === 'flipped payload byte') {
        const data = readFileSync(path);
        data[size - 100] ^= 0xff;
        writeFileSync(path, data);
      } else if (damage === 'truncated payload') truncateSync(path, size - 500);
      else if (damage === 'truncated header') truncateSync(path, 40);
      else writeFileSync(path, 'this is not a snapshot at all');
      const next = randomTokens(5, 2);
      const expected = await continuation(next, 8);
      const restarted = await makeEngine({ tiers: { snapshotDir } });
      const result = await collect(restarted.engine.submit(request(next, { sessionId: 'keep', owner: 'k1', mode: 'append', maxTokens: 8 })));
      assert.equal(result.usage.cachedTokens, 0);
      const session = restarted.store.get('k1', 'keep')!;
      if (expectSession) {
        // The transcript survived: the session is recomputed and continues as before.
        assert.deepEqual(result.tokens, expected.tokens);
        assert.deepEqual(session.tokens.slice(0, tokens.length), tokens);
      } else {
        assert.equal(session.tokens.length, next.length + 8, 'an unreadable snapshot is as if the session were new');
      }
    });
  }

  test('a snapshot from another model is recomputed from its transcript; another owner\'s file is skipped', async () => {
    const snapshotDir = tempDir();
    const { path, tokens } = await snapshotOnce(snapshotDir);
    const thief = await makeEngine({ tiers: { snapshotDir } });
    copyFileSync(path, thief.tiers!.pathOf('k2', 'keep'));
    const stolen = await thief.engine.submit(request([1, 2], { sessionId: 'keep', owner: 'k2', onUnknownSession: 'fail' }));
    assert.equal(!stolen.ok && stolen.error.kind, 'session_not_found');

    const otherModel = await makeEngine({ model: { ...LLAMA, seed: 99 }, tiers: { snapshotDir } });
    const result = await collect(otherModel.engine.submit(request([], { sessionId: 'keep', owner: 'k1', mode: 'append', maxTokens: 4 })));
    assert.equal(result.usage.cachedTokens, 0);
    assert.deepEqual(otherModel.store.get('k1', 'keep')!.tokens.slice(0, tokens.length), tokens);
  });

  test('an unwritable snapshot directory degrades to memory-only', async () => {
    const file = join(tempDir(), 'not-a-directory');
    writeFileSync(file, 'x');
    const { tiers, engine } = await makeEngine({ tiers: { snapshotDir: join(file, 'sub') } });
    assert.equal(tiers!.snapshotsEnabled, false);
    const result = await collect(engine.submit(request(randomTokens(5, 1), { sessionId: 's', maxTokens: 3 })));
    assert.equal(result.end.finishReason, 'length');
  });
});

describe('tier options and housekeeping', () => {
  test('with the int8 tier off, idle sessions go from hot straight to an exact snapshot', async () => {
    const snapshotDir = tempDir();
    const { engine, store } = await makeEngine({ budgetBytes: 2 * 16384, tiers: { snapshotDir, int8: false } });
    const events: SessionTierMove[] = [];
    store.onTierMove((e) => events.push(e));
    await collect(engine.submit(request(randomTokens(20, 1), { sessionId: 'a', maxTokens: 12 })));
    await collect(engine.submit(request(randomTokens(20, 2), { sessionId: 'b', maxTokens: 12 })));
    await collect(engine.submit(request(randomTokens(20, 3), { sessionId: 'c', maxTokens: 12 })));
    assert.deepEqual(moves(events), ['a:hot->disk']);
    const next = randomTokens(5, 4);
    const resumed = await collect(engine.submit(request(next, { sessionId: 'a', mode: 'append', maxTokens: 8 })));
    assert.equal(resumed.start?.restoredFrom, 'disk');
    const reference = await makeEngine({});
    await collect(reference.engine.submit(request(randomTokens(20, 1), { sessionId: 'a', maxTokens: 12 })));
    const warm = await collect(reference.engine.submit(request(next, { sessionId: 'a', mode: 'append', maxTokens: 8 })));
    assert.deepEqual(resumed.tokens, warm.tokens, 'a native snapshot is exact');
  });

  test('sweeps quantize sessions idle for INT8_AFTER_SECONDS and delete sessions idle for SESSION_IDLE_SECONDS', async () => {
    const snapshotDir = tempDir();
    const { engine, store, tiers } = await makeEngine({ tiers: { snapshotDir } });
    await collect(engine.submit(request(randomTokens(20, 1), { sessionId: 'old', maxTokens: 4 })));
    await collect(engine.submit(request(randomTokens(20, 2), { sessionId: 'older', maxTokens: 4 })));
    await tiers!.flushAll();
    const now = Date.now();
    store.get('', 'old')!.lastUsedAt = now - 10_000;
    store.get('', 'older')!.lastUsedAt = now - 100_000;
    const hotBytes = store.get('', 'old')!.reservedBytes;
    const stop = tiers!.startSweeps({ int8AfterMs: 5_000, idleTtlMs: 60_000, intervalMs: 5, now: () => now });
    await new Promise((resolve) => setTimeout(resolve, 40));
    stop();
    const old = store.get('', 'old')!;
    assert.equal(old.tier, 'int8');
    assert.ok(old.reservedBytes < hotBytes / 3);
    assert.equal(store.get('', 'older'), undefined, 'expired');
    assert.ok(!existsSync(tiers!.pathOf('', 'older')), 'its snapshot is gone too');
    assert.ok(existsSync(tiers!.pathOf('', 'old')));
  });
});
