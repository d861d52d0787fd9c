/**
 * Input checks at the HTTP edge, through app.request(): one session-id rule and one 400 wherever the id
 * comes from (path, body, X-Session-Id), never echoing a bad id; one not-found wording; 415 for bodies
 * that are not JSON; CORS off by default and configurable (preflight, exposed headers, errors readable).
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { expectError, listen, makeApp, post, type Listening } from './helpers.ts';

const LONG_ID = 'a'.repeat(10 * 1024);
const RULE = "Invalid value for 'session_id': must be 1-128 characters of letters, digits, '.', '_', ':' and '-', and not '.' or '..'.";

describe('session ids: one check wherever they come from', () => {
  let app: Awaited<ReturnType<typeof makeApp>>['app'];
  before(async () => ({ app } = await makeApp()));

  const refused = async (res: Response, bad: string) => {
    const error = await expectError(res, 400, 'invalid_value', 'session_id');
    assert.equal(error.message, RULE);
    assert.ok(!error.message.includes(bad.slice(0, 20)) || bad.length < 3, 'the bad id is not echoed');
    assert.ok(!/[\r\n]/.test(error.message));
  };

  test('in the URL path: a 10 KB id and a%0Ab get the same 400 as the body, without echoing them', async () => {
    for (const encoded of [LONG_ID, 'a%0Ab', 'a%20b', 'a%2Fb']) {
      const bad = decodeURIComponent(encoded);
      await refused(await app.request(`/v1/sessions/${encoded}`), bad);
      await refused(await app.request(`/v1/sessions/${encoded}`, { method: 'DELETE' }), bad);
      await refused(await app.request(`/v1/sessions/${encoded}/completions`, post({ prompt: 'x', max_tokens: 1 })), bad);
    }
  });

  test('in the body and the X-Session-Id header: the same rule and message, dot ids included', async () => {
    for (const bad of [LONG_ID, 'a\nb', '.', '..', '']) {
      await refused(await app.request('/v1/completions', post({ prompt: 'x', max_tokens: 1, session_id: bad })), bad);
      await refused(await app.request('/v1/chat/completions', post({ messages: [{ role: 'user', content: 'x' }], max_tokens: 1, session_id: bad })), bad);
      await refused(await app.request('/v1/sessions', post({ session_id: bad })), bad);
    }
    for (const bad of [LONG_ID, '.', '..', 'a b']) {
      await refused(await app.request('/v1/completions', post({ prompt: 'x', max_tokens: 1 }, { 'X-Session-Id': bad })), bad);
    }
    const cursor = await expectError(await app.request('/v1/sessions?after=..'), 400, 'invalid_value', 'after');
    assert.equal(cursor.message, RULE.replace("'session_id'", "'after'"));
    // Dots inside an id are fine; only the whole id "." or ".." is a path segment.
    assert.equal((await app.request('/v1/sessions', post({ session_id: 'a..b' }))).status, 201);
    assert.equal((await app.request('/v1/sessions', post({ session_id: '...' }))).status, 201);
    assert.equal((await app.request('/v1/sessions/...')).status, 200);
    const listed = (await (await app.request('/v1/sessions')).json()) as { data: Array<{ id: string }> };
    assert.ok(!listed.data.some((s) => s.id === '.' || s.id === '..'), 'no dot id was ever created');
  });

  test('not found reads the same on every route: "Session <id> not found."', async () => {
    const messages = new Set<string>();
    for (const res of [
      await app.request('/v1/sessions/nope'),
      await app.request('/v1/sessions/nope', { method: 'DELETE' }),
      await app.request('/v1/sessions/nope/completions', post({ prompt: 'x', max_tokens: 1 })),
    ]) {
      messages.add((await expectError(res, 404, 'session_not_found', 'session_id')).message);
    }
    assert.deepEqual([...messages], ['Session nope not found.']);
    const stream = await expectError(await app.request(`/v1/streams/${LONG_ID}`), 404, 'stream_not_found');
    assert.equal(stream.message, 'Stream (not shown: 10240 characters) not found.');
    const route = await expectError(await app.request(`/nowhere/${LONG_ID}`), 404, 'not_found');
    assert.ok(route.message.length < 200, route.message);
    const newline = await expectError(await app.request('/nowhere/a%0Ab'), 404, 'not_found');
    assert.ok(!/[\r\n]/.test(newline.message), newline.message);
  });
});

describe('Content-Type: JSON endpoints take JSON only', () => {
  let app: Awaited<ReturnType<typeof makeApp>>['app'];
  before(async () => ({ app } = await makeApp()));
  const body = JSON.stringify({ prompt: 'x', max_tokens: 1 });

  test('a form post (what curl -d sends) or text/plain gets 415 in OpenAI format, on every JSON endpoint', async () => {
    for (const type of ['application/x-www-form-urlencoded', 'text/plain;charset=UTF-8', 'multipart/form-data; boundary=x']) {
      for (const path of ['/v1/completions', '/v1/sessions', '/v1/sessions/s415/completions']) {
        const error = await expectError(await app.request(path, { method: 'POST', headers: { 'Content-Type': type }, body }), 415, 'unsupported_media_type', null);
        assert.match(error.message, /^Content-Type .* is not supported; send the body as JSON with Content-Type: application\/json\.$/);
        assert.equal(error.type, 'invalid_request_error');
      }
    }
    const chat = JSON.stringify({ messages: [{ role: 'user', content: 'x' }], max_tokens: 1 });
    await expectError(await app.request('/v1/chat/completions', { method: 'POST', headers: { 'Content-Type': 'text/plain' }, body: chat }), 415, 'unsupported_media_type');
    const long = await expectError(await app.request('/v1/completions', { method: 'POST', headers: { 'Content-Type': `text/${'x'.repeat(5000)}` }, body }), 415, 'unsupported_media_type');
    assert.ok(long.message.length < 200, 'a long Content-Type is not echoed');
  });

  test('application/json with parameters, +json types and a body without Content-Type are read; an empty form post creates a session', async () => {
    for (const type of ['application/json', 'application/json; charset=utf-8', 'Application/JSON', 'application/vnd.api+json']) {
      assert.equal((await app.request('/v1/completions', { method: 'POST', headers: { 'Content-Type': type }, body })).status, 200, type);
    }
    // A byte body gets no Content-Type from the Request constructor (a string body would get text/plain).
    assert.equal((await app.request('/v1/completions', { method: 'POST', body: new TextEncoder().encode(body) })).status, 200);
    // `curl -X POST -d ''`: a form type with no body.
    const empty = await app.request('/v1/sessions', { method: 'POST', headers: { 'Content-Type': 'application/x-www-form-urlencoded', 'Content-Length': '0' } });
    assert.equal(empty.status, 201);
  });
});

describe('token-id prompts over a socket: one-loop check, the same answers', () => {
  let server: Listening;
  before(async () => (server = await listen()));
  after(() => server.close());
  const UNION = 'must be a string, an array of token ids, or an array of either';
  const send = (path: string, body: unknown) => fetch(`${server.url}${path}`, post(body));

  test('valid id lists are generated from; bad ones get the message and param zod gave them', async () => {
    const ok = await send('/v1/completions', { prompt: [1, 2, 3], max_tokens: 1, temperature: 0 });
    assert.equal(ok.status, 200);
    assert.equal(((await ok.json()) as { usage: { prompt_tokens: number } }).usage.prompt_tokens, 3);
    const several = await send('/v1/completions', { prompt: [[1, 2], [3]], max_tokens: 1, temperature: 0 });
    assert.equal(((await several.json()) as { choices: unknown[] }).choices.length, 2);
    const cases: Array<[string, unknown, string, string]> = [
      ['/v1/completions', [1.5], 'prompt', UNION],
      ['/v1/completions', [1, 'a'], 'prompt', UNION],
      ['/v1/completions', [-1], 'prompt[0]', 'Too small: expected number to be >=0'],
      ['/v1/completions', [[1], []], 'prompt[1]', 'must hold at least one token id'],
      ['/v1/completions', [[-2]], 'prompt[0][0]', 'Too small: expected number to be >=0'],
      ['/v1/completions', [2 ** 53], 'prompt[0]', 'Too big: expected int to be <=9007199254740991'],
      ['/v1/sessions/ids-append/completions', [], 'prompt', 'must hold at least one token id'],
      ['/v1/sessions/ids-append/completions', [[1, 2]], 'prompt', UNION],
      ['/v1/sessions', [1, null], 'prompt', UNION],
    ];
    for (const [path, prompt, param, message] of cases) {
      const error = await expectError(await send(path, { prompt, max_tokens: 1 }), 400, 'invalid_value', param);
      assert.equal(error.message, `Invalid value for '${param}': ${message}.`, JSON.stringify(prompt));
    }
  });
});

describe('CORS', () => {
  const KEY = 'sk-test-cors-0123456789abcdef';
  const ORIGIN = 'https://chat.example';

  test('off by default: no CORS headers, OPTIONS is 405', async () => {
    const { app } = await makeApp();
    const res = await app.request('/v1/models', { headers: { Origin: ORIGIN } });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('access-control-allow-origin'), null);
    const preflight = await app.request('/v1/completions', { method: 'OPTIONS', headers: { Origin: ORIGIN, 'Access-Control-Request-Method': 'POST' } });
    assert.equal(preflight.status, 405);
  });

  test('CORS_ORIGINS: a preflight without a key gets 204; responses, streams and errors are readable; the headers the API documents are exposed', async () => {
    const { app } = await makeApp({ settings: { 'cors-origins': `${ORIGIN},https://other.example`, 'api-keys': KEY } });
    const preflight = await app.request('/v1/chat/completions', {
      method: 'OPTIONS',
      headers: { Origin: ORIGIN, 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'authorization, content-type, x-session-id, x-stainless-os' },
    });
    assert.equal(preflight.status, 204);
    assert.equal(preflight.headers.get('access-control-allow-origin'), ORIGIN);
    assert.match(preflight.headers.get('access-control-allow-methods')!, /POST/);
    assert.match(preflight.headers.get('access-control-allow-methods')!, /DELETE/);
    assert.equal(preflight.headers.get('access-control-allow-headers'), 'authorization,content-type,x-session-id,x-stainless-os');
    assert.match(preflight.headers.get('vary')!, /Origin/);
    // An EventSource reconnect sends Last-Event-ID, which needs a preflight too.
    const resume = await app.request('/v1/streams/cmpl-x', { method: 'OPTIONS', headers: { Origin: ORIGIN, 'Access-Control-Request-Method': 'GET', 'Access-Control-Request-Headers': 'last-event-id' } });
    assert.equal(resume.status, 204);

    const headers = { Origin: ORIGIN, Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' };
    const res = await app.request('/v1/completions', { method: 'POST', headers, body: JSON.stringify({ prompt: 'x', max_tokens: 2, stream: true, session_id: 'cors' }) });
    assert.equal(res.status, 200);
    await res.text();
    assert.equal(res.headers.get('access-control-allow-origin'), ORIGIN);
    const exposed = res.headers.get('access-control-expose-headers')!.split(',');
    for (const name of ['X-Session-Id', 'X-Stream-Id', 'X-Request-Id', 'X-Queue-Time-Ms']) assert.ok(exposed.includes(name), name);
    assert.equal(res.headers.get('x-session-id'), 'cors');

    const unauthorized = await app.request('/v1/models', { headers: { Origin: ORIGIN } });
    await expectError(unauthorized, 401, 'invalid_api_key');
    assert.equal(unauthorized.headers.get('access-control-allow-origin'), ORIGIN, 'a browser can read the error');
    const stranger = await app.request('/v1/models', { headers: { Origin: 'https://evil.example', Authorization: `Bearer ${KEY}` } });
    assert.equal(stranger.headers.get('access-control-allow-origin'), null);
  });

  test('CORS_ORIGINS=* allows any origin', async () => {
    const { app } = await makeApp({ settings: { 'cors-origins': '*' } });
    const res = await app.request('/v1/models', { headers: { Origin: 'https://anywhere.example' } });
    assert.equal(res.headers.get('access-control-allow-origin'), '*');
  });
});
