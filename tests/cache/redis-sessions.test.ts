/** RedisSessions against a real redis-server: leases, the compare-and-set commit, and an unreachable store. */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { RedisSessions } from '../../src/cache/redis-sessions.ts';
import { decodeTokens, encodeTokens, SessionStoreUnavailableError, type SessionRecord } from '../../src/cache/shared-sessions.ts';
import { REDIS_SKIP, startRedis, type RedisProcess } from '../support/redis-server.ts';

const record = (version: number, tokens: number[]): SessionRecord => ({
  owner: 'key-a', id: 's1', tokens, window: { droppedTokens: 0, lastDropAt: 0, dropEvents: 0 }, version, createdAt: 1, lastUsedAt: 2, requests: version,
});

test('tokens round-trip through their base64 form', () => {
  assert.deepEqual(decodeTokens(encodeTokens([0, 1, 65535, 2 ** 31 - 1])), [0, 1, 65535, 2 ** 31 - 1]);
});

describe('RedisSessions', { skip: REDIS_SKIP }, () => {
  let redis: RedisProcess;
  let a: RedisSessions;
  let b: RedisSessions;
  before(async () => {
    redis = await startRedis();
    a = new RedisSessions({ url: redis.url, leaseMs: 500, ttlMs: 60_000 });
    b = new RedisSessions({ url: redis.url, leaseMs: 500, ttlMs: 60_000 });
    await Promise.all([a.connect(), b.connect()]);
  });
  after(async () => {
    await Promise.all([a?.close(), b?.close()]);
    await redis?.close();
  });

  test('a turn commits under its lease; a racing replica is refused the lease; history stays linear', async () => {
    const lease = await a.acquire('key-a', 's1');
    assert.ok(lease);
    assert.equal(await b.acquire('key-a', 's1'), null, 'the second replica gets no lease (409)');
    assert.equal(await a.commit(lease, 0, record(1, [1, 2, 3])), 'committed');
    const next = await b.acquire('key-a', 's1');
    assert.ok(next, 'the lease is free after the commit');
    assert.equal(await b.commit(next, 0, record(1, [9, 9])), 'conflict', 'a turn started from version 0 cannot commit over version 1');
    const stored = await a.load('key-a', 's1');
    assert.deepEqual(stored?.tokens, [1, 2, 3]);
    assert.equal(stored?.version, 1);
    await b.release(next);
    assert.equal(await a.load('key-b', 's1'), null, 'another owner has its own id space');
  });

  test('a replica that dies mid-turn leaves the last committed turn, and its lease lapses', async () => {
    const dying = new RedisSessions({ url: redis.url, leaseMs: 300, ttlMs: 60_000 });
    await dying.connect();
    const lease = await dying.acquire('key-a', 's1');
    assert.ok(lease);
    await dying.close(); // stops renewing, as a killed process would
    assert.equal(await a.acquire('key-a', 's1'), null);
    await new Promise((resolve) => setTimeout(resolve, 400));
    const taken = await a.acquire('key-a', 's1');
    assert.ok(taken, 'the lease lapsed');
    assert.equal((await a.load('key-a', 's1'))?.version, 1);
    assert.equal(await dying.commit(lease, 1, record(2, [5])).catch((e) => e.name), 'SessionStoreUnavailableError');
    assert.equal(await a.commit(taken, 1, record(2, [1, 2, 3, 4])), 'committed');
  });

  test('a renewed lease outlives its TTL while the turn runs', async () => {
    const lease = await a.acquire('key-a', 'long');
    assert.ok(lease);
    await new Promise((resolve) => setTimeout(resolve, 1200));
    assert.equal(await b.acquire('key-a', 'long'), null);
    await a.release(lease);
    assert.ok(await b.acquire('key-a', 'long'));
  });

  test('createIfAbsent writes once', async () => {
    assert.equal(await a.createIfAbsent({ ...record(0, []), id: 'fresh' }), true);
    assert.equal(await b.createIfAbsent({ ...record(0, []), id: 'fresh' }), false);
    await a.delete('key-a', 'fresh');
    assert.equal(await a.load('key-a', 'fresh'), null);
  });

  test('Redis down: clear errors; back up: the same clients recover', async () => {
    await redis.stop();
    await assert.rejects(a.load('key-a', 's1'), (error: Error) => error instanceof SessionStoreUnavailableError && /unreachable/.test(error.message));
    await redis.restart();
    let loaded: SessionRecord | null | undefined;
    for (let i = 0; i < 50 && loaded === undefined; i++) {
      loaded = await a.load('key-a', 's1').catch(() => undefined);
      if (loaded === undefined) await new Promise((resolve) => setTimeout(resolve, 100));
    }
    assert.equal(loaded, null, 'reconnected (the throwaway store kept nothing)');
    const lease = await a.acquire('key-a', 's2');
    assert.ok(lease);
    assert.equal(await a.commit(lease, 0, { ...record(1, [7]), id: 's2' }), 'committed', 'the commit script loads again after the restart');
  });

  test('an unreachable store at start is a clear error', async () => {
    const nowhere = new RedisSessions({ url: 'redis://127.0.0.1:1', leaseMs: 500, ttlMs: 0 });
    await assert.rejects(nowhere.connect(), /cannot reach the session store at redis:\/\/127\.0\.0\.1:1/);
    await nowhere.close();
  });
});
