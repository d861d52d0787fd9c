/**
 * The background snapshot writer (snapshot-writer.ts) and the disk tier built on it (session-files.ts):
 * writes leave the admission path, a session being written stays counted in the KV budget and is served
 * from memory, the queue is bounded, a write cut off leaves nothing that loads, and flushing waits.
 * Real files in temporary folders; writes are slowed by a gate awaited before every chunk.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import type { SessionTierMove } from '../../src/cache/session-store.ts';
import { SnapshotWriter, type WriteOutcome } from '../../src/cache/snapshot-writer.ts';
import { collect, makeEngine, randomTokens, request } from '../support/fixtures.ts';

const tempDir = () => mkdtempSync(join(tmpdir(), 'warmkv-writer-'));
const ticks = (n = 5) => new Promise<void>((resolve) => {
  let left = n;
  const next = () => (--left <= 0 ? resolve() : setImmediate(next));
  setImmediate(next);
});
/** Polls until `condition` holds (the engine and the writer run on their own time on a loaded machine). */
async function until(condition: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Holds every chunk of every write until `open` is called. */
function gate() {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  let chunks = 0;
  return {
    options: { chunkBytes: 1024, beforeChunk: async () => { chunks++; await opened; } },
    open: () => open(),
    get chunks() {
      return chunks;
    },
  };
}

describe('snapshot writer', () => {
  test('writes head, payload and the payload digest under a temporary name, then renames; a cancelled or unwanted write leaves nothing', async () => {
    const dir = tempDir();
    const writer = new SnapshotWriter({ maxQueue: 4, chunkBytes: 3 });
    const outcomes: Array<[string, WriteOutcome['kind'], boolean]> = [];
    const job = (name: string, wanted = true) => ({
      path: join(dir, name),
      head: [Buffer.from('head:')],
      payload: [Uint8Array.from([1, 2, 3, 4, 5, 6, 7])],
      wanted: () => wanted,
      settled: (outcome: WriteOutcome, cancelled: boolean) => outcomes.push([name, outcome.kind, cancelled]),
    });
    assert.ok(writer.enqueue('a', job('a')));
    assert.equal(writer.enqueue('a', job('a')), false, 'one write per key at a time');
    assert.ok(writer.enqueue('b', job('b', false)));
    assert.ok(writer.enqueue('c', job('c')));
    await writer.cancel('c');
    await writer.flush();
    assert.deepEqual(outcomes, [['c', 'discarded', true], ['a', 'written', false], ['b', 'discarded', false]]);
    const written = readFileSync(join(dir, 'a'));
    assert.equal(written.subarray(0, 12).toString('latin1'), 'head:\u0001\u0002\u0003\u0004\u0005\u0006\u0007');
    assert.equal(written.length, 12 + 32);
    assert.deepEqual(readdirSync(dir), ['a'], 'no temporary file and no file for the unwanted or cancelled writes');
    assert.equal(writer.size, 0);
  });

  test('the queue is bounded; a failed write is reported and leaves no temporary file', async () => {
    const dir = tempDir();
    const g = gate();
    const writer = new SnapshotWriter({ maxQueue: 2, ...g.options });
    const kinds: string[] = [];
    const job = (path: string) => ({ path, head: [Buffer.from('x')], payload: [new Uint8Array(10)], settled: (o: WriteOutcome) => kinds.push(o.kind) });
    assert.ok(writer.enqueue('a', job(join(dir, 'a'))));
    assert.ok(writer.enqueue('b', job(join(dir, 'missing', 'b'))));
    assert.equal(writer.enqueue('c', job(join(dir, 'c'))), false);
    assert.deepEqual(writer.counters, { written: 0, refused: 1 });
    g.open();
    await writer.flush();
    assert.deepEqual(kinds, ['written', 'failed']);
    assert.deepEqual(readdirSync(dir), ['a']);
  });
});

describe('the disk tier writes in the background', () => {
  test('while a demotion is being written, other sessions decode and are admitted, and the session is served from memory', async () => {
    const snapshotDir = tempDir();
    const g = gate();
    const { engine, store, tiers } = await makeEngine({ tiers: { snapshotDir, int8: false, writer: g.options } });
    await collect(engine.submit(request(randomTokens(40, 1), { sessionId: 'a', maxTokens: 8 })));
    const a = store.get('', 'a')!;
    const bytes = a.reservedBytes;
    const reserved = store.budget.reservedBytes;
    const stream = collect(engine.submit(request(randomTokens(10, 2), { sessionId: 'b', maxTokens: 40 })));
    assert.ok(store.demoteOne(), 'the demotion is queued');
    assert.ok(a.snapshotPending);
    await until(() => g.chunks >= 1, 'the write to start');
    // Nothing waits on the write: a running stream finishes and a new session is admitted and finishes.
    assert.equal((await stream).tokens.length, 40);
    assert.equal((await collect(engine.submit(request(randomTokens(10, 3), { sessionId: 'c', maxTokens: 4 })))).tokens.length, 4);
    assert.equal(a.tier, 'hot');
    assert.equal(a.reservedBytes, bytes, 'not yet counted as freed');
    assert.ok(store.budget.reservedBytes >= reserved);
    assert.ok(!existsSync(tiers!.pathOf('', 'a')), 'no file before the write completes');

    // A turn on the session itself is served from memory at once (the write still stuck in its chunk),
    // and the pending write is cancelled.
    const cached = a.cachedLength;
    const next = randomTokens(5, 4);
    const turn = await collect(engine.submit(request(next, { sessionId: 'a', mode: 'append', maxTokens: 6 })));
    assert.equal(turn.usage.cachedTokens, cached);
    assert.equal(turn.start?.restoredFrom, 'hot');
    assert.equal(g.chunks, 1, 'the write never got past its first chunk');
    g.open();
    await tiers!.flush();
    assert.equal(a.snapshotPending, false);
    assert.equal(a.tier, 'hot');
    assert.ok(!existsSync(tiers!.pathOf('', 'a')), 'the cancelled write left no file');
    assert.deepEqual(readdirSync(snapshotDir), []);
    const reference = await makeEngine({});
    await collect(reference.engine.submit(request(randomTokens(40, 1), { sessionId: 'a', maxTokens: 8 })));
    assert.deepEqual(turn.tokens, (await collect(reference.engine.submit(request(next, { sessionId: 'a', mode: 'append', maxTokens: 6 })))).tokens);
  });

  test('a request that needs the room waits until the file lands, then runs; the session resumes exactly from disk', async () => {
    const snapshotDir = tempDir();
    const g = gate();
    // Two 32-token sessions fill the budget (16 KiB each in float32).
    const { engine, store, tiers } = await makeEngine({ budgetBytes: 2 * 16384, tiers: { snapshotDir, int8: false, writer: g.options } });
    const events: SessionTierMove[] = [];
    store.onTierMove((e) => events.push(e));
    await collect(engine.submit(request(randomTokens(20, 1), { sessionId: 'a', maxTokens: 12 })));
    await collect(engine.submit(request(randomTokens(20, 2), { sessionId: 'b', maxTokens: 12 })));
    let finished = false;
    const third = collect(engine.submit(request(randomTokens(20, 3), { sessionId: 'c', maxTokens: 12 }))).then((r) => ((finished = true), r));
    const a = store.get('', 'a')!;
    await until(() => g.chunks >= 1, "a's write to start");
    await ticks(10);
    assert.ok(a.snapshotPending);
    assert.equal(finished, false);
    assert.deepEqual(engine.stats(), { running: 0, waiting: 1, batchSize: 0 });
    assert.equal(store.budget.reservedBytes, 2 * 16384, "a's bytes are still counted while its file is written");
    assert.equal(events.length, 0, 'no tier move before the file lands');
    g.open();
    assert.equal((await third).tokens.length, 12);
    assert.deepEqual(events.map((e) => `${e.session.id}:${e.from}->${e.to}`), ['a:hot->disk']);
    assert.equal(a.reservedBytes, 0);
    assert.ok(existsSync(tiers!.pathOf('', 'a')));
    const cached = a.cachedLength;
    const next = randomTokens(5, 4);
    const resumed = await collect(engine.submit(request(next, { sessionId: 'a', mode: 'append', maxTokens: 8 })));
    assert.equal(resumed.start?.restoredFrom, 'disk');
    assert.equal(resumed.usage.cachedTokens, cached);
    const reference = await makeEngine({});
    await collect(reference.engine.submit(request(randomTokens(20, 1), { sessionId: 'a', maxTokens: 12 })));
    assert.deepEqual(resumed.tokens, (await collect(reference.engine.submit(request(next, { sessionId: 'a', mode: 'append', maxTokens: 8 })))).tokens);
  });

  test('with the queue full, a demotion drops the session to its transcript (recomputed on demand, exactly)', async () => {
    const snapshotDir = tempDir();
    const g = gate();
    const { engine, store, tiers } = await makeEngine({ tiers: { snapshotDir, int8: false, writer: { ...g.options, maxQueue: 1 } } });
    await collect(engine.submit(request(randomTokens(20, 1), { sessionId: 'a', maxTokens: 4 })));
    await collect(engine.submit(request(randomTokens(20, 2), { sessionId: 'b', maxTokens: 4 })));
    const [a, b] = [store.get('', 'a')!, store.get('', 'b')!];
    assert.ok(store.demoteOne());
    assert.ok(store.demoteOne());
    assert.equal(a.tier, 'hot');
    assert.ok(a.snapshotPending);
    assert.equal(b.tier, 'evicted');
    assert.equal(b.reservedBytes, 0);
    assert.deepEqual(tiers!.disk.writer.counters, { written: 0, refused: 1 });
    assert.equal(store.demoteOne(), false, 'a session being written is not demoted again');
    const next = randomTokens(3, 5);
    const recomputed = await collect(engine.submit(request(next, { sessionId: 'b', mode: 'append', maxTokens: 5 })));
    assert.equal(recomputed.usage.cachedTokens, 0);
    const reference = await makeEngine({});
    await collect(reference.engine.submit(request(randomTokens(20, 2), { sessionId: 'b', maxTokens: 4 })));
    assert.deepEqual(recomputed.tokens, (await collect(reference.engine.submit(request(next, { sessionId: 'b', mode: 'append', maxTokens: 5 })))).tokens);
    g.open();
    await tiers!.flush();
    assert.equal(a.tier, 'disk');
  });

  test('a write cut off mid-way leaves only a temporary file, which a restarted server neither loads nor counts', async () => {
    const snapshotDir = tempDir();
    const g = gate();
    const first = await makeEngine({ tiers: { snapshotDir, int8: false, writer: g.options } });
    await collect(first.engine.submit(request(randomTokens(30, 1), { sessionId: 's', owner: 'k', maxTokens: 4 })));
    first.store.demoteOne();
    await until(() => g.chunks >= 1, 'the write to start');
    // The process "dies" here: the folder is what a SIGKILL at this moment leaves.
    const names = readdirSync(snapshotDir);
    assert.equal(names.length, 1);
    assert.match(names[0], /\.wkv\.tmp-/);
    const restarted = await makeEngine({ tiers: { snapshotDir, int8: false } });
    assert.equal(await restarted.store.find('k', 's'), undefined);
    assert.equal(restarted.store.countOwned('k'), 0);
    assert.deepEqual(restarted.tiers!.files, { count: 0, bytes: 0 });
  });

  test('flushing waits for queued writes, and the shutdown flush writes the rest after them', async () => {
    const snapshotDir = tempDir();
    const g = gate();
    const { engine, store, tiers } = await makeEngine({ tiers: { snapshotDir, int8: false, writer: g.options } });
    await collect(engine.submit(request(randomTokens(20, 1), { sessionId: 'a', maxTokens: 4 })));
    await collect(engine.submit(request(randomTokens(20, 2), { sessionId: 'b', maxTokens: 4 })));
    store.demoteOne();
    let flushed = false;
    const flushing = tiers!.flushAll().then((r) => ((flushed = true), r));
    await until(() => g.chunks >= 1, 'the write to start');
    await ticks(10);
    assert.equal(flushed, false, 'the flush waits for the pending write');
    g.open();
    assert.deepEqual(await flushing, { written: 1, failed: 0 });
    assert.equal(store.get('', 'a')!.tier, 'disk');
    assert.equal(store.get('', 'b')!.tier, 'hot');
    assert.ok(existsSync(tiers!.pathOf('', 'a')) && existsSync(tiers!.pathOf('', 'b')));
    assert.deepEqual(tiers!.files.count, 2);
  });
});
