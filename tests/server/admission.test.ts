/**
 * Admission (src/server/admission.ts): every entry point that can create a session behaves the same
 * when its request is refused: the session that the refused request created is removed (so it never
 * counts against MAX_SESSIONS_PER_KEY), and a session that existed before is untouched.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { wrapDecoder } from '../support/test-decoder.ts';
import { expectError, makeApp, post } from './helpers.ts';

/** A context of 64 tokens, refusals instead of a sliding window, and room for one session per key. */
const settings = { 'max-context-tokens': '64', 'default-truncation': 'error', 'max-sessions-per-key': '1' };
const tooLong = Array(80).fill(7);

describe('admission: a refused request leaves the sessions as it found them', () => {
  const entryPoints: Array<{ name: string; refused: (id: string) => [string, RequestInit] }> = [
    { name: 'POST /v1/completions', refused: (id) => ['/v1/completions', post({ prompt: tooLong, max_tokens: 4, session_id: id })] },
    { name: 'POST /v1/completions (X-Session-Id)', refused: (id) => ['/v1/completions', post({ prompt: tooLong, max_tokens: 4 }, { 'X-Session-Id': id })] },
    {
      name: 'POST /v1/chat/completions',
      refused: (id) => ['/v1/chat/completions', post({ messages: [{ role: 'user', content: 'word '.repeat(80) }], max_tokens: 4, session_id: id })],
    },
    { name: 'POST /v1/sessions', refused: (id) => ['/v1/sessions', post({ prompt: tooLong, session_id: id })] },
  ];

  for (const { name, refused } of entryPoints) {
    test(`${name}: the session the refused request created is removed and does not count`, async () => {
      const { app, runtime } = await makeApp({ settings });
      const store = runtime.serving!.store;
      await expectError(await app.request(...refused('fresh')), 400, 'context_length_exceeded');
      assert.equal(store.get('', 'fresh'), undefined, 'no session left behind');
      assert.equal(store.list('').length, 0);
      // The one session this key may hold is still free.
      const created = await app.request('/v1/sessions', post({ session_id: 'other' }));
      assert.equal(created.status, 201);
    });

    test(`${name}: an existing session is untouched by a refused request`, async () => {
      const { app, runtime } = await makeApp({ settings: { ...settings, 'max-sessions-per-key': '2' } });
      const store = runtime.serving!.store;
      const first = await app.request('/v1/completions', post({ prompt: 'Once upon a time', max_tokens: 3, ignore_eos: true, session_id: 'kept' }));
      assert.equal(first.status, 200);
      const before = [...store.get('', 'kept')!.tokens];
      const [path, init] = refused('kept');
      const answer = await app.request(path, init);
      // POST /v1/sessions refuses an existing id before it looks at the prompt.
      if (path === '/v1/sessions') await expectError(answer, 409, 'session_exists');
      else await expectError(answer, 400, 'context_length_exceeded');
      const session = store.get('', 'kept');
      assert.ok(session, 'the session is still there');
      assert.deepEqual(session.tokens, before, 'with its transcript unchanged');
      assert.equal(session.busy, false);
    });
  }

  test('POST /v1/sessions/{id}/completions: a refused append leaves its session as it was; an unknown id creates nothing', async () => {
    const { app, runtime } = await makeApp({ settings });
    const store = runtime.serving!.store;
    assert.equal((await app.request('/v1/sessions', post({ session_id: 's', prompt: 'Hello there' }))).status, 201);
    const before = [...store.get('', 's')!.tokens];
    await expectError(await app.request('/v1/sessions/s/completions', post({ prompt: tooLong, max_tokens: 4 })), 400, 'context_length_exceeded');
    assert.deepEqual(store.get('', 's')!.tokens, before);
    await expectError(await app.request('/v1/sessions/nobody/completions', post({ prompt: 'x' })), 404, 'session_not_found', 'session_id');
    assert.deepEqual(store.list('').map((s) => s.id), ['s']);
  });

  test('a request refused by the per-key generation limit creates no session', async () => {
    const { app, runtime } = await makeApp({ settings: { 'max-streams-per-key': '1' } });
    const parts = runtime.serving!;
    // Hold the key's one generation slot with a long-running streamed request.
    const running = await app.request('/v1/completions', post({ prompt: 'Hi', max_tokens: 200, ignore_eos: true, stream: true }));
    assert.equal(running.status, 200);
    await expectError(await app.request('/v1/completions', post({ prompt: 'Hi', max_tokens: 2, session_id: 'late' })), 429, 'too_many_streams');
    await expectError(await app.request('/v1/sessions', post({ prompt: 'Hi', session_id: 'late' })), 429, 'too_many_streams');
    assert.equal(parts.store.get('', 'late'), undefined);
    await running.body!.cancel();
  });

  test('a request queued, then refused before it started (cache full past the queue timeout), removes the session it created', async () => {
    // 512 bytes per token, 16-token blocks: the budget fits one 48-token request at a time.
    const { app, runtime } = await makeApp({
      settings: { 'kv-cache-bytes': String(3 * 16 * 512), 'queue-timeout-seconds': '0.2' },
      wrapDecoder: (d) => wrapDecoder(d, { decodeDelayMs: 20 }),
    });
    const store = runtime.serving!.store;
    const holder = await app.request('/v1/completions', post({ prompt: 'Hello', max_tokens: 40, ignore_eos: true, stream: true, session_id: 'holder' }));
    assert.equal(holder.status, 200);
    await expectError(await app.request('/v1/completions', post({ prompt: 'Hi', max_tokens: 40, session_id: 'waiter' })), 429, 'cache_full');
    assert.equal(store.get('', 'waiter'), undefined, 'completions: no session left behind');
    await expectError(await app.request('/v1/sessions', post({ prompt: Array(40).fill(7), session_id: 'prefill' })), 429, 'cache_full');
    assert.equal(store.get('', 'prefill'), undefined, 'POST /v1/sessions: no session left behind');
    assert.deepEqual(store.list('').map((s) => s.id), ['holder']);
    await holder.body!.cancel();
  });
});
