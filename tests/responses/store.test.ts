/** The stored response tree: per-key ids, session heads and sharing, TTL, the per-key cap, input_items pages. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { newResponseId, ResponseStore, type StoredResponse } from '../../src/responses/store.ts';

function record(owner: string, sessionId: string, createdAt: number, overrides: Partial<StoredResponse> = {}): StoredResponse {
  return {
    id: newResponseId('resp'),
    owner,
    createdAt,
    completedAt: createdAt,
    status: 'completed',
    parentId: null,
    params: { model: 'm', instructions: null, temperature: 1, topP: 1, maxOutputTokens: null, truncation: 'disabled', metadata: {}, background: false, store: true },
    input: [],
    conversation: [],
    outputItemId: newResponseId('msg'),
    outputText: '',
    transcript: null,
    sessionId,
    usage: null,
    error: null,
    incompleteReason: null,
    abort: null,
    ...overrides,
  };
}

function storeWith(options: { ttlSeconds?: number; maxPerKey?: number } = {}) {
  let clock = 1_000_000;
  const released: string[] = [];
  const store = new ResponseStore({
    ttlSeconds: options.ttlSeconds ?? 0,
    maxPerKey: options.maxPerKey ?? 100,
    now: () => clock,
    onSessionReleased: (owner, id) => released.push(`${owner}/${id}`),
  });
  return { store, released, advance: (seconds: number) => (clock += seconds * 1000), nowSeconds: () => clock / 1000 };
}

describe('ResponseStore', () => {
  test('ids are per owner; the latest response on a session is its head; the session is released with its last user', () => {
    const { store, released } = storeWith();
    const root = record('a', 's1', 1000);
    const child = record('a', 's1', 1001, { parentId: root.id });
    store.put(root);
    assert.ok(store.isHead(root));
    store.put(child);
    assert.ok(!store.isHead(root) && store.isHead(child));
    assert.equal(store.get('b', root.id), undefined, 'another owner does not see it');
    store.delete('a', child.id);
    assert.deepEqual(released, [], 'the root still uses the session');
    assert.ok(!store.isHead(root), 'the session holds the deleted child: nobody is its head');
    store.delete('a', root.id);
    assert.deepEqual(released, ['a/s1']);
    assert.equal(store.size, 0);
  });

  test('the TTL drops old responses (not running ones); the cap drops the oldest of that key only', () => {
    const ttl = storeWith({ ttlSeconds: 60 });
    const old = record('a', 's1', ttl.nowSeconds());
    const running = record('a', 's2', ttl.nowSeconds(), { abort: new AbortController() });
    ttl.store.put(old);
    ttl.store.put(running);
    ttl.advance(61);
    assert.equal(ttl.store.get('a', old.id), undefined);
    assert.ok(ttl.store.get('a', running.id), 'a running response is kept');
    assert.deepEqual(ttl.released, ['a/s1']);

    const capped = storeWith({ maxPerKey: 2 });
    const [r1, r2, r3] = [1, 2, 3].map((i) => record('a', `s${i}`, i));
    const other = record('b', 'sb', 0);
    capped.store.put(other);
    for (const r of [r1, r2, r3]) capped.store.put(r);
    assert.equal(capped.store.get('a', r1.id), undefined);
    assert.ok(capped.store.get('a', r2.id) && capped.store.get('a', r3.id) && capped.store.get('b', other.id));
    assert.deepEqual(capped.released, ['a/s1']);
  });

  test('input_items pages: newest first by default, `after` an item id, has_more', () => {
    const { store } = storeWith();
    const input = ['i1', 'i2', 'i3'].map((id) => ({ id, type: 'message' as const, role: 'user' as const, status: 'completed' as const, content: [{ type: 'input_text' as const, text: id }] }));
    const r = record('a', 's', 0, { input });
    const ids = (page: ReturnType<ResponseStore['inputItems']>) => (page === 'unknown_after' ? page : [page.data.map((i) => i.id), page.hasMore]);
    assert.deepEqual(ids(store.inputItems(r, { limit: 2, order: 'desc' })), [['i3', 'i2'], true]);
    assert.deepEqual(ids(store.inputItems(r, { limit: 2, order: 'desc', after: 'i2' })), [['i1'], false]);
    assert.deepEqual(ids(store.inputItems(r, { limit: 5, order: 'asc' })), [['i1', 'i2', 'i3'], false]);
    assert.equal(store.inputItems(r, { limit: 5, order: 'asc', after: 'nope' }), 'unknown_after');
  });
});
