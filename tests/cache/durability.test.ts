/**
 * Durable state across crashes and restarts: session versions and stale snapshots (issue 24.1), the
 * sessions of waiting requests (24.2), and the per-key, idle and byte limits of the snapshot folder
 * (24.4). A "crash" here is a second engine on the same folder without a flush (kill -9 in a real
 * process: tests/server/durability.test.ts).
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import type { SessionTierMove } from '../../src/cache/session-store.ts';
import { readSnapshotHeader } from '../../src/cache/snapshot-index.ts';
import { collect, makeEngine, randomTokens, request } from '../support/fixtures.ts';
import { wrapDecoder } from '../support/test-decoder.ts';

const tempDir = () => mkdtempSync(join(tmpdir(), 'warmkv-durability-'));
/** The builder llama: 512 bytes per token in float32, 16-token blocks (8 KiB). */
const TOKEN_BYTES = 512;

describe('stale snapshots (issue 24.1)', () => {
  test('a turn answered from scratch while the session is on disk leaves no older snapshot behind', async () => {
    const snapshotDir = tempDir();
    // 1024 tokens of budget: the 405-token session (26 blocks) and three long streams (20 blocks each) do not fit together.
    const first = await makeEngine({ budgetBytes: 1024 * TOKEN_BYTES, tiers: { snapshotDir, int8: false } });
    await collect(first.engine.submit(request(randomTokens(401, 1), { sessionId: 's', maxTokens: 4 })));
    const s = first.store.get('', 's')!;
    assert.equal(s.version, 1);
    const streams = [2, 3, 4].map((seed) => collect(first.engine.submit(request(randomTokens(10, seed), { maxTokens: 300 }))));
    for (let i = 0; i < 200 && first.engine.stats().running < 3; i++) await new Promise((resolve) => setTimeout(resolve, 5));
    assert.equal(s.tier, 'disk', 'the long streams pushed the session to disk');
    assert.equal((await readSnapshotHeader(first.tiers!.pathOf('', 's'))).sessionVersion, 1);

    // No room to bring the 404 cached tokens back while the streams run: the turn starts from scratch.
    const answered = await collect(first.engine.submit(request([1, 5, 6, 7], { sessionId: 's', maxTokens: 4 })));
    assert.equal(answered.usage.cachedTokens, 0);
    assert.equal(s.tokens.length, 8);
    assert.equal(s.version, 2);
    assert.ok(!existsSync(first.tiers!.pathOf('', 's')), 'the version-1 file was removed before the answer');

    // Crash now (nothing flushed) and restart on the same folder: the old transcript never comes back.
    const restarted = await makeEngine({ budgetBytes: 1024 * TOKEN_BYTES, tiers: { snapshotDir, int8: false } });
    assert.equal(await restarted.store.find('', 's'), undefined);
    await Promise.all(streams);

    // A clean shutdown writes version 2, which the next start loads.
    await first.tiers!.flushAll();
    const clean = await makeEngine({ tiers: { snapshotDir } });
    const loaded = (await clean.store.find('', 's'))!;
    assert.deepEqual([loaded.version, loaded.tokens.length], [2, 8]);
  });

  test('versions count committed turns; a failed turn commits nothing; a restored file must hold the expected version', async () => {
    const snapshotDir = tempDir();
    let failNext = false;
    const failOnce = (): boolean => {
      const fail = failNext;
      failNext = false;
      return fail;
    };
    const { engine, store, tiers } = await makeEngine({
      tiers: { snapshotDir },
      wrapDecoder: (decoder) => wrapDecoder(decoder, { failWhen: failOnce, faultMessage: 'injected model failure' }),
    });
    await collect(engine.submit(request(randomTokens(20, 1), { sessionId: 'v', maxTokens: 4 })));
    await collect(engine.submit(request(randomTokens(3, 2), { sessionId: 'v', mode: 'append', maxTokens: 0 })));
    const session = store.get('', 'v')!;
    assert.equal(session.version, 2, 'a generation and a prefill');
    failNext = true;
    const failed = await collect(engine.submit(request(randomTokens(3, 3), { sessionId: 'v', mode: 'append', maxTokens: 4 })));
    assert.equal(failed.end.finishReason, 'error');
    assert.equal(session.version, 2);

    await tiers!.flushAll();
    assert.equal(session.snapshotVersion, 2);
    // A file that does not hold the version the session expects is not trusted: the turn recomputes.
    store.demote(session, (s) => {
      s.toDisk();
      return { tier: 'disk', bytes: 0 };
    });
    session.snapshotVersion = 1;
    const resumed = await collect(engine.submit(request(randomTokens(2, 4), { sessionId: 'v', mode: 'append', maxTokens: 2 })));
    assert.equal(resumed.usage.cachedTokens, 0);
    assert.equal(session.version, 3);
    assert.ok(!existsSync(tiers!.pathOf('', 'v')));
  });
});

describe('waiting sessions (issue 24.2)', () => {
  test('a session whose request waits in the queue is not quantized: it resumes hot and exact', async () => {
    // 5 blocks: two finished 32-token sessions (2 blocks each) and a newcomer (2 blocks) need one demotion.
    const { engine, store } = await makeEngine({ budgetBytes: 5 * 16 * TOKEN_BYTES, maxBatchSize: 1, tiers: {} });
    const events: SessionTierMove[] = [];
    store.onTierMove((e) => events.push(e));
    await collect(engine.submit(request(randomTokens(20, 1), { sessionId: 'b', maxTokens: 12 })));
    // Each submit resolves once its request is queued, so the order is r, x, b.
    const running = collect(await engine.submit(request(randomTokens(20, 2), { sessionId: 'r', maxTokens: 12 })));
    // Both wait behind r (batch of one): x first, then b's next turn.
    const x = collect(await engine.submit(request(randomTokens(20, 3), { sessionId: 'x', maxTokens: 12 })));
    const next = randomTokens(4, 4);
    const b = collect(await engine.submit(request(next, { sessionId: 'b', mode: 'append', maxTokens: 4 })));
    assert.equal(engine.stats().waiting, 2);
    await Promise.all([running, x]);
    const resumed = await b;
    assert.ok(!events.some((e) => e.session.id === 'b' && e.to === 'int8'), `b was not quantized: ${events.map((e) => `${e.session.id}:${e.from}->${e.to}:${e.session.busy}`)}`);
    assert.equal(resumed.start?.restoredFrom, 'hot');

    const reference = await makeEngine({});
    await collect(reference.engine.submit(request(randomTokens(20, 1), { sessionId: 'b', maxTokens: 12 })));
    const exact = await collect(reference.engine.submit(request(next, { sessionId: 'b', mode: 'append', maxTokens: 4 })));
    assert.deepEqual(resumed.tokens, exact.tokens);
  });
});

describe('snapshot limits across restarts (issue 24.4)', () => {
  async function withFiles(snapshotDir: string, owner: string, ids: string[], lastUsedAt?: (id: string) => number) {
    const fixture = await makeEngine({ tiers: { snapshotDir } });
    for (const [i, id] of ids.entries()) {
      await collect(fixture.engine.submit(request(randomTokens(20, i + 1), { sessionId: id, owner, maxTokens: 4 })));
      if (lastUsedAt) fixture.store.get(owner, id)!.lastUsedAt = lastUsedAt(id);
    }
    await fixture.tiers!.flushAll();
    return fixture;
  }

  test('sessions on disk count against the per-key limit after a restart, each once', async () => {
    const snapshotDir = tempDir();
    await withFiles(snapshotDir, 'k1', ['a', 'b', 'c']);
    await withFiles(snapshotDir, 'k2', ['a']);
    const restarted = await makeEngine({ tiers: { snapshotDir } });
    assert.equal(restarted.store.size, 0, 'nothing loaded');
    assert.equal(restarted.store.countOwned('k1'), 3);
    assert.equal(restarted.store.countOwned('k2'), 1);
    await restarted.store.find('k1', 'a'); // loaded: in memory and on disk, counted once
    restarted.store.create('k1', 'new');
    assert.equal(restarted.store.countOwned('k1'), 4);
    restarted.store.delete(restarted.store.get('k1', 'a')!);
    await restarted.tiers!.forget('k1', 'a');
    assert.equal(restarted.store.countOwned('k1'), 3);
  });

  test('a file another server wrote after this one listed the folder is still found, and then counted', async () => {
    const snapshotDir = tempDir();
    const listedEarly = await makeEngine({ tiers: { snapshotDir } });
    await withFiles(snapshotDir, 'k', ['late']);
    assert.equal(listedEarly.store.countOwned('k'), 0, 'not known yet');
    const found = await listedEarly.store.find('k', 'late');
    assert.equal(found?.tokens.length, 24);
    listedEarly.store.delete(found!);
    assert.equal(listedEarly.store.countOwned('k'), 1, 'known now: on disk');
  });

  test('files idle past SESSION_IDLE_SECONDS are removed at start, on lookup and by the sweep, by their own last use', async () => {
    const snapshotDir = tempDir();
    const now = Date.now();
    await withFiles(snapshotDir, 'k', ['stale', 'fresh'], (id) => (id === 'stale' ? now - 120_000 : now));
    // Leftovers of a crash mid-write and files that can never load go at start too.
    writeFileSync(join(snapshotDir, 'deadbeef.wkv.tmp-1-abc'), 'partial');
    const hourAgo = new Date(now - 3_600_000);
    utimesSync(join(snapshotDir, 'deadbeef.wkv.tmp-1-abc'), hourAgo, hourAgo);
    // A recent temporary file may be another server's write in progress (a shared folder): it stays.
    writeFileSync(join(snapshotDir, 'cafe.wkv.tmp-2-def'), 'in progress');
    writeFileSync(join(snapshotDir, 'deadbeef.wkv'), 'not a snapshot');
    const restarted = await makeEngine({ tiers: { snapshotDir, idleTtlMs: 60_000 } });
    assert.equal(restarted.store.countOwned('k'), 1);
    assert.equal(await restarted.store.find('k', 'stale'), undefined);
    assert.ok(await restarted.store.find('k', 'fresh'));
    assert.deepEqual(readdirSync(snapshotDir).sort(), [restarted.tiers!.pathOf('k', 'fresh').split('/').at(-1), 'cafe.wkv.tmp-2-def'].sort());
    rmSync(join(snapshotDir, 'cafe.wkv.tmp-2-def'));

    // Later: a file not loaded expires by the time in its header, at lookup or at the next sweep.
    let clock = now;
    const later = await makeEngine({ tiers: { snapshotDir, idleTtlMs: 60_000, now: () => clock } });
    clock = now + 90_000;
    assert.equal(later.store.countOwned('k'), 1, 'not yet swept');
    assert.equal(await later.store.find('k', 'fresh'), undefined, 'a session idle for longer than the limit does not load');
    assert.equal(later.store.countOwned('k'), 0);
    assert.deepEqual(readdirSync(snapshotDir), []);
  });

  test('the folder stays under SNAPSHOT_MAX_BYTES, least recently used files first, at start and on every demotion', async () => {
    const snapshotDir = tempDir();
    const now = Date.now();
    const ids = ['s0', 's1', 's2', 's3'];
    const first = await withFiles(snapshotDir, 'k', ids, (id) => now - 1000 * (10 - Number(id.slice(1))));
    const size = first.tiers!.files.bytes / ids.length;
    const capped = await makeEngine({ budgetBytes: 4 * 16 * TOKEN_BYTES, tiers: { snapshotDir, int8: false, maxSnapshotBytes: Math.floor(2.5 * size) } });
    assert.equal(capped.tiers!.files.count, 2);
    assert.equal(await capped.store.find('k', 's0'), undefined, 'the oldest went');
    assert.equal(await capped.store.find('k', 's1'), undefined);
    // Demotions write new files; each write trims the oldest so the cap holds.
    for (const [i, id] of ['n0', 'n1', 'n2', 'n3'].entries()) {
      await collect(capped.engine.submit(request(randomTokens(20, 10 + i), { sessionId: id, owner: 'k', maxTokens: 4 })));
      assert.ok(capped.tiers!.files.bytes <= 2.5 * size, `${capped.tiers!.files.bytes} bytes on disk`);
    }
    assert.ok(capped.tiers!.files.count >= 1);
    // Demotions write in the background: a write in flight has a temporary file the index does not list yet.
    await capped.tiers!.flush();
    assert.ok(capped.tiers!.files.bytes <= 2.5 * size, `${capped.tiers!.files.bytes} bytes on disk once writes landed`);
    const onDisk = readdirSync(snapshotDir).length;
    assert.equal(onDisk, capped.tiers!.files.count, 'the index matches the folder');
    // A session whose file the cap removed keeps its transcript and is recomputed exactly.
    for (const session of capped.store.inLruOrder()) {
      if (session.tier === 'disk') assert.ok(existsSync(capped.tiers!.pathOf('k', session.id)));
    }
  });
});
