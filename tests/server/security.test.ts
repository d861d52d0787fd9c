/**
 * Multi-tenant security: API keys (401s, public routes, keys file, reload, no raw key anywhere),
 * isolation between keys (ids, sessions, cache reuse, snapshot files) and the per-request and per-key
 * limits, each answered with its 4xx and OpenAI's error body.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { ConfigError, loadConfig } from '../../src/config.ts';
import { ApiKeyAuth, keyId, loadApiKeys, MIN_API_KEY_LENGTH } from '../../src/server/auth.ts';
import { LLAMA, testModelDir } from '../support/fixtures.ts';
import { startServerProcess } from '../support/server-process.ts';
import { chunksOf, expectError, makeApp, post, waitFor } from './helpers.ts';
import { appWithLogger, captureLogger } from './log-capture.ts';
import { type TestDecoder, wrapDecoder } from '../support/test-decoder.ts';

const KEY_A = 'sk-test-alpha-0123456789abcdef';
const KEY_B = 'sk-test-bravo-0123456789abcdef';
const KEYS = `${KEY_A},${KEY_B}`;
const A = { Authorization: `Bearer ${KEY_A}` };
const B = { Authorization: `Bearer ${KEY_B}` };

function get(headers: Record<string, string> = {}): RequestInit {
  return { method: 'GET', headers };
}

describe('API keys', () => {
  test('without keys the server runs open and warns at start', async () => {
    const log = captureLogger();
    const { app } = await appWithLogger({}, log.logger);
    assert.ok(log.lines.some((l) => l.level === 'warn' && /no API keys configured/.test(l.message)));
    assert.equal((await app.request('/v1/completions', post({ prompt: 'x', max_tokens: 1 }))).status, 200);
    assert.equal((await app.request('/v1/models')).status, 200);
  });

  test('every route but /healthz and /readyz needs a key: 401 invalid_api_key, WWW-Authenticate: Bearer, OpenAI wording', async () => {
    const { app } = await makeApp({ settings: { 'api-keys': KEYS } });
    const routes: Array<[string, string]> = [
      ['GET', '/v1/models'],
      ['GET', '/v1/models/x'],
      ['POST', '/v1/completions'],
      ['POST', '/v1/chat/completions'],
      ['GET', '/v1/sessions'],
      ['POST', '/v1/sessions'],
      ['GET', '/v1/sessions/s1'],
      ['DELETE', '/v1/sessions/s1'],
      ['POST', '/v1/sessions/s1/completions'],
      ['GET', '/v1/streams/cmpl-0123'],
      ['GET', '/v1/no-such-route'],
      ['PUT', '/v1/completions'],
    ];
    const wrong = 'sk-wrong-key-that-is-long-enough';
    for (const [method, path] of routes) {
      const body = method === 'POST' || method === 'PUT' ? JSON.stringify({ prompt: 'x' }) : undefined;
      const missing = await app.request(path, { method, body, headers: { 'Content-Type': 'application/json' } });
      assert.equal(missing.headers.get('www-authenticate'), 'Bearer realm="warmkv"', `${method} ${path}`);
      const error = await expectError(missing, 401, 'invalid_api_key');
      assert.equal(error.type, 'invalid_request_error');
      assert.match(error.message, /You didn't provide an API key/);
      for (const authorization of [`Bearer ${wrong}`, `Basic ${Buffer.from(`u:${KEY_A}`).toString('base64')}`, KEY_A, `Bearer ${KEY_A} extra`, 'Bearer', `Bearer ${KEY_A.slice(0, -1)}`]) {
        const res = await app.request(path, { method, body, headers: { 'Content-Type': 'application/json', Authorization: authorization } });
        const text = await res.clone().text();
        assert.ok(!text.includes(wrong) && !text.includes(KEY_A.slice(0, 20)), 'the presented key is never echoed');
        const rejected = await expectError(res, 401, 'invalid_api_key');
        assert.match(rejected.message, /^Incorrect API key provided/);
      }
    }
    for (const path of ['/healthz', '/readyz', '/metrics']) assert.equal((await app.request(path)).status, 200, path);
    // The right key, with the scheme in any case and extra spaces.
    for (const authorization of [`Bearer ${KEY_A}`, `bearer  ${KEY_B}`, `BEARER ${KEY_A} `]) {
      assert.equal((await app.request('/v1/models', get({ Authorization: authorization }))).status, 200, authorization);
    }
  });

  test('/metrics needs a key only with METRICS_REQUIRE_KEY=true', async () => {
    const { app } = await makeApp({ settings: { 'api-keys': KEYS, 'metrics-require-key': 'true' } });
    await expectError(await app.request('/metrics'), 401, 'invalid_api_key');
    const res = await app.request('/metrics', get(A));
    assert.equal(res.status, 200);
    assert.match(await res.text(), /warmkv_kv_cache_utilization/);
    assert.equal((await app.request('/healthz')).status, 200);
    assert.equal((await app.request('/readyz')).status, 200);
  });

  test('each key is its own owner, named by a digest of the key; the raw key is never kept', () => {
    const auth = new ApiKeyAuth([KEY_A, KEY_B]);
    const a = auth.check(`Bearer ${KEY_A}`);
    const b = auth.check(`Bearer ${KEY_B}`);
    assert.ok(a.ok && b.ok);
    assert.match(a.owner, /^key_[0-9a-f]{16}$/);
    assert.equal(a.owner, keyId(KEY_A));
    assert.notEqual(a.owner, b.owner);
    assert.deepEqual(auth.check(undefined), { ok: false, reason: 'missing' });
    assert.deepEqual(auth.check(`Bearer ${KEY_A}x`), { ok: false, reason: 'invalid' });
    assert.deepEqual(new ApiKeyAuth([]).check(undefined), { ok: true, owner: '' }, 'open: everyone is owner ""');
    assert.ok(!JSON.stringify(auth).includes(KEY_A) && !JSON.stringify(Object.values(auth)).includes('alpha'));
    auth.replace([KEY_B]);
    assert.deepEqual(auth.check(`Bearer ${KEY_A}`), { ok: false, reason: 'invalid' }, 'a replaced key stops working');
    assert.ok(auth.check(`Bearer ${KEY_B}`).ok);
  });

  test('API_KEYS and API_KEYS_FILE: comments and blank lines; short, spaced or missing keys stop the start with a ConfigError that never shows the key', () => {
    const files: Record<string, string> = {
      '/keys': `# team alpha\n${KEY_A}\n\n   # team bravo\n${KEY_B}\r\n${KEY_A}\n`,
      '/short': `${KEY_A}\nshort-key\n`,
      '/spaced': `${KEY_A} # trailing comment\n`,
      '/empty': '# nothing here\n\n',
    };
    const read = (path: string) => {
      if (!(path in files)) throw new Error(`ENOENT: no such file, open '${path}'`);
      return files[path];
    };
    const keys = (env: Record<string, string>) => loadApiKeys(loadConfig(env), read);
    assert.deepEqual(keys({ API_KEYS_FILE: '/keys' }), [KEY_A, KEY_B], 'duplicates collapse');
    assert.deepEqual(keys({ API_KEYS: KEY_B, API_KEYS_FILE: '/keys' }), [KEY_B, KEY_A], 'both sources together');
    assert.deepEqual(keys({}), [], 'no keys: open');
    const fails = (env: Record<string, string>, pattern: RegExp) =>
      assert.throws(() => keys(env), (error: unknown) => {
        assert.ok(error instanceof ConfigError);
        assert.match(error.message, pattern);
        assert.ok(!error.message.includes('short-key') && !error.message.includes('alpha'), error.message);
        return true;
      });
    fails({ API_KEYS: `${KEY_A},tiny` }, new RegExp(`API_KEYS / --api-keys, entry 2: an API key must be at least ${MIN_API_KEY_LENGTH} characters`));
    fails({ API_KEYS_FILE: '/short' }, /API_KEYS_FILE \/short, line 2: an API key must be at least 16 characters/);
    fails({ API_KEYS_FILE: '/spaced' }, /line 1: an API key may hold only visible ASCII characters, without spaces/);
    fails({ API_KEYS_FILE: '/empty' }, /holds no API key/);
    fails({ API_KEYS_FILE: '/missing' }, /cannot read \/missing/);
    fails({ API_KEYS: `${KEY_A},sk-\u00e9t\u00e9-0123456789abcdef` }, /visible ASCII/);
  });

  test('raw keys never reach logs, error bodies or snapshot files', async () => {
    const log = captureLogger();
    const snapshotDir = mkdtempSync(join(tmpdir(), 'warmkv-sec-'));
    const { app, runtime } = await appWithLogger({ 'api-keys': KEYS, 'snapshot-dir': snapshotDir, 'log-level': 'debug' }, log.logger);
    assert.ok(log.lines.some((l) => l.message === 'API keys required' && l.fields.keys === 2));
    const res = await app.request('/v1/completions', post({ prompt: 'A secret prompt', max_tokens: 3, session_id: 'kept' }, A));
    assert.equal(res.status, 200);
    await app.request('/v1/completions', post({ prompt: 'x' }, { Authorization: 'Bearer sk-some-wrong-key-0000000000' }));
    const { written } = await runtime.serving!.tiers.flushAll();
    assert.equal(written, 1);
    const files = readdirSync(snapshotDir).filter((f) => f.endsWith('.wkv'));
    assert.equal(files.length, 1);
    const bytes = readFileSync(join(snapshotDir, files[0]));
    assert.ok(bytes.includes(Buffer.from(keyId(KEY_A))), 'the snapshot names its owner by key id');
    for (const secret of [KEY_A, KEY_B, 'sk-some-wrong-key']) {
      assert.ok(!bytes.includes(Buffer.from(secret)), 'no raw key in the snapshot');
      assert.ok(!log.text().includes(secret), 'no raw key in the logs');
    }
    assert.ok(log.lines.some((l) => l.fields.owner === keyId(KEY_A)), 'request logs name the owner by key id');
  });

  test('main.ts: a bad key exits 2; without keys it warns; SIGHUP reloads API_KEYS_FILE and keeps the old keys when the file is bad', async () => {
    const dir = await testModelDir(LLAMA);
    const keysFile = join(mkdtempSync(join(tmpdir(), 'warmkv-keys-')), 'keys');
    writeFileSync(keysFile, `${KEY_A}\n`);
    const start = (env: Record<string, string>) => {
      const server = startServerProcess({
        args: ['--port', '0', '--host', '127.0.0.1', '--kv-cache-bytes', '16MiB'],
        env: { MODEL_DIR: dir, LOG_LEVEL: 'info', API_KEYS: '', API_KEYS_FILE: '', ...env },
      });
      return { ...server, lines: server.logs };
    };

    const bad = start({ API_KEYS: 'too-short' });
    assert.equal(await bad.exited, 2);
    assert.match(bad.stderr(), /API_KEYS \/ --api-keys, entry 1: an API key must be at least 16 characters/);
    assert.ok(!bad.stderr().includes('too-short'));

    const run = start({ API_KEYS_FILE: keysFile });
    try {
      const url = await run.ready(10_000);
      const status = async (key: string) => (await fetch(`${url}/v1/models`, { headers: { Authorization: `Bearer ${key}` } })).status;
      assert.equal(await status(KEY_A), 200);
      assert.equal(await status(KEY_B), 401);
      writeFileSync(keysFile, `# rotated\n${KEY_B}\n`);
      run.child.kill('SIGHUP');
      await waitFor(() => run.lines.some((l) => l.msg === 'API keys reloaded'));
      assert.equal(await status(KEY_A), 401);
      assert.equal(await status(KEY_B), 200);
      writeFileSync(keysFile, 'short\n');
      run.child.kill('SIGHUP');
      await waitFor(() => run.lines.some((l) => /API keys not reloaded/.test(l.msg)));
      assert.equal(await status(KEY_B), 200, 'a bad file keeps the current keys');
      assert.ok(!run.lines.some((l) => l.msg.includes('no API keys configured')));
      assert.ok(!JSON.stringify(run.lines).includes(KEY_A) && !JSON.stringify(run.lines).includes(KEY_B));
    } finally {
      await run.stop();
    }

    const open = start({});
    try {
      await open.port;
      await waitFor(() => open.lines.some((l) => l.level === 40 && /no API keys configured/.test(l.msg)));
    } finally {
      await open.stop();
    }
  });
});

describe('isolation between keys', () => {
  test('session and completion ids carry 128 random bits', async () => {
    const { app } = await makeApp({ settings: { 'api-keys': KEYS } });
    const ids = new Set<string>();
    for (let i = 0; i < 20; i++) {
      const session = (await (await app.request('/v1/sessions', post({}, A))).json()) as any;
      assert.match(session.id, /^sess_[A-Za-z0-9_-]{22}$/, '22 base64url characters: 128 bits');
      ids.add(session.id);
    }
    assert.equal(ids.size, 20);
    const completion = (await (await app.request('/v1/completions', post({ prompt: 'x', max_tokens: 1 }, A))).json()) as any;
    assert.match(completion.id, /^cmpl-[0-9a-f]{32}$/);
    const chat = await app.request('/v1/chat/completions', post({ messages: [{ role: 'user', content: 'x' }], max_tokens: 1, stream: true }, A));
    assert.match(chunksOf(await chat.text()).chunks[0].id, /^chatcmpl-[0-9a-f]{32}$/);
  });

  test("another key gets 404 (not 403) for a session on every route, and has its own id space", async () => {
    const { app, runtime } = await makeApp({ settings: { 'api-keys': KEYS } });
    const created = await app.request('/v1/sessions', post({ session_id: 'shared', prompt: 'The private diary of A' }, A));
    assert.equal(created.status, 201);
    const tokens = ((await created.json()) as any).tokens;
    await expectError(await app.request('/v1/sessions/shared', get(B)), 404, 'session_not_found');
    await expectError(await app.request('/v1/sessions/shared', { method: 'DELETE', headers: B }), 404, 'session_not_found');
    await expectError(await app.request('/v1/sessions/shared/completions', post({ prompt: ' more', max_tokens: 2 }, B)), 404, 'session_not_found');
    const listed = (await (await app.request('/v1/sessions', get(B))).json()) as any;
    assert.deepEqual(listed.data, []);
    // The same id under B is B's own, empty session.
    const mine = await app.request('/v1/sessions', post({ session_id: 'shared' }, B));
    assert.equal(mine.status, 201);
    assert.equal(((await mine.json()) as any).tokens, 0);
    const a = (await (await app.request('/v1/sessions/shared', get(A))).json()) as any;
    assert.equal(a.tokens, tokens, "A's session is untouched");
    assert.equal(((await (await app.request('/v1/sessions', get(A))).json()) as any).data.length, 1);
    assert.equal(runtime.serving!.store.list(keyId(KEY_A)).length, 1);
    assert.equal(runtime.serving!.store.list(keyId(KEY_B)).length, 1);
  });

  test('cache reuse never crosses keys, even for identical prompts and session ids', async () => {
    const { app } = await makeApp({ settings: { 'api-keys': KEYS } });
    const prompt = 'Once upon a time in a castle by the sea there lived';
    const first = (await (await app.request('/v1/completions', post({ prompt, max_tokens: 4, temperature: 0, session_id: 'same' }, A))).json()) as any;
    assert.equal(first.usage.prompt_tokens_details.cached_tokens, 0);
    const again = (await (await app.request('/v1/completions', post({ prompt, max_tokens: 4, temperature: 0, session_id: 'same' }, A))).json()) as any;
    assert.ok(again.usage.prompt_tokens_details.cached_tokens > 0, 'A reuses its own cache');
    for (const body of [{ prompt, max_tokens: 4, temperature: 0, session_id: 'same' }, { prompt, max_tokens: 4, temperature: 0 }]) {
      const other = (await (await app.request('/v1/completions', post(body, B))).json()) as any;
      assert.equal(other.usage.prompt_tokens_details.cached_tokens, 0, 'B never gets A\'s cache');
      assert.equal(other.choices[0].text, first.choices[0].text, 'and computes the same text itself');
    }
  });

  test('snapshot files carry the owner and are checked on restore: a file under another key is skipped', async () => {
    const snapshotDir = mkdtempSync(join(tmpdir(), 'warmkv-sec-snap-'));
    const settings = { 'api-keys': KEYS, 'snapshot-dir': snapshotDir };
    const first = await makeApp({ settings });
    assert.equal((await first.app.request('/v1/sessions', post({ session_id: 'diary', prompt: 'Dear diary, today' }, A))).status, 201);
    await first.runtime.serving!.tiers.flushAll();
    // A restart: the session is found on disk by its owner only.
    const log = captureLogger();
    const second = await appWithLogger(settings, log.logger);
    const tiers = second.runtime.serving!.tiers;
    copyFileSync(tiers.pathOf(keyId(KEY_A), 'diary'), tiers.pathOf(keyId(KEY_B), 'diary'));
    await expectError(await second.app.request('/v1/sessions/diary', get(B)), 404, 'session_not_found');
    assert.ok(log.lines.some((l) => l.level === 'warn' && l.message === 'snapshot skipped' && /another session/.test(String(l.fields.err))));
    const restored = await second.app.request('/v1/sessions/diary', get(A));
    assert.equal(restored.status, 200);
    assert.equal(((await restored.json()) as any).tier, 'disk');
    const turn = (await (await second.app.request('/v1/sessions/diary/completions', post({ prompt: ' and', max_tokens: 2 }, A))).json()) as any;
    assert.ok(turn.usage.prompt_tokens_details.cached_tokens > 0, 'A resumes from its snapshot');
  });
});

describe('limits', () => {
  const settings = {
    'api-keys': KEYS,
    'max-body-bytes': '2048',
    'max-prompt-tokens': '32',
    'max-tokens-limit': '20',
    'max-stop-sequences': '2',
    'max-sessions-per-key': '3',
    'max-streams-per-key': '2',
  };

  test('body size: 413 body_too_large', async () => {
    const { app } = await makeApp({ settings });
    await expectError(await app.request('/v1/completions', post({ prompt: 'x'.repeat(3000) }, A)), 413, 'body_too_large');
    assert.equal((await app.request('/v1/completions', post({ prompt: 'x', max_tokens: 1, user: 'u'.repeat(1900) }, A))).status, 200);
  });

  test('prompt tokens: 400 context_length_exceeded, on every endpoint', async () => {
    const { app } = await makeApp({ settings });
    const long = Array(33).fill(5);
    await expectError(await app.request('/v1/completions', post({ prompt: long }, A)), 400, 'context_length_exceeded');
    await expectError(await app.request('/v1/sessions', post({ prompt: long }, A)), 400, 'context_length_exceeded');
    assert.equal((await app.request('/v1/sessions', post({ session_id: 's', prompt: [1, 2] }, A))).status, 201);
    await expectError(await app.request('/v1/sessions/s/completions', post({ prompt: long }, A)), 400, 'context_length_exceeded');
    await expectError(await app.request('/v1/chat/completions', post({ messages: [{ role: 'user', content: 'word '.repeat(40) }] }, A)), 400, 'context_length_exceeded');
    assert.equal((await app.request('/v1/completions', post({ prompt: Array(32).fill(5), max_tokens: 1 }, A))).status, 200);
  });

  test('max_tokens: 400 invalid_value above MAX_TOKENS_LIMIT', async () => {
    const { app } = await makeApp({ settings });
    const error = await expectError(await app.request('/v1/completions', post({ prompt: 'x', max_tokens: 21 }, A)), 400, 'invalid_value');
    assert.equal(error.param, 'max_tokens');
    assert.match(error.message, /at most 20/);
    assert.equal((await app.request('/v1/completions', post({ prompt: 'x', max_tokens: 20 }, A))).status, 200);
  });

  test('stop sequences: 400 invalid_value above MAX_STOP_SEQUENCES', async () => {
    const { app } = await makeApp({ settings });
    const error = await expectError(await app.request('/v1/completions', post({ prompt: 'x', stop: ['a', 'b', 'c'] }, A)), 400, 'invalid_value');
    assert.equal(error.param, 'stop');
    assert.equal((await app.request('/v1/completions', post({ prompt: 'x', max_tokens: 1, stop: ['a', 'b'] }, A))).status, 200);
  });

  test('sessions per key: 403 too_many_sessions on create and on a new session_id; existing sessions go on; other keys are not affected', async () => {
    const { app, runtime } = await makeApp({ settings });
    for (const id of ['s1', 's2']) assert.equal((await app.request('/v1/sessions', post({ session_id: id }, A))).status, 201);
    assert.equal((await app.request('/v1/completions', post({ prompt: 'x', max_tokens: 1, session_id: 's3' }, A))).status, 200);
    const refused = await expectError(await app.request('/v1/sessions', post({ prompt: 'hi' }, A)), 403, 'too_many_sessions');
    assert.match(refused.message, /3 sessions/);
    await expectError(await app.request('/v1/completions', post({ prompt: 'x', session_id: 's4' }, A)), 403, 'too_many_sessions');
    await expectError(await app.request('/v1/chat/completions', post({ messages: [{ role: 'user', content: 'x' }], session_id: 's4' }, A)), 403, 'too_many_sessions');
    // A burst of new sessions cannot overshoot.
    await Promise.all([1, 2, 3].map((i) => Promise.resolve(app.request('/v1/completions', post({ prompt: 'x', max_tokens: 1, session_id: `burst-${i}` }, A))).then((r) => r.text())));
    assert.equal(runtime.serving!.store.list(keyId(KEY_A)).length, 3);
    assert.equal((await app.request('/v1/completions', post({ prompt: 'x', max_tokens: 1, session_id: 's1' }, A))).status, 200, 'existing sessions go on');
    assert.equal((await app.request('/v1/sessions', post({}, B))).status, 201, 'B has its own quota');
    assert.equal((await app.request('/v1/sessions/s2', { method: 'DELETE', headers: A })).status, 200);
    assert.equal((await app.request('/v1/sessions', post({ session_id: 's5', prompt: 'hi' }, A))).status, 201, 'deleting frees a slot');
  });

  test('concurrent generations per key: 429 too_many_streams with Retry-After; streaming or not; a burst cannot overshoot', async () => {
    let slow!: TestDecoder;
    const { app, runtime } = await makeApp({ settings, wrapDecoder: (d) => (slow = wrapDecoder(d, { decodeDelayMs: 10 })) });
    const stream = async (headers: Record<string, string>) => app.request('/v1/completions', post({ prompt: 'x', max_tokens: 20, ignore_eos: true, stream: true }, headers));
    const first = await stream(A);
    assert.equal((await app.request('/v1/sessions', post({ session_id: 'busy' }, A))).status, 201);
    const second = await stream(A);
    assert.equal(first.status, 200);
    assert.equal(second.status, 200);
    const third = await stream(A);
    assert.equal(third.headers.get('retry-after'), '1');
    const error = await expectError(third, 429, 'too_many_streams');
    assert.equal(error.type, 'rate_limit_error');
    await expectError(await app.request('/v1/completions', post({ prompt: 'x', max_tokens: 1 }, A)), 429, 'too_many_streams');
    await expectError(await app.request('/v1/sessions/busy/completions', post({ prompt: 'x', max_tokens: 1 }, A)), 429, 'too_many_streams');
    await expectError(await app.request('/v1/sessions', post({ prompt: 'x' }, A)), 429, 'too_many_streams');
    assert.equal(runtime.serving!.store.get(keyId(KEY_A), 'busy')!.tokens.length, 0, 'a refused request changes nothing');
    const other = await stream(B);
    assert.equal(other.status, 200, 'B is not affected');
    await Promise.all([first.text(), second.text(), other.text()]);
    await waitFor(() => runtime.serving!.engine.stats().running === 0);

    // A burst of simultaneous requests: exactly the limit gets through.
    const burst = await Promise.all(Array.from({ length: 6 }, () => stream(A)));
    assert.deepEqual(burst.map((r) => r.status).sort(), [200, 200, 429, 429, 429, 429]);
    await Promise.all(burst.map((r) => r.text()));
    // Slots come back once generations end, also when the client goes away mid-stream.
    const gone = await stream(A);
    await gone.body!.cancel();
    await waitFor(() => runtime.serving!.engine.stats().running === 0);
    const after = await Promise.all([stream(A), stream(A)]);
    assert.deepEqual(after.map((r) => r.status), [200, 200]);
    await Promise.all(after.map((r) => r.text()));
    assert.ok(slow.calls > 0);
  });
});
