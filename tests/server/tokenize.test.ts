/** /tokenize and /detokenize on a listening server, in vLLM's shapes. */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { expectError, openAiServer, post, type Listening } from './helpers.ts';

let server: Listening;
let client: OpenAI;

before(async () => ({ server, client } = await openAiServer()));
after(() => server.close());

const call = (path: string, body: unknown) => fetch(`${server.url}${path}`, post(body));
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const json = async (res: Response | Promise<Response>): Promise<Record<string, any>> => (await res).json() as Promise<Record<string, any>>;

describe('tokenize and detokenize', () => {
  test('a prompt with multi-byte characters round-trips, under / and /v1/', async () => {
    const text = 'Grüße aus Köln: 東京 🚀 naïve café';
    const tokenizer = server.runtime.serving!.model.loaded.tokenizer;
    for (const prefix of ['', '/v1']) {
      const res = await call(`${prefix}/tokenize`, { prompt: text, return_token_strs: true });
      assert.equal(res.status, 200);
      const body = await json(res);
      assert.deepEqual(Object.keys(body).sort(), ['count', 'max_model_len', 'token_strs', 'tokens']);
      assert.deepEqual(body.tokens, tokenizer.encode(text, true));
      assert.equal(body.count, body.tokens.length);
      assert.equal(body.max_model_len, server.runtime.serving!.model.contextLength);
      assert.equal(body.token_strs.length, body.count);
      const back = await json(call(`${prefix}/detokenize`, { tokens: body.tokens }));
      // The prompt's BOS (a special token) is kept in the text, as vLLM's detokenize does.
      const bos = tokenizer.bosToken ?? '';
      assert.equal(back.prompt.replace(bos, ''), text);
    }
    const plain = await json(call('/tokenize', { prompt: text, add_special_tokens: false }));
    assert.equal((await json(call('/detokenize', { tokens: plain.tokens }))).prompt, text);
    assert.equal(plain.token_strs, null);
  });

  test('chat messages go through the template with the generation prompt; count equals the chat request\'s prompt_tokens', async () => {
    const messages = [
      { role: 'system' as const, content: 'Be brief.' },
      { role: 'user' as const, content: 'Wie spät ist es? 🕰️' },
    ];
    const withPrompt = await json(call('/tokenize', { messages }));
    const without = await json(call('/tokenize', { messages, add_generation_prompt: false }));
    assert.ok(withPrompt.count > without.count, 'the assistant opening adds tokens');
    const model = server.runtime.serving!.model.id;
    const chat = await client.chat.completions.create({ model, messages, max_completion_tokens: 1, temperature: 0 });
    assert.equal(chat.usage?.prompt_tokens, withPrompt.count);
  });

  test('the openai client reaches it with its generic post', async () => {
    const body = await client.post<{ count: number; tokens: number[] }>('/tokenize', { body: { prompt: 'hello' } });
    assert.equal(body.count, body.tokens.length);
    const text = await client.post<{ prompt: string }>('/detokenize', { body: { tokens: body.tokens } });
    assert.match(text.prompt, /hello$/);
  });

  test('bad input: clear 400s with param', async () => {
    await expectError(await call('/tokenize', {}), 400, 'invalid_value', 'prompt');
    await expectError(await call('/tokenize', { prompt: 'a', messages: [{ role: 'user', content: 'b' }] }), 400, 'invalid_value', 'prompt');
    await expectError(await call('/tokenize', { prompt: 3 }), 400, 'invalid_value', 'prompt');
    const vocab = server.runtime.serving!.model.loaded.vocabSize;
    const error = await expectError(await call('/detokenize', { tokens: [1, vocab] }), 400, 'invalid_value', 'tokens[1]');
    assert.match(error.message, /vocabulary/);
    await expectError(await call('/detokenize', { tokens: [-1] }), 400, 'invalid_value', 'tokens[0]');
    await expectError(await call('/detokenize', { tokens: [1], model: 'other' }), 404, 'model_not_found', 'model');
  });
});
