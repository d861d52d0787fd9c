/** The native session API: create (with prefill), append completions, inspect, list, delete. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { chunksOf, makeApp, post, waitFor } from './helpers.ts';
import { type TestDecoder, wrapDecoder } from '../support/test-decoder.ts';

describe('native session API', () => {
  test('three appended turns reuse the whole cache and equal a one-shot request of the transcript', async () => {
    const { app, runtime } = await makeApp();
    const store = runtime.serving!.store;
    const tokenizer = runtime.serving!.model.loaded.tokenizer;
    const created = await app.request('/v1/sessions', post({ prompt: 'Once upon a time' }));
    assert.equal(created.status, 201);
    const session = (await created.json()) as any;
    assert.match(session.id, /^sess_/);
    assert.equal(created.headers.get('x-session-id'), session.id);
    const promptTokens = tokenizer.encode('Once upon a time').length;
    assert.equal(session.tokens, promptTokens, 'the prefill holds exactly the prompt');
    assert.equal(session.cached_tokens, promptTokens);

    let cached = session.cached_tokens;
    const outputs: any[] = [];
    for (const [i, turn] of [' and then the king said', ' so they left', ' and the river'].entries()) {
      const res = await app.request(`/v1/sessions/${session.id}/completions`, post({ prompt: turn, max_tokens: 5 + i, temperature: 0, ignore_eos: true }));
      assert.equal(res.status, 200);
      const body = (await res.json()) as any;
      assert.equal(body.object, 'text_completion');
      assert.equal(body.session_id, session.id);
      assert.equal(body.usage.prompt_tokens_details.cached_tokens, cached, `turn ${i + 1} reuses everything cached`);
      const view = (await (await app.request(`/v1/sessions/${session.id}`)).json()) as any;
      assert.equal(view.tokens, body.usage.prompt_tokens + body.usage.completion_tokens);
      assert.equal(view.cached_tokens, view.tokens - 1, 'all but the last sampled token');
      cached = view.cached_tokens;
      outputs.push(body);
    }
    const all = store.get('', session.id)!.tokens;
    const last = outputs.at(-1);
    const transcript = all.slice(0, all.length - last.usage.completion_tokens);
    const oneShot = (await (await app.request('/v1/completions', post({ prompt: transcript, max_tokens: 7, temperature: 0, ignore_eos: true }))).json()) as any;
    assert.equal(oneShot.usage.prompt_tokens_details.cached_tokens, 0);
    assert.equal(oneShot.usage.prompt_tokens, last.usage.prompt_tokens);
    assert.equal(oneShot.choices[0].text, last.choices[0].text);
  });

  test('append streams in the completions format; an empty prompt continues the transcript', async () => {
    const { app } = await makeApp();
    const created = (await (await app.request('/v1/sessions', post({ session_id: 'stream-me' }))).json()) as any;
    assert.equal(created.tokens, 0);
    const res = await app.request('/v1/sessions/stream-me/completions', post({ prompt: 'Hello', max_tokens: 4, ignore_eos: true, stream: true, stream_options: { include_usage: true } }));
    assert.equal(res.headers.get('content-type'), 'text/event-stream');
    assert.equal(res.headers.get('x-session-id'), 'stream-me');
    const { chunks, done } = chunksOf(await res.text());
    assert.ok(done);
    assert.ok(chunks.every((c) => c.object === 'text_completion' && c.session_id === 'stream-me'));
    assert.equal(chunks.at(-1)!.usage.completion_tokens, 4);
    const more = (await (await app.request('/v1/sessions/stream-me/completions', post({ prompt: '', max_tokens: 3, ignore_eos: true }))).json()) as any;
    assert.equal(more.usage.prompt_tokens, chunks.at(-1)!.usage.total_tokens);
    assert.ok(more.usage.prompt_tokens_details.cached_tokens > 0);
  });

  test('a session prefilled with messages renders them without the generation prompt by default', async () => {
    const { app, runtime } = await makeApp();
    const tokenizer = runtime.serving!.model.loaded.tokenizer;
    const system = [{ role: 'system', content: 'Be brief.' }];
    const plain = (await (await app.request('/v1/sessions', post({ session_id: 'm1', messages: system }))).json()) as any;
    assert.equal(plain.tokens, tokenizer.encode('<|im_start|>system\nBe brief.<|im_end|>\n', false).length);
    const withPrompt = (await (await app.request('/v1/sessions', post({ session_id: 'm2', messages: system, add_generation_prompt: true }))).json()) as any;
    assert.equal(withPrompt.tokens, tokenizer.encode('<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>assistant\n', false).length);
    const both = await app.request('/v1/sessions', post({ prompt: 'x', messages: system }));
    assert.equal(both.status, 400);
    const again = await app.request('/v1/sessions', post({ session_id: 'm1' }));
    assert.equal(again.status, 409);
    assert.equal(((await again.json()) as any).error.code, 'session_exists');
  });

  test('GET one session, list with pagination, DELETE; busy sessions cannot be deleted', async () => {
    let slow!: TestDecoder;
    const { app, runtime } = await makeApp({ wrapDecoder: (d) => (slow = wrapDecoder(d)) });
    const ids = ['a1', 'a2', 'a3', 'a4', 'a5'];
    for (const id of ids) {
      await app.request('/v1/completions', post({ prompt: 'Hi', max_tokens: 2, session_id: id }));
      await new Promise((resolve) => setTimeout(resolve, 2)); // distinct creation times
    }
    const view = (await (await app.request('/v1/sessions/a1')).json()) as any;
    assert.deepEqual(Object.keys(view).sort(), [
      'blocks', 'bytes', 'cached_tokens', 'created_at', 'dropped_tokens', 'id', 'last_used_at', 'object', 'requests', 'state', 'tier', 'tokens', 'used_bytes', 'version', 'window_drops',
    ]);
    assert.equal(view.object, 'session');
    assert.equal(view.state, 'idle');
    assert.equal(view.tier, 'hot');
    // Whole 16-token blocks are reserved; the cached tokens use part of the last one.
    const bytesPerToken = runtime.serving!.model.loaded.decoder.io.kv.bytesPerToken;
    assert.equal(view.blocks, Math.ceil(view.cached_tokens / 16));
    assert.equal(view.bytes, view.blocks * 16 * bytesPerToken);
    assert.equal(view.used_bytes, view.cached_tokens * bytesPerToken);
    assert.equal(view.dropped_tokens, 0);
    assert.equal(view.window_drops, 0);
    assert.equal(view.requests, 1);

    const page1 = (await (await app.request('/v1/sessions?limit=2&order=asc')).json()) as any;
    assert.deepEqual(page1.data.map((s: any) => s.id), ['a1', 'a2']);
    assert.equal(page1.has_more, true);
    const page2 = (await (await app.request(`/v1/sessions?limit=2&order=asc&after=${page1.last_id}`)).json()) as any;
    assert.deepEqual(page2.data.map((s: any) => s.id), ['a3', 'a4']);
    const page3 = (await (await app.request(`/v1/sessions?limit=2&order=asc&after=${page2.last_id}`)).json()) as any;
    assert.deepEqual(page3.data.map((s: any) => s.id), ['a5']);
    assert.equal(page3.has_more, false);
    const newest = (await (await app.request('/v1/sessions?limit=1')).json()) as any;
    assert.equal(newest.data[0].id, 'a5', 'newest first by default');
    assert.equal((await app.request('/v1/sessions?limit=0')).status, 400);

    const deleted = await app.request('/v1/sessions/a1', { method: 'DELETE' });
    assert.deepEqual(await deleted.json(), { id: 'a1', object: 'session.deleted', deleted: true });
    assert.equal((await app.request('/v1/sessions/a1')).status, 404);
    assert.equal((await app.request('/v1/sessions/a1', { method: 'DELETE' })).status, 404);

    slow.decodeDelayMs = 5;
    const running = await app.request('/v1/sessions/a2/completions', post({ prompt: ' go', max_tokens: 300, ignore_eos: true, stream: true }));
    const busyView = (await (await app.request('/v1/sessions/a2')).json()) as any;
    assert.equal(busyView.state, 'busy');
    const refused = await app.request('/v1/sessions/a2', { method: 'DELETE' });
    assert.equal(refused.status, 409);
    assert.equal(((await refused.json()) as any).error.code, 'session_busy');
    const appendBusy = await app.request('/v1/sessions/a2/completions', post({ prompt: 'x' }));
    assert.equal(appendBusy.status, 409);
    await running.body!.cancel();
    slow.decodeDelayMs = 0;
    await waitFor(() => runtime.serving!.store.get('', 'a2')!.busy === false);
  });
});

describe('sliding window through the API', () => {
  test('usage and the session view report the tokens the window dropped', async () => {
    const { app } = await makeApp({ settings: { 'max-context-tokens': '32', 'window-drop-tokens': '8' } });
    const res = await app.request('/v1/completions', post({ prompt: 'The quick brown fox jumps over the lazy dog again and again', max_tokens: 40, temperature: 0, ignore_eos: true, session_id: 'w' }));
    assert.equal(res.status, 200);
    const body = (await res.json()) as any;
    assert.ok(body.usage.dropped_tokens >= 8, `dropped ${body.usage.dropped_tokens}`);
    assert.equal(body.usage.dropped_tokens % 8, 0);
    const view = (await (await app.request('/v1/sessions/w')).json()) as any;
    assert.equal(view.dropped_tokens, body.usage.dropped_tokens);
    assert.equal(view.window_drops, body.usage.dropped_tokens / 8);
    assert.ok(view.cached_tokens <= 32);
    assert.equal(view.tokens, view.dropped_tokens + view.cached_tokens + 1);
  });

  test('tier: empty for a new session, running (with the tokens cached so far) while it generates, hot after', async () => {
    let slow!: TestDecoder;
    const { app } = await makeApp({ wrapDecoder: (d) => (slow = wrapDecoder(d)) });
    const view = async (id: string) => (await (await app.request(`/v1/sessions/${id}`)).json()) as any;
    const created = (await (await app.request('/v1/sessions', post({ session_id: 'tiers' }))).json()) as any;
    assert.equal(created.tier, 'empty');
    assert.equal(created.cached_tokens, 0);
    assert.equal((await view('tiers')).tier, 'empty');

    slow.decodeDelayMs = 3;
    const running = app.request('/v1/sessions/tiers/completions', post({ prompt: 'Once upon a time', max_tokens: 60, temperature: 0, ignore_eos: true }));
    // While it prefills the request holds nothing yet; then every decode step adds a token.
    let during = await view('tiers');
    for (let tries = 0; during.cached_tokens === 0 && tries < 200; tries++) {
      await new Promise((resolve) => setTimeout(resolve, 10));
      during = await view('tiers');
    }
    for (let i = 0; i < 3; i++) {
      const earlier = during.cached_tokens;
      await new Promise((resolve) => setTimeout(resolve, 20));
      during = await view('tiers');
      assert.equal(during.tier, 'running');
      assert.equal(during.state, 'busy');
      assert.ok(during.cached_tokens > earlier, `${during.cached_tokens} cached after ${earlier}`);
      assert.ok(during.cached_tokens < during.tokens);
    }
    slow.decodeDelayMs = 0;
    const body = (await (await running).json()) as any;
    const after = await view('tiers');
    assert.equal(after.tier, 'hot');
    assert.equal(after.cached_tokens, body.usage.prompt_tokens + body.usage.completion_tokens - 1);
  });
});
