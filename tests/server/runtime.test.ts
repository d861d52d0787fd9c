/** Runtime.close(): the pair of the runtime's construction (tier sweeps, resumable streams, the decoder). */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { loadConfig } from '../../src/config.ts';
import { emptyKv, WorkerDecoder, type Decoder } from '../../src/model/index.ts';
import { Runtime } from '../../src/runtime.ts';
import { LLAMA, testModelDir } from '../support/fixtures.ts';
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

describe('PREFILL_LANE=worker', () => {
  test('loads a second session on a thread of its own, serves with it, says so in warmkv_model_info, and closes both', async () => {
    const dir = await testModelDir(LLAMA);
    const config = loadConfig({}, ['--model', dir, '--kv-cache-bytes', '64MiB', '--prefill-lane', 'worker', '--int8-tier', 'false']);
    const runtime = new Runtime(config, { processMetrics: false });
    const serving = await runtime.ready;
    const lane = serving.engine.model.prefillDecoder!;
    assert.ok(lane instanceof WorkerDecoder, 'the lane runs on a worker thread');
    assert.equal(lane.intraOpThreads, 1, 'PREFILL_LANE_THREADS defaults to 1');
    assert.deepEqual(lane.io, serving.engine.model.decoder.io, 'the same graph, the same inputs and outputs');
    assert.ok((serving.engine.model.decoder.intraOpThreads ?? 1) <= Math.max(1, availableParallelism() - 1), "the decoder's calibration left the lane's core out");
    const app = createApp(runtime);
    const res = await app.request('/v1/completions', post({ prompt: 'Hello there', max_tokens: 3, ignore_eos: true }));
    assert.equal(res.status, 200);
    const metrics = await (await app.request('/metrics')).text();
    assert.match(metrics, /warmkv_model_info\{[^}]*prefill_lane="worker"/);
    await runtime.close();
    const step = { batchSize: 1, seqLength: 1, inputIds: BigInt64Array.of(1n), attentionMask: BigInt64Array.of(1n), positionIds: BigInt64Array.of(0n), past: emptyKv(lane.io.kv, 1) };
    await assert.rejects(lane.run(step), /disposed/, 'close disposed the lane too');
  });
});
