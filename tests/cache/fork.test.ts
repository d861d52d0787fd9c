/** Branching: a new session seeded with a copy of the KV prefix it shares with another session. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { KvBudget } from '../../src/cache/budget.ts';
import { forkPrefix } from '../../src/cache/fork.ts';
import { SessionStore } from '../../src/cache/session-store.ts';
import type { KvLayout, KvTensors } from '../../src/model/types.ts';

const layout: KvLayout = { numLayers: 1, numKvHeads: 2, headDim: 2, dtype: 'float32', bytesPerToken: 2 * 2 * 2 * 4 };

/** A hot session whose cache slot t holds the value 100 * head + t in every element. */
function hotSession(store: SessionStore, id: string, tokens: number[], owner = 'o') {
  const length = tokens.length;
  const data = () => {
    const a = new Float32Array(layout.numKvHeads * length * layout.headDim); // [1, numKvHeads, length, headDim]
    for (let h = 0; h < layout.numKvHeads; h++) for (let t = 0; t < length; t++) a.fill(100 * h + t, (h * length + t) * 2, (h * length + t + 1) * 2);
    return a;
  };
  const session = store.create(owner, id);
  session.kv = { batchSize: 1, length, layers: [{ key: data(), value: data() }] } satisfies KvTensors;
  session.tokens = tokens.slice();
  session.cachedLength = length;
  session.tier = 'hot';
  assert.ok(store.reserve(session, store.budget.bytesFor(length, layout.bytesPerToken)));
  return session;
}

describe('forkPrefix', () => {
  test('copies the shared prefix (never the last input token), reserves it, and shares no buffer', () => {
    const store = new SessionStore(new KvBudget(1 << 20, 1));
    const source = hotSession(store, 'parent', [1, 2, 3, 4, 5, 6]);
    const target = store.create('o', 'branch');
    assert.ok(forkPrefix(store, layout, source, target, [1, 2, 3, 4, 9, 9]));
    assert.equal(target.cachedLength, 4);
    assert.deepEqual(target.tokens, [1, 2, 3, 4]);
    assert.equal(target.tier, 'hot');
    assert.equal(target.reservedBytes, store.budget.bytesFor(4, layout.bytesPerToken));
    const key = target.kv!.layers[0].key as Float32Array;
    assert.deepEqual([...key], [0, 0, 1, 1, 2, 2, 3, 3, 100, 100, 101, 101, 102, 102, 103, 103]);
    key[0] = -1;
    assert.equal((source.kv!.layers[0].key as Float32Array)[0], 0, 'a copy');
    // The whole source matches: still at most input.length - 1 tokens.
    const whole = store.create('o', 'whole');
    assert.ok(forkPrefix(store, layout, source, whole, [1, 2, 3, 4, 5, 6]));
    assert.equal(whole.cachedLength, 5);
  });

  test('refuses, changing nothing, what cannot be shared', () => {
    const store = new SessionStore(new KvBudget(1 << 20, 1));
    const source = hotSession(store, 'parent', [1, 2, 3]);
    const fresh = () => store.create('o', `t${Math.random()}`);
    assert.equal(forkPrefix(store, layout, source, fresh(), [7, 8]), false, 'no common prefix');
    assert.equal(forkPrefix(store, layout, source, store.create('other', 'x'), [1, 2, 3, 4]), false, 'another owner');
    source.busy = true;
    assert.equal(forkPrefix(store, layout, source, fresh(), [1, 2, 3, 4]), false, 'a busy source');
    source.busy = false;
    source.window = { droppedTokens: 4, lastDropAt: 8, dropEvents: 1 };
    assert.equal(forkPrefix(store, layout, source, fresh(), [1, 2, 3, 4]), false, 'a windowed source');
    source.window = { droppedTokens: 0, lastDropAt: 0, dropEvents: 0 };
    const target = fresh();
    assert.equal(forkPrefix(store, layout, source, target, [1, 2, 3, 4]), true);
    assert.equal(target.reservedBytes > 0, true);
  });

  test('no room in the budget: false, and the source is never demoted to make room for its copy', () => {
    const bytes = (n: number) => n * layout.bytesPerToken;
    const store = new SessionStore(new KvBudget(bytes(10), 1));
    const source = hotSession(store, 'parent', [1, 2, 3, 4, 5, 6, 7, 8]);
    const target = store.create('o', 'branch');
    assert.equal(forkPrefix(store, layout, source, target, [1, 2, 3, 4, 5, 6, 7, 8, 9]), false);
    assert.equal(source.tier, 'hot');
    assert.equal(target.kv, null);
    assert.equal(target.reservedBytes, 0);
  });
});
