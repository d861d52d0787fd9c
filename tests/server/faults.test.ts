/**
 * Faults: a model (onnxruntime) error in the middle of a stream, in a batched step, during a prefill;
 * an unwritable or vanishing SNAPSHOT_DIR; a corrupted snapshot file. Each request that hits the fault
 * ends with an error, its session goes back to its last consistent state (the transcript before the
 * request and a cache that matches it), and the server keeps serving with correct results.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { chunksOf, makeApp, post, waitFor } from './helpers.ts';
import { appWithLogger, captureLogger } from './log-capture.ts';
import { type TestDecoder, wrapDecoder } from '../support/test-decoder.ts';

const GREEDY = { temperature: 0, ignore_eos: true };

/** One-shot greedy continuation of a token sequence, with no session: the reference for a session's turn. */
async function oneShot(app: { request: (path: string, init: RequestInit) => Response | Promise<Response> }, tokens: number[], maxTokens: number): Promise<string> {
  const res = await app.request('/v1/completions', post({ prompt: tokens, max_tokens: maxTokens, ...GREEDY }));
  assert.equal(res.status, 200);
  const body = (await res.json()) as any;
  assert.equal(body.usage.prompt_tokens_details.cached_tokens, 0);
  return body.choices[0].text;
}

describe('model errors', () => {
  test('an onnxruntime error mid-stream ends that stream with an error chunk, rolls the session back, and the server keeps serving', async () => {
    let slow!: TestDecoder;
    const { app, runtime } = await makeApp({ wrapDecoder: (d) => (slow = wrapDecoder(d)) });
    const serving = runtime.serving!;
    const tokenizer = serving.model.loaded.tokenizer;
    assert.equal((await app.request('/v1/sessions', post({ session_id: 'story', prompt: 'Once upon a time' }))).status, 201);
    const first = (await (await app.request('/v1/sessions/story/completions', post({ prompt: ' there was', max_tokens: 6, ...GREEDY }))).json()) as any;
    const session = serving.store.get('', 'story')!;
    const before = session.tokens.slice();
    assert.equal(before.length, first.usage.total_tokens);

    // The third decode step of the next turn throws, as onnxruntime does on a failed run.
    let decodes = 0;
    slow.failWhen = (step) => step.seqLength === 1 && ++decodes === 3;
    const res = await app.request('/v1/sessions/story/completions', post({ prompt: ' a king', max_tokens: 10, stream: true, ...GREEDY }));
    assert.equal(res.status, 200);
    const text = await res.text();
    const { chunks, done } = chunksOf(text);
    assert.equal(done, false, 'no [DONE] after an error');
    const last = chunks.at(-1)!;
    assert.deepEqual(Object.keys(last.error).sort(), ['code', 'message', 'param', 'type']);
    assert.equal(last.error.type, 'server_error');
    assert.equal(last.error.code, 'internal_error');
    assert.ok(!text.includes('injected') && !text.includes('secret'), 'no internals in the error');
    assert.equal(decodes, 3, 'the fault came after two good decode steps: mid-stream');
    slow.failWhen = null;

    // Rolled back: the transcript before the request, not busy, a cache no longer than the transcript.
    await waitFor(() => !session.busy);
    assert.deepEqual(session.tokens, before);
    assert.ok(session.cachedLength <= before.length, "the cache holds no token the transcript lost");
    const view = (await (await app.request('/v1/sessions/story')).json()) as any;
    assert.equal(view.tokens, before.length);
    assert.equal(view.state, 'idle');
    assert.deepEqual(serving.engine.stats(), { running: 0, waiting: 0, batchSize: 0 });

    // The same turn again: it reuses what the rollback kept and equals a one-shot computation.
    const retry = (await (await app.request('/v1/sessions/story/completions', post({ prompt: ' a king', max_tokens: 10, ...GREEDY }))).json()) as any;
    assert.ok(retry.usage.prompt_tokens_details.cached_tokens > 0, 'the cache survived the rollback');
    const input = before.concat(tokenizer.encode(' a king', false));
    assert.equal(retry.usage.prompt_tokens, input.length);
    assert.equal(retry.choices[0].text, await oneShot(app, input, 10));
    // And the server serves everyone else.
    assert.equal((await app.request('/v1/chat/completions', post({ messages: [{ role: 'user', content: 'Hello' }], max_tokens: 3 }))).status, 200);
    assert.equal((await app.request('/readyz')).status, 200);
  });

  test('a fault in a batched decode step ends every stream of the batch; each session rolls back on its own', async () => {
    let slow!: TestDecoder;
    const { app, runtime } = await makeApp({ wrapDecoder: (d) => (slow = wrapDecoder(d, { decodeDelayMs: 5 })) });
    const store = runtime.serving!.store;
    const prompts = { a: 'The river ran', b: 'In the old town the bells' };
    for (const [id, prompt] of Object.entries(prompts)) {
      assert.equal((await app.request('/v1/completions', post({ prompt, max_tokens: 3, session_id: id, ...GREEDY }))).status, 200);
    }
    const before = { a: store.get('', 'a')!.tokens.slice(), b: store.get('', 'b')!.tokens.slice() };
    slow.failWhen = (step) => step.seqLength === 1 && step.batchSize === 2;
    const streams = await Promise.all(
      Object.entries(prompts).map(([id, prompt]) => app.request('/v1/completions', post({ prompt: `${prompt} and more`, max_tokens: 30, stream: true, session_id: id, ...GREEDY }))),
    );
    const bodies = await Promise.all(streams.map((r) => r.text()));
    slow.failWhen = null;
    for (const body of bodies) {
      const { chunks, done } = chunksOf(body);
      assert.equal(done, false);
      assert.equal(chunks.at(-1)!.error.code, 'internal_error');
    }
    await waitFor(() => runtime.serving!.engine.stats().running === 0);
    assert.deepEqual(store.get('', 'a')!.tokens, before.a);
    assert.deepEqual(store.get('', 'b')!.tokens, before.b);
    for (const [id, prompt] of Object.entries(prompts)) {
      const again = (await (await app.request('/v1/completions', post({ prompt: `${prompt} and more`, max_tokens: 5, session_id: id, ...GREEDY }))).json()) as any;
      assert.ok(again.usage.prompt_tokens_details.cached_tokens > 0);
      const reference = (await (await app.request('/v1/completions', post({ prompt: `${prompt} and more`, max_tokens: 5, ...GREEDY }))).json()) as any;
      assert.equal(again.choices[0].text, reference.choices[0].text);
    }
  });

  test('a fault during a prefill (non-streaming) is a 500 without internals and leaves the session as it was', async () => {
    let slow!: TestDecoder;
    const { app, runtime } = await makeApp({ wrapDecoder: (d) => (slow = wrapDecoder(d)), settings: { 'prefill-chunk-tokens': '4' } });
    const store = runtime.serving!.store;
    assert.equal((await app.request('/v1/completions', post({ prompt: 'A short start', max_tokens: 2, session_id: 'p', ...GREEDY }))).status, 200);
    const before = store.get('', 'p')!.tokens.slice();
    const cachedBefore = store.get('', 'p')!.cachedLength;
    let prefills = 0;
    slow.failWhen = (step) => step.seqLength > 1 && ++prefills === 2;
    const res = await app.request('/v1/completions', post({ prompt: 'A short start, then a much longer continuation of it', max_tokens: 4, session_id: 'p', ...GREEDY }));
    const body = (await res.json()) as any;
    assert.equal(res.status, 500);
    assert.equal(body.error.code, 'internal_error');
    assert.match(body.error.message, /request id req_/);
    assert.ok(!JSON.stringify(body).includes('injected'));
    slow.failWhen = null;
    const session = store.get('', 'p')!;
    assert.deepEqual(session.tokens, before);
    assert.ok(session.cachedLength <= cachedBefore && !session.busy);
    const again = (await (await app.request('/v1/completions', post({ prompt: 'A short start, then a much longer continuation of it', max_tokens: 4, session_id: 'p', ...GREEDY }))).json()) as any;
    const reference = (await (await app.request('/v1/completions', post({ prompt: 'A short start, then a much longer continuation of it', max_tokens: 4, ...GREEDY }))).json()) as any;
    assert.equal(again.choices[0].text, reference.choices[0].text);
  });

  test('POST /v1/sessions whose prefill fails creates nothing (201 or nothing)', async () => {
    let slow!: TestDecoder;
    const { app, runtime } = await makeApp({ wrapDecoder: (d) => (slow = wrapDecoder(d)) });
    slow.failWhen = () => true;
    const res = await app.request('/v1/sessions', post({ session_id: 'never', prompt: 'Hello there' }));
    assert.equal(res.status, 500);
    assert.equal(runtime.serving!.store.get('', 'never'), undefined);
    slow.failWhen = null;
    assert.equal((await app.request('/v1/sessions', post({ session_id: 'never', prompt: 'Hello there' }))).status, 201, 'the id is free for a retry');
  });
});

describe('snapshot directory faults', () => {
  test('an unwritable SNAPSHOT_DIR degrades to memory-only with a warning; readyz 200 and generation works under eviction', async () => {
    const base = mkdtempSync(join(tmpdir(), 'warmkv-faults-'));
    writeFileSync(join(base, 'a-file'), 'not a directory');
    const log = captureLogger();
    // 512 bytes per token and 16-token blocks: room for two one-block sessions at a time.
    const { app, runtime } = await appWithLogger({ 'snapshot-dir': join(base, 'a-file', 'snapshots'), 'kv-cache-bytes': String(2 * 16 * 512) }, log.logger);
    const warning = log.lines.find((l) => l.level === 'warn' && /SNAPSHOT_DIR is not writable: running memory-only/.test(l.message));
    assert.ok(warning, 'a warning names the problem');
    assert.ok(runtime.serving!.tiers.snapshotsEnabled === false);
    assert.equal((await app.request('/readyz')).status, 200);
    const outputs = new Map<string, string>();
    for (const id of ['s1', 's2', 's3', 's4']) {
      const body = (await (await app.request('/v1/completions', post({ prompt: `Session ${id} says`, max_tokens: 4, session_id: id, ...GREEDY }))).json()) as any;
      outputs.set(id, body.choices[0].text);
    }
    // Sessions pushed out of memory come back by recomputation, with the same results.
    const tiers = runtime.serving!.tiers.counts().sessions;
    assert.equal(tiers.disk, 0);
    assert.ok(tiers.int8 + tiers.evicted > 0, 'the budget forced demotions');
    for (const id of ['s1', 's2', 's3', 's4']) {
      const body = (await (await app.request('/v1/completions', post({ prompt: `Session ${id} says`, max_tokens: 4, session_id: id, ...GREEDY }))).json()) as any;
      assert.equal(body.choices[0].text, outputs.get(id));
    }
  });

  test('a snapshot directory that disappears while serving: writes fail, sessions fall back to their transcripts', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'warmkv-faults-gone-'));
    const log = captureLogger();
    const { app, runtime } = await appWithLogger({ 'snapshot-dir': dir, 'kv-cache-bytes': String(2 * 16 * 512) }, log.logger);
    assert.ok(runtime.serving!.tiers.snapshotsEnabled);
    rmSync(dir, { recursive: true });
    writeFileSync(dir, 'now a file');
    const ids = ['g1', 'g2', 'g3', 'g4', 'g5', 'g6'];
    const outputs = new Map<string, string>();
    for (const id of ids) {
      const res = await app.request('/v1/completions', post({ prompt: `Gone ${id} went`, max_tokens: 4, session_id: id, ...GREEDY }));
      assert.equal(res.status, 200);
      outputs.set(id, ((await res.json()) as any).choices[0].text);
    }
    assert.ok(log.lines.some((l) => l.level === 'warn' && /snapshot write failed/.test(l.message)));
    for (const id of ids) {
      const body = (await (await app.request('/v1/completions', post({ prompt: `Gone ${id} went`, max_tokens: 4, session_id: id, ...GREEDY }))).json()) as any;
      assert.equal(body.choices[0].text, outputs.get(id), `${id} is intact`);
    }
    rmSync(dir);
  });

  test('a corrupted snapshot file is detected on restore and the session is recomputed from its transcript', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'warmkv-faults-corrupt-'));
    const first = await makeApp({ settings: { 'snapshot-dir': dir } });
    const prompt = 'A long story about a castle, a river and a king who';
    const original = (await (await first.app.request('/v1/completions', post({ prompt, max_tokens: 6, session_id: 'c', ...GREEDY }))).json()) as any;
    const transcript = first.runtime.serving!.store.get('', 'c')!.tokens.slice();
    await first.runtime.serving!.tiers.flushAll();
    const [file] = readdirSync(dir).filter((f) => f.endsWith('.wkv'));
    const bytes = readFileSync(join(dir, file));
    for (let i = bytes.length - 64; i < bytes.length - 40; i++) bytes[i] ^= 0x5a; // flip payload bytes
    writeFileSync(join(dir, file), bytes);

    const log = captureLogger();
    const { app, runtime } = await appWithLogger({ 'snapshot-dir': dir }, log.logger);
    const resumed = (await (await app.request('/v1/completions', post({ prompt, max_tokens: 6, session_id: 'c', ...GREEDY }))).json()) as any;
    assert.ok(log.lines.some((l) => l.level === 'warn' && /snapshot unreadable/.test(l.message)), 'the corruption is reported');
    assert.equal(resumed.usage.prompt_tokens_details.cached_tokens, 0, 'nothing of the bad cache is used');
    assert.equal(resumed.choices[0].text, original.choices[0].text);
    assert.equal(runtime.serving!.store.get('', 'c')!.tokens.length, transcript.length);
  });
});
