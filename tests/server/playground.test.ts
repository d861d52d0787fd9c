/**
 * The playground's server side: its static files (types, caching, auth), PLAYGROUND=false, GET /v1/stats,
 * and the warmkv `stream_options.include_step_stats` extension read by the official openai client.
 * The page itself is driven in a browser by playground-browser.test.ts.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { loadConfig } from '../../src/config.ts';
import { makeApp, openAiServer, type Listening } from './helpers.ts';

const KEY = 'playground-test-key-0123456789';
const auth = { Authorization: `Bearer ${KEY}` };
const bodyOf = async (res: Response) => (await res.json()) as Record<string, any>;

describe('playground files', () => {
  test('the page and its modules load without a key, with their types, revalidation and a CSP; the API still needs the key', async () => {
    const { app } = await makeApp({ settings: { 'api-keys': KEY } });
    const root = await app.request('/');
    assert.equal(root.status, 302);
    assert.equal(root.headers.get('location'), '/playground');

    const page = await app.request('/playground');
    assert.equal(page.status, 200);
    assert.equal(page.headers.get('content-type'), 'text/html; charset=utf-8');
    assert.equal(page.headers.get('cache-control'), 'no-cache');
    assert.equal(page.headers.get('x-content-type-options'), 'nosniff');
    assert.match(page.headers.get('content-security-policy') ?? '', /script-src 'self'/);
    const html = await page.text();
    const linked = [...html.matchAll(/(?:src|href)="\/playground\/([^"]+)"/g)].map((m) => m[1]);
    assert.deepEqual(linked.sort(), ['app.js', 'style.css']);

    for (const [name, type] of [['app.js', 'text/javascript; charset=utf-8'], ['api.js', 'text/javascript; charset=utf-8'], ['chart.js', 'text/javascript; charset=utf-8'], ['style.css', 'text/css; charset=utf-8']]) {
      const res = await app.request(`/playground/${name}`);
      assert.equal(res.status, 200, name);
      assert.equal(res.headers.get('content-type'), type, name);
      const etag = res.headers.get('etag');
      assert.match(etag ?? '', /^"[\w-]{22}"$/, name);
      const again = await app.request(`/playground/${name}`, { headers: { 'If-None-Match': etag! } });
      assert.equal(again.status, 304, name);
      assert.equal(await again.text(), '');
    }
    // Every module the page imports is served.
    const app_js = await (await app.request('/playground/app.js')).text();
    for (const [, name] of app_js.matchAll(/from '\.\/([^']+)'/g)) assert.equal((await app.request(`/playground/${name}`)).status, 200, name);

    const missing = await app.request('/playground/nope.js');
    assert.equal(missing.status, 404);
    assert.equal((await bodyOf(missing)).error.code, 'not_found');
    assert.equal((await app.request('/playground/index.html')).status, 404);

    for (const path of ['/v1/sessions', '/v1/stats', '/v1/models']) {
      const res = await app.request(path);
      assert.equal(res.status, 401, path);
      assert.equal((await bodyOf(res)).error.code, 'invalid_api_key', path);
    }
    assert.equal((await app.request('/v1/stats', { headers: auth })).status, 200);
  });

  test("the page's modules pass the TypeScript checker (JSDoc types, strict)", () => {
    const root = join(import.meta.dirname, '..', '..');
    const result = spawnSync(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(root, 'playground', 'tsconfig.json')], { encoding: 'utf8' });
    assert.equal(result.status, 0, result.stdout + result.stderr);
  });

  test('PLAYGROUND=false serves no page: / and /playground need a key, and with one are 404', async () => {
    assert.equal(loadConfig({ PLAYGROUND: 'false' }).playground, false);
    assert.equal(loadConfig({}, ['--playground', 'false']).playground, false);
    assert.equal(loadConfig({}).playground, true);
    const { app } = await makeApp({ settings: { 'api-keys': KEY, playground: 'false' } });
    for (const path of ['/', '/playground', '/playground/app.js']) {
      assert.equal((await app.request(path)).status, 401, path);
      const res = await app.request(path, { headers: auth });
      assert.equal(res.status, 404, path);
      assert.equal((await bodyOf(res)).error.code, 'not_found', path);
    }
  });

  test('GET /v1/stats reports the KV budget: reserved and used bytes grow with a session', async () => {
    const { app } = await makeApp();
    const read = async () => (await (await app.request('/v1/stats')).json()) as { object: string; kv_cache: Record<string, number> & { sessions_by_tier: Record<string, number> } };
    const before = await read();
    assert.equal(before.object, 'stats');
    assert.equal(before.kv_cache.capacity_bytes, 64 * 1024 * 1024);
    assert.equal(before.kv_cache.reserved_bytes, 0);
    const created = await app.request('/v1/sessions', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt: 'Once upon a time there was' }) });
    assert.equal(created.status, 201);
    const session = await bodyOf(created);
    const after = await read();
    assert.equal(after.kv_cache.reserved_bytes, session.bytes);
    assert.equal(after.kv_cache.used_bytes, session.used_bytes);
    assert.ok(after.kv_cache.used_bytes > 0 && after.kv_cache.used_bytes <= after.kv_cache.reserved_bytes);
    assert.equal(after.kv_cache.sessions_by_tier.hot, 1);
  });
});

describe('stream_options.include_step_stats', () => {
  let server: Listening;
  let client: OpenAI;
  before(async () => ({ server, client } = await openAiServer({ settings: { 'prefill-chunk-tokens': '4' } })));
  after(() => server.close());

  test('the openai client parses the stream; every chunk carries warmkv.steps, prefill chunks then one decode step per further token', async () => {
    const engine = server.runtime.serving!.engine;
    const before = engine.counters();
    const stream = await client.chat.completions.create({
      model: server.runtime.serving!.model.id,
      messages: [{ role: 'user', content: 'Tell me a story about a king and his castle' }],
      max_tokens: 12,
      temperature: 0,
      ignore_eos: true,
      stream: true,
      stream_options: { include_usage: true, include_step_stats: true },
    } as unknown as OpenAI.ChatCompletionCreateParamsStreaming);
    type Step = { type: 'prefill' | 'decode'; ms: number; tokens?: number; batch?: number; kv_tokens: number };
    const steps: Step[] = [];
    let text = '';
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const chunk of stream) {
      const extra = (chunk as unknown as { warmkv?: { steps: Step[] } }).warmkv;
      assert.ok(extra && Array.isArray(extra.steps), 'every chunk has warmkv.steps');
      steps.push(...extra.steps);
      text += chunk.choices[0]?.delta?.content ?? '';
      usage = chunk.usage ?? usage;
    }
    const counted = engine.counters();
    assert.ok(text.length > 0);
    assert.equal(usage?.completion_tokens, 12);
    const prefill = steps.filter((s) => s.type === 'prefill');
    const decode = steps.filter((s) => s.type === 'decode');
    // Steps arrive in order: the prompt's chunks, then the decode steps.
    assert.deepEqual(steps.map((s) => s.type), [...prefill.map(() => 'prefill'), ...decode.map(() => 'decode')]);
    assert.equal(prefill.length, counted.prefillChunks - before.prefillChunks);
    assert.equal(prefill.reduce((sum, s) => sum + s.tokens!, 0), usage!.prompt_tokens);
    assert.ok(prefill.every((s) => s.tokens! <= 4 && s.ms >= 0));
    assert.equal(decode.length, counted.decodeSteps - before.decodeSteps);
    // The last prefill chunk samples the first token; each decode step one more.
    assert.equal(decode.length, 11);
    assert.ok(decode.every((s) => s.batch === 1 && s.ms > 0));
    assert.equal(server.runtime.serving!.engine.stats().running, 0);
  });

  test('several prompts in one completions call: each decode step is reported once', async () => {
    const engine = server.runtime.serving!.engine;
    const before = engine.counters();
    const stream = await client.completions.create({
      model: server.runtime.serving!.model.id,
      prompt: ['Once upon a time', 'The harbour at dawn'],
      max_tokens: 6,
      temperature: 0,
      ignore_eos: true,
      stream: true,
      stream_options: { include_step_stats: true },
    } as unknown as OpenAI.CompletionCreateParamsStreaming);
    const steps: Array<{ type: string; batch?: number }> = [];
    for await (const chunk of stream) steps.push(...(chunk as unknown as { warmkv: { steps: typeof steps } }).warmkv.steps);
    const counted = engine.counters();
    assert.equal(steps.filter((s) => s.type === 'decode').length, counted.decodeSteps - before.decodeSteps);
    assert.equal(steps.filter((s) => s.type === 'prefill').length, counted.prefillChunks - before.prefillChunks);
    assert.ok(steps.some((s) => s.batch === 2), 'the two choices decoded in one batch');
  });

  test('without the option, chunks carry no warmkv field', async () => {
    const stream = await client.chat.completions.create({
      model: server.runtime.serving!.model.id,
      messages: [{ role: 'user', content: 'Hello' }],
      max_tokens: 3,
      stream: true,
    });
    for await (const chunk of stream) assert.equal('warmkv' in chunk, false);
  });
});
