/**
 * Resumable streams over real sockets: connections cut at byte offsets inside SSE frames (and inside a
 * character whose bytes come from several tokens) resume with Last-Event-ID and deliver exactly the
 * uninterrupted run's events; finished streams replay; expired ones are 404 and freed; DELETE stops a
 * generation at once; a client that stops reading holds a bounded amount of memory and is disconnected.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { getRequestListener } from '@hono/node-server';
import type { Runtime } from '../../src/runtime.ts';
import type { GenerationRequest } from '../../src/engine/types.ts';
import { createApp } from '../../src/server/app.ts';
import { ApiError } from '../../src/server/errors.ts';
import { StreamRegistry } from '../../src/server/streams.ts';
import type { StreamRegistryOptions } from '../../src/streams/registry.ts';
import { makeApp, makeRuntime, parseSse, waitFor, type SseEvent } from './helpers.ts';
import { type TestDecoder, wrapDecoder } from '../support/test-decoder.ts';

interface Server {
  /** http://127.0.0.1:port, or undefined on a Unix socket. */
  url: string;
  socketPath?: string;
  runtime: Runtime;
  streams: StreamRegistry;
  decoder: TestDecoder;
  close(): Promise<void>;
}

const servers: Server[] = [];
after(async () => {
  for (const server of servers) await server.close();
});

async function startServer(options: Partial<StreamRegistryOptions> & { pingIntervalMs?: number; unixSocket?: boolean; settings?: Record<string, string> } = {}): Promise<Server> {
  let decoder!: TestDecoder;
  const runtime = await makeRuntime({ settings: options.settings, wrapDecoder: (d) => (decoder = wrapDecoder(d)) });
  const streams = new StreamRegistry({ resumeMs: 60_000, ...options });
  const app = createApp(runtime, { streams, pingIntervalMs: options.pingIntervalMs });
  const server = http.createServer(getRequestListener(app.fetch));
  let socketPath: string | undefined;
  let dir: string | undefined;
  if (options.unixSocket) {
    dir = mkdtempSync(join(tmpdir(), 'warmkv-streams-'));
    socketPath = join(dir, 'http.sock');
    await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  } else {
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  }
  const url = socketPath ? 'http://localhost' : `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const handle: Server = {
    url,
    socketPath,
    runtime,
    streams,
    decoder,
    close: () =>
      new Promise<void>((resolve) => {
        streams.close();
        server.closeAllConnections();
        server.close(() => {
          if (dir) rmSync(dir, { recursive: true, force: true });
          resolve();
        });
      }),
  };
  servers.push(handle);
  return handle;
}

interface Raw {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  /** The connection was cut by the test before the server ended it. */
  cut: boolean;
}

/**
 * One HTTP request on its own connection. With `cutAt`, the body is kept up to that byte and the
 * socket destroyed there, as a network failure would: what the server sent after it is lost.
 */
function rawRequest(server: Server, method: string, path: string, options: { body?: unknown; headers?: Record<string, string>; cutAt?: number; cutWhen?: (body: Buffer) => boolean } = {}): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const payload = options.body === undefined ? undefined : JSON.stringify(options.body);
    const target = server.socketPath ? { socketPath: server.socketPath } : { host: '127.0.0.1', port: Number(new URL(server.url).port) };
    const req = http.request({
      ...target,
      method,
      path,
      agent: false,
      headers: { ...(payload ? { 'Content-Type': 'application/json', 'Content-Length': String(Buffer.byteLength(payload)) } : {}), ...options.headers },
    });
    req.on('error', reject);
    req.on('response', (res) => {
      const parts: Buffer[] = [];
      let size = 0;
      let cut = false;
      res.on('data', (data: Buffer) => {
        if (cut) return;
        parts.push(data);
        size += data.length;
        const body = Buffer.concat(parts);
        const at = options.cutAt !== undefined && size >= options.cutAt ? options.cutAt : options.cutWhen?.(body) ? size : undefined;
        if (at !== undefined) {
          cut = true;
          req.destroy();
          resolve({ status: res.statusCode!, headers: res.headers, body: body.subarray(0, at), cut: true });
        }
      });
      res.on('end', () => {
        if (!cut) resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(parts), cut: false });
      });
      res.on('error', () => {});
      res.on('aborted', () => {
        if (!cut) resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(parts), cut: false });
      });
    });
    req.end(payload);
  });
}

/** The complete events in a body cut anywhere: a partial last frame (and any split character) is dropped. */
function completeEvents(body: Buffer): SseEvent[] {
  const end = body.lastIndexOf('\n\n');
  if (end < 0) return [];
  return parseSse(body.subarray(0, end + 2).toString('utf8')).events;
}

/** The events with the per-request fields (`id`, `created`) taken out, for comparing two runs. */
function normalized(events: SseEvent[]): Array<{ id: string | null; data: unknown }> {
  return events.map((e) => {
    if (e.data === '[DONE]') return { id: e.id, data: e.data };
    const { id: _id, created: _created, ...rest } = JSON.parse(e.data) as Record<string, unknown>;
    return { id: e.id, data: rest };
  });
}

function textOf(events: SseEvent[]): string {
  return events
    .filter((e) => e.data !== '[DONE]')
    .map((e) => JSON.parse(e.data) as { choices: Array<{ text?: string; delta?: { content?: string } }> })
    .map((c) => c.choices[0]?.text ?? c.choices[0]?.delta?.content ?? '')
    .join('');
}

/** A broken test fails instead of hanging the suite. */
const LIMIT = { timeout: 20_000 };
const PROMPT = 'Once upon a time';
/**
 * With seed 29 the builder model writes U+FFFD (bytes that are not UTF-8) and, at token 34, the
 * three-byte U+D1F8, whose bytes the byte-level tokenizer samples as separate tokens.
 */
const SAMPLED = { temperature: 1, top_p: 1, top_k: 0, min_p: 0, repetition_penalty: 1, seed: 29, ignore_eos: true };
const completion = (max: number, extra: Record<string, unknown> = {}) => ({
  prompt: PROMPT,
  max_tokens: max,
  stream: true,
  stream_options: { include_usage: true },
  ...SAMPLED,
  ...extra,
});

/** Cuts a stream, resumes it with Last-Event-ID, and returns all the events the client ends up with. */
async function cutAndResume(server: Server, path: string, body: unknown, cut: { cutAt?: number; cutWhen?: (b: Buffer) => boolean }) {
  const first = await rawRequest(server, 'POST', path, { body, ...cut });
  assert.equal(first.status, 200);
  assert.ok(first.cut, 'the test cut the connection');
  const streamId = first.headers['x-stream-id'] as string;
  assert.match(streamId, /^(chat)?cmpl-[0-9a-f]{32}$/);
  const before = completeEvents(first.body);
  const generatingAtCut = server.streams.stats().generating > 0;
  const lastId = before.at(-1)?.id;
  const second = await rawRequest(server, 'GET', `/v1/streams/${streamId}`, { headers: lastId !== undefined && lastId !== null ? { 'Last-Event-ID': lastId } : {} });
  assert.equal(second.status, 200);
  assert.equal(second.headers['content-type'], 'text/event-stream');
  const rest = parseSse(second.body.toString('utf8')).events;
  return { events: [...before, ...rest], before, streamId, generatingAtCut };
}

describe('resumable streams', () => {
  test('cut anywhere inside a frame, resumed with Last-Event-ID: exactly the uninterrupted events, no gap, no duplicate', LIMIT, async () => {
    const server = await startServer();
    server.decoder.decodeDelayMs = 3;
    const reference = await rawRequest(server, 'POST', '/v1/completions', { body: completion(48) });
    const refEvents = parseSse(reference.body.toString('utf8')).events;
    assert.equal(refEvents.at(-1)!.data, '[DONE]');
    const refText = textOf(refEvents);
    assert.ok([...refText].some((ch) => ch.charCodeAt(0) > 0x7f), 'the reference has multi-byte characters');

    // Byte offsets in the reference body; the ids and `created` have fixed widths, so they fit every run.
    const bounds: number[] = [];
    for (let i = reference.body.indexOf('\n\n'); i >= 0; i = reference.body.indexOf('\n\n', i + 2)) bounds.push(i + 2);
    const frameStart = (k: number) => (k === 0 ? 0 : bounds[k - 1]);
    let multiByte = -1;
    for (let i = bounds[2]; i < reference.body.length; i++) {
      if (reference.body[i] >= 0xc0) {
        multiByte = i + 1; // after the lead byte: inside the character
        break;
      }
    }
    assert.ok(multiByte > 0);
    const cuts: Array<[string, number]> = [
      ['inside the first frame (nothing complete yet)', 5],
      ['inside an id line', frameStart(3) + 2],
      ['in the middle of a JSON payload', frameStart(6) + 60],
      ['between the data line and the blank line', bounds[9] - 1],
      ['exactly at a frame boundary', bounds[12]],
      ['inside a multi-byte character', multiByte],
    ];
    const expected = normalized(refEvents);
    let midGeneration = 0;
    for (const [where, cutAt] of cuts) {
      const { events, generatingAtCut } = await cutAndResume(server, '/v1/completions', completion(48), { cutAt });
      assert.deepEqual(events.map((e) => e.id), refEvents.map((_, i) => String(i)), `${where}: ids 0..n once each`);
      assert.deepEqual(normalized(events), expected, where);
      assert.equal(textOf(events), refText, where);
      if (generatingAtCut) midGeneration++;
    }
    assert.ok(midGeneration >= 4, `${midGeneration} cuts happened while the generation ran`);
    const usage = JSON.parse(refEvents.at(-2)!.data).usage;
    assert.equal(usage.completion_tokens, 48, 'the generation went on to max_tokens while disconnected');
  });

  test('cut while a character is half generated (its first byte token sampled, the next not yet): resumed text is whole', LIMIT, async () => {
    const server = await startServer();
    const serving = server.runtime.serving!;
    // The token-level trace of the same request, straight from the engine.
    const request: GenerationRequest = {
      requestId: 'trace',
      owner: '',
      onUnknownSession: 'create',
      mode: 'replace',
      input: serving.model.loaded.tokenizer.encode(PROMPT, true),
      maxTokens: 48,
      sampling: { temperature: 1, topP: 1, topK: 0, minP: 0, repetitionPenalty: 1 },
      seed: 29,
      stop: [],
      ignoreEos: true,
      truncation: 'auto',
    };
    const submitted = await serving.engine.submit(request);
    assert.ok(submitted.ok);
    const texts: string[] = [];
    for await (const event of submitted.events) if (event.type === 'token') texts.push(event.text);
    // Token k is held back (''), and token k+1 completes a character outside ASCII.
    const k = texts.findIndex((t, i) => i > 2 && t === '' && /[^\x00-\x7f\uFFFD]/.test(texts[i + 1] ?? ''));
    assert.ok(k > 0, 'the trace has a character split across tokens');
    const reference = parseSse((await rawRequest(server, 'POST', '/v1/completions', { body: completion(48) })).body.toString('utf8')).events;

    // Token 0 comes from the prefill; decode call i samples token i. Hold the call that samples k+1.
    const gate = server.decoder.hold(k + 1);
    const framesBefore = texts.slice(0, k + 1).filter((t) => t !== '').length;
    const cut = await rawRequest(server, 'POST', '/v1/completions', { body: completion(48), cutWhen: (body) => completeEvents(body).length >= framesBefore });
    await gate.reached;
    // The client has every frame so far and the engine holds the character's first byte: cut there.
    await waitFor(() => server.streams.stats().readers === 0);
    assert.equal(server.streams.stats().generating, 1);
    const before = completeEvents(cut.body);
    assert.equal(before.length, framesBefore);
    // The resumed connection waits for the rest, live.
    const resumed = rawRequest(server, 'GET', `/v1/streams/${cut.headers['x-stream-id']}`, { headers: { 'Last-Event-ID': before.at(-1)!.id! } });
    await waitFor(() => server.streams.stats().readers === 1);
    gate.release();
    const rest = parseSse((await resumed).body.toString('utf8')).events;
    const events = [...before, ...rest];
    assert.equal(textOf(events), textOf(reference));
    assert.deepEqual(normalized(events), normalized(reference));
    assert.equal(textOf(rest.slice(0, 1)), texts[k + 1], 'the first resumed event holds the whole character');
  });

  test('chat streams resume too (the role chunk is event 0)', LIMIT, async () => {
    const server = await startServer();
    server.decoder.decodeDelayMs = 2;
    const body = { messages: [{ role: 'user', content: 'Hi' }], max_completion_tokens: 30, stream: true, ...SAMPLED };
    const reference = parseSse((await rawRequest(server, 'POST', '/v1/chat/completions', { body })).body.toString('utf8')).events;
    const { events, streamId } = await cutAndResume(server, '/v1/chat/completions', body, { cutAt: 900 });
    assert.match(streamId, /^chatcmpl-/);
    assert.deepEqual(normalized(events), normalized(reference));
    assert.deepEqual(JSON.parse(events[0].data).choices[0].delta, { role: 'assistant', content: '' });
  });

  test('a finished stream replays from ?after or Last-Event-ID; a client with the last event gets 204, one past it 400; several readers at once', LIMIT, async () => {
    const server = await startServer();
    const full = await rawRequest(server, 'POST', '/v1/completions', { body: completion(20) });
    const streamId = full.headers['x-stream-id'] as string;
    const events = parseSse(full.body.toString('utf8')).events;
    const n = events.length;
    const fromQuery = await rawRequest(server, 'GET', `/v1/streams/${streamId}?after=3`);
    assert.equal(fromQuery.status, 200);
    assert.deepEqual(parseSse(fromQuery.body.toString('utf8')).events, events.slice(4), 'the same bytes again');
    const all = await rawRequest(server, 'GET', `/v1/streams/${streamId}`);
    assert.deepEqual(parseSse(all.body.toString('utf8')).events, events, 'without a cursor: from the start');
    // Last-Event-ID wins over ?after (an EventSource keeps its URL and updates the header).
    const header = await rawRequest(server, 'GET', `/v1/streams/${streamId}?after=0`, { headers: { 'Last-Event-ID': String(n - 3) } });
    assert.deepEqual(parseSse(header.body.toString('utf8')).events, events.slice(n - 2));
    const done = await rawRequest(server, 'GET', `/v1/streams/${streamId}`, { headers: { 'Last-Event-ID': String(n - 1) } });
    assert.equal(done.status, 204);
    // Past the last event the stream ever issued: a client bug, not "nothing more".
    for (const beyond of [n, n + 100]) {
      const late = await rawRequest(server, 'GET', `/v1/streams/${streamId}?after=${beyond}`);
      assert.equal(late.status, 400);
      assert.equal(JSON.parse(late.body.toString('utf8')).error.message, `Invalid value for 'after': stream ${streamId} has sent events up to ${n - 1} only.`);
    }

    // Live: two readers of one running stream, each with its own cursor.
    server.decoder.decodeDelayMs = 3;
    const live = await rawRequest(server, 'POST', '/v1/completions', { body: completion(30), cutAt: 700 });
    const id = live.headers['x-stream-id'] as string;
    const [a, b] = await Promise.all([
      rawRequest(server, 'GET', `/v1/streams/${id}`),
      rawRequest(server, 'GET', `/v1/streams/${id}`, { headers: { 'Last-Event-ID': '2' } }),
    ]);
    const aEvents = parseSse(a.body.toString('utf8')).events;
    assert.equal(aEvents.at(-1)!.data, '[DONE]');
    assert.deepEqual(parseSse(b.body.toString('utf8')).events, aEvents.slice(3));
  });

  test('resume errors: unknown id 404, bad or future Last-Event-ID 400, another owner 404', LIMIT, async () => {
    const server = await startServer();
    server.decoder.decodeDelayMs = 3;
    const unknown = await fetch(`${server.url}/v1/streams/cmpl-00000000000000000000000000000000`);
    assert.equal(unknown.status, 404);
    assert.deepEqual(await unknown.json(), {
      error: { message: 'Stream cmpl-00000000000000000000000000000000 not found.', type: 'invalid_request_error', param: null, code: 'stream_not_found' },
    });
    assert.equal((await fetch(`${server.url}/v1/streams/x`, { method: 'DELETE' })).status, 404);
    assert.equal((await fetch(`${server.url}/v1/streams/x`, { method: 'PUT' })).status, 405);

    const live = await rawRequest(server, 'POST', '/v1/completions', { body: completion(200), cutAt: 400 });
    const id = live.headers['x-stream-id'] as string;
    const bad = await fetch(`${server.url}/v1/streams/${id}`, { headers: { 'Last-Event-ID': 'abc' } });
    assert.equal(bad.status, 400);
    assert.equal(((await bad.json()) as any).error.param, 'Last-Event-ID');
    assert.equal((await fetch(`${server.url}/v1/streams/${id}?after=-1`)).status, 400);
    const future = await fetch(`${server.url}/v1/streams/${id}`, { headers: { 'Last-Event-ID': '100000' } });
    assert.equal(future.status, 400);
    // Streams belong to the key that started them: another owner sees nothing (as for an unknown id).
    assert.ok(server.streams.get(id, ''));
    assert.equal(server.streams.get(id, 'key_other'), undefined);
    assert.throws(() => server.streams.resume(id, 'key_other', -1, { pingIntervalMs: 0 }), (e: unknown) => e instanceof ApiError && e.status === 404);
    assert.equal(await server.streams.cancel(id, 'key_other'), false);
    assert.ok(server.streams.get(id, ''), 'still there for its owner');
    assert.equal((await fetch(`${server.url}/v1/streams/${id}`, { method: 'DELETE' })).status, 200);
  });

  test('DELETE stops the generation at once, ends every connection with a cancelled chunk and [DONE], and forgets the stream', LIMIT, async () => {
    const server = await startServer();
    server.decoder.decodeDelayMs = 2;
    const body = completion(3000, { session_id: 'del' });
    const first = await fetch(`${server.url}/v1/completions`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
    const id = first.headers.get('x-stream-id')!;
    const second = await fetch(`${server.url}/v1/streams/${id}`);
    const firstText = first.text();
    const secondText = second.text();
    const session = server.runtime.serving!.store.get('', 'del')!;
    await waitFor(() => session.tokens.length > 30);
    const deleted = await fetch(`${server.url}/v1/streams/${id}`, { method: 'DELETE' });
    assert.equal(deleted.status, 200);
    assert.deepEqual(await deleted.json(), { id, object: 'stream.deleted', deleted: true });
    assert.ok(!session.busy, 'the session is free when DELETE answers');
    const tokens = session.tokens.length;
    assert.ok(tokens < 1000, `${tokens} tokens`);
    for (const text of [await firstText, await secondText]) {
      const events = parseSse(text).events;
      assert.ok(events.length > 5);
      assert.equal(events.at(-1)!.data, '[DONE]');
      const [finish, usage] = events.slice(-3, -1).map((e) => JSON.parse(e.data));
      assert.equal(finish.choices[0].finish_reason, 'cancelled');
      assert.equal(finish.cancel_reason, 'deleted');
      assert.equal(usage.usage.prompt_tokens + usage.usage.completion_tokens, tokens, 'usage counts what the session committed');
    }
    assert.equal((await fetch(`${server.url}/v1/streams/${id}`)).status, 404);
    assert.equal((await fetch(`${server.url}/v1/streams/${id}`, { method: 'DELETE' })).status, 404);
    assert.equal(session.tokens.length, tokens, 'nothing more was generated');
    assert.deepEqual(server.streams.stats(), { streams: 0, generating: 0, readers: 0, bufferedBytes: 0, bufferedEvents: 0, timers: 0 });
  });

  test('after the grace period: 404, and the memory and timers of the streams are released', LIMIT, async () => {
    const server = await startServer({ resumeMs: 300 });
    server.decoder.decodeDelayMs = 1;
    // One read to the end, one cut mid-stream that finishes while nobody reads.
    const full = await rawRequest(server, 'POST', '/v1/completions', { body: completion(20) });
    const cut = await rawRequest(server, 'POST', '/v1/completions', { body: completion(40), cutAt: 300 });
    const ids = [full.headers['x-stream-id'] as string, cut.headers['x-stream-id'] as string];
    await waitFor(() => server.streams.stats().generating === 0);
    const stats = server.streams.stats();
    assert.equal(stats.streams, 2);
    assert.ok(stats.bufferedBytes > 0 && stats.timers === 2);
    assert.equal((await rawRequest(server, 'GET', `/v1/streams/${ids[1]}`)).status, 200, 'within the grace period');
    await new Promise((resolve) => setTimeout(resolve, 450));
    for (const id of ids) {
      const res = await fetch(`${server.url}/v1/streams/${id}`);
      assert.equal(res.status, 404);
      assert.equal(((await res.json()) as any).error.code, 'stream_not_found');
    }
    assert.deepEqual(server.streams.stats(), { streams: 0, generating: 0, readers: 0, bufferedBytes: 0, bufferedEvents: 0, timers: 0 });
  });

  test('nobody comes back within the grace period: the generation stops then, the session keeps a consistent cache', LIMIT, async () => {
    const server = await startServer({ resumeMs: 300 });
    server.decoder.decodeDelayMs = 2;
    const cut = await rawRequest(server, 'POST', '/v1/completions', { body: completion(3000, { session_id: 'left' }), cutAt: 500 });
    const session = server.runtime.serving!.store.get('', 'left')!;
    assert.ok(session.busy, 'the generation goes on without a client');
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.ok(session.busy, 'and keeps its session while nobody asks for it (a new request would supersede it)');
    assert.equal(server.streams.stats().generating, 1);
    const started = Date.now();
    await waitFor(() => !session.busy, 3000);
    assert.ok(Date.now() - started < 2000);
    assert.ok(session.tokens.length < 1500, `${session.tokens.length} tokens`);
    assert.equal(session.cachedLength, session.tokens.length - 1);
    assert.equal((await fetch(`${server.url}/v1/streams/${cut.headers['x-stream-id']}`)).status, 404);
    assert.equal(server.streams.stats().streams, 0);
  });

  test('resumed connections get keep-alive pings too', LIMIT, async () => {
    const server = await startServer({ pingIntervalMs: 15 });
    server.decoder.decodeDelayMs = 40;
    const cut = await rawRequest(server, 'POST', '/v1/completions', { body: completion(6), cutWhen: (b) => completeEvents(b).length >= 1 });
    const resumed = await rawRequest(server, 'GET', `/v1/streams/${cut.headers['x-stream-id']}`, { headers: { 'Last-Event-ID': '0' } });
    const { events, comments } = parseSse(resumed.body.toString('utf8'));
    assert.ok(comments.includes('ping'), resumed.body.toString('utf8').slice(0, 200));
    assert.equal(events[0].id, '1');
    assert.equal(events.at(-1)!.data, '[DONE]');
  });

  test('STREAM_RESUME_SECONDS=0: not resumable, no X-Stream-Id, a disconnect stops the generation', LIMIT, async () => {
    const { runtime, app } = await makeApp({ settings: { 'stream-resume-seconds': '0' } });
    const res = await app.request('/v1/completions', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(completion(400, { session_id: 'off' })) });
    assert.equal(res.headers.get('x-stream-id'), null);
    const reader = res.body!.getReader();
    const first = new TextDecoder().decode((await reader.read()).value);
    const id = JSON.parse(parseSse(first.slice(0, first.indexOf('\n\n') + 2)).events[0].data).id;
    assert.equal((await app.request(`/v1/streams/${id}`)).status, 404);
    await reader.cancel();
    const session = runtime.serving!.store.get('', 'off')!;
    await waitFor(() => !session.busy);
    assert.ok(session.tokens.length < 400);
  });

  test('events dropped beyond the per-stream byte cap: a resume that needs them gets 410, a later cursor works', LIMIT, async () => {
    const server = await startServer({ maxStreamBytes: 5000 });
    server.decoder.decodeDelayMs = 3;
    const full = await rawRequest(server, 'POST', '/v1/completions', { body: completion(60) });
    const events = parseSse(full.body.toString('utf8')).events;
    assert.equal(events.at(-1)!.data, '[DONE]', 'a reader that keeps up gets everything');
    const id = full.headers['x-stream-id'] as string;
    const kept = server.streams.inspect(id)!;
    assert.ok(kept.bytes <= 5000 && kept.firstEvent > 0, JSON.stringify(kept));
    const gone = await fetch(`${server.url}/v1/streams/${id}?after=0`);
    assert.equal(gone.status, 410);
    assert.equal(((await gone.json()) as any).error.code, 'stream_events_dropped');
    const ok = await rawRequest(server, 'GET', `/v1/streams/${id}`, { headers: { 'Last-Event-ID': String(kept.firstEvent - 1) } });
    assert.equal(ok.status, 200);
    assert.deepEqual(parseSse(ok.body.toString('utf8')).events, events.slice(kept.firstEvent));
  });

  // Two 2,500-token generations: 12-14 s alone, over 20 s while the machine is loaded.
  test('a client that stops reading: nothing piles up per connection, it is closed when stalled, and the stream resumes', { timeout: 60_000 }, async () => {
    // A Unix socket has small kernel buffers (TCP on loopback grows its buffers to megabytes), so a
    // paused reader pushes back on the server after a few hundred kilobytes.
    const server = await startServer({ unixSocket: true, stallMs: 400 });
    // Bigger frames: each chunk repeats the session id (another one for the reference, whose cache differs).
    const body = completion(2500, { session_id: 's'.repeat(128) });
    const reference = parseSse((await rawRequest(server, 'POST', '/v1/completions', { body: { ...body, session_id: 'r'.repeat(128) } })).body.toString('utf8')).events;
    assert.equal(reference.at(-1)!.data, '[DONE]');

    const { id, received, closed, resumeReading } = await new Promise<{ id: string; received: () => Buffer; closed: Promise<void>; resumeReading: () => void }>((resolve, reject) => {
      const payload = JSON.stringify(body);
      const req = http.request({ socketPath: server.socketPath, method: 'POST', path: '/v1/completions', agent: false, headers: { 'Content-Type': 'application/json' } });
      req.on('error', reject);
      req.on('response', (res) => {
        const parts: Buffer[] = [];
        let size = 0;
        const closed = new Promise<void>((done) => res.on('close', () => done()));
        let paused = false;
        res.on('error', () => {});
        res.on('data', (data: Buffer) => {
          parts.push(data);
          size += data.length;
          if (size >= 2000 && !paused) {
            paused = true;
            res.pause(); // and read nothing more until the server has given up on this connection
          }
        });
        resolve({ id: res.headers['x-stream-id'] as string, received: () => Buffer.concat(parts), closed, resumeReading: () => res.resume() });
      });
      req.end(payload);
    });

    // While the generation runs, the connection's reader stops taking events once the socket is full.
    let maxBacklog = 0;
    let sent = 0;
    for (;;) {
      const stream = server.streams.inspect(id)!;
      assert.ok(stream.bytes <= 8 * 1024 * 1024 && stream.nextEvent - stream.firstEvent <= 2500 + 8);
      const reader = stream.readers[0];
      if (reader) {
        sent = reader.sentBytes;
        maxBacklog = Math.max(maxBacklog, reader.sentBytes - received().length);
      }
      if (stream.ended) break;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const stream = server.streams.inspect(id)!;
    assert.ok(stream.bytes > 600_000, `the log holds the whole generation (${stream.bytes} bytes)`);
    assert.ok(sent < stream.bytes / 2, `the connection took ${sent} of ${stream.bytes} bytes: it waited for the socket`);
    assert.ok(maxBacklog < 512 * 1024, `at most ${maxBacklog} bytes sat in socket buffers`);

    // Unreadable for stallMs: the server drops the connection; the stream stays.
    await waitFor(() => server.streams.inspect(id)!.readers.length === 0, 3000);
    resumeReading();
    await closed;
    const before = completeEvents(received());
    assert.ok(before.length > 0 && before.length < reference.length);
    const rest = await rawRequest(server, 'GET', `/v1/streams/${id}`, { headers: { 'Last-Event-ID': before.at(-1)!.id! } });
    const events = [...before, ...parseSse(rest.body.toString('utf8')).events];
    assert.deepEqual(events.map((e) => e.id), reference.map((_, i) => String(i)));
    assert.equal(events.at(-1)!.data, '[DONE]');
    assert.equal(textOf(events), textOf(reference));
  });

  test('all streams together stay under the total cap: finished streams nobody reads expire first', LIMIT, async () => {
    const registry = new StreamRegistry({ resumeMs: 60_000, maxTotalBytes: 1000 });
    const open = (id: string) => registry.open({ id, owner: '', abort: new AbortController(), maxTokens: 100 });
    const a = open('a');
    a.send({ text: 'x'.repeat(400) });
    a.end();
    const b = open('b');
    const reading = b.reader(0, { pingIntervalMs: 0 });
    b.send({ text: 'y'.repeat(400) });
    b.end();
    const c = open('c');
    c.send({ text: 'z'.repeat(400) });
    assert.equal(registry.get('a', ''), undefined, 'the idle finished stream went first');
    assert.ok(registry.get('b', ''), 'a stream being read stays');
    assert.ok(registry.get('c', ''), 'a running stream stays');
    await reading.cancel();
    registry.close();
    assert.deepEqual(registry.stats(), { streams: 0, generating: 0, readers: 0, bufferedBytes: 0, bufferedEvents: 0, timers: 0 });
  });
});
