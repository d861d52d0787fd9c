/** `npm start` end to end (src/main.ts in a child process) and the runtime's start-up checks. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { loadConfig } from '../../src/config.ts';
import { contextLengthFor, Runtime, RuntimeError } from '../../src/runtime.ts';
import { createApp } from '../../src/server/app.ts';
import { GPT2, LLAMA, testModel, testModelDir } from '../support/fixtures.ts';
import { startServerProcess } from '../support/server-process.ts';

const start = (args: string[], env: Record<string, string> = {}) => startServerProcess({ args, env });

describe('main.ts', () => {
  test('--help lists every setting; an invalid setting exits 2 with a clear message', async () => {
    const help = start(['--help']);
    assert.equal(await help.exited, 0);
    const out = help.stdout();
    assert.match(out, /--port\s+PORT \(default 8080\)/);
    assert.match(out, /--model\s+MODEL or MODEL_DIR/);
    const bad = start(['--max-batch-size', '0'], { PORT: 'eighty' });
    assert.equal(await bad.exited, 2);
    assert.match(bad.stderr(), /invalid configuration/);
    assert.match(bad.stderr(), /PORT \/ --port/);
    assert.match(bad.stderr(), /MAX_BATCH_SIZE \/ --max-batch-size/);
    const unknown = start(['--no-such-flag']);
    assert.equal(await unknown.exited, 2);
    assert.match(unknown.stderr(), /unknown option --no-such-flag/);
  });

  test('a missing model folder exits 1 naming the folder', async () => {
    const run = start(['--port', '0', '--host', '127.0.0.1'], { MODEL_DIR: '/nonexistent/model' });
    assert.equal(await run.exited, 1);
    assert.match(run.stderr(), /cannot serve \/nonexistent\/model: model folder .* does not exist/);
  });

  test('serves MODEL_DIR with JSON logs, answers a completion, and drains on SIGTERM', async () => {
    const dir = await testModelDir(LLAMA);
    const run = start(['--port', '0', '--host', '127.0.0.1', '--kv-cache-bytes', '32MiB'], { MODEL_DIR: dir, LOG_LEVEL: 'info' });
    const lines = run.logs;
    const url = await run.ready(10_000);
    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ prompt: 'A secret prompt', max_tokens: 3, session_id: 'main-test' }),
    });
    assert.equal(res.status, 200);
    const body = (await res.json()) as any;
    run.child.kill('SIGTERM');
    assert.equal(await run.exited, 0);
    const finished = lines.find((l) => l.msg === 'generation finished');
    assert.ok(finished, 'a structured log line per generation');
    assert.equal(finished.sessionId, 'main-test');
    assert.equal(finished.completionTokens, 3);
    assert.ok(typeof finished.requestId === 'string');
    const all = lines.map((l) => JSON.stringify(l)).join('\n');
    assert.ok(!all.includes('A secret prompt'), 'no prompt text in logs');
    assert.ok(!Object.keys(finished).some((k) => /text|prompt$|content/i.test(k)), 'no text fields');
    assert.equal(typeof body.choices[0].text, 'string');
    assert.ok(lines.some((l) => l.msg === 'model ready'));
    assert.ok(lines.some((l) => l.msg === 'draining'));
  });
});

describe('runtime', () => {
  test('the context of a learned-position model may not exceed its position table', async () => {
    const gpt2 = await testModel(GPT2);
    const dir = await testModelDir(GPT2);
    assert.equal(contextLengthFor(loadConfig({}, ['--model', dir]), gpt2), 1024);
    assert.equal(contextLengthFor(loadConfig({}, ['--model', dir, '--max-context-tokens', '256']), gpt2), 256);
    assert.throws(() => contextLengthFor(loadConfig({}, ['--model', dir, '--max-context-tokens', '2048']), gpt2), RuntimeError);
    const llama = await testModel(LLAMA);
    assert.equal(contextLengthFor(loadConfig({}, ['--max-context-tokens', '4096']), llama), 4096, 'rotary models may go past max_position_embeddings');
  });

  test('a bad window setting fails the load; readyz then says model_failed', async () => {
    const dir = await testModelDir(LLAMA);
    const config = loadConfig({}, ['--model', dir, '--max-context-tokens', '16', '--sink-tokens', '8', '--window-drop-tokens', '8', '--kv-cache-bytes', '1MiB']);
    const runtime = new Runtime(config, { load: () => testModel(LLAMA) });
    await assert.rejects(runtime.ready, /window of 16 tokens cannot keep 8 sink tokens/);
    assert.equal(runtime.state, 'failed');
    const app = createApp(runtime);
    const ready = await app.request('/readyz');
    assert.equal(ready.status, 503);
    assert.equal(((await ready.json()) as any).error.code, 'model_failed');
    assert.equal((await app.request('/healthz')).status, 200);
  });

  test('a gpt2 model serves with the recompute window', async () => {
    const dir = await testModelDir(GPT2);
    const config = loadConfig({}, ['--model', dir, '--kv-cache-bytes', '16MiB', '--max-context-tokens', '64']);
    const runtime = new Runtime(config, { load: () => testModel(GPT2) });
    const serving = await runtime.ready;
    assert.equal(serving.model.window.strategy, 'recompute');
    const app = createApp(runtime);
    const res = await app.request('/v1/completions', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ prompt: Array(60).fill(9), max_tokens: 12, ignore_eos: true, truncation: 'auto' }) });
    const body = (await res.json()) as any;
    assert.equal(res.status, 200);
    assert.equal(body.usage.completion_tokens, 12);
  });
});
