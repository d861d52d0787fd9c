/**
 * Property-based fuzzing (fast-check) of the request schemas and the HTTP layer through `app.request()`:
 * arbitrary JSON, schema-shaped bodies with hostile values, raw bytes (malformed JSON, NaN / Infinity
 * literals, huge numbers, deep nesting, invalid UTF-8), prompts with lone surrogates and token ids out of
 * the vocabulary, hostile headers and session paths, and concurrent mixes of all of them. No input may
 * get a 5xx (or a server_error chunk in a stream), every error has OpenAI's body, and afterwards no
 * session is left busy, the engine is idle and a normal request still works.
 *
 * Runs are seeded and modest; for a longer hunt: FUZZ_RUNS=20 FUZZ_SEED=$RANDOM node --import tsx --test tests/server/fuzz.test.ts
 */
import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import fc from 'fast-check';
import type { Hono } from 'hono';
import type { Runtime } from '../../src/runtime.ts';
import { chunksOf, makeApp, waitFor } from './helpers.ts';

const SEED = Number(process.env.FUZZ_SEED ?? 1107);
const SCALE = Number(process.env.FUZZ_RUNS ?? 1);
const runs = (numRuns: number) => ({ seed: SEED, numRuns: Math.max(1, Math.round(numRuns * SCALE)), endOnFailure: true });

const KEY = 'sk-fuzz-0123456789abcdef';
const AUTH = { Authorization: `Bearer ${KEY}` };
const ROUTES = ['/v1/completions', '/v1/chat/completions', '/v1/sessions', '/v1/sessions/fuzz-target/completions'] as const;

let app: Hono<any>;
let runtime: Runtime;
let vocabSize: number;

interface Answer {
  status: number;
  text: string;
  contentType: string | null;
}

/** Sends a request, reads the whole answer, and checks what every answer must satisfy. */
async function send(path: string, init: RequestInit): Promise<Answer> {
  const res = await app.request(path, init);
  const text = await res.text();
  const answer = { status: res.status, text, contentType: res.headers.get('content-type') };
  const where = `${init.method ?? 'GET'} ${path} -> ${res.status}: ${text.slice(0, 300)}`;
  assert.ok(res.status < 500, `no 5xx: ${where}`);
  if (res.status >= 400) {
    assert.equal(answer.contentType, 'application/json', where);
    const body = JSON.parse(text);
    assert.deepEqual(Object.keys(body.error).sort(), ['code', 'message', 'param', 'type'], where);
    assert.equal(typeof body.error.message, 'string', where);
    assert.equal(typeof body.error.code, 'string', where);
    assert.notEqual(body.error.type, 'server_error', where);
  } else if (answer.contentType === 'text/event-stream') {
    const { chunks, done } = chunksOf(text);
    const errors = chunks.filter((c) => c.error);
    assert.ok(!errors.some((c) => c.error.type === 'server_error'), `no server error in a stream: ${where}`);
    assert.ok(done || errors.length === 1, `a stream ends with [DONE] or one error chunk: ${where}`);
  } else if (res.status !== 204) {
    JSON.parse(text);
  }
  return answer;
}

function postInit(body: string | Uint8Array, headers: Record<string, string> = AUTH): RequestInit {
  return { method: 'POST', headers: { 'Content-Type': 'application/json', ...headers }, body };
}

// ---- arbitraries ----

const loneSurrogate = fc.integer({ min: 0xd800, max: 0xdfff }).map((c) => String.fromCharCode(c));
const specialText = fc.constantFrom('', '\u0000', '\ufffd', '\uffff', '\u202e', '\r\n\r\n', '<s>', '</s>', '<|endoftext|>', '<|im_start|>', '{{ 7 * 7 }}', '{% for x in y %}', 'user: ', '\\', '"', 'A'.repeat(300));
/** Text with any code point, lone surrogates and special tokens mixed in. */
const nastyString = fc
  .array(fc.oneof(fc.string({ unit: 'binary', maxLength: 8 }), loneSurrogate, specialText, fc.string({ maxLength: 12 })), { maxLength: 6 })
  .map((parts) => parts.join(''));
const nastyNumber = fc.oneof(
  fc.integer(),
  fc.double(), // NaN and Infinity become null in JSON; the raw-body property sends them as literals
  fc.constantFrom(-1, 0, 1, 2, 4, 5, -0, 0.5, 1.5, 2 ** 31, 2 ** 53, -(2 ** 53), 2 ** 53 + 2, 1e21, 1e308, -1e308, 5e-324, Number.MAX_SAFE_INTEGER),
);
const tokenIds = (max: number) => fc.array(fc.oneof(fc.integer({ min: -3, max: max + 3 }), fc.integer({ min: 0, max: 500 })), { maxLength: 24 });
const message = fc.record(
  {
    role: fc.oneof(fc.constantFrom('system', 'developer', 'user', 'assistant', 'tool', 'function'), nastyString),
    content: fc.oneof(nastyString, fc.constant(null), fc.array(fc.record({ type: fc.constantFrom('text', 'image_url', ''), text: fc.oneof(nastyString, nastyNumber) }, { requiredKeys: ['type'] }), { maxLength: 3 }), nastyNumber),
    name: nastyString,
    tool_calls: fc.oneof(fc.constant([]), fc.array(fc.jsonValue({ maxDepth: 1 }), { maxLength: 2 })),
  },
  { requiredKeys: ['role'] },
);
const deepNest = fc.integer({ min: 1, max: 2000 }).map((n) => {
  let value: unknown = 1;
  for (let i = 0; i < n; i++) value = i % 2 ? [value] : { a: value };
  return value;
});
const hostileValue = fc.oneof(
  nastyNumber,
  nastyString,
  fc.boolean(),
  fc.constant(null),
  fc.array(nastyNumber, { maxLength: 5 }),
  fc.array(nastyString, { maxLength: 5 }),
  fc.array(message, { maxLength: 3 }),
  fc.jsonValue({ maxDepth: 3 }),
  deepNest,
);
const FIELDS = [
  'prompt', 'messages', 'max_tokens', 'max_completion_tokens', 'temperature', 'top_p', 'top_k', 'min_p', 'repetition_penalty', 'seed',
  'stop', 'stream', 'stream_options', 'echo', 'ignore_eos', 'truncation', 'session_id', 'user', 'model', 'n', 'best_of', 'logprobs',
  'top_logprobs', 'logit_bias', 'presence_penalty', 'frequency_penalty', 'suffix', 'response_format', 'tools', 'tool_choice',
  'add_generation_prompt', 'min_tokens', 'skip_special_tokens', 'metadata', '__proto__', 'constructor',
];
const BASES: Record<(typeof ROUTES)[number], Record<string, unknown>> = {
  '/v1/completions': { prompt: 'Hello', max_tokens: 2 },
  '/v1/chat/completions': { messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2 },
  '/v1/sessions': { prompt: 'Hi' },
  '/v1/sessions/fuzz-target/completions': { prompt: ' more', max_tokens: 2 },
};
const route = fc.constantFrom(...ROUTES);
const literal = fc.constantFrom(
  'NaN', 'Infinity', '-Infinity', '1e999', '-1e999', '1e-999', '-0', '00', '0x1F', '1.', '.5', '+1', '9007199254740993',
  '123456789012345678901234567890', '"\\ud800"', '"\\udfff\\ud800x"', '"\\u0000"', 'undefined', 'true', '[]', '{}', '"', '{"a":', 'null',
);

/** Whole bodies as bytes or text: templates with bad literals, truncated JSON, random and invalid UTF-8 bytes, deep nesting. */
const rawBody = fc.oneof(
  fc.tuple(fc.constantFrom(...FIELDS), literal).map(([field, lit]) => `{"prompt":"x","messages":[{"role":"user","content":"x"}],"max_tokens":1,"${field}":${lit}}`),
  fc.tuple(route, fc.nat()).map(([r, cut]) => {
    const text = JSON.stringify(BASES[r]);
    return text.slice(0, cut % (text.length + 1));
  }),
  fc.uint8Array({ maxLength: 200 }),
  fc.uint8Array({ minLength: 1, maxLength: 40 }).map((bytes) => {
    const safe = bytes.map((b) => (b === 0x22 || b === 0x5c || b < 0x20 ? 0xff : b));
    const enc = new TextEncoder();
    return Buffer.concat([enc.encode('{"prompt":"'), safe, enc.encode('","messages":[{"role":"user","content":"'), safe, enc.encode('"}],"max_tokens":1}')]);
  }),
  fc.tuple(fc.constantFrom('prompt', 'messages', 'stop', 'metadata', 'logit_bias', 'stream_options', 'response_format'), fc.integer({ min: 1, max: 20_000 }), fc.boolean()).map(
    ([field, depth, objects]) =>
      `{"prompt":"x","messages":[{"role":"user","content":"x"}],"max_tokens":1,"${field}":${objects ? '{"a":'.repeat(depth) : '['.repeat(depth)}1${objects ? '}'.repeat(depth) : ']'.repeat(depth)}}`,
  ),
);
const headerText = fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)), maxLength: 150 });

async function settled(): Promise<void> {
  const serving = runtime.serving!;
  await waitFor(() => serving.engine.stats().running === 0 && serving.engine.stats().waiting === 0, 10_000);
  const busy = [...serving.store.inLruOrder()].filter((s) => s.busy).map((s) => s.id);
  assert.deepEqual(busy, [], 'no session left busy');
}

describe('fuzzing the HTTP layer', () => {
  before(async () => {
    // Small limits keep valid requests cheap; every limit is part of what is fuzzed.
    ({ app, runtime } = await makeApp({
      settings: {
        'api-keys': KEY,
        'max-tokens-limit': '4',
        'default-chat-max-tokens': '4',
        'max-prompt-tokens': '96',
        'max-body-bytes': '64KiB',
        'max-stop-sequences': '4',
        'max-sessions-per-key': '200',
        'max-context-tokens': '128',
      },
    }));
    vocabSize = runtime.serving!.model.loaded.vocabSize;
    assert.equal((await app.request('/v1/sessions', postInit(JSON.stringify({ session_id: 'fuzz-target', prompt: 'Start' })))).status, 201);
  });

  test('any JSON value as the body of any POST route', async () => {
    await fc.assert(
      fc.asyncProperty(route, fc.jsonValue({ maxDepth: 4 }), async (path, value) => {
        await send(path, postInit(JSON.stringify(value)));
      }),
      runs(300),
    );
    await settled();
  });

  test('schema-shaped bodies with hostile values in any field', async () => {
    await fc.assert(
      fc.asyncProperty(route, fc.dictionary(fc.constantFrom(...FIELDS), hostileValue, { maxKeys: 4 }), fc.boolean(), async (path, overrides, stream) => {
        const body = { ...BASES[path], stream, ...overrides };
        await send(path, postInit(JSON.stringify(body)));
      }),
      runs(500),
    );
    await settled();
  });

  test('raw bodies: malformed JSON, NaN / Infinity / huge literals, random bytes, invalid UTF-8, deep nesting', async () => {
    await fc.assert(
      fc.asyncProperty(route, rawBody, async (path, body) => {
        const answer = await send(path, postInit(body));
        assert.ok([200, 201, 400, 403, 404, 409, 413].includes(answer.status), `${answer.status} ${answer.text.slice(0, 200)}`);
      }),
      runs(400),
    );
    await settled();
  });

  test('prompts: any text (lone surrogates included) works; token ids work inside the vocabulary and are 400 outside it', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom('/v1/completions', '/v1/sessions/fuzz-target/completions'),
        fc.oneof(nastyString, tokenIds(vocabSize)),
        fc.boolean(),
        fc.boolean(),
        async (path, prompt, echo, stream) => {
          const answer = await send(path, postInit(JSON.stringify({ prompt, echo, stream, max_tokens: 2, temperature: 0 })));
          if (Array.isArray(prompt)) {
            const inside = prompt.length > 0 && prompt.every((t) => t >= 0 && t < vocabSize);
            if (inside && prompt.length <= 96) assert.equal(answer.status, 200, answer.text);
            else assert.equal(answer.status, 400, answer.text);
          } else if (answer.status !== 200) {
            assert.equal(answer.status, 400, answer.text);
            assert.match(JSON.parse(answer.text).error.code, /context_length_exceeded|invalid_value/);
          } else if (echo && !stream) {
            assert.ok(JSON.parse(answer.text).choices[0].text.startsWith(prompt), 'echo returns the prompt as sent');
          }
        },
      ),
      runs(300),
    );
    const chat = await send('/v1/chat/completions', postInit(JSON.stringify({ messages: [{ role: 'user', content: '\ud800 lone \udfff' }], max_tokens: 2 })));
    assert.equal(chat.status, 200);
    await settled();
  });

  test('hostile headers: Authorization, X-Session-Id, X-Request-Id, Content-Type', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(fc.constant(`Bearer ${KEY}`), fc.constant(undefined), headerText, headerText.map((t) => `Bearer ${t}`), fc.constant(`bearer ${KEY}`)),
        fc.option(headerText),
        fc.option(headerText),
        fc.option(fc.oneof(headerText, fc.constantFrom('text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x'))),
        async (authorization, sessionHeader, requestId, contentType) => {
          const headers: Record<string, string> = {};
          if (authorization !== undefined) headers.Authorization = authorization;
          if (sessionHeader !== null) headers['X-Session-Id'] = sessionHeader;
          if (requestId !== null) headers['X-Request-Id'] = requestId;
          headers['Content-Type'] = contentType ?? 'application/json';
          const answer = await send('/v1/completions', { method: 'POST', headers, body: JSON.stringify({ prompt: 'x', max_tokens: 1 }) });
          const authorized = authorization !== undefined && /^bearer +/i.test(authorization.trim()) && authorization.trim().replace(/^bearer +/i, '') === KEY;
          assert.equal(answer.status === 401, !authorized, `${authorization} -> ${answer.status}`);
        },
      ),
      runs(200),
    );
    await settled();
  });

  test('session routes with arbitrary ids and methods', async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom('GET', 'DELETE', 'POST', 'PUT', 'PATCH'), fc.oneof(nastyString, headerText), fc.boolean(), async (method, id, completions) => {
        const path = `/v1/sessions/${encodeURIComponent(id.replace(/[\ud800-\udfff]/g, 'x'))}${completions ? '/completions' : ''}`;
        const body = method === 'GET' || method === 'DELETE' ? undefined : JSON.stringify({ prompt: 'x', max_tokens: 1 });
        const answer = await send(path, { method, headers: { 'Content-Type': 'application/json', ...AUTH }, body });
        assert.ok([200, 400, 403, 404, 405, 409].includes(answer.status), `${method} ${path} -> ${answer.status}`);
      }),
      runs(150),
    );
    await settled();
  });

  test('concurrent mixes of valid and hostile requests on shared sessions', async () => {
    const one = fc.oneof(
      fc.record({ path: route, body: fc.dictionary(fc.constantFrom(...FIELDS), hostileValue, { maxKeys: 2 }) }).map(({ path, body }) => ({ path, body: JSON.stringify({ ...BASES[path], ...body }) as string | Uint8Array })),
      fc.record({ path: route, body: rawBody }),
      fc.record({
        path: fc.constant('/v1/completions'),
        body: fc.record({ session: fc.constantFrom('mix-1', 'mix-2'), stream: fc.boolean(), maxTokens: fc.integer({ min: 1, max: 4 }) }).map(({ session, stream, maxTokens }) =>
          JSON.stringify({ prompt: 'The same session, twice', session_id: session, stream, max_tokens: maxTokens, ignore_eos: true }),
        ),
      }),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(one, { minLength: 2, maxLength: 6 }), async (requests) => {
        await Promise.all(requests.map(({ path, body }) => send(path, postInit(body))));
      }),
      runs(100),
    );
    await settled();
  });

  test('afterwards: nothing busy, the engine idle, the budget consistent, and a normal request still works', async () => {
    await settled();
    const serving = runtime.serving!;
    assert.ok(serving.store.budget.reservedBytes <= serving.store.budget.capacityBytes);
    const res = await send('/v1/completions', postInit(JSON.stringify({ prompt: 'Once upon a time', max_tokens: 4, temperature: 0, ignore_eos: true })));
    assert.equal(res.status, 200);
    assert.equal(JSON.parse(res.text).usage.completion_tokens, 4);
    const turn = await send('/v1/sessions/fuzz-target/completions', postInit(JSON.stringify({ prompt: ' and then', max_tokens: 2 })));
    assert.equal(turn.status, 200);
    assert.equal((await app.request('/readyz')).status, 200);
  });
});
