/**
 * Three server processes on one real redis-server (SESSION_STORE_URL) and one shared SNAPSHOT_DIR:
 * conversations whose every turn goes to a random replica (native append, OpenAI-style resend and
 * Responses chains with a branch; 20 at once, most first visits of a replica starting from a snapshot), a
 * turn on a replica that never saw its session starting from another replica's prefix snapshot, races
 * on one session, SIGKILL of a replica mid-turn, and Redis restarted mid-run.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { Rng } from '../../src/lib/rng.ts';
import { LLAMA, randomTokens, testModelDir } from '../support/fixtures.ts';
import { REDIS_SKIP, startRedis, type RedisProcess } from '../support/redis-server.ts';
import { startServerProcess, type ServerProcess } from '../support/server-process.ts';

const json = { 'Content-Type': 'application/json' };
const append = (url: string, id: string, prompt: number[], maxTokens = 3) =>
  fetch(`${url}/v1/sessions/${id}/completions`, { method: 'POST', headers: json, body: JSON.stringify({ prompt, max_tokens: maxTokens, temperature: 0 }) });
/**
 * A client that thinks until the replica that answered it has written its snapshots (the background
 * writer's backlog, from /metrics), so the next turn elsewhere can find them; at most `limitMs`.
 */
async function snapshotsLanded(url: string, limitMs = 5000): Promise<void> {
  for (const started = Date.now(); Date.now() - started < limitMs; await new Promise((resolve) => setTimeout(resolve, 20))) {
    const text = await (await fetch(`${url}/metrics`)).text();
    const pending = [...text.matchAll(/^warmkv_snapshot_writes_pending\{[^}]*\} (\d+)$/gm)].reduce((sum, match) => sum + Number(match[1]), 0);
    if (pending === 0) return;
  }
}
const sessionOf = async (url: string, id: string) => (await fetch(`${url}/v1/sessions/${id}`)).json() as Promise<{ version: number; tokens: number }>;

describe('a fleet of three replicas on one Redis', { skip: REDIS_SKIP, timeout: 240_000 }, () => {
  let redis: RedisProcess;
  let replicas: ServerProcess[] = [];
  let urls: string[] = [];
  let env: Record<string, string>;
  const snapshotDir = mkdtempSync(join(tmpdir(), 'warmkv-fleet-snapshots-'));
  const args = ['--port', '0', '--host', '127.0.0.1'];
  before(async () => {
    redis = await startRedis();
    env = { MODEL_DIR: await testModelDir(LLAMA), SESSION_STORE_URL: redis.url, SESSION_LEASE_SECONDS: '1', INT8_TIER: 'false', LOG_LEVEL: 'info', SNAPSHOT_DIR: snapshotDir };
    replicas = [0, 1, 2].map(() => startServerProcess({ args, env }));
    urls = await Promise.all(replicas.map((r) => r.ready(30_000)));
  });
  after(async () => {
    await Promise.all(replicas.map((r) => r.stop()));
    await redis?.close();
  });

  test('every turn of 6 concurrent conversations on random replicas equals the same conversation on one replica; no 404', async () => {
    const rng = new Rng(21);
    await Promise.all([0, 1, 2, 3, 4, 5].map(async (c) => {
      const [id, baseline] = [`conv-${c}`, `base-${c}`];
      for (const [name, url] of [[id, urls[c % 3]], [baseline, urls[0]]]) {
        const created = await fetch(`${url}/v1/sessions`, { method: 'POST', headers: json, body: JSON.stringify({ session_id: name }) });
        assert.equal(created.status, 201);
      }
      for (let turn = 0; turn < 4; turn++) {
        const prompt = randomTokens(5, c * 10 + turn + 1);
        const replica = Math.floor(rng.next() * 3);
        const res = await append(urls[replica], id, prompt);
        assert.equal(res.status, 200, `conversation ${c} turn ${turn} on replica ${replica}: ${await res.clone().text()}`);
        const reference = await append(urls[0], baseline, prompt);
        assert.equal(reference.status, 200);
        const text = ((await res.json()) as { choices: Array<{ text: string }> }).choices[0].text;
        assert.equal(text, ((await reference.json()) as { choices: Array<{ text: string }> }).choices[0].text, `conversation ${c} turn ${turn}`);
        const seen = await sessionOf(urls[(replica + 1) % 3], id);
        assert.equal(seen.version, turn + 1, 'another replica sees the committed version');
        assert.equal(seen.tokens, (await sessionOf(urls[0], baseline)).tokens);
      }
    }));
  });

  test('OpenAI-style resend: 8 concurrent conversations, every turn on a random replica, each equal to a one-shot run of its transcript', async () => {
    const rng = new Rng(2121);
    const complete = (url: string, prompt: string, sessionId?: string) =>
      fetch(`${url}/v1/completions`, { method: 'POST', headers: json, body: JSON.stringify({ prompt, max_tokens: 4, temperature: 0, ...(sessionId ? { session_id: sessionId } : {}) }) });
    const words = ['the', 'king', 'castle', 'river', 'walked', 'slowly', 'towards', 'a', 'bright', 'morning'];
    await Promise.all([0, 1, 2, 3, 4, 5, 6, 7].map(async (c) => {
      const id = `resend-${c}`;
      let transcript = '';
      for (let turn = 0; turn < 4; turn++) {
        transcript += ` ${words[(c + turn) % words.length]} ${words[(c * 3 + turn * 7) % words.length]}`;
        const replica = Math.floor(rng.next() * 3);
        const res = await complete(urls[replica], transcript, id);
        assert.equal(res.status, 200, `conversation ${c} turn ${turn} on replica ${replica}: ${await res.clone().text()}`);
        const body = (await res.json()) as { session_id: string; choices: Array<{ text: string }> };
        assert.equal(body.session_id, id);
        const oneShot = await complete(urls[(replica + 1) % 3], transcript);
        assert.equal(oneShot.status, 200);
        assert.equal(body.choices[0].text, ((await oneShot.json()) as { choices: Array<{ text: string }> }).choices[0].text, `conversation ${c} turn ${turn}`);
        assert.equal((await sessionOf(urls[(replica + 2) % 3], id)).version, turn + 1, 'every replica sees the committed turn');
        transcript += body.choices[0].text;
      }
    }));
  });

  test('a turn on a replica that never saw the session starts from the shared prefix snapshot and equals the conversation on one replica', async () => {
    for (const [name, url] of [['shared-prefix', urls[0]], ['shared-base', urls[2]]]) {
      assert.equal((await fetch(`${url}/v1/sessions`, { method: 'POST', headers: json, body: JSON.stringify({ session_id: name }) })).status, 201);
    }
    const history = randomTokens(150, 77);
    assert.equal((await append(urls[0], 'shared-prefix', history)).status, 200);
    assert.equal((await append(urls[2], 'shared-base', history)).status, 200);
    // The snapshot is written in the background after the commit: wait until it is on shared storage.
    for (let i = 0; i < 100 && !readdirSync(snapshotDir).some((name) => name.endsWith('.wkvp')); i++) await new Promise((resolve) => setTimeout(resolve, 50));
    const followUp = randomTokens(6, 78);
    const res = await append(urls[1], 'shared-prefix', followUp, 5);
    assert.equal(res.status, 200);
    const body = (await res.json()) as { choices: Array<{ text: string }>; usage: { prompt_tokens_details?: { cached_tokens: number } } };
    assert.equal(body.usage.prompt_tokens_details?.cached_tokens, 128, 'the two whole 64-token blocks of the first turn came from the snapshot');
    const reference = (await (await append(urls[2], 'shared-base', followUp, 5)).json()) as { choices: Array<{ text: string }> };
    assert.equal(body.choices[0].text, reference.choices[0].text);
  });

  test('20 concurrent conversations, native, resend and Responses chains, each turn on another replica: every turn equals its reference, no 404, and most first visits start from a snapshot', async () => {
    const rng = new Rng(2020);
    type Completion = { session_id?: string; choices: Array<{ text: string }>; usage: { prompt_tokens_details?: { cached_tokens: number } } };
    type Response = { id: string; output: Array<{ content?: Array<{ text: string }> }>; usage: { input_tokens_details: { cached_tokens: number } } };
    const cachedOf = (body: Completion) => body.usage.prompt_tokens_details?.cached_tokens ?? 0;
    const complete = (url: string, prompt: string, sessionId?: string) =>
      fetch(`${url}/v1/completions`, { method: 'POST', headers: json, body: JSON.stringify({ prompt, max_tokens: 3, temperature: 0, ...(sessionId ? { session_id: sessionId } : {}) }) });
    const respond = async (url: string, input: string, previous: string | undefined, where: string): Promise<Response> => {
      const res = await fetch(`${url}/v1/responses`, {
        method: 'POST',
        headers: json,
        body: JSON.stringify({ input, max_output_tokens: 3, temperature: 0, ...(previous ? { previous_response_id: previous } : {}) }),
      });
      assert.equal(res.status, 200, `${where}: ${await res.clone().text()}`);
      return (await res.json()) as Response;
    };
    const textOf = (response: Response) => response.output.map((item) => item.content?.map((part) => part.text).join('') ?? '').join('');
    const words = ['the', 'king', 'castle', 'river', 'walked', 'slowly', 'towards', 'a', 'bright', 'morning', 'stone', 'bridge'];
    const phrase = (seed: number, count: number) => Array.from({ length: count }, (_, i) => words[(seed * 7 + i * 5 + (i >> 2)) % words.length]).join(' ');
    /** Per kind of conversation, per turn on a replica that had never served it: the tokens it did not have to prefill. */
    const firstVisits: Record<'native' | 'resend' | 'responses', number[]> = { native: [], resend: [], responses: [] };
    await Promise.all(Array.from({ length: 20 }, async (_, c) => {
      // Turns 0-2 visit the three replicas in a random order (so turns 1 and 2 land where the
      // conversation has never been); turn 3 goes to any replica but the one before.
      const order = [0, 1, 2].sort(() => rng.next() - 0.5);
      const replicaOf = (turn: number) => (turn < 3 ? order[turn] : (order[2] + 1 + Math.floor(rng.next() * 2)) % 3);
      if (c % 3 === 0) {
        const [id, baseline] = [`many-${c}`, `many-base-${c}`];
        for (const [name, url] of [[id, urls[order[0]]], [baseline, urls[order[0]]]]) {
          assert.equal((await fetch(`${url}/v1/sessions`, { method: 'POST', headers: json, body: JSON.stringify({ session_id: name }) })).status, 201);
        }
        for (let turn = 0; turn < 4; turn++) {
          // A first turn over one 64-token block, so the next replica has a snapshot to start from.
          const prompt = randomTokens(turn === 0 ? 80 : 6, 500 + c * 10 + turn);
          const replica = replicaOf(turn);
          const res = await append(urls[replica], id, prompt);
          assert.equal(res.status, 200, `conversation ${c} turn ${turn} on replica ${replica}: ${await res.clone().text()}`);
          const body = (await res.json()) as Completion;
          if (turn === 1 || turn === 2) firstVisits.native.push(cachedOf(body));
          const reference = (await (await append(urls[order[0]], baseline, prompt)).json()) as Completion;
          assert.equal(body.choices[0].text, reference.choices[0].text, `conversation ${c} turn ${turn}`);
          await snapshotsLanded(urls[replica]);
        }
        return;
      }
      if (c % 3 === 2) {
        // A Responses chain (previous_response_id), its reference the same chain on one replica; turn 3
        // branches from turn 1's response, which is no longer the head of its session.
        const ids: string[] = [];
        const referenceIds: string[] = [];
        for (let turn = 0; turn < 4; turn++) {
          const input = phrase(c + turn, turn === 0 ? 60 : 4);
          const parentTurn = turn === 3 ? 1 : turn - 1;
          const replica = replicaOf(turn);
          const where = `chain ${c} turn ${turn} on replica ${replica}`;
          const response = await respond(urls[replica], input, ids[parentTurn], where);
          if (turn === 1 || turn === 2) firstVisits.responses.push(response.usage.input_tokens_details.cached_tokens);
          const reference = await respond(urls[order[0]], input, referenceIds[parentTurn], `${where}, reference`);
          assert.equal(textOf(response), textOf(reference), where);
          ids.push(response.id);
          referenceIds.push(reference.id);
          await snapshotsLanded(urls[replica]);
        }
        return;
      }
      const id = `many-resend-${c}`;
      let transcript = phrase(c, 60);
      for (let turn = 0; turn < 4; turn++) {
        if (turn > 0) transcript += ` ${phrase(c + turn, 4)}`;
        const replica = replicaOf(turn);
        const res = await complete(urls[replica], transcript, id);
        assert.equal(res.status, 200, `conversation ${c} turn ${turn} on replica ${replica}: ${await res.clone().text()}`);
        const body = (await res.json()) as Completion;
        assert.equal(body.session_id, id);
        if (turn === 1 || turn === 2) firstVisits.resend.push(cachedOf(body));
        const oneShot = (await (await complete(urls[(replica + 1) % 3], transcript)).json()) as Completion;
        assert.equal(body.choices[0].text, oneShot.choices[0].text, `conversation ${c} turn ${turn}`);
        transcript += body.choices[0].text;
        await snapshotsLanded(urls[replica]);
      }
    }));
    assert.deepEqual(Object.values(firstVisits).map((visits) => visits.length), [14, 14, 12]);
    // A snapshot is written after its turn commits, in the background: a next turn that arrives before it
    // (or one whose write a full SNAPSHOT_WRITE_QUEUE refused) prefills from the transcript, slower and as
    // correct. The clients above think until the writes landed, so most must find it, in every kind.
    for (const [kind, visits] of Object.entries(firstVisits)) {
      const fromSnapshot = visits.filter((cached) => cached >= 64).length;
      assert.ok(fromSnapshot > visits.length / 2, `${kind}: ${fromSnapshot} of ${visits.length} first visits started from a snapshot (cached tokens: ${visits.join(',')})`);
    }
  });

  test('two children of one response at once on two replicas: both answer, each equal to the same child on one replica', async () => {
    type Response = { id: string; output: Array<{ content?: Array<{ text: string }> }> };
    const respond = async (url: string, input: string, previous?: string) => {
      const res = await fetch(`${url}/v1/responses`, { method: 'POST', headers: json, body: JSON.stringify({ input, max_output_tokens: 4, temperature: 0, ...(previous ? { previous_response_id: previous } : {}) }) });
      assert.equal(res.status, 200, await res.clone().text());
      const body = (await res.json()) as Response;
      return { id: body.id, text: body.output.map((item) => item.content?.map((part) => part.text).join('') ?? '').join('') };
    };
    const opening = 'the king walked towards the castle on a bright morning and the river ran slowly under the stone bridge';
    const parent = await respond(urls[0], opening);
    // Both may see the parent as its session's head: one takes the session over, the other finds it
    // leased (or already moved on) and branches, seeded from the shared prefix snapshot.
    const [left, right] = await Promise.all([respond(urls[1], 'and then the king said', parent.id), respond(urls[2], 'a bright morning came', parent.id)]);
    const reference = await respond(urls[0], opening);
    assert.equal(reference.text, parent.text);
    assert.equal((await respond(urls[0], 'and then the king said', reference.id)).text, left.text);
    assert.equal((await respond(urls[0], 'a bright morning came', reference.id)).text, right.text);
    // Each child's chain goes on from either replica.
    assert.equal((await respond(urls[2], 'slowly', left.id)).text, (await respond(urls[1], 'slowly', left.id)).text);
  });

  test('the official openai client: a Responses chain across replicas, a stream aborted on one and the next turn on another', async () => {
    const clients = urls.map((url) => new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 }));
    const greedy = { max_output_tokens: 6, temperature: 0 } as const;
    const first = await clients[0].responses.create({ input: 'the king walked towards the castle on a bright morning', ...greedy });
    const second = await clients[1].responses.create({ input: 'and then the river', previous_response_id: first.id, ...greedy });
    assert.ok(second.usage!.input_tokens > first.usage!.input_tokens);
    // A long streamed turn on replica 2, dropped by the client (Stop) after its first delta.
    const stream = await clients[2].responses.create({ input: 'slowly', previous_response_id: second.id, max_output_tokens: 200, temperature: 0, stream: true });
    let deltas = 0;
    for await (const event of stream) {
      if (event.type !== 'response.output_text.delta') continue;
      deltas++;
      stream.controller.abort();
      break;
    }
    assert.equal(deltas, 1);
    // The next turn, from the last completed response, on another replica: it answers as a one-replica chain does.
    const next = await clients[0].responses.create({ input: 'a bright morning', previous_response_id: second.id, ...greedy });
    const reference = await (async () => {
      const a = await clients[1].responses.create({ input: 'the king walked towards the castle on a bright morning', ...greedy });
      const b = await clients[1].responses.create({ input: 'and then the river', previous_response_id: a.id, ...greedy });
      return clients[1].responses.create({ input: 'a bright morning', previous_response_id: b.id, ...greedy });
    })();
    assert.equal(next.output_text, reference.output_text);
    assert.equal(second.output_text, (await clients[2].responses.retrieve(second.id)).output_text, 'any replica retrieves a stored response');
  });

  test('two replicas racing on one session: one commits, the other gets 409 session_busy; history stays linear', async () => {
    await fetch(`${urls[0]}/v1/sessions`, { method: 'POST', headers: json, body: JSON.stringify({ session_id: 'race' }) });
    // The first turn is streamed and read until it is under way, and long (600 tokens, hundreds of ms
    // even on a fast replica), so the second arrives while the first holds the session.
    const first = await fetch(`${urls[1]}/v1/sessions/race/completions`, { method: 'POST', headers: json, body: JSON.stringify({ prompt: [5, 6, 7], max_tokens: 600, temperature: 0, ignore_eos: true, stream: true }) });
    assert.equal(first.status, 200);
    const reader = first.body!.getReader();
    await reader.read();
    const second = await append(urls[2], 'race', [8, 9, 10], 40);
    assert.equal(second.status, 409);
    assert.equal(((await second.json()) as { error: { code: string } }).error.code, 'session_busy');
    while (!(await reader.read()).done);
    const seen = await sessionOf(urls[0], 'race');
    assert.equal(seen.version, 1);
    assert.equal(seen.tokens, 3 + 600);
  });

  test('SIGKILL of a replica mid-turn: the session stays at its last committed turn and continues elsewhere', async () => {
    await fetch(`${urls[0]}/v1/sessions`, { method: 'POST', headers: json, body: JSON.stringify({ session_id: 'crash' }) });
    assert.equal((await append(urls[1], 'crash', [11, 12, 13])).status, 200);
    // Streamed, so the kill lands once the turn is under way, however fast the replica decodes.
    const long = await fetch(`${urls[2]}/v1/sessions/crash/completions`, { method: 'POST', headers: json, body: JSON.stringify({ prompt: [14, 15], max_tokens: 2000, temperature: 0, stream: true }) });
    assert.equal(long.status, 200);
    const reader = long.body!.getReader();
    await reader.read();
    replicas[2].kill('SIGKILL');
    await reader.read().then(async function drain(chunk): Promise<void> {
      if (!chunk.done) return reader.read().then(drain);
    }).catch(() => null);
    assert.equal((await sessionOf(urls[0], 'crash')).version, 1, 'still the last committed turn');
    let status = 409;
    for (let i = 0; i < 40 && status === 409; i++) {
      status = (await append(urls[0], 'crash', [16, 17])).status;
      if (status === 409) await new Promise((resolve) => setTimeout(resolve, 100));
    }
    assert.equal(status, 200, 'continues on another replica once the dead lease lapsed');
    assert.equal((await sessionOf(urls[1], 'crash')).version, 2);
    replicas[2] = startServerProcess({ args, env });
    urls[2] = await replicas[2].ready(30_000);
  });

  test('Redis restarted mid-run: turns fail with 503 and a clear message, then recover', async () => {
    await redis.stop();
    const res = await append(urls[0], 'crash', [18]);
    assert.equal(res.status, 503);
    const body = (await res.json()) as { error: { code: string; message: string } };
    assert.equal(body.error.code, 'session_store_unavailable');
    assert.match(body.error.message, /session store at redis:\/\/127\.0\.0\.1:\d+ is unreachable/);
    await redis.restart();
    let status = 0;
    for (let i = 0; i < 50 && status !== 201; i++) {
      status = (await fetch(`${urls[1]}/v1/sessions`, { method: 'POST', headers: json, body: JSON.stringify({ session_id: 'after-restart' }) })).status;
      if (status !== 201) await new Promise((resolve) => setTimeout(resolve, 100));
    }
    assert.equal(status, 201, 'the replicas reconnect by themselves');
    assert.equal((await append(urls[2], 'after-restart', [1, 2, 3])).status, 200);
  });

  test('Redis unreachable at start is a clear error', async () => {
    const server = startServerProcess({ args, env: { ...env, SESSION_STORE_URL: 'redis://127.0.0.1:1' } });
    const code = await server.exited;
    assert.equal(code, 1);
    assert.match(server.stderr(), /cannot reach the session store at redis:\/\/127\.0\.0\.1:1/);
  });
});
