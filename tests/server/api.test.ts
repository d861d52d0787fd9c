/** The HTTP API through `app.request()`: response shapes, streaming format, sessions, limits. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { chunksOf, makeApp, post, waitFor } from './helpers.ts';
import { type TestDecoder, wrapDecoder } from '../support/test-decoder.ts';

const USER = [{ role: 'user', content: 'Tell me about the old castle.' }];

describe('POST /v1/completions', () => {
  test('non-streaming: OpenAI shape, ids, usage, session echoed in body and header', async () => {
    const { app, runtime } = await makeApp();
    const res = await app.request('/v1/completions', post({ prompt: 'Once upon a time', max_tokens: 6, temperature: 0, ignore_eos: true, session_id: 'c1' }));
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'application/json');
    assert.equal(res.headers.get('x-session-id'), 'c1');
    assert.match(res.headers.get('x-request-id') ?? '', /^req_[0-9a-f]{24}$/);
    const body = await res.json() as any;
    assert.match(body.id, /^cmpl-[0-9a-f]{32}$/);
    assert.equal(body.object, 'text_completion');
    assert.equal(body.model, runtime.serving!.model.id);
    assert.equal(typeof body.created, 'number');
    assert.equal(body.choices.length, 1);
    assert.equal(body.choices[0].index, 0);
    assert.equal(body.choices[0].finish_reason, 'length');
    assert.equal(typeof body.choices[0].text, 'string');
    const promptTokens = runtime.serving!.model.loaded.tokenizer.encode('Once upon a time').length;
    assert.deepEqual(body.usage, {
      prompt_tokens: promptTokens,
      completion_tokens: 6,
      total_tokens: promptTokens + 6,
      prompt_tokens_details: { cached_tokens: 0 },
      dropped_tokens: 0,
    });
    assert.equal(body.session_id, 'c1');
    const stateless = await (await app.request('/v1/completions', post({ prompt: 'Once upon a time', max_tokens: 6, temperature: 0, ignore_eos: true }))).json() as any;
    assert.equal(stateless.session_id, undefined, 'no session without session_id');
    assert.equal(stateless.choices[0].text, body.choices[0].text);
    assert.equal(runtime.serving!.store.size, 1, 'a request without session_id keeps nothing');
  });

  test('streaming: same id and created on every chunk, SSE ids, finish_reason last, usage chunk, [DONE]', async () => {
    const { app } = await makeApp();
    const res = await app.request(
      '/v1/completions',
      post({ prompt: 'The king said', max_tokens: 8, temperature: 0, stream: true, stream_options: { include_usage: true }, session_id: 's-stream' }),
    );
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), 'text/event-stream');
    assert.equal(res.headers.get('cache-control'), 'no-cache');
    assert.equal(res.headers.get('x-accel-buffering'), 'no');
    assert.equal(res.headers.get('x-session-id'), 's-stream');
    const text = await res.text();
    assert.ok(!text.includes('event:'), 'no named events');
    const { chunks, done, ids } = chunksOf(text);
    assert.ok(done, 'ends with data: [DONE]');
    assert.deepEqual(ids, ids.map((_, i) => String(i)), 'per-stream sequence numbers');
    assert.ok(chunks.length >= 3);
    const { id, created } = chunks[0];
    for (const chunk of chunks) {
      assert.equal(chunk.id, id);
      assert.equal(chunk.created, created);
      assert.equal(chunk.object, 'text_completion');
      assert.equal(chunk.session_id, 's-stream');
    }
    const usageChunk = chunks.at(-1)!;
    assert.deepEqual(usageChunk.choices, []);
    assert.equal(usageChunk.usage.completion_tokens, 8);
    const choiceChunks = chunks.slice(0, -1);
    for (const chunk of choiceChunks.slice(0, -1)) {
      assert.equal(chunk.choices[0].finish_reason, null);
      assert.equal(chunk.usage, null);
    }
    assert.equal(choiceChunks.at(-1)!.choices[0].finish_reason, 'length');
    // The streamed text equals the non-streamed one.
    const streamed = choiceChunks.map((c) => c.choices[0].text).join('');
    const whole = await (await app.request('/v1/completions', post({ prompt: 'The king said', max_tokens: 8, temperature: 0 }))).json() as any;
    assert.equal(streamed, whole.choices[0].text);
  });

  test('without include_usage there is no usage chunk and no usage field', async () => {
    const { app } = await makeApp();
    const res = await app.request('/v1/completions', post({ prompt: 'Hello', max_tokens: 4, temperature: 0, stream: true }));
    const { chunks, done } = chunksOf(await res.text());
    assert.ok(done);
    assert.ok(chunks.every((c) => c.choices.length === 1 && !('usage' in c) && !('session_id' in c)));
  });

  test('token-id prompts, echo, stop strings and seeds', async () => {
    const { app, runtime } = await makeApp();
    const tokenizer = runtime.serving!.model.loaded.tokenizer;
    const ask = async (body: Record<string, unknown>) => (await app.request('/v1/completions', post({ max_tokens: 12, temperature: 0, ...body }))).json() as any;
    const byText = await ask({ prompt: 'It was a bright cold day' });
    const byIds = await ask({ prompt: tokenizer.encode('It was a bright cold day') });
    assert.equal(byIds.choices[0].text, byText.choices[0].text);
    const echoed = await ask({ prompt: 'It was a bright cold day', echo: true });
    assert.equal(echoed.choices[0].text, 'It was a bright cold day' + byText.choices[0].text);
    const streamedEcho = chunksOf(await (await app.request('/v1/completions', post({ prompt: 'It was a bright cold day', echo: true, max_tokens: 12, temperature: 0, stream: true }))).text());
    assert.equal(streamedEcho.chunks[0].choices[0].text, 'It was a bright cold day', 'echo is the first chunk');

    const full: string = byText.choices[0].text;
    const stop = full.slice(4, 6);
    assert.ok(stop.length === 2);
    const stopped = await ask({ prompt: 'It was a bright cold day', stop });
    assert.equal(stopped.choices[0].finish_reason, 'stop');
    assert.equal(stopped.choices[0].text, full.slice(0, full.indexOf(stop)));

    const sampled = { prompt: 'It was a bright cold day', temperature: 1, top_k: 50, top_p: 0.95, min_p: 0.01, repetition_penalty: 1.1, max_tokens: 20 };
    const a = await ask({ ...sampled, seed: 42 });
    const b = await ask({ ...sampled, seed: 42 });
    const c = await ask({ ...sampled, seed: 43, user: 'someone' });
    assert.equal(a.choices[0].text, b.choices[0].text);
    assert.notEqual(a.choices[0].text, c.choices[0].text);
  });

  test('the end-of-turn token stops generation with finish_reason stop unless ignore_eos is set', async () => {
    let slow!: TestDecoder;
    const { app, runtime } = await makeApp({ wrapDecoder: (d) => (slow = wrapDecoder(d)) });
    slow.forceToken = runtime.serving!.model.loaded.tokenizer.tokenToId('<|im_end|>')!;
    const chat = await (await app.request('/v1/chat/completions', post({ messages: USER, max_tokens: 5 }))).json() as any;
    assert.equal(chat.choices[0].finish_reason, 'stop');
    assert.equal(chat.choices[0].message.content, '');
    assert.equal(chat.usage.completion_tokens, 1);
    const ignored = await (await app.request('/v1/completions', post({ prompt: 'Hi', max_tokens: 5, ignore_eos: true }))).json() as any;
    assert.equal(ignored.choices[0].finish_reason, 'length');
    assert.equal(ignored.usage.completion_tokens, 5);
  });
});

describe('POST /v1/chat/completions', () => {
  test('non-streaming: chat.completion with an assistant message', async () => {
    const { app } = await makeApp();
    const res = await app.request('/v1/chat/completions', post({ messages: USER, max_completion_tokens: 6, temperature: 0 }));
    assert.equal(res.status, 200);
    const body = await res.json() as any;
    assert.match(body.id, /^chatcmpl-[0-9a-f]{32}$/);
    assert.equal(body.object, 'chat.completion');
    assert.equal(body.choices[0].message.role, 'assistant');
    assert.equal(typeof body.choices[0].message.content, 'string');
    assert.ok(['stop', 'length'].includes(body.choices[0].finish_reason));
    assert.ok(body.usage.prompt_tokens > 10);
    // The older max_tokens works too, and gives the same greedy output.
    const old = await (await app.request('/v1/chat/completions', post({ messages: USER, max_tokens: 6, temperature: 0 }))).json() as any;
    assert.equal(old.choices[0].message.content, body.choices[0].message.content);
  });

  test('streaming: first delta carries the role, last choice chunk the finish_reason, then usage and [DONE]', async () => {
    const { app } = await makeApp();
    const res = await app.request(
      '/v1/chat/completions',
      post({ messages: USER, max_tokens: 6, temperature: 0, stream: true, stream_options: { include_usage: true }, ignore_eos: true }),
    );
    const { chunks, done } = chunksOf(await res.text());
    assert.ok(done);
    for (const chunk of chunks) {
      assert.equal(chunk.object, 'chat.completion.chunk');
      assert.equal(chunk.id, chunks[0].id);
      assert.equal(chunk.created, chunks[0].created);
    }
    assert.deepEqual(chunks[0].choices[0].delta, { role: 'assistant', content: '' });
    const last = chunks.at(-2)!;
    assert.equal(last.choices[0].finish_reason, 'length');
    assert.deepEqual(last.choices[0].delta, {});
    for (const chunk of chunks.slice(1, -2)) assert.ok(typeof chunk.choices[0].delta.content === 'string' && !('role' in chunk.choices[0].delta));
    assert.deepEqual(chunks.at(-1)!.choices, []);
    assert.equal(chunks.at(-1)!.usage.completion_tokens, 6);
  });

  test('the rendered prompt is the ChatML template applied to the messages', async () => {
    const { app, runtime } = await makeApp();
    const tokenizer = runtime.serving!.model.loaded.tokenizer;
    const messages = [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: [{ type: 'text', text: 'Hi' }] },
    ];
    const chat = await (await app.request('/v1/chat/completions', post({ messages, max_tokens: 5, temperature: 0, ignore_eos: true }))).json() as any;
    const text = '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n';
    const plain = await (await app.request('/v1/completions', post({ prompt: tokenizer.encode(text, false), max_tokens: 5, temperature: 0, ignore_eos: true }))).json() as any;
    assert.equal(chat.usage.prompt_tokens, plain.usage.prompt_tokens);
    assert.equal(chat.choices[0].message.content, plain.choices[0].text);
  });
});

describe('sessions on the OpenAI endpoints', () => {
  test('a resent conversation prefills only the new part, and equals a one-shot request', async () => {
    const { app } = await makeApp();
    const ask = async (messages: unknown[], session?: string) => {
      const headers: Record<string, string> = session ? { 'X-Session-Id': session } : {};
      return (await app.request('/v1/chat/completions', post({ messages, max_tokens: 8, temperature: 0, ignore_eos: true }, headers))).json() as any;
    };
    const first = await ask(USER, 'conv');
    assert.equal(first.session_id, 'conv');
    assert.equal(first.usage.prompt_tokens_details.cached_tokens, 0);
    const turn2 = [...USER, { role: 'assistant', content: first.choices[0].message.content }, { role: 'user', content: 'And then what happened?' }];
    const second = await ask(turn2, 'conv');
    assert.ok(second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens, `cached ${second.usage.prompt_tokens_details.cached_tokens}`);
    const oneShot = await ask(turn2);
    assert.equal(oneShot.usage.prompt_tokens_details.cached_tokens, 0);
    assert.equal(second.choices[0].message.content, oneShot.choices[0].message.content);
    assert.equal(second.usage.prompt_tokens, oneShot.usage.prompt_tokens);
  });

  test('completions reuse the longest cached prefix', async () => {
    const { app } = await makeApp();
    const first = await (await app.request('/v1/completions', post({ prompt: 'The old castle stood on the hill', max_tokens: 4, temperature: 0, session_id: 'p' }))).json() as any;
    const second = await (await app.request('/v1/completions', post({ prompt: 'The old castle stood on the hill and the river', max_tokens: 4, temperature: 0, session_id: 'p' }))).json() as any;
    assert.ok(second.usage.prompt_tokens_details.cached_tokens > 0);
    assert.ok(second.usage.prompt_tokens_details.cached_tokens < second.usage.prompt_tokens);
    assert.ok(first.usage.prompt_tokens_details.cached_tokens === 0);
  });

  test('a request on a busy session gets 409 with an OpenAI error body', async () => {
    let slow!: TestDecoder;
    const { app } = await makeApp({ wrapDecoder: (d) => (slow = wrapDecoder(d, { decodeDelayMs: 5 })) });
    const first = await app.request('/v1/completions', post({ prompt: 'Hello', max_tokens: 400, stream: true, ignore_eos: true, session_id: 'busy' }));
    assert.equal(first.status, 200);
    const second = await app.request('/v1/chat/completions', post({ messages: USER, session_id: 'busy' }));
    assert.equal(second.status, 409);
    assert.deepEqual(await second.json(), {
      error: { message: 'session busy is busy with another request', type: 'invalid_request_error', param: 'session_id', code: 'session_busy' },
    });
    await first.body!.cancel();
    assert.ok(slow.calls > 0);
    // The stream outlives its connection (resumable); DELETE stops it.
    assert.equal((await app.request(`/v1/streams/${first.headers.get('x-stream-id')}`, { method: 'DELETE' })).status, 200);
  });

  test('session ids are validated and the header must agree with the body', async () => {
    const { app } = await makeApp();
    const bad = await app.request('/v1/completions', post({ prompt: 'x', session_id: 'has space' }));
    assert.equal(bad.status, 400);
    assert.equal((await bad.json() as any).error.param, 'session_id');
    const conflict = await app.request('/v1/completions', post({ prompt: 'x', session_id: 'a' }, { 'X-Session-Id': 'b' }));
    assert.equal(conflict.status, 400);
  });
});

describe('disconnects and keep-alive', () => {
  test('without resumption, cancelling the stream stops generation within one step and leaves the session consistent', async () => {
    let slow!: TestDecoder;
    const { app, runtime } = await makeApp({ settings: { 'stream-resume-seconds': '0' }, wrapDecoder: (d) => (slow = wrapDecoder(d, { decodeDelayMs: 2 })) });
    const res = await app.request('/v1/completions', post({ prompt: 'Hello there', max_tokens: 1000, ignore_eos: true, stream: true, session_id: 'gone' }));
    assert.equal(res.headers.get('x-stream-id'), null, 'not resumable');
    const reader = res.body!.getReader();
    let received = '';
    while ((received.match(/data: /g) ?? []).length < 5) received += new TextDecoder().decode((await reader.read()).value);
    await reader.cancel();
    const callsAtCancel = slow.calls;
    const session = runtime.serving!.store.get('', 'gone')!;
    await waitFor(() => !session.busy);
    assert.ok(slow.calls - callsAtCancel <= 2, `${slow.calls - callsAtCancel} model calls after the disconnect`);
    assert.ok(session.tokens.length < 100);
    assert.equal(session.cachedLength, session.tokens.length - 1, 'the cache holds exactly the transcript (but the last sampled token)');
    // And the session is reusable: a continuation reuses the cache.
    const cachedBefore = session.cachedLength;
    const next = await (await app.request('/v1/sessions/gone/completions', post({ prompt: ' more', max_tokens: 3, temperature: 0 }))).json() as any;
    assert.equal(next.usage.prompt_tokens_details.cached_tokens, cachedBefore);
  });

  test('keep-alive comments are sent while a long prefill runs', async () => {
    const { app } = await makeApp({ pingIntervalMs: 20, wrapDecoder: (d) => wrapDecoder(d, { decodeDelayMs: 0, prefillDelayMs: 150 }) });
    const res = await app.request('/v1/completions', post({ prompt: 'A long prompt to prefill', max_tokens: 2, stream: true }));
    const text = await res.text();
    const { comments, done } = chunksOf(text);
    assert.ok(comments.includes('ping'), text.slice(0, 200));
    assert.ok(text.indexOf(': ping\n\n') < text.indexOf('data: '), 'pings come before the first token');
    assert.ok(done);
  });
});

describe('health and models', () => {
  test('healthz is 200 while loading; readyz is 503 until the model is ready, then 200; draining is 503 again', async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const { app, runtime } = await makeApp({ loadGate: gate });
    assert.equal((await app.request('/healthz')).status, 200);
    const loading = await app.request('/readyz');
    assert.equal(loading.status, 503);
    assert.ok(loading.headers.get('retry-after'));
    assert.equal((await loading.json() as any).error.code, 'model_loading');
    const early = await app.request('/v1/completions', post({ prompt: 'x' }));
    assert.equal(early.status, 503);
    assert.equal((await (await app.request('/v1/models')).json() as any).data[0].ready, false);
    release();
    await runtime.ready;
    const ready = await app.request('/readyz');
    assert.equal(ready.status, 200);
    assert.equal((await ready.json() as any).status, 'ready');
    runtime.markDraining();
    const draining = await app.request('/readyz');
    assert.equal(draining.status, 503);
    assert.equal((await draining.json() as any).error.code, 'shutting_down');
    assert.equal((await app.request('/v1/completions', post({ prompt: 'x' }))).status, 503);
  });

  test('GET /v1/models lists the served model', async () => {
    const { app, runtime } = await makeApp();
    const body = await (await app.request('/v1/models')).json() as any;
    assert.equal(body.object, 'list');
    assert.equal(body.data[0].id, runtime.serving!.model.id);
    assert.equal(body.data[0].object, 'model');
    assert.equal(body.data[0].max_model_len, 1024);
    assert.equal((await app.request(`/v1/models/${runtime.serving!.model.id}`)).status, 200);
    assert.equal((await app.request('/v1/models/other')).status, 404);
  });
});
