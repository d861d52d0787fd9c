/** The Responses API's refusals: clear OpenAI-format errors, per-key isolation, and nothing stored half-way. */
import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import { expectError, makeApp, post } from './helpers.ts';

const KEY_A = 'key-aaaaaaaaaaaaaaaa';
const KEY_B = 'key-bbbbbbbbbbbbbbbb';
const auth = (key: string) => ({ Authorization: `Bearer ${key}` });

let app: Awaited<ReturnType<typeof makeApp>>;

before(async () => {
  app = await makeApp({ settings: { 'api-keys': `${KEY_A},${KEY_B}` } });
});

function create(body: unknown, key = KEY_A) {
  return app.app.request('/v1/responses', post(body, auth(key)));
}

describe('responses: bad input', () => {
  const cases: Array<[string, unknown, number, string, string | null]> = [
    ['a well-formed but unknown previous_response_id', { input: 'hi', previous_response_id: 'resp_0123456789abcdef' }, 404, 'previous_response_not_found', 'previous_response_id'],
    ['a malformed previous_response_id', { input: 'hi', previous_response_id: 'chatcmpl-1' }, 400, 'invalid_value', 'previous_response_id'],
    ['no input', { instructions: 'x' }, 400, 'invalid_value', 'input'],
    ['an empty input list', { input: [] }, 400, 'invalid_value', 'input'],
    ['an unknown role', { input: [{ role: 'robot', content: 'x' }] }, 400, 'invalid_value', 'input[0].role'],
    ['an item that is not an object', { input: ['hi'] }, 400, 'invalid_value', 'input[0]'],
    ['a part without text', { input: [{ role: 'user', content: [{ type: 'input_text' }] }] }, 400, 'invalid_value', 'input[0].content[0].text'],
    ['an image part', { input: [{ role: 'user', content: [{ type: 'input_image', image_url: 'data:,' }] }] }, 400, 'unsupported_parameter', 'input[0].content[0].type'],
    ['a function_call_output answering no call', { input: [{ type: 'function_call_output', call_id: 'c', output: '1' }] }, 400, 'invalid_value', 'input[0].call_id'],
    ['an unknown item_reference', { input: [{ type: 'item_reference', id: 'fc_1' }] }, 404, 'not_found', 'input[0].id'],
    ['a computer_call_output item', { input: [{ type: 'computer_call_output', call_id: 'c' }] }, 400, 'unsupported_parameter', 'input[0].type'],
    ['a built-in tool', { input: 'hi', tools: [{ type: 'web_search' }] }, 400, 'unsupported_parameter', 'tools[0].type'],
    ['tool_choice required without tools', { input: 'hi', tool_choice: 'required' }, 400, 'invalid_value', 'tool_choice'],
    ['a tool_choice of allowed_tools', { input: 'hi', tools: [{ type: 'function', name: 'f' }], tool_choice: { type: 'allowed_tools', mode: 'auto', tools: [] } }, 400, 'unsupported_parameter', 'tool_choice'],
    ['an unknown text.format type', { input: 'hi', text: { format: { type: 'grammar' } } }, 400, 'invalid_value', 'text.format.type'],
    ['a json_schema format without a schema', { input: 'hi', text: { format: { type: 'json_schema', name: 'x' } } }, 400, 'invalid_value', 'text.format.schema'],
    ['a json_schema format with a bad name', { input: 'hi', text: { format: { type: 'json_schema', name: 'a b', schema: {} } } }, 400, 'invalid_value', 'text.format.name'],
    ['a schema keyword constrained decoding cannot enforce', { input: 'hi', text: { format: { type: 'json_schema', name: 'x', schema: { type: 'string', format: 'email' } } } }, 400, 'invalid_value', 'text.format'],
    ['top_logprobs', { input: 'hi', top_logprobs: 3 }, 400, 'unsupported_parameter', 'top_logprobs'],
    ['reasoning effort', { input: 'hi', reasoning: { effort: 'high' } }, 400, 'unsupported_parameter', 'reasoning'],
    ['an unknown truncation', { input: 'hi', truncation: 'error' }, 400, 'invalid_value', 'truncation'],
    ['background without store', { input: 'hi', background: true, store: false }, 400, 'invalid_value', 'background'],
    ['another model', { input: 'hi', model: 'gpt-5' }, 404, 'model_not_found', 'model'],
    ['session_id (responses keep their own sessions)', { input: 'hi', session_id: 's' }, 400, 'unsupported_parameter', 'session_id'],
    ['metadata with 17 keys', { input: 'hi', metadata: Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, 'v'])) }, 400, 'invalid_value', 'metadata'],
    ['max_output_tokens 0', { input: 'hi', max_output_tokens: 0 }, 400, 'invalid_value', 'max_output_tokens'],
  ];
  for (const [name, body, status, code, param] of cases) {
    test(`${name}: ${status} ${code}, nothing stored`, async () => {
      const sessions = app.runtime.serving!.store.size;
      await expectError(await create(body), status, code, param);
      assert.equal(app.runtime.serving!.store.size, sessions, 'no session left behind');
    });
  }

  test('truncation disabled (the default) refuses a prompt over the context; auto slides the window', async () => {
    // Over the context, under MAX_PROMPT_TOKENS (4x the context by default).
    const long = 'word '.repeat(Math.round(app.runtime.serving!.model.contextLength * 1.5));
    const sessions = app.runtime.serving!.store.size;
    await expectError(await create({ input: long, max_output_tokens: 4 }), 400, 'context_length_exceeded');
    assert.equal(app.runtime.serving!.store.size, sessions, 'the refused response left no session');
    const res = await create({ input: long, max_output_tokens: 4, truncation: 'auto', temperature: 0 });
    assert.equal(res.status, 200, await res.clone().text());
    const body = (await res.json()) as { truncation: string; status: string };
    assert.equal(body.truncation, 'auto');
  });

  test('a refused request (queue full) stores nothing: no response, no session', async () => {
    // (The test model is shared between runtimes: this one is not closed, which would dispose it.)
    const full = await makeApp({ settings: { 'max-queue': '0' } });
    const res = await full.app.request('/v1/responses', post({ input: 'hi' }));
    await expectError(res, 429, 'queue_full');
    assert.equal(full.runtime.serving!.store.size, 0);
  });

  test('cancel and delete: a finished response cannot be cancelled; delete is final', async () => {
    const res = await create({ input: 'hi', max_output_tokens: 2 });
    const { id } = (await res.json()) as { id: string };
    await expectError(await app.app.request(`/v1/responses/${id}/cancel`, { method: 'POST', headers: auth(KEY_A) }), 400, 'response_not_cancellable', 'response_id');
    assert.equal((await app.app.request(`/v1/responses/${id}`, { method: 'DELETE', headers: auth(KEY_A) })).status, 200);
    await expectError(await app.app.request(`/v1/responses/${id}`, { method: 'DELETE', headers: auth(KEY_A) }), 404, null as unknown as string);
  });

  test('a non-background response cannot be streamed again with GET', async () => {
    const { id } = (await (await create({ input: 'hi', max_output_tokens: 2 })).json()) as { id: string };
    await expectError(await app.app.request(`/v1/responses/${id}?stream=true`, { headers: auth(KEY_A) }), 400, 'invalid_value', 'stream');
  });
});

describe('responses: another API key gets 404 on every route', () => {
  test('retrieve, stream, input_items, cancel, delete and chaining', async () => {
    const res = await create({ input: 'mine', max_output_tokens: 2, background: true });
    const { id } = (await res.json()) as { id: string };
    const asB = (path: string, init: RequestInit = {}) => app.app.request(path, { ...init, headers: { ...auth(KEY_B), ...(init.headers as Record<string, string>) } });
    for (const [path, init] of [
      [`/v1/responses/${id}`, {}],
      [`/v1/responses/${id}?stream=true&starting_after=0`, {}],
      [`/v1/responses/${id}/input_items`, {}],
      [`/v1/responses/${id}/cancel`, { method: 'POST' }],
      [`/v1/responses/${id}`, { method: 'DELETE' }],
    ] as const) {
      const error = await expectError(await asB(path, init), 404, null as unknown as string, 'response_id');
      assert.match(error.message, /not found/);
    }
    await expectError(await create({ input: 'next', previous_response_id: id }, KEY_B), 404, 'previous_response_not_found');
    // The owner still has it.
    assert.equal((await app.app.request(`/v1/responses/${id}`, { headers: auth(KEY_A) })).status, 200);
  });
});
