/** Every error kind: its status, OpenAI type/code/param, Retry-After, and that internals never leak. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ERROR_TABLE } from '../../src/server/errors.ts';
import { chunksOf, expectError, makeApp, post } from './helpers.ts';
import { type TestDecoder, wrapDecoder } from '../support/test-decoder.ts';

describe('request validation', () => {
  test('invalid JSON, empty and non-object bodies are 400', async () => {
    const { app } = await makeApp();
    await expectError(await app.request('/v1/completions', post('{"prompt": ')), 400, 'invalid_json', null);
    await expectError(await app.request('/v1/completions', post('')), 400, 'invalid_json');
    await expectError(await app.request('/v1/completions', post('[1, 2]')), 400, 'invalid_value');
  });

  test('invalid fields are 400 with the field as param', async () => {
    const { app } = await makeApp();
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ max_tokens: 4 }, 'prompt'],
      [{ prompt: 'x', temperature: 2.5 }, 'temperature'],
      [{ prompt: 'x', top_p: 0 }, 'top_p'],
      [{ prompt: 'x', top_k: 1.5 }, 'top_k'],
      [{ prompt: 'x', min_p: -0.1 }, 'min_p'],
      [{ prompt: 'x', repetition_penalty: 0 }, 'repetition_penalty'],
      [{ prompt: 'x', max_tokens: 0 }, 'max_tokens'],
      [{ prompt: 'x', seed: 1.5 }, 'seed'],
      [{ prompt: 'x', stop: 5 }, 'stop'],
      [{ prompt: 'x', stream: 'yes' }, 'stream'],
      [{ prompt: [1, -2] }, 'prompt[1]'],
      [{ prompt: [1, 100000] }, 'prompt'],
      [{ prompt: [] }, 'prompt'],
    ];
    for (const [body, param] of cases) {
      await expectError(await app.request('/v1/completions', post(body)), 400, 'invalid_value', param);
    }
    await expectError(await app.request('/v1/chat/completions', post({ messages: [] })), 400, 'invalid_value', 'messages');
    await expectError(await app.request('/v1/chat/completions', post({ messages: [{ role: 'user' }] })), 400, 'invalid_value', 'messages[0].content');
    await expectError(await app.request('/v1/chat/completions', post({ messages: [{ role: 'wizard', content: 'x' }] })), 400, 'invalid_value', 'messages[0].role');
    await expectError(await app.request('/v1/chat/completions', post({ messages: [{ role: 'user', content: 'x' }], max_completion_tokens: -1 })), 400, 'invalid_value', 'max_completion_tokens');
  });

  test('fields that would change the output but are not implemented are refused, not ignored', async () => {
    const { app } = await makeApp();
    const completions: Array<[Record<string, unknown>, string]> = [
      [{ prompt: ['a', 'b'], n: 2 }, 'n'],
      [{ best_of: 3 }, 'best_of'],
      [{ prompt_logprobs: 1 }, 'prompt_logprobs'],
      [{ suffix: 'end' }, 'suffix'],
      [{ use_beam_search: true }, 'use_beam_search'],
      [{ bad_words: ['x'] }, 'bad_words'],
      [{ prompt: ['a', 'b'], session_id: 'two-prompts' }, 'session_id'],
    ];
    for (const [extra, param] of completions) {
      await expectError(await app.request('/v1/completions', post({ prompt: 'x', ...extra })), 400, 'unsupported_parameter', param);
    }
    const chat: Array<[Record<string, unknown>, string]> = [
      [{ echo: true }, 'echo'],
      [{ functions: [{ name: 'f', parameters: {} }] }, 'functions'],
      [{ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }, 'messages[0].content[0].type'],
    ];
    for (const [extra, param] of chat) {
      await expectError(await app.request('/v1/chat/completions', post({ messages: [{ role: 'user', content: 'x' }], ...extra })), 400, 'unsupported_parameter', param);
    }
    // Defaults and fields that do not change the output are accepted.
    const ok = await app.request(
      '/v1/chat/completions',
      post({ messages: [{ role: 'user', content: 'x' }], max_tokens: 2, n: 1, logprobs: false, tools: [], response_format: { type: 'text' }, logit_bias: {}, user: 'u', metadata: { a: 1 }, presence_penalty: 0 }),
    );
    assert.equal(ok.status, 200);
  });

  test('configured limits: max_tokens cap, stop sequences, prompt tokens', async () => {
    const { app } = await makeApp({ settings: { 'max-tokens-limit': '50', 'max-stop-sequences': '2', 'max-prompt-tokens': '20' } });
    await expectError(await app.request('/v1/completions', post({ prompt: 'x', max_tokens: 51 })), 400, 'invalid_value', 'max_tokens');
    await expectError(await app.request('/v1/chat/completions', post({ messages: [{ role: 'user', content: 'x' }], max_completion_tokens: 51 })), 400, 'invalid_value', 'max_completion_tokens');
    await expectError(await app.request('/v1/completions', post({ prompt: 'x', stop: ['a', 'b', 'c'] })), 400, 'invalid_value', 'stop');
    await expectError(await app.request('/v1/completions', post({ prompt: Array(21).fill(5) })), 400, 'context_length_exceeded', 'prompt');
    assert.equal((await app.request('/v1/completions', post({ prompt: Array(20).fill(5), max_tokens: 50, stop: ['a', 'b'] }))).status, 200);
  });

  test('a body over the limit is 413, by Content-Length and by the bytes actually sent', async () => {
    const { app } = await makeApp({ settings: { 'max-body-bytes': '200' } });
    const big = JSON.stringify({ prompt: 'x'.repeat(300) });
    await expectError(await app.request('/v1/completions', post(big)), 413, 'body_too_large');
    // A chunked body with no Content-Length.
    const stream = new ReadableStream({
      start(controller) {
        controller.enqueue(new TextEncoder().encode(big.slice(0, 150)));
        controller.enqueue(new TextEncoder().encode(big.slice(150)));
        controller.close();
      },
    });
    const res = await app.request('/v1/completions', { method: 'POST', body: stream, headers: { 'Content-Type': 'application/json' }, duplex: 'half' } as RequestInit);
    await expectError(res, 413, 'body_too_large');
  });

  test('the model field must name the served model', async () => {
    const { app } = await makeApp();
    await expectError(await app.request('/v1/completions', post({ prompt: 'x', model: 'gpt-4' })), 404, 'model_not_found', 'model');
  });
});

describe('routing, sessions and capacity', () => {
  test('unknown routes are 404 and wrong methods 405, both as JSON', async () => {
    const { app } = await makeApp();
    await expectError(await app.request('/v1/nothing'), 404, 'not_found');
    const wrong = await app.request('/v1/completions');
    assert.equal(wrong.headers.get('allow'), 'POST');
    await expectError(wrong, 405, 'method_not_allowed');
    await expectError(await app.request('/v1/sessions/x', { method: 'PUT' }), 405, 'method_not_allowed');
  });

  test('every known path answers another method with 405 in the OpenAI format and an Allow header', async () => {
    const { app, runtime } = await makeApp();
    const model = runtime.serving!.model.id;
    const paths: Array<[string, string, string]> = [
      ['/healthz', 'POST', 'GET, HEAD'],
      ['/readyz', 'DELETE', 'GET, HEAD'],
      ['/metrics', 'POST', 'GET, HEAD'],
      ['/v1/models', 'POST', 'GET, HEAD'],
      [`/v1/models/${model}`, 'DELETE', 'GET, HEAD'],
      ['/v1/models/some/other-model', 'POST', 'GET, HEAD'],
      ['/v1/completions', 'GET', 'POST'],
      ['/v1/chat/completions', 'PUT', 'POST'],
      ['/v1/sessions', 'DELETE', 'POST, GET, HEAD'],
      ['/v1/sessions/abc', 'POST', 'GET, HEAD, DELETE'],
      ['/v1/sessions/abc/completions', 'GET', 'POST'],
      ['/v1/streams/abc', 'POST', 'GET, HEAD, DELETE'],
    ];
    for (const [path, method, allow] of paths) {
      const res = await app.request(path, { method });
      assert.deepEqual(res.headers.get('allow')?.split(', ').sort(), allow.split(', ').sort(), `${method} ${path}`);
      const error = await expectError(res, 405, 'method_not_allowed');
      assert.match(error.message, new RegExp(`^${method} is not allowed on `));
      assert.ok(res.headers.get('x-request-id'), `${method} ${path} carries X-Request-Id`);
    }
  });

  test('an unknown session on the append API is 404', async () => {
    const { app } = await makeApp();
    await expectError(await app.request('/v1/sessions/nope/completions', post({ prompt: 'x' })), 404, 'session_not_found', 'session_id');
  });

  test('prompt + max_tokens over the context is 400 context_length_exceeded with truncation "error"', async () => {
    const { app } = await makeApp({ settings: { 'max-context-tokens': '64' } });
    const error = await expectError(
      await app.request('/v1/completions', post({ prompt: Array(60).fill(7), max_tokens: 10, truncation: 'error' })),
      400,
      'context_length_exceeded',
    );
    assert.match(error.message, /maximum context length is 64 tokens/);
    // Without a session the default is OpenAI's: refused; with truncation "auto" it slides the window.
    await expectError(await app.request('/v1/completions', post({ prompt: Array(60).fill(7), max_tokens: 10 })), 400, 'context_length_exceeded');
    const slid = await app.request('/v1/completions', post({ prompt: Array(60).fill(7), max_tokens: 10, truncation: 'auto' }));
    assert.equal(slid.status, 200);
    // A session slides by default.
    const session = await app.request('/v1/completions', post({ prompt: Array(60).fill(7), max_tokens: 10, session_id: 'slides' }));
    assert.equal(session.status, 200);
    assert.ok(((await session.json()) as any).usage.dropped_tokens > 0);
    const strict = await makeApp({ settings: { 'max-context-tokens': '64', 'default-truncation': 'error' } });
    await expectError(await strict.app.request('/v1/completions', post({ prompt: Array(60).fill(7), max_tokens: 10, session_id: 's' })), 400, 'context_length_exceeded');
    const open = await makeApp({ settings: { 'max-context-tokens': '64', 'default-truncation': 'auto' } });
    assert.equal((await open.app.request('/v1/completions', post({ prompt: Array(60).fill(7), max_tokens: 10 }))).status, 200);
  });

  test('MAX_PROMPT_TOKENS defaults to 4x the context: 400 context_length_exceeded above it, on sessions too', async () => {
    const { app } = await makeApp({ settings: { 'max-context-tokens': '64' } });
    const over = await expectError(await app.request('/v1/completions', post({ prompt: Array(257).fill(7), session_id: 'big' })), 400, 'context_length_exceeded', 'prompt');
    assert.match(over.message, /at most 256/);
    const at = await app.request('/v1/completions', post({ prompt: Array(256).fill(7), max_tokens: 2, session_id: 'big' }));
    assert.equal(at.status, 200, 'a session prompt up to the cap slides through the window');
  });

  test('a full queue is 429 with Retry-After', async () => {
    const { app } = await makeApp({ settings: { 'max-queue': '0' } });
    const res = await app.request('/v1/completions', post({ prompt: 'x' }));
    assert.ok(Number(res.headers.get('retry-after')) >= 1);
    const error = await expectError(res, 429, 'queue_full');
    assert.equal(error.type, 'rate_limit_error');
  });

  test('a cache that stays full past the queue timeout is 429 cache_full with Retry-After', async () => {
    // 512 bytes per token, 16-token blocks: the budget fits one 48-token request at a time.
    let slow!: TestDecoder;
    const { app } = await makeApp({
      settings: { 'kv-cache-bytes': String(3 * 16 * 512), 'queue-timeout-seconds': '0.2' },
      // 40 steps of 20 ms: the holder keeps the budget well past the second request's queue timeout.
      wrapDecoder: (d) => (slow = wrapDecoder(d, { decodeDelayMs: 20 })),
    });
    const first = await app.request('/v1/completions', post({ prompt: 'Hello', max_tokens: 40, ignore_eos: true, stream: true, session_id: 'holder' }));
    assert.equal(first.status, 200);
    const second = await app.request('/v1/completions', post({ prompt: 'Hi', max_tokens: 40 }));
    assert.equal(second.headers.get('retry-after'), '5');
    await expectError(second, 429, 'cache_full');
    await first.body!.cancel();
    assert.ok(slow.calls > 0);
  });

  test('a request bigger than the whole cache is 400 request_too_large', async () => {
    const { app } = await makeApp({ settings: { 'kv-cache-bytes': String(16 * 512) } });
    await expectError(await app.request('/v1/completions', post({ prompt: 'Hello there', max_tokens: 40 })), 400, 'request_too_large');
  });

  test('a model failure is 500 without internals, and after the stream started an error event with no [DONE]', async () => {
    let slow!: TestDecoder;
    const { app } = await makeApp({ wrapDecoder: (d) => (slow = wrapDecoder(d)) });
    slow.failWhen = () => true;
    const res = await app.request('/v1/completions', post({ prompt: 'Hello', max_tokens: 5 }));
    const error = await expectError(res, 500, 'internal_error', null);
    assert.equal(error.type, 'server_error');
    assert.ok(!error.message.includes('secret') && !error.message.includes('injected'));

    let calls = 0;
    slow.failWhen = (step) => step.seqLength === 1 && ++calls === 3;
    const streamed = await app.request('/v1/completions', post({ prompt: 'Hello', max_tokens: 20, ignore_eos: true, stream: true }));
    assert.equal(streamed.status, 200);
    const text = await streamed.text();
    assert.ok(!text.includes('event:'));
    assert.ok(!text.includes('secret'));
    const { chunks, done } = chunksOf(text);
    assert.equal(done, false, 'no [DONE] after an error');
    assert.equal(chunks.at(-1)!.error.type, 'server_error');
    assert.ok(chunks.slice(0, -1).every((c) => c.object === 'text_completion'));
  });

  test('the table gives every 429 and 503 a Retry-After', () => {
    for (const [kind, spec] of Object.entries(ERROR_TABLE)) {
      if (spec.status === 429 || spec.status === 503) assert.ok(spec.retryAfter, kind);
      assert.ok(spec.status >= 400 && spec.status < 600);
    }
  });
});
