/** Server test support: runtimes around builder models, a listening server, SSE parsing. */
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import OpenAI from 'openai';
import { loadConfig } from '../../src/config.ts';
import { Runtime, type RuntimeOptions } from '../../src/runtime.ts';
import { createApp, type AppOptions } from '../../src/server/app.ts';
import { listenWith } from '../../src/server/listen.ts';
import { silentLogger, type Logger } from '../../src/lib/logger.ts';
import type { BuildOptions } from '../../tools/model-builder/index.ts';
import { LLAMA, testModel, testModelDir } from '../support/fixtures.ts';

export interface TestServerOptions extends AppOptions {
  /** Settings as CLI flags without the dashes: { 'max-queue': '0' }. */
  settings?: Record<string, string>;
  wrapDecoder?: RuntimeOptions['wrapDecoder'];
  /** Keeps the runtime loading until this resolves. */
  loadGate?: Promise<void>;
  /** The builder model to serve (default LLAMA). */
  model?: BuildOptions;
  /** The runtime's own logger (`logger` is the app's); without one the runtime logs nothing. */
  runtimeLogger?: Logger;
}

export async function makeRuntime(options: TestServerOptions = {}): Promise<Runtime> {
  const modelOptions = options.model ?? LLAMA;
  const dir = await testModelDir(modelOptions);
  const argv = ['--model', dir, '--kv-cache-bytes', '64MiB'];
  for (const [key, value] of Object.entries(options.settings ?? {})) argv.push(`--${key}`, value);
  const config = loadConfig({}, argv);
  const runtime = new Runtime(config, {
    load: async () => {
      // Loaded as main.ts loads it: with new-row outputs unless the settings ask for the concat path.
      const model = await testModel(modelOptions, config.kvMode === 'inplace');
      await options.loadGate;
      return model;
    },
    wrapDecoder: options.wrapDecoder,
    streams: options.streams,
    logger: options.runtimeLogger,
    processMetrics: false,
  });
  if (!options.loadGate) await runtime.ready;
  return runtime;
}

export async function makeApp(options: TestServerOptions = {}) {
  const runtime = await makeRuntime(options);
  const app = createApp(runtime, options);
  return { runtime, app };
}

export interface Listening {
  url: string;
  port: number;
  runtime: Runtime;
  close(): Promise<void>;
}

/** A listening server as main.ts makes it (its timeouts and connection cap from the settings). */
export async function listen(options: TestServerOptions = {}): Promise<Listening> {
  const { runtime, app } = await makeApp(options);
  const { server, listening } = listenWith(app, runtime.config, { port: 0, hostname: '127.0.0.1', logger: options.logger ?? silentLogger });
  const { port } = (await listening) as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    runtime,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** A listening server on the committed default model (the settings main.ts uses, a 64 MiB KV budget). */
export async function listenDefaultModel(): Promise<Listening> {
  const runtime = new Runtime(loadConfig({}, ['--kv-cache-bytes', '64MiB']), { processMetrics: false });
  await runtime.ready;
  const { server, listening } = listenWith(createApp(runtime), runtime.config, { port: 0, hostname: '127.0.0.1', logger: silentLogger });
  const { port } = (await listening) as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    runtime,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await runtime.drain(1000);
    },
  };
}

/** An openai client on a test server (the key is only checked when the server has API keys). */
export function openAiClient(server: Listening, apiKey = 'unused'): OpenAI {
  return new OpenAI({ baseURL: `${server.url}/v1`, apiKey, maxRetries: 0 });
}

export interface OpenAiServer {
  server: Listening;
  client: OpenAI;
  /** The served model's id, for the requests' `model` field. */
  model: string;
}

/** A listening server, an openai client on it and the model's id: `before(async () => ({ server, client, model } = await openAiServer()))`. */
export async function openAiServer(options: TestServerOptions = {}): Promise<OpenAiServer> {
  return openAiOn(await listen(options));
}

/** The same for a server started otherwise (listenDefaultModel, a table of starters). */
export function openAiOn(server: Listening): OpenAiServer {
  return { server, client: openAiClient(server), model: server.runtime.serving!.model.id };
}

/**
 * A streamed openai response of `count` choices, read to its end: each choice's text (`textOf` picks a
 * chunk's part), each choice's finish reason (asserting it arrives once), and the usage chunk.
 */
export async function readChoices<C extends { index: number; finish_reason: string | null }>(
  stream: AsyncIterable<{ choices: C[]; usage?: OpenAI.CompletionUsage | null }>,
  count: number,
  textOf: (choice: C) => string,
): Promise<{ texts: string[]; finishes: Array<string | null>; usage: OpenAI.CompletionUsage | null | undefined }> {
  const texts: string[] = Array(count).fill('');
  const finishes: Array<string | null> = Array(count).fill(null);
  let usage: OpenAI.CompletionUsage | null | undefined;
  for await (const chunk of stream) {
    if (chunk.choices.length === 0) usage = chunk.usage;
    for (const choice of chunk.choices) {
      texts[choice.index] += textOf(choice);
      if (choice.finish_reason) {
        assert.equal(finishes[choice.index], null, 'one finish per choice');
        finishes[choice.index] = choice.finish_reason;
      }
    }
  }
  return { texts, finishes, usage };
}

export interface SseEvent {
  id: string | null;
  data: string;
  /** The `event:` line's name (Responses API streams), null without one. */
  event: string | null;
}

/** Splits an SSE body into events (data + id) and comment lines. */
export function parseSse(text: string): { events: SseEvent[]; comments: string[] } {
  const events: SseEvent[] = [];
  const comments: string[] = [];
  for (const block of text.split('\n\n')) {
    if (block === '') continue;
    let id: string | null = null;
    let event: string | null = null;
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) comments.push(line.slice(1).trim());
      else if (line.startsWith('id: ')) id = line.slice(4);
      else if (line.startsWith('event: ')) event = line.slice(7);
      else if (line.startsWith('data: ')) data.push(line.slice(6));
      else throw new Error(`unexpected SSE line ${JSON.stringify(line)}`);
    }
    if (data.length > 0) events.push({ id, event, data: data.join('\n') });
  }
  return { events, comments };
}

/** JSON payloads of a stream's events, without the final [DONE]. */
export function chunksOf(text: string): { chunks: Array<Record<string, any>>; done: boolean; ids: Array<string | null>; comments: string[] } {
  const { events, comments } = parseSse(text);
  const done = events.at(-1)?.data === '[DONE]';
  const payloads = done ? events.slice(0, -1) : events;
  return { chunks: payloads.map((e) => JSON.parse(e.data)), done, ids: events.map((e) => e.id), comments };
}

export function post(body: unknown, headers: Record<string, string> = {}): RequestInit {
  return { method: 'POST', headers: { 'Content-Type': 'application/json', ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) };
}

export async function waitFor(condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const start = Date.now();
  while (!condition()) {
    if (Date.now() - start > timeoutMs) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Asserts an OpenAI-style error response (status, JSON body shape, code, optional param, no stack trace). */
export async function expectError(res: Response, status: number, code: string, param?: string | null) {
  const text = await res.text();
  assert.equal(res.status, status, text);
  assert.equal(res.headers.get('content-type'), 'application/json');
  const body = JSON.parse(text);
  assert.deepEqual(Object.keys(body.error).sort(), ['code', 'message', 'param', 'type']);
  assert.equal(body.error.code, code);
  if (param !== undefined) assert.equal(body.error.param, param);
  assert.ok(!/at .*\.ts:\d+/.test(text), 'no stack trace');
  return body.error as { message: string; type: string; param: string | null; code: string };
}
