/** The stateless prefix cache: prefix entries in the session store, and which entry a prompt claims. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { KvBudget } from '../../src/cache/budget.ts';
import { PrefixCache } from '../../src/cache/prefix-cache.ts';
import { PREFIX_BLOCK } from '../../src/cache/prefix-index.ts';
import { SessionStore } from '../../src/cache/session-store.ts';
import type { Session } from '../../src/cache/session.ts';
import type { KvLayout, KvTensors } from '../../src/model/types.ts';

const layout: KvLayout = { numLayers: 1, numKvHeads: 1, headDim: 2, dtype: 'float32', bytesPerToken: 2 * 2 * 4 };

/** Gives `session` a hot cache of `tokens` and reserves it, as a finished request leaves it. */
function fill(store: SessionStore, session: Session, tokens: number[]): void {
  const length = tokens.length;
  const data = () => new Float32Array(length * layout.headDim).map((_, i) => i); // [1, numKvHeads, length, headDim]
  session.toHot({ batchSize: 1, length, layers: [{ key: data(), value: data() }] } satisfies KvTensors, length);
  session.tokens = tokens.slice();
  assert.ok(store.reserve(session, store.budget.bytesFor(length, layout.bytesPerToken)));
}

/** A finished request on `entry`: its prompt was `prompt`, its transcript is `tokens` (cached in full). */
function finish(cache: PrefixCache, store: SessionStore, entry: Session, prompt: number[], tokens: number[]): void {
  const record = { request: { owner: entry.owner, sessionId: entry.id }, cachedTokens: 0, fullInput: prompt };
  cache.requestStarted(record);
  fill(store, entry, tokens);
  entry.version++;
  cache.requestFinished(record);
}

const range = (n: number, from = 0) => Array.from({ length: n }, (_, i) => from + i);

describe('prefix entries in the session store', () => {
  test('are found by id but neither counted, listed nor seen by the tiers', () => {
    const store = new SessionStore(new KvBudget(1 << 20, 1));
    store.create('o', 'named');
    const entry = store.createPrefixEntry('o', '#prefix-1');
    assert.equal(store.get('o', '#prefix-1'), entry);
    assert.ok(store.isPrefixEntry(entry));
    assert.ok(!store.isPrefixEntry(store.get('o', 'named')!));
    assert.equal(store.size, 1);
    assert.equal(store.countOwned('o'), 1);
    assert.deepEqual(store.list('o').map((s) => s.id), ['named']);
    assert.deepEqual([...store.inLruOrder()].map((s) => s.id), ['named']);
    assert.throws(() => store.createPrefixEntry('o', 'named'), /exists/);
    assert.ok(store.delete(entry));
    assert.equal(store.get('o', '#prefix-1'), undefined);
    assert.equal(store.prefixEntryCount, 0);
  });

  test('lose their KV before any session, and only ever drop it (never the tiers\' demoter)', () => {
    const store = new SessionStore(new KvBudget(100 * layout.bytesPerToken, 1));
    const demoted: string[] = [];
    store.setDemoter((session) => {
      demoted.push(session.id);
      session.toEvicted();
      return { tier: 'evicted', bytes: 0 };
    });
    const named = store.create('o', 'named');
    fill(store, named, range(40));
    const entry = store.createPrefixEntry('o', '#prefix-1');
    fill(store, entry, range(40));
    // The named session is the least recently used, yet the entry goes first.
    const newcomer = store.create('o', 'newcomer');
    fill(store, newcomer, range(40));
    assert.equal(entry.tier, 'evicted');
    assert.equal(entry.reservedBytes, 0);
    assert.deepEqual(entry.tokens, range(40), 'the transcript stays');
    assert.equal(named.tier, 'hot');
    assert.deepEqual(demoted, []);
    // Then sessions, through the demoter.
    const another = store.create('o', 'another');
    fill(store, another, range(40));
    assert.deepEqual(demoted, ['named']);
  });
});

describe('PrefixCache.claim', () => {
  const setup = (entries = 8) => {
    const store = new SessionStore(new KvBudget(1 << 20, 1));
    return { store, cache: new PrefixCache(store, layout, entries) };
  };
  const turn1 = range(PREFIX_BLOCK + 10);
  const reply1 = [...turn1, 900, 901, 902];

  test('a new prompt gets a new entry; its continuation takes it over; an edit copies and leaves it', () => {
    const { store, cache } = setup();
    const first = cache.claim('o', turn1);
    assert.equal(first.kind, 'new');
    first.release();
    assert.equal(store.get('o', first.session.id), undefined, 'released before it ran: an entry made for it is dropped');

    const again = cache.claim('o', turn1);
    // The engine takes it (busy), then the request ends.
    again.session.busy = true;
    again.release();
    again.session.busy = false;
    finish(cache, store, again.session, turn1, reply1);

    // The client re-tokenized the reply differently: it still continues the whole last prompt.
    const next = [...turn1, 900, 777, 1, 2];
    const takeover = cache.claim('o', next);
    assert.equal(takeover.kind, 'takeover');
    assert.equal(takeover.session, again.session);
    takeover.release();

    const edit = [...turn1.slice(0, PREFIX_BLOCK + 3), 5, 5, 5];
    const copy = cache.claim('o', edit);
    assert.equal(copy.kind, 'copy');
    assert.notEqual(copy.session, again.session);
    assert.deepEqual(copy.session.tokens, edit.slice(0, PREFIX_BLOCK + 3));
    assert.equal(again.session.cachedLength, reply1.length, 'the source keeps its cache');
    copy.release();
  });

  test('an entry claimed by another request is copied; one the engine runs on is passed over; other owners see nothing', () => {
    const { store, cache } = setup();
    const entry = cache.claim('o', turn1);
    entry.session.busy = true;
    entry.release();
    entry.session.busy = false;
    finish(cache, store, entry.session, turn1, reply1);
    const next = [...reply1, 3, 4];
    const first = cache.claim('o', next);
    assert.equal(first.kind, 'takeover');
    const second = cache.claim('o', next);
    assert.equal(second.kind, 'copy', 'claimed but not yet running: its KV is still there to copy');
    first.session.busy = true;
    assert.equal(cache.claim('o', next).kind, 'new', 'the engine runs on it (and a copy is indexed only once its request ends)');
    assert.equal(cache.claim('other', next).kind, 'new');
  });

  test('keeps at most maxEntries, dropping entries without KV first, then the least recently used idle one', () => {
    const { store, cache } = setup(2);
    const made: Session[] = [];
    for (let i = 0; i < 2; i++) {
      const claim = cache.claim('o', range(PREFIX_BLOCK + 1, 1000 * (i + 1)));
      claim.session.busy = true;
      claim.release();
      claim.session.busy = false;
      finish(cache, store, claim.session, range(PREFIX_BLOCK + 1, 1000 * (i + 1)), range(PREFIX_BLOCK + 2, 1000 * (i + 1)));
      made.push(claim.session);
    }
    store.demote(made[1], (s) => {
      s.toEvicted();
      return { tier: 'evicted', bytes: 0 };
    });
    const third = cache.claim('o', range(PREFIX_BLOCK + 1, 5000));
    assert.equal(store.prefixEntryCount, 2);
    assert.equal(store.get('o', made[1].id), undefined, 'the one without KV went');
    assert.equal(store.get('o', made[0].id), made[0]);
    assert.equal(cache.counters().evictions, 1);
    third.release();
  });

  test('entries of no use to a later prompt are not kept: a copy of another idle entry, one an entry extends, one under a block', () => {
    const { store, cache } = setup();
    /** A request on a new entry of its own (as concurrent requests get), finished with `tokens`. */
    const run = (prompt: number[], tokens: number[]) => {
      const claim = cache.claim('o', prompt);
      claim.session.busy = true;
      claim.release();
      claim.session.busy = false;
      finish(cache, store, claim.session, prompt, tokens);
      return claim.session;
    };
    const first = run(turn1, reply1);
    // The same prompt again runs on a copy of the first's prefix (its last token must be fed) and ends
    // with the same reply: one entry is kept.
    const duplicate = run(turn1, reply1);
    assert.notEqual(duplicate, first);
    assert.equal(store.get('o', duplicate.id), undefined, 'a transcript another idle entry holds whole');
    assert.equal(store.get('o', first.id), first);
    assert.equal(store.prefixEntryCount, 1);
    // A request that ran on a copy while the first was busy, and went further: the first is now redundant.
    first.busy = true;
    const longer = run([...reply1, 7, 7], [...reply1, 7, 7, 8, 8]);
    first.busy = false;
    assert.equal(store.get('o', first.id), first, 'busy while the longer one finished: passed over');
    const longest = run([...reply1, 7, 7], [...reply1, 7, 7, 8, 8, 9]);
    assert.equal(store.get('o', longer.id), undefined, 'its whole transcript is in the longest');
    assert.equal(store.get('o', first.id), undefined);
    assert.equal(store.get('o', longest.id), longest);
    // A different reply to the same prompt is a branch of its own: both stay.
    const branch = run(turn1, [...turn1, 500, 501]);
    assert.equal(store.get('o', branch.id), branch);
    // Shorter than one index block: no prompt could find it.
    const short = run(range(10, 3000), range(PREFIX_BLOCK - 1, 3000));
    assert.equal(store.get('o', short.id), undefined);
    assert.equal(store.prefixEntryCount, 2);
    assert.equal(cache.claim('o', [...reply1, 7, 7, 8, 8, 9, 1]).kind, 'takeover');
  });

  test('a failed request drops the entry made for it and keeps one it took over', () => {
    const { store, cache } = setup();
    const made = cache.claim('o', turn1);
    made.session.busy = true;
    made.release();
    made.session.busy = false;
    const record = { request: { owner: 'o', sessionId: made.session.id }, cachedTokens: 0, fullInput: turn1 };
    cache.requestFinished(record);
    assert.equal(store.get('o', made.session.id), undefined);

    const kept = cache.claim('o', turn1);
    kept.session.busy = true;
    kept.release();
    kept.session.busy = false;
    finish(cache, store, kept.session, turn1, reply1);
    const failed = cache.claim('o', [...reply1, 1]);
    assert.equal(failed.kind, 'takeover');
    failed.session.busy = true;
    failed.release();
    failed.session.busy = false;
    cache.requestFinished({ request: { owner: 'o', sessionId: kept.session.id }, cachedTokens: reply1.length, fullInput: [...reply1, 1] });
    assert.equal(store.get('o', kept.session.id), kept.session, 'rolled back by the engine, and still kept');
    assert.equal(cache.claim('o', [...reply1, 2]).kind, 'takeover');
  });
});

test('idle entries expire like sessions; claimed ones stay', () => {
  let now = 1_000;
  const store = new SessionStore(new KvBudget(1 << 20, 1), () => now);
  const cache = new PrefixCache(store, layout, 8);
  const old = cache.claim('o', range(PREFIX_BLOCK + 1));
  old.session.busy = true;
  old.release();
  store.release(old.session);
  finish(cache, store, old.session, range(PREFIX_BLOCK + 1), range(PREFIX_BLOCK + 2));
  now = 1_500;
  const claimed = cache.claim('o', range(PREFIX_BLOCK + 1, 7000));
  now = 6_500;
  cache.expire(6_000, now);
  assert.equal(store.get('o', old.session.id), old.session, 'idle 5.5 s of 6');
  now = 8_000;
  cache.expire(6_000, now);
  assert.equal(store.get('o', old.session.id), undefined, 'idle 7 s of 6');
  assert.equal(store.get('o', claimed.session.id), claimed.session, 'claimed: kept');
  claimed.release();
});
