import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Int8Kv } from '../../src/cache/int8.ts';
import { Session } from '../../src/cache/session.ts';
import type { KvTensors } from '../../src/model/types.ts';

const kv: KvTensors = { batchSize: 1, length: 3, layers: [] };
const int8: Int8Kv = { length: 3, keyMode: 'channel', layers: [] };

function state(s: Session) {
  return { kv: s.kv, int8: s.int8, cachedLength: s.cachedLength, tier: s.tier };
}

describe('Session tier moves', () => {
  test('toHot holds only the hot KV and its length', () => {
    const s = new Session('a', 'o', 0);
    s.toInt8(int8);
    s.toHot(kv, 3);
    assert.deepEqual(state(s), { kv, int8: null, cachedLength: 3, tier: 'hot' });
  });

  test('toInt8 drops the hot KV and keeps the length', () => {
    const s = new Session('a', 'o', 0);
    s.toHot(kv, 3);
    s.toInt8(int8);
    assert.deepEqual(state(s), { kv: null, int8, cachedLength: 3, tier: 'int8' });
  });

  test('toDisk keeps the length (or takes the file\'s) and nothing in memory', () => {
    const s = new Session('a', 'o', 0);
    s.toInt8(int8);
    s.cachedLength = 3;
    s.toDisk();
    assert.deepEqual(state(s), { kv: null, int8: null, cachedLength: 3, tier: 'disk' });
    const restored = new Session('b', 'o', 0);
    restored.toDisk(7);
    assert.deepEqual(state(restored), { kv: null, int8: null, cachedLength: 7, tier: 'disk' });
  });

  test('toEvicted forgets the KV of every tier and keeps the transcript and window', () => {
    for (const from of ['hot', 'int8'] as const) {
      const s = new Session('a', 'o', 0);
      s.tokens = [1, 2, 3];
      s.window = { droppedTokens: 2, lastDropAt: 4, dropEvents: 1 };
      if (from === 'hot') s.toHot(kv, 3);
      else {
        s.cachedLength = 3;
        s.toInt8(int8);
      }
      s.toEvicted();
      assert.deepEqual(state(s), { kv: null, int8: null, cachedLength: 0, tier: 'evicted' });
      assert.deepEqual(s.tokens, [1, 2, 3]);
      assert.deepEqual(s.window, { droppedTokens: 2, lastDropAt: 4, dropEvents: 1 });
    }
  });
});
