/**
 * A fleet of two replicas on one real redis-server (SESSION_STORE_URL) and one shared SNAPSHOT_DIR, in
 * one process: two assembled servings, each with its own Redis client, behind two HTTP apps. For a session with N cached tokens
 * (512, 2,048) it measures the time to first token of a follow-up turn
 *
 * - on the warm owner (the replica that served the previous turn),
 * - on a replica that never saw the session (it reads the transcript from Redis, loads the longest
 *   content-addressed prefix snapshot the owner left in SNAPSHOT_DIR, and prefills the rest),
 * - as a cold one-shot prefill of the whole transcript under another key,
 *
 * and Redis's share of the warm turn's TTFT: the time spent in the session-store calls a turn awaits
 * before its first token (lease, load), measured around each call (which includes waiting for a busy
 * event loop), besides those after its last (commit, release) and the same calls on an idle loop
 * (Redis's own round trips). The owner's warm turn comes after its background snapshot writes landed,
 * as a client that read the reply first sees it; a turn sent the moment the previous one committed is
 * timed too (the writes then share its event loop).
 *
 *   npm run bench -- fleet [--model DIR] [--threads N] [--sizes 512,2048] [--repeats 5]
 *
 * TTFT here is the latency of a turn with max_tokens 1 (one prefill, one sampled token, the commit).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { RedisSessions } from '../src/cache/redis-sessions.ts';
import type { SharedSessions } from '../src/cache/shared-sessions.ts';
import { ApiKeyAuth } from '../src/server/auth.ts';
import { startRedis } from '../tests/support/redis-server.ts';
import { benchApp, benchConfig, longContextModel, median, postAs, serving, table, writeResult, type BenchApp } from './common.ts';

const { values } = parseArgs({
  args: process.argv.slice(3),
  options: {
    model: { type: 'string' },
    threads: { type: 'string', default: '2' },
    sizes: { type: 'string', default: '512,2048' },
    repeats: { type: 'string', default: '5' },
  },
});

const BUILDER_DIR = '/tmp/warmkv-bench-fleet-llama';
const FOLLOW_UP_TOKENS = 8;
const FLEET_KEY = 'bench-fleet-key-0000';
const COLD_KEY = 'bench-cold-key-00000';

/**
 * A store that adds up the time its calls take: Redis's part of a turn, split into the calls a turn
 * awaits before its first token (lease, load) and those after its last (commit, release).
 */
function timed(inner: SharedSessions): { store: SharedSessions; spentMs: () => { beforeFirstToken: number; afterLast: number }; reset: () => void } {
  let beforeFirstToken = 0;
  let afterLast = 0;
  const wrap = <A extends unknown[], R>(phase: 'before' | 'after', call: (...args: A) => Promise<R>) => async (...args: A): Promise<R> => {
    const started = performance.now();
    try {
      return await call(...args);
    } finally {
      if (phase === 'before') beforeFirstToken += performance.now() - started;
      else afterLast += performance.now() - started;
    }
  };
  const store: SharedSessions = {
    shared: inner.shared,
    connect: () => inner.connect(),
    load: wrap('before', (owner, id) => inner.load(owner, id)),
    acquire: wrap('before', (owner, id) => inner.acquire(owner, id)),
    commit: wrap('after', (lease, expected, record) => inner.commit(lease, expected, record)),
    createIfAbsent: wrap('before', (record) => inner.createIfAbsent(record)),
    release: wrap('after', (lease) => inner.release(lease)),
    delete: wrap('after', (owner, id) => inner.delete(owner, id)),
    close: () => inner.close(),
  };
  return { store, spentMs: () => ({ beforeFirstToken, afterLast }), reset: () => (beforeFirstToken = afterLast = 0) };
}

function tokens(count: number, seed: number, vocab: number): number[] {
  let state = seed >>> 0 || 1;
  return Array.from({ length: count }, () => {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    return 10 + (state % (vocab - 20));
  });
}

async function post(app: BenchApp, path: string, body: unknown, key = FLEET_KEY): Promise<{ ms: number; cached: number; text: string }> {
  const started = performance.now();
  const res = await postAs(app, path, body, key);
  const ms = performance.now() - started;
  if (res.status >= 300) throw new Error(`${path}: ${res.status} ${await res.text()}`);
  const data = (await res.json()) as { choices?: Array<{ text: string }>; usage?: { prompt_tokens_details?: { cached_tokens: number } } };
  return { ms, cached: data.usage?.prompt_tokens_details?.cached_tokens ?? 0, text: data.choices?.[0]?.text ?? '' };
}

async function main(): Promise<void> {
  const threads = Number(values.threads);
  const sizes = values.sizes.split(',').map(Number);
  const repeats = Number(values.repeats);
  const redis = await startRedis();
  const { model, source } = await longContextModel(values.model, BUILDER_DIR, threads);
  const snapshotDir = mkdtempSync(join(tmpdir(), 'warmkv-bench-fleet-snapshots-'));
  const config = benchConfig({ KV_CACHE_BYTES: '2GiB', STREAM_RESUME_SECONDS: '0', API_KEYS: `${FLEET_KEY},${COLD_KEY}`, SESSION_STORE_URL: redis.url, SNAPSHOT_DIR: snapshotDir });
  const replicas = [0, 1].map(() => {
    const shared = timed(new RedisSessions({ url: redis.url, leaseMs: 10_000, ttlMs: 0 }));
    const parts = serving(config, model, shared.store);
    return { shared, parts, app: benchApp(config, parts) };
  });
  for (const replica of replicas) {
    await replica.shared.store.connect();
    await replica.parts.tiers.init();
  }
  const [owner, other] = replicas;
  const checked = new ApiKeyAuth([FLEET_KEY]).check(`Bearer ${FLEET_KEY}`);
  if (!checked.ok) throw new Error('the bench key does not authenticate');
  const fleetOwner = checked.owner;
  const vocab = model.vocabSize;
  const rows: Array<Record<string, number>> = [];
  for (const size of sizes) {
    const samples = {
      immediate: [] as number[],
      warm: [] as number[],
      nonOwner: [] as number[],
      cold: [] as number[],
      redisBefore: [] as number[],
      redisAfter: [] as number[],
      redisBeforeImmediate: [] as number[],
      nonOwnerCached: [] as number[],
      warmCached: [] as number[],
    };
    for (let r = -1; r < repeats; r++) {
      const id = `fleet-${size}-${r + 1}`;
      const history = tokens(size, size * 100 + r + 2, vocab);
      await post(owner.app, '/v1/sessions', { session_id: id });
      await post(owner.app, `/v1/sessions/${id}/completions`, { prompt: history, max_tokens: 1, temperature: 0 });
      // A follow-up the moment the prefill committed: its prefix snapshot is still being written on this loop.
      owner.shared.reset();
      const immediate = await post(owner.app, `/v1/sessions/${id}/completions`, { prompt: tokens(FOLLOW_UP_TOKENS, size + r + 5, vocab), max_tokens: 1, temperature: 0 });
      const redisImmediate = owner.shared.spentMs();
      // Then a client that read the reply first: the owner's background writes have landed (untimed).
      await owner.parts.tiers.flush();
      const followUp = tokens(FOLLOW_UP_TOKENS, size + r + 3, vocab);
      owner.shared.reset();
      const warm = await post(owner.app, `/v1/sessions/${id}/completions`, { prompt: followUp, max_tokens: 1, temperature: 0 });
      const redisMs = owner.shared.spentMs();
      await owner.parts.tiers.flush();
      const second = tokens(FOLLOW_UP_TOKENS, size + r + 4, vocab);
      const nonOwner = await post(other.app, `/v1/sessions/${id}/completions`, { prompt: second, max_tokens: 1, temperature: 0 });
      // The committed transcript in one stateless call under another key: nothing cached anywhere.
      const record = await other.shared.store.load(fleetOwner, id);
      if (!record || record.tokens.length !== size + 3 * FOLLOW_UP_TOKENS + 4) throw new Error(`session ${id} holds ${record?.tokens.length} tokens`);
      const cold = await post(owner.app, '/v1/completions', { prompt: record.tokens.slice(0, -1), max_tokens: 1, temperature: 0 }, COLD_KEY);
      if (cold.cached !== 0) throw new Error('the cold call found a cache');
      if (r < 0) continue; // the first round warms the code paths
      samples.immediate.push(immediate.ms);
      samples.redisBeforeImmediate.push(redisImmediate.beforeFirstToken);
      samples.warm.push(warm.ms);
      samples.warmCached.push(warm.cached);
      samples.redisBefore.push(redisMs.beforeFirstToken);
      samples.redisAfter.push(redisMs.afterLast);
      samples.nonOwner.push(nonOwner.ms);
      samples.nonOwnerCached.push(nonOwner.cached);
      samples.cold.push(cold.ms);
    }
    rows.push({
      cachedTokens: size,
      warmOwnerMs: median(samples.warm),
      warmCachedTokens: median(samples.warmCached),
      immediateOwnerMs: median(samples.immediate),
      nonOwnerMs: median(samples.nonOwner),
      nonOwnerCachedTokens: median(samples.nonOwnerCached),
      coldMs: median(samples.cold),
      nonOwnerOverCold: median(samples.nonOwner) / median(samples.cold),
      redisBeforeFirstTokenMs: median(samples.redisBefore),
      redisAfterLastTokenMs: median(samples.redisAfter),
      redisBeforeFirstTokenImmediateMs: median(samples.redisBeforeImmediate),
      redisShareOfWarm: median(samples.redisBefore) / median(samples.warm),
    });
  }
  // The same calls with nothing else on the event loop: Redis's own round trips, without the wait for a busy loop.
  const idle: number[] = [];
  const probeId = `fleet-${sizes[0]}-1`;
  for (let i = 0; i < 50; i++) {
    owner.shared.reset();
    const lease = await owner.shared.store.acquire(fleetOwner, probeId);
    await owner.shared.store.load(fleetOwner, probeId);
    if (lease) await owner.shared.store.release(lease);
    const spent = owner.shared.spentMs();
    idle.push(spent.beforeFirstToken + spent.afterLast);
  }
  const idleLoopMs = median(idle);
  for (const replica of replicas) {
    await replica.parts.engine.drain(1000);
    await replica.shared.store.close();
  }
  await redis.close();
  rmSync(snapshotDir, { recursive: true, force: true });
  const round = (x: number, digits = 1) => Number(x.toFixed(digits));
  console.log(
    table(
      ['cached tokens', 'warm owner ms', 'non-owner ms (cached)', 'cold ms', 'non-owner / cold', 'Redis before 1st token ms', 'its share of warm', 'Redis after last ms', 'owner right after a commit ms (Redis before)'],
      rows.map((row) => [
        row.cachedTokens,
        round(row.warmOwnerMs),
        `${round(row.nonOwnerMs)} (${row.nonOwnerCachedTokens})`,
        round(row.coldMs),
        round(row.nonOwnerOverCold, 2),
        round(row.redisBeforeFirstTokenMs, 2),
        round(row.redisShareOfWarm, 3),
        round(row.redisAfterLastTokenMs, 2),
        `${round(row.immediateOwnerMs)} (${round(row.redisBeforeFirstTokenImmediateMs, 2)})`,
      ]),
    ),
  );
  const file = writeResult('fleet', { model: source, threads, repeats, followUpTokens: FOLLOW_UP_TOKENS, rows, idleLoopStoreMs: idleLoopMs });
  console.log(`\nlease + load + release on an idle event loop: ${idleLoopMs.toFixed(2)} ms (median of 50)`);
  console.log(`written: ${file}`);
}

await main();
