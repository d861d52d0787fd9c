/**
 * A session that keeps the in-place buffer its turn ran on (`HeldKv`, src/cache/session.ts): the rule
 * that decides when it is kept, what the budget counts for it, the next turns that step on it (appending,
 * or keeping a prefix), and the tier moves that make it tight first. Every continuation must equal a
 * one-shot run of the transcript on an engine that never holds a buffer (KV_MODE=concat).
 */
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { forkPrefix } from '../../src/cache/fork.ts';
import { collect, makeEngine, randomTokens, request, type EngineFixture } from '../support/fixtures.ts';

const BLOCK = 16;
/** A long first turn: 120 prompt tokens and 8 generated fill 127 of 128 slots (the last token's KV is computed next turn). */
const LONG_PROMPT = randomTokens(120, 11);

/** What a concat engine answers for `transcript` sent whole as a new session: the one-shot reference. */
async function oneShot(transcript: number[], maxTokens: number): Promise<number[]> {
  const { engine } = await makeEngine({ kvMode: 'concat' });
  return (await collect(engine.submit(request(transcript, { sessionId: 'reference', maxTokens })))).tokens;
}

async function heldSession(options: Parameters<typeof makeEngine>[0] = {}): Promise<EngineFixture & { transcript: () => number[] }> {
  const fixture = await makeEngine({ kvCapacityBlock: BLOCK, ...options });
  await collect(fixture.engine.submit(request(LONG_PROMPT, { sessionId: 'h', maxTokens: 8 })));
  return { ...fixture, transcript: () => fixture.store.get('', 'h')!.tokens.slice() };
}

describe('held buffers', () => {
  test('a session whose buffer is nearly full keeps it, and the budget counts its whole capacity', async () => {
    const { engine, store, model } = await heldSession();
    const session = store.get('', 'h')!;
    const held = session.held;
    assert.ok(held, 'the buffer is kept');
    assert.equal(held.heldLength, session.cachedLength);
    assert.equal(session.cachedLength, 127);
    assert.ok(held.capacity - held.heldLength <= held.heldLength / 8, `spare ${held.capacity - held.heldLength} of ${held.capacity}`);
    assert.equal(session.reservedBytes, store.budget.bytesFor(held.capacity, model.decoder.io.kv.bytesPerToken));
    assert.equal(engine.counters().heldCommits, 1);
  });

  test('a short session, whose buffer is mostly spare capacity, is made tight', async () => {
    const { engine, store, model } = await makeEngine({ kvCapacityBlock: BLOCK });
    // 20 prompt tokens + 4 generated: 23 valid slots in a 32-slot buffer, 9 spare (more than 23 / 8).
    await collect(engine.submit(request(randomTokens(20, 12), { sessionId: 's', maxTokens: 4 })));
    const session = store.get('', 's')!;
    assert.equal(session.held, null);
    assert.ok(session.hasKv);
    assert.equal(session.kv!.length, 23);
    assert.equal(session.reservedBytes, store.budget.bytesFor(23, model.decoder.io.kv.bytesPerToken));
    assert.equal(engine.counters().heldCommits, 0);
  });

  test('a held buffer is kept only when the budget has room for its spare capacity too', async () => {
    // 117 prompt tokens + 8 generated: the turn reserves 125 tokens, leaves 124 valid in a 128-slot buffer.
    const bytesPerToken = (await makeEngine({})).model.decoder.io.kv.bytesPerToken;
    const outcome = async (budgetTokens: number) => {
      const { engine, store } = await makeEngine({ kvCapacityBlock: BLOCK, blockTokens: 1, budgetBytes: budgetTokens * bytesPerToken });
      await collect(engine.submit(request(randomTokens(117, 17), { sessionId: 'b', maxTokens: 8 })));
      const session = store.get('', 'b')!;
      assert.equal(session.cachedLength, 124);
      assert.ok(session.hasKv);
      return { held: session.held?.capacity ?? null, reserved: session.reservedBytes / bytesPerToken, commits: engine.counters().heldCommits };
    };
    assert.deepEqual(await outcome(128), { held: 128, reserved: 128, commits: 1 });
    assert.deepEqual(await outcome(125), { held: null, reserved: 124, commits: 0 });
  });

  test('the next turn steps on the held buffer with no copy in, and equals a one-shot run', async () => {
    const { engine, store, transcript } = await heldSession();
    const next = randomTokens(6, 13);
    const before = transcript();
    const turn = await collect(engine.submit(request(next, { sessionId: 'h', mode: 'append', maxTokens: 10 })));
    assert.equal(turn.usage.cachedTokens, 127);
    assert.equal(engine.counters().heldResumes, 1);
    assert.deepEqual(turn.tokens, await oneShot([...before, ...next], 10));
    // The session holds the buffer again (141 of 144 slots), or tight tensors: either way all of it.
    assert.equal(store.get('', 'h')!.cachedLength, before.length + next.length + 10 - 1);
  });

  test('a turn that keeps only a prefix cuts the held buffer by length, and equals a one-shot run', async () => {
    const { engine, transcript } = await heldSession();
    const prompt = [...transcript().slice(0, 70), ...randomTokens(9, 14)];
    const turn = await collect(engine.submit(request(prompt, { sessionId: 'h', mode: 'replace', maxTokens: 10 })));
    assert.equal(turn.usage.cachedTokens, 70);
    assert.equal(engine.counters().heldResumes, 1);
    assert.deepEqual(turn.tokens, await oneShot(prompt, 10));
  });

  test('a branch copies its prefix from the held buffer without spending it; both continue as one-shot runs', async () => {
    const { engine, store, model, transcript } = await heldSession();
    const source = store.get('', 'h')!;
    const parent = transcript();
    const branchPrompt = [...parent.slice(0, 90), ...randomTokens(7, 18)];
    const target = store.create('', 'branch');
    assert.ok(forkPrefix(store, model.decoder.io.kv, source, target, branchPrompt));
    assert.equal(target.cachedLength, 90);
    assert.equal(target.held, null, 'the branch holds tight tensors of its own');
    assert.ok(source.held, 'the parent keeps its buffer');
    assert.equal(source.held.heldLength, 127);
    const branch = await collect(engine.submit(request(branchPrompt, { sessionId: 'branch', mode: 'replace', maxTokens: 8 })));
    assert.equal(branch.usage.cachedTokens, 90);
    assert.deepEqual(branch.tokens, await oneShot(branchPrompt, 8));
    const next = randomTokens(3, 19);
    const parentTurn = await collect(engine.submit(request(next, { sessionId: 'h', mode: 'append', maxTokens: 8 })));
    assert.equal(parentTurn.usage.cachedTokens, 127);
    assert.deepEqual(parentTurn.tokens, await oneShot([...parent, ...next], 8));
  });

  test('a held session demoted to int8 is made tight first, and its budget shrinks to the int8 bytes', async () => {
    const { engine, store } = await heldSession({ tiers: {} });
    const session = store.get('', 'h')!;
    const heldBytes = session.reservedBytes;
    assert.ok(session.held);
    assert.ok(store.demoteOne());
    assert.equal(session.tier, 'int8');
    assert.equal(session.held, null);
    assert.equal(session.cachedLength, 127);
    assert.ok(session.reservedBytes < heldBytes * 0.3, `${session.reservedBytes} of ${heldBytes}`);
    assert.equal(store.budget.reservedBytes, session.reservedBytes);
    const turn = await collect(engine.submit(request(randomTokens(4, 15), { sessionId: 'h', mode: 'append', maxTokens: 6 })));
    assert.equal(turn.start?.restoredFrom, 'int8');
    assert.equal(turn.usage.cachedTokens, 127);
  });

  test('a held session demoted to disk resumes exactly: the same tokens as a one-shot run', async () => {
    const snapshotDir = mkdtempSync(join(tmpdir(), 'warmkv-held-'));
    const { engine, store, tiers, transcript } = await heldSession({ tiers: { snapshotDir, int8: false } });
    const session = store.get('', 'h')!;
    assert.ok(session.held);
    const before = transcript();
    assert.ok(store.demoteOne());
    await tiers!.flushAll();
    assert.equal(session.tier, 'disk');
    assert.equal(session.held, null);
    assert.equal(store.budget.reservedBytes, 0);
    const next = randomTokens(5, 16);
    const turn = await collect(engine.submit(request(next, { sessionId: 'h', mode: 'append', maxTokens: 10 })));
    assert.equal(turn.start?.restoredFrom, 'disk');
    assert.equal(turn.usage.cachedTokens, 127);
    assert.deepEqual(turn.tokens, await oneShot([...before, ...next], 10));
  });
});
