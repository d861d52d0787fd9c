/**
 * The HTTP layer on real sockets (raw `net` where a client would hide the bytes): a client that leaves
 * mid-body, dot-segment request targets, the header / request / keep-alive timeouts, the connection
 * cap, a slowloris beside a normal request, and long streams that the request timeout must not cut.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, describe, test } from 'node:test';
import { TestDecoder } from '../support/test-decoder.ts';
import { chunksOf, listen, post, waitFor, type Listening } from './helpers.ts';
import { captureLogger } from './log-capture.ts';

const servers: Listening[] = [];
after(async () => {
  for (const server of servers) await server.close();
});

async function start(settings: Record<string, string> = {}, extra: Parameters<typeof listen>[0] = {}) {
  const log = captureLogger();
  const server = await listen({ logger: log.logger, settings, ...extra });
  servers.push(server);
  return { server, log };
}

interface RawSocket {
  socket: net.Socket;
  received: () => string;
  closed: Promise<number>;
}

/** A raw connection; `closed` resolves with the ms from connect to the server closing it. */
async function connect(port: number): Promise<RawSocket> {
  const socket = net.connect(port, '127.0.0.1');
  let data = '';
  socket.on('data', (chunk) => (data += chunk.toString('latin1')));
  socket.on('error', () => {});
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  const opened = Date.now();
  const closed = new Promise<number>((resolve) => socket.once('close', () => resolve(Date.now() - opened)));
  return { socket, received: () => data, closed };
}

/** Writes `text` a byte at a time every `everyMs` until the socket closes. */
function trickle(raw: RawSocket, text: string, everyMs: number): void {
  let at = 0;
  const timer = setInterval(() => {
    if (raw.socket.destroyed || raw.socket.writableEnded) return clearInterval(timer);
    raw.socket.write(text[at++ % text.length]);
  }, everyMs);
  void raw.closed.then(() => clearInterval(timer));
}

/** One request on its own raw connection; the whole answer as text once the server ends it. */
async function rawExchange(port: number, request: string): Promise<string> {
  const raw = await connect(port);
  raw.socket.end(request);
  await raw.closed;
  return raw.received();
}

describe('a client that leaves mid-body', () => {
  test('Content-Length 1000, 12 bytes, close: no 500, no error log, an info line and warmkv_client_disconnects_total{phase="body"}', async () => {
    const { server, log } = await start();
    for (let i = 0; i < 3; i++) {
      const raw = await connect(server.port);
      raw.socket.write('POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"prompt":"a');
      await new Promise((resolve) => setTimeout(resolve, 50));
      raw.socket.destroy();
      await raw.closed;
    }
    await waitFor(() => log.lines.filter((l) => l.message === 'request').length === 3);
    const requests = log.lines.filter((l) => l.message === 'request');
    assert.deepEqual(requests.map((l) => l.fields.status), [499, 499, 499]);
    assert.deepEqual(log.lines.filter((l) => l.level === 'error'), []);
    const gone = log.lines.filter((l) => l.message === 'client disconnected');
    assert.equal(gone.length, 3);
    assert.ok(gone.every((l) => l.level === 'info' && l.fields.phase === 'body'));
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    assert.match(metrics, /^warmkv_client_disconnects_total\{phase="body"\} 3$/m);
    // The server is fine afterwards.
    assert.equal((await fetch(`${server.url}/v1/completions`, post({ prompt: 'x', max_tokens: 1 }))).status, 200);
  });
});

describe('dot segments in the request target', () => {
  test('an encoded .. never reaches another route: /v1/sessions/%2e%2e/completions is 400, not /v1/completions', async () => {
    const { server } = await start();
    const body = JSON.stringify({ prompt: 'hello', max_tokens: 1 });
    for (const target of ['/v1/sessions/%2e%2e/completions', '/v1/sessions/%2E%2E/completions', '/v1/sessions/.%2e/completions', '/v1/sessions/../completions', '/v1/sessions/./x/../completions']) {
      const answer = await rawExchange(server.port, `POST ${target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
      assert.match(answer, /^HTTP\/1\.1 400 /, `${target}: ${answer.slice(0, 120)}`);
      assert.match(answer, /"code":"invalid_path"/);
      assert.doesNotMatch(answer, /text_completion/, 'no completion ran');
    }
    for (const target of ['/v1/sessions/%2e%2e', '/v1/sessions/%2e', '/v1/sessions/..']) {
      const answer = await rawExchange(server.port, `GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
      assert.match(answer, /^HTTP\/1\.1 400 /, target);
    }
    // Dots inside a segment are not dot segments.
    const created = await fetch(`${server.url}/v1/sessions`, post({ session_id: '..a' }));
    assert.equal(created.status, 201);
    const answer = await rawExchange(server.port, 'GET /v1/sessions/..a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    assert.match(answer, /^HTTP\/1\.1 200 /);
  });
});

describe('slow clients and the connection cap', () => {
  test('header trickle: closed within HEADERS_TIMEOUT_SECONDS (with a 408)', async () => {
    const { server } = await start({ 'headers-timeout-seconds': '0.3', 'request-timeout-seconds': '0.6' });
    const raw = await connect(server.port);
    raw.socket.write('GET /v1/models HTTP/1.1\r\nHost: x\r\n');
    trickle(raw, 'X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n', 20);
    const ms = await raw.closed;
    assert.ok(ms < 3000, `closed after ${ms} ms`);
    assert.match(raw.received(), /^HTTP\/1\.1 408 /);
  });

  test('body trickle: closed within REQUEST_TIMEOUT_SECONDS, logged as a disconnect, not an error', async () => {
    const { server, log } = await start({ 'headers-timeout-seconds': '0.3', 'request-timeout-seconds': '0.6' });
    const raw = await connect(server.port);
    raw.socket.write('POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"prompt":"');
    trickle(raw, 'a', 20);
    const ms = await raw.closed;
    assert.ok(ms < 3000, `closed after ${ms} ms`);
    await waitFor(() => log.lines.some((l) => l.message === 'request'));
    assert.deepEqual(log.lines.filter((l) => l.level === 'error'), []);
  });

  test('keep-alive: an idle connection is closed after KEEP_ALIVE_TIMEOUT_SECONDS', async () => {
    const { server } = await start({ 'keep-alive-timeout-seconds': '0.2' });
    const raw = await connect(server.port);
    raw.socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    const ms = await raw.closed;
    assert.match(raw.received(), /^HTTP\/1\.1 200 /);
    assert.ok(ms < 3000, `closed after ${ms} ms`);
  });

  test('MAX_CONNECTIONS: connections over the cap are closed at once; a freed slot serves again', async () => {
    const { server, log } = await start({ 'max-connections': '3', 'headers-timeout-seconds': '30' });
    const held = await Promise.all([connect(server.port), connect(server.port), connect(server.port)]);
    await new Promise((resolve) => setTimeout(resolve, 50));
    const excess = await connect(server.port);
    excess.socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    const ms = await excess.closed;
    assert.equal(excess.received(), '', 'no answer over the cap');
    assert.ok(ms < 3000);
    assert.ok(log.lines.some((l) => l.level === 'warn' && /MAX_CONNECTIONS/.test(l.message)));
    held[0].socket.destroy();
    await held[0].closed;
    await new Promise((resolve) => setTimeout(resolve, 50));
    const answer = await rawExchange(server.port, 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    assert.match(answer, /^HTTP\/1\.1 200 /);
    for (const raw of held) raw.socket.destroy();
  });

  test('a slowloris of 50 sockets does not keep a normal request from completing', async () => {
    const { server } = await start({ 'headers-timeout-seconds': '5', 'request-timeout-seconds': '10' });
    const loris = await Promise.all(Array.from({ length: 50 }, () => connect(server.port)));
    for (const [i, raw] of loris.entries()) {
      raw.socket.write(i % 2 === 0 ? 'GET /v1/models HTTP/1.1\r\nHost: x\r\n' : 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{');
      trickle(raw, i % 2 === 0 ? 'X-A: b\r\n' : ' ', 100);
    }
    const res = await fetch(`${server.url}/v1/completions`, post({ prompt: 'Once upon a time', max_tokens: 4, temperature: 0 }));
    assert.equal(res.status, 200);
    const body = (await res.json()) as { choices: Array<{ text: string }>; usage: { completion_tokens: number } };
    assert.equal(body.usage.completion_tokens, 4);
    assert.ok(loris.every((raw) => !raw.socket.destroyed), 'the slow sockets were still open meanwhile');
    for (const raw of loris) raw.socket.destroy();
  });

  test('REQUEST_TIMEOUT_SECONDS covers receiving the request only: a stream longer than it is not cut', async () => {
    let slow!: TestDecoder;
    const { server } = await start(
      { 'headers-timeout-seconds': '0.2', 'request-timeout-seconds': '0.3' },
      { wrapDecoder: (d) => (slow = new TestDecoder(d, { decodeDelayMs: 25 })), pingIntervalMs: 50 },
    );
    const began = Date.now();
    const res = await fetch(`${server.url}/v1/completions`, post({ prompt: 'x', max_tokens: 40, ignore_eos: true, stream: true }));
    const { chunks, done } = chunksOf(await res.text());
    assert.ok(Date.now() - began > 600, 'the stream outlasted the request timeout');
    assert.ok(done, 'ended with [DONE]');
    assert.equal(chunks.filter((c) => c.choices?.[0]?.text !== undefined && c.choices[0].finish_reason === null).length >= 1, true);
    assert.equal(chunks.at(-1)!.choices[0].finish_reason, 'length');
    assert.ok(slow.calls >= 40);
  });
});

describe('the access log', () => {
  test("a stream's line is written when it has been sent, with its whole duration; a client that leaves mid-stream is complete: false", async () => {
    const { server, log } = await start({}, { wrapDecoder: (d) => new TestDecoder(d, { decodeDelayMs: 10 }) });
    const accessLines = () => log.lines.filter((l) => l.message === 'request' && l.fields.path === '/v1/completions');
    const began = Date.now();
    const res = await fetch(`${server.url}/v1/completions`, post({ prompt: 'x', max_tokens: 20, ignore_eos: true, stream: true }));
    assert.equal(accessLines().length, 0, 'not at the headers: the stream is still running');
    const { done } = chunksOf(await res.text());
    const wallMs = Date.now() - began;
    assert.ok(done);
    await waitFor(() => accessLines().length === 1);
    const [line] = accessLines();
    assert.equal(line.fields.status, 200);
    assert.equal(line.fields.complete, undefined, 'sent whole');
    assert.ok((line.fields.ms as number) >= 150 && (line.fields.ms as number) <= wallMs + 5, `ms ${line.fields.ms}, the client saw ${wallMs}`);

    const controller = new AbortController();
    const left = await fetch(`${server.url}/v1/completions`, { ...post({ prompt: 'x', max_tokens: 200, ignore_eos: true, stream: true }), signal: controller.signal });
    const reader = left.body!.getReader();
    await reader.read();
    controller.abort();
    await waitFor(() => accessLines().length === 2);
    assert.deepEqual([accessLines()[1].fields.status, accessLines()[1].fields.complete], [200, false]);
  });
});
