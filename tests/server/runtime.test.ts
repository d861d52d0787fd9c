/** Runtime.close(): the pair of the runtime's construction (tier sweeps, resumable streams, the decoder). */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import type { Decoder } from '../../src/model/index.ts';
import { createApp } from '../../src/server/app.ts';
import { StreamRegistry } from '../../src/server/streams.ts';
import { wrapDecoder, type TestDecoder } from '../support/test-decoder.ts';
import { makeRuntime, post } from './helpers.ts';

/** Every runtime in this file serves the same loaded model: its decoder's disposes are counted, not passed on. */
const countingDispose = (inner: Decoder): TestDecoder => wrapDecoder(inner, { keepInner: true });

describe('Runtime.close', () => {
  test('disposes the decoder once, closes the streams, and is idempotent', async () => {
    let decoder!: TestDecoder;
    const streams = new StreamRegistry({ resumeMs: 60_000 });
    const runtime = await makeRuntime({ wrapDecoder: (d) => (decoder = countingDispose(d)), streams });
    const app = createApp(runtime, { streams });
    const res = await app.request('/v1/completions', post({ prompt: 'Hi', max_tokens: 2, ignore_eos: true, stream: true }));
    const id = res.headers.get('x-stream-id')!;
    await res.text();
    assert.ok(streams.get(id, ''), 'the finished stream is kept for resumption');
    const first = runtime.close();
    const second = runtime.close();
    assert.equal(first, second, 'one close, however often it is called');
    await first;
    await runtime.close();
    assert.equal(decoder.disposed, 1);
    assert.equal(streams.get(id, ''), undefined, 'the streams are closed');
    assert.equal(streams.stats().streams, 0);
    assert.equal(runtime.state, 'draining');
    assert.equal((await app.request('/readyz')).status, 503);
  });

  test('stops the tier sweeps: an idle session outlives its TTL after close, and expires without it', async () => {
    const settings = { 'session-idle-seconds': '1' };
    const closed = await makeRuntime({ settings, wrapDecoder: countingDispose });
    const open = await makeRuntime({ settings, wrapDecoder: countingDispose });
    for (const runtime of [closed, open]) runtime.serving!.store.create('', 'idle');
    await closed.close();
    // The sweep runs every second; after two and a half, the open runtime has swept its idle session.
    await new Promise((resolve) => setTimeout(resolve, 2500));
    assert.equal(open.serving!.store.get('', 'idle'), undefined, 'the sweep expires idle sessions');
    assert.ok(closed.serving!.store.get('', 'idle'), 'no sweep runs after close');
    await open.close();
  });

  test('lets queued snapshot writes land before it resolves', async () => {
    const snapshotDir = mkdtempSync(join(tmpdir(), 'warmkv-close-'));
    const runtime = await makeRuntime({ settings: { 'snapshot-dir': snapshotDir, 'int8-tier': 'false' }, wrapDecoder: countingDispose });
    const app = createApp(runtime, {});
    assert.equal((await app.request('/v1/sessions', post({ session_id: 's' }))).status, 201);
    assert.equal((await app.request('/v1/sessions/s/completions', post({ prompt: 'Hello there', max_tokens: 4 }))).status, 200);
    const { store, tiers } = runtime.serving!;
    assert.ok(store.demoteOne(), 'a demotion to disk is queued');
    const session = store.get('', 's')!;
    assert.ok(session.snapshotPending);
    assert.ok(!existsSync(tiers.pathOf('', 's')), 'the write runs in the background');
    await runtime.close();
    assert.equal(session.tier, 'disk');
    assert.ok(existsSync(tiers.pathOf('', 's')));
  });
});
