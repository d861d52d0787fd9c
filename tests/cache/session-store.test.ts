import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { KvBudget } from '../../src/cache/budget.ts';
import { Session } from '../../src/cache/session.ts';
import { dropCache, newSessionId, SessionStore, type SessionTierMove } from '../../src/cache/session-store.ts';
import type { KvTensors } from '../../src/model/types.ts';

function store(capacity = 1000) {
  let clock = 1000;
  const s = new SessionStore(new KvBudget(capacity, 1), () => clock);
  return { store: s, tick: (ms = 1) => (clock += ms), now: () => clock };
}

/** A session holding `bytes` of hot cache. */
function hot(s: SessionStore, id: string, bytes: number, owner = 'o'): Session {
  const session = s.create(owner, id);
  session.kv = { batchSize: 1, length: bytes, layers: [] } satisfies KvTensors;
  session.cachedLength = bytes;
  session.tier = 'hot';
  assert.equal(s.reserve(session, bytes), true);
  return session;
}

const ids = (s: SessionStore) => [...s.inLruOrder()].map((x) => x.id);

describe('SessionStore', () => {
  test('create and get are per owner: the same id under two owners is two sessions', () => {
    const { store: s } = store();
    const a = s.create('alice', 'chat');
    const b = s.create('bob', 'chat');
    assert.notEqual(a, b);
    assert.equal(s.get('alice', 'chat'), a);
    assert.equal(s.get('bob', 'chat'), b);
    assert.equal(s.get('carol', 'chat'), undefined);
    assert.equal(s.get('alice', 'other'), undefined);
    assert.equal(s.size, 2);
    assert.deepEqual(s.list('alice'), [a]);
    assert.equal(a.owner, 'alice');
    assert.equal(a.id, 'chat');
    assert.equal(a.tier, 'evicted');
    assert.equal(a.reservedBytes, 0);
    assert.throws(() => s.create('alice', 'chat'), /session chat exists/);
  });

  test('owner and id cannot be confused by embedding separators', () => {
    const { store: s } = store();
    const a = s.create('a', 'b:c');
    const b = s.create('a:b', 'c');
    assert.notEqual(s.get('a', 'b:c'), s.get('a:b', 'c'));
    assert.equal(s.get('a', 'b:c'), a);
    assert.equal(s.get('a:b', 'c'), b);
  });

  test('create without an id draws a fresh one; ephemeral sessions are not stored', () => {
    const { store: s, now } = store();
    const generated = s.create('o');
    assert.match(generated.id, /^sess_[A-Za-z0-9_-]{22}$/);
    assert.equal(s.get('o', generated.id), generated);
    assert.equal(generated.createdAt, now());
    const ephemeral = s.create('o', 'tmp', true);
    assert.equal(ephemeral.ephemeral, true);
    assert.equal(s.get('o', 'tmp'), undefined);
    assert.equal(s.size, 1);
    // Touching an ephemeral session is harmless and does not store it.
    s.touch(ephemeral);
    assert.equal(s.size, 1);
  });

  test('acquire marks busy and refuses a second acquire until release', () => {
    const { store: s } = store();
    const a = s.create('o', 'a');
    assert.equal(s.acquire(a), true);
    assert.equal(a.busy, true);
    assert.equal(s.acquire(a), false);
    s.release(a);
    assert.equal(a.busy, false);
    assert.equal(s.acquire(a), true);
  });

  test('LRU order: creation order, then acquire / release / touch move a session to the most recent end', () => {
    const { store: s, tick, now } = store();
    const a = s.create('o', 'a');
    const b = s.create('o', 'b');
    const c = s.create('o', 'c');
    assert.deepEqual(ids(s), ['a', 'b', 'c']);
    tick(5);
    s.touch(a);
    assert.equal(a.lastUsedAt, now());
    assert.deepEqual(ids(s), ['b', 'c', 'a']);
    s.acquire(b);
    assert.deepEqual(ids(s), ['c', 'a', 'b']);
    s.touch(c);
    s.release(b);
    assert.deepEqual(ids(s), ['a', 'c', 'b']);
    // get() is a lookup, not a use.
    s.get('o', 'a');
    assert.deepEqual(ids(s), ['a', 'c', 'b']);
  });

  test('reserve demotes least recently used sessions first, only as many as needed', () => {
    const { store: s } = store(1000);
    const events: SessionTierMove[] = [];
    s.onTierMove((e) => events.push(e));
    const a = hot(s, 'a', 300);
    const b = hot(s, 'b', 300);
    const c = hot(s, 'c', 300);
    s.touch(a); // order: b, c, a
    const d = s.create('o', 'd');
    assert.equal(s.reserve(d, 350), true);
    // 100 free: b (300) goes first and is enough.
    assert.deepEqual(events.map((e) => [e.session.id, e.from, e.to]), [['b', 'hot', 'evicted']]);
    assert.equal(b.reservedBytes, 0);
    assert.equal(b.kv, null);
    assert.equal(b.cachedLength, 0);
    assert.equal(c.reservedBytes, 300);
    assert.equal(a.reservedBytes, 300);
    assert.equal(s.budget.reservedBytes, 950);
    assert.equal(s.reserve(d, 700), true);
    // c is now the least recently used holder.
    assert.deepEqual(events.map((e) => e.session.id), ['b', 'c']);
    assert.equal(s.budget.reservedBytes, 1000);
    assert.ok(s.budget.reservedBytes <= s.budget.capacityBytes, 's.budget.reservedBytes <= s.budget.capacityBytes');
  });

  test('reserve never demotes pinned sessions nor the session itself, and fails when nothing else can go', () => {
    const { store: s } = store(1000);
    const events: string[] = [];
    s.onTierMove((e) => events.push(e.session.id));
    const a = hot(s, 'a', 400);
    hot(s, 'b', 400);
    a.pinned = true;
    const c = hot(s, 'c', 100);
    assert.equal(s.reserve(c, 600), true);
    assert.deepEqual(events, ['b'], 'the pinned LRU session is skipped');
    assert.equal(a.reservedBytes, 400);
    assert.equal(s.reserve(c, 700), false, 'only the pinned session is left');
    assert.deepEqual(events, ['b']);
    assert.equal(c.reservedBytes, 600, 'a refused reservation leaves the session as it was');
    assert.equal(c.tier, 'hot');
    assert.equal(s.budget.reservedBytes, 1000);
  });

  test(
    'a reservation that cannot fit even after demoting every idle session demotes nothing',
    () => {
      const { store: s } = store(1000);
      const events: string[] = [];
      s.onTierMove((e) => events.push(e.session.id));
      const running = hot(s, 'running', 500);
      running.pinned = true;
      const idle = hot(s, 'idle', 300);
      const newcomer = s.create('o', 'new');
      assert.equal(s.reserve(newcomer, 600), false, '500 pinned + 600 > 1000');
      assert.deepEqual(events, [], 'the idle session was demoted although the reservation failed anyway');
      assert.equal(idle.tier, 'hot');
      assert.equal(idle.reservedBytes, 300);
    },
  );

  test('demoteOne skips sessions that hold nothing and reports false when none can go', () => {
    const { store: s } = store(1000);
    s.create('o', 'empty');
    const a = hot(s, 'a', 100);
    a.pinned = true;
    assert.equal(s.demoteOne(), false);
    a.pinned = false;
    assert.equal(s.demoteOne(a), false, 'the excepted session is not demoted');
    assert.equal(s.demoteOne(), true);
    assert.equal(a.tier, 'evicted');
  });

  test('a custom demoter moves a session one tier down and keeps the bytes it reports', () => {
    const { store: s } = store(1000);
    const events: SessionTierMove[] = [];
    s.onTierMove((e) => events.push(e));
    s.setDemoter((session) => {
      if (session.tier === 'hot') {
        session.tier = 'int8';
        return { tier: 'int8', bytes: session.reservedBytes / 4 };
      }
      return dropCache(session);
    });
    const a = hot(s, 'a', 800);
    const b = s.create('o', 'b');
    assert.equal(s.reserve(b, 500), true);
    assert.deepEqual(events.map((e) => [e.session.id, e.from, e.to]), [['a', 'hot', 'int8']]);
    assert.equal(a.reservedBytes, 200);
    assert.equal(s.reserve(b, 900), true);
    assert.deepEqual(events.map((e) => [e.session.id, e.from, e.to]), [['a', 'hot', 'int8'], ['a', 'int8', 'evicted']]);
    assert.equal(a.reservedBytes, 0);
  });

  test('dropCache forgets the KV but keeps the transcript and window state', () => {
    const session = new Session('x', 'o', 0);
    session.tokens = [1, 2, 3];
    session.kv = { batchSize: 1, length: 2, layers: [] };
    session.cachedLength = 2;
    session.tier = 'hot';
    session.window = { droppedTokens: 5, lastDropAt: 9, dropEvents: 1 };
    assert.deepEqual(dropCache(session), { tier: 'evicted', bytes: 0 });
    assert.equal(session.kv, null);
    assert.equal(session.cachedLength, 0);
    assert.deepEqual(session.tokens, [1, 2, 3]);
    assert.deepEqual(session.window, { droppedTokens: 5, lastDropAt: 9, dropEvents: 1 });
  });

  test('delete refuses a busy session; otherwise frees its memory and forgets it', () => {
    const { store: s } = store(1000);
    const a = hot(s, 'a', 300);
    s.acquire(a);
    assert.equal(s.delete(a), false);
    assert.equal(s.get('o', 'a'), a);
    assert.equal(s.budget.reservedBytes, 300);
    s.release(a);
    assert.equal(s.delete(a), true);
    assert.equal(s.get('o', 'a'), undefined);
    assert.equal(s.budget.reservedBytes, 0);
    assert.equal(a.reservedBytes, 0);
    assert.equal(a.kv, null);
    assert.equal(a.tier, 'evicted');
    assert.equal(s.size, 0);
  });

  test('couldEverFit compares with the whole capacity', () => {
    const { store: s } = store(1000);
    hot(s, 'a', 900);
    assert.equal(s.couldEverFit(1000), true);
    assert.equal(s.couldEverFit(1001), false);
  });
});

describe('newSessionId', () => {
  test('sess_ plus 22 base64url characters (128 bits), different every call', () => {
    const seen = new Set<string>();
    const charCounts = new Map<string, number>();
    for (let i = 0; i < 2000; i++) {
      const id = newSessionId();
      assert.match(id, /^sess_[A-Za-z0-9_-]{22}$/);
      const body = id.slice(5);
      // 22 base64 characters carry 132 bits; the last one holds only 2 data bits (of 128) plus padding zeros.
      assert.match(body[21], /[AQgw]/);
      seen.add(id);
      for (const ch of body.slice(0, 21)) charCounts.set(ch, (charCounts.get(ch) ?? 0) + 1);
    }
    assert.equal(seen.size, 2000);
    // All 64 symbols appear in the first 21 positions (42000 draws): the bits are not constant.
    assert.equal(charCounts.size, 64);
    const counts = [...charCounts.values()];
    assert.ok(Math.min(...counts) > 400 && Math.max(...counts) < 950, `symbol counts between ${Math.min(...counts)} and ${Math.max(...counts)}`);
  });
});
