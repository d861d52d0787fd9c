/**
 * Graceful shutdown and restarts, end to end: src/main.ts in a child process receives SIGTERM while
 * streams are open, refuses new work, ends or finishes the streams, snapshots sessions, exits 0; a new
 * process resumes a session from the snapshot with its whole cache.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { LLAMA, testModelDir } from '../support/fixtures.ts';
import { startServerProcess, type ServerProcess } from '../support/server-process.ts';

async function startServer(env: Record<string, string>): Promise<ServerProcess & { url: string }> {
  const dir = await testModelDir(LLAMA);
  const server = startServerProcess({
    args: ['--port', '0', '--host', '127.0.0.1', '--kv-cache-bytes', '64MiB'],
    env: { MODEL_DIR: dir, LOG_LEVEL: 'info', ...env },
  });
  return { ...server, url: await server.ready(20_000) };
}

const json = (body: unknown) => ({ method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });

/** Reads an SSE response to its end; returns the data payloads. */
async function readStream(response: Response, onFirstChunk: () => void): Promise<string[]> {
  const reader = response.body!.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  const data: string[] = [];
  let notified = false;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf('\n\n')) !== -1) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of frame.split('\n')) if (line.startsWith('data: ')) data.push(line.slice(6));
      if (!notified && data.length > 1) {
        notified = true;
        onFirstChunk();
      }
    }
  }
  return data;
}

describe('graceful shutdown', () => {
  test('SIGTERM: readyz turns 503, new work is refused, open streams finish or end cleanly, sessions are snapshotted, exit 0; a restart resumes from the snapshot', async () => {
    const snapshotDir = mkdtempSync(join(tmpdir(), 'warmkv-shutdown-'));
    const env = { SNAPSHOT_DIR: snapshotDir, DRAIN_SECONDS: '3', MAX_TOKENS_LIMIT: '1000000', STREAM_RESUME_SECONDS: '0' };
    const first = await startServer(env);

    // A session to survive the restart.
    const turn = await fetch(`${first.url}/v1/completions`, json({ prompt: 'The harbour at dawn', max_tokens: 12, temperature: 0, ignore_eos: true, session_id: 'survivor' }));
    assert.equal(turn.status, 200);
    const before = (await (await fetch(`${first.url}/v1/sessions/survivor`)).json()) as { cached_tokens: number; tokens: number };
    assert.equal(before.cached_tokens, before.tokens - 1);

    // A short stream that finishes well inside the drain window even on a loaded machine, and one far too long for it.
    let signalled!: () => void;
    const bothStreaming = new Promise<void>((resolve) => {
      let count = 0;
      signalled = () => ++count === 2 && resolve();
    });
    const short = fetch(`${first.url}/v1/completions`, json({ prompt: 'Short', max_tokens: 40, temperature: 0, ignore_eos: true, stream: true })).then((r) => readStream(r, signalled));
    const long = fetch(`${first.url}/v1/completions`, json({ prompt: 'Long', max_tokens: 500000, temperature: 0, ignore_eos: true, stream: true, truncation: 'auto' })).then((r) => readStream(r, signalled));
    await bothStreaming;

    const signalledAt = Date.now();
    first.kill('SIGTERM');
    // Draining starts at once: readiness fails and new generations are refused.
    for (let i = 0; (await fetch(`${first.url}/readyz`)).status !== 503; i++) {
      assert.ok(i < 40, 'readyz turns 503 within 2 s');
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const refused = await fetch(`${first.url}/v1/completions`, json({ prompt: 'late', max_tokens: 2 }));
    assert.equal(refused.status, 503);
    assert.equal(((await refused.json()) as { error: { code: string } }).error.code, 'shutting_down');

    const [shortData, longData] = await Promise.all([short, long]);
    assert.equal(shortData.at(-1), '[DONE]', 'the short stream finished normally');
    const longLast = JSON.parse(longData.at(-1)!) as { error?: { code: string } };
    assert.equal(longLast.error?.code, 'shutting_down', 'the long stream ended with an error chunk');
    assert.equal(await first.exited, 0);
    assert.ok(Date.now() - signalledAt < 3000 + 5000, 'exited within DRAIN_SECONDS plus snapshot time');
    assert.ok(first.logs.some((l) => l.msg === 'sessions snapshotted' && (l.written as number) >= 1));
    assert.ok(readdirSync(snapshotDir).some((f) => f.endsWith('.wkv')));

    // A new process finds the session on disk and reuses its whole cache.
    const second = await startServer(env);
    const listed = (await (await fetch(`${second.url}/v1/sessions/survivor`)).json()) as { tier: string; tokens: number };
    assert.equal(listed.tier, 'disk');
    assert.equal(listed.tokens, before.tokens);
    const resumed = await fetch(`${second.url}/v1/sessions/survivor/completions`, json({ prompt: ' and then', max_tokens: 4, temperature: 0, ignore_eos: true }));
    assert.equal(resumed.status, 200);
    const usage = ((await resumed.json()) as { usage: { prompt_tokens_details: { cached_tokens: number } } }).usage;
    assert.equal(usage.prompt_tokens_details.cached_tokens, before.cached_tokens);
    second.kill('SIGTERM');
    assert.equal(await second.exited, 0);
  });
});
