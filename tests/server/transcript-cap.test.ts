/**
 * Bounded sessions (issue 24.3 and the listing part of 24.4) on real sockets: MAX_SESSION_TOKENS caps a
 * transcript with a 400; the ten abandoned 500k-token appends leave a bounded transcript of
 * processed tokens only, bounded RSS, and a next 1-token append that prefills almost nothing; and
 * GET /v1/sessions lists the sessions that after a restart exist only in SNAPSHOT_DIR, as GET by id
 * finds them and as MAX_SESSIONS_PER_KEY counts them.
 */
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { randomTokens } from '../support/fixtures.ts';
import { expectError, listen, post, waitFor, type Listening } from './helpers.ts';

const servers: Listening[] = [];
after(async () => {
  for (const server of servers) await server.close();
});

async function start(settings: Record<string, string>): Promise<Listening> {
  const server = await listen({ settings });
  servers.push(server);
  return server;
}

const K1 = 'key-one-0123456789abcdef';
const K2 = 'key-two-0123456789abcdef';
const withKey = (key: string, body?: unknown): RequestInit =>
  body === undefined ? { headers: { Authorization: `Bearer ${key}` } } : post(body, { Authorization: `Bearer ${key}` });

async function view(url: string, id: string, init?: RequestInit): Promise<any> {
  const res = await fetch(`${url}/v1/sessions/${id}`, init);
  assert.equal(res.status, 200);
  return res.json();
}

describe('MAX_SESSION_TOKENS (issue 24.3)', () => {
  test('an append or a prompt that would take a transcript past the cap is a 400 and changes nothing', async () => {
    const server = await start({ 'max-session-tokens': '100' });
    const created = await fetch(`${server.url}/v1/sessions`, post({ session_id: 'capped', prompt: randomTokens(60, 1) }));
    assert.equal(created.status, 201);
    const before = await view(server.url, 'capped');
    assert.equal(before.tokens, 60);

    const over = await fetch(`${server.url}/v1/sessions/capped/completions`, post({ prompt: randomTokens(41, 2), max_tokens: 1 }));
    const error = await expectError(over, 400, 'context_length_exceeded', 'prompt');
    assert.match(error.message, /would hold 101 tokens.*at most 100 per session \(MAX_SESSION_TOKENS\)/);
    const after = await view(server.url, 'capped');
    assert.equal(after.tokens, 60, 'the refused append committed nothing');
    assert.equal(after.version, before.version);

    const fits = await fetch(`${server.url}/v1/sessions/capped/completions`, post({ prompt: randomTokens(39, 3), max_tokens: 1, temperature: 0 }));
    assert.equal(fits.status, 200, 'up to the cap is accepted');
    await fits.json();

    const replace = await fetch(`${server.url}/v1/completions`, post({ session_id: 'fresh', prompt: randomTokens(101, 4), max_tokens: 1 }));
    await expectError(replace, 400, 'context_length_exceeded', 'session_id');
    assert.equal((await fetch(`${server.url}/v1/sessions/fresh`)).status, 404, 'the refused request created no session');
  });

  test("the issue's sequence: ten 500k-token appends abandoned once admitted leave a bounded transcript of processed tokens only", { timeout: 240_000 }, async () => {
    const cap = 1_000_000;
    const server = await start({ 'max-session-tokens': String(cap), 'max-prompt-tokens': '600000', 'max-body-bytes': '16MiB' });
    const context = server.runtime.serving!.model.contextLength;
    const created = await fetch(`${server.url}/v1/sessions`, post({ session_id: 'huge', prompt: randomTokens(8, 1) }));
    assert.equal(created.status, 201);
    const rssBefore = process.memoryUsage().rss;
    let peakRss = rssBefore;
    let refused = 0;

    for (let i = 0; i < 10; i++) {
      const before = (await view(server.url, 'huge')).tokens as number;
      const abort = new AbortController();
      const res = await fetch(`${server.url}/v1/sessions/huge/completions`, {
        ...post({ prompt: randomTokens(500_000, 10 + i), max_tokens: 4, stream: true }),
        signal: abort.signal,
      });
      if (res.status === 400) {
        // Only the cap may refuse it, and only when the committed transcript plus this append passes it.
        const error = await expectError(res, 400, 'context_length_exceeded', 'prompt');
        assert.match(error.message, /MAX_SESSION_TOKENS/);
        assert.ok(before + 500_000 > cap, `append ${i + 1} refused at ${before} tokens, under the cap`);
        refused++;
      } else {
        assert.equal(res.status, 200, `append ${i + 1} was admitted`);
        abort.abort();
        await res.body?.cancel().catch(() => {});
      }
      await waitFor(() => server.runtime.serving!.store.get('', 'huge')?.busy === false, 60_000);
      const seen = await view(server.url, 'huge');
      assert.ok(seen.tokens <= cap, `append ${i + 1}: ${seen.tokens} tokens, over the cap`);
      // What it prefilled (all of it at most) and the 4 tokens it may have generated, never more.
      assert.ok(seen.tokens <= before + 500_004, `append ${i + 1}: committed ${seen.tokens - before} tokens, more than it processed`);
      assert.ok(seen.cached_tokens <= context, 'the cache holds at most the window');
      peakRss = Math.max(peakRss, process.memoryUsage().rss);
    }

    assert.ok(refused >= 8 || (await view(server.url, 'huge')).tokens < 2 * 500_000, 'the transcript stayed bounded by what was processed');
    const transcript = (await view(server.url, 'huge')).tokens as number;
    const next = await fetch(`${server.url}/v1/sessions/huge/completions`, post({ prompt: [5], max_tokens: 1, temperature: 0 }));
    assert.equal(next.status, 200);
    const usage = ((await next.json()) as any).usage;
    assert.equal(usage.prompt_tokens, transcript + 1, 'the transcript is what was committed, plus the new token');
    const prefilled = usage.prompt_tokens - usage.prompt_tokens_details.cached_tokens;
    assert.ok(prefilled <= context, `the 1-token append prefilled ${prefilled} tokens (at most the window of ${context})`);
    // Ten bodies of 500k ids pass through; what stays must not grow with them (the issue saw +540 MiB).
    assert.ok(peakRss - rssBefore < 400 * 1024 ** 2, `RSS grew by ${Math.round((peakRss - rssBefore) / 1024 ** 2)} MiB`);
  });
});

describe('GET /v1/sessions after a restart (issue 24.4)', () => {
  test('sessions only in SNAPSHOT_DIR are listed for their key, as GET by id finds them and the per-key limit counts them', { timeout: 60_000 }, async () => {
    const snapshotDir = mkdtempSync(join(tmpdir(), 'warmkv-list-'));
    const settings = { 'snapshot-dir': snapshotDir, 'api-keys': `${K1},${K2}`, 'max-sessions-per-key': '3', 'int8-tier': 'false' };
    const first = await start(settings);
    for (const [key, id, seed] of [[K1, 'a', 1], [K1, 'b', 2], [K2, 'c', 3]] as const) {
      const res = await fetch(`${first.url}/v1/completions`, withKey(key, { session_id: id, prompt: randomTokens(12, seed), max_tokens: 3, temperature: 0 }));
      assert.equal(res.status, 200);
      await res.json();
    }
    const answered = await view(first.url, 'a', withKey(K1));
    await first.runtime.serving!.tiers.flushAll();
    await first.close();

    const second = await start(settings);
    assert.equal(second.runtime.serving!.store.size, 0, 'nothing loaded after the restart');
    const list = async (key: string) => ((await (await fetch(`${second.url}/v1/sessions`, withKey(key))).json()) as any).data as any[];
    const k1 = await list(K1);
    assert.deepEqual(k1.map((s) => s.id).sort(), ['a', 'b'], 'both of k1, none of k2');
    assert.deepEqual((await list(K2)).map((s) => s.id), ['c']);
    const listedA = k1.find((s) => s.id === 'a');
    const byId = await view(second.url, 'a', withKey(K1));
    for (const field of ['tokens', 'version', 'created_at', 'tier']) assert.equal(listedA[field], byId[field], `${field} agrees with GET by id`);
    assert.equal(byId.tokens, answered.tokens);
    assert.equal(byId.version, answered.version);

    const third = await fetch(`${second.url}/v1/sessions`, withKey(K1, { session_id: 'new' }));
    assert.equal(third.status, 201, 'a third session fits the limit of 3');
    const fourth = await fetch(`${second.url}/v1/sessions`, withKey(K1, { session_id: 'one-too-many' }));
    await expectError(fourth, 403, 'too_many_sessions');
    assert.equal((await list(K1)).length, 3, 'listed exactly as counted');
  });
});
