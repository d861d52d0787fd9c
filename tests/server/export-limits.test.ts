/**
 * An export that cannot take several tokens over a cache (like ONNX Runtime GenAI model-builder exports)
 * behind a listening server and the official `openai` client: session turns, long prompts and a prompt
 * arriving while another stream runs all answer 200, equal to one-shot requests.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { openAiServer, type Listening } from './helpers.ts';

let server: Listening;
let client: OpenAI;
let model: string;

before(async () => {
  ({ server, client, model } = await openAiServer({
    model: { family: 'llama', seed: 7, kvDtype: 'float16', externalData: true, quirks: ['no-multi-token-past'] },
    settings: { 'prefill-chunk-tokens': '16' },
  }));
});
after(() => server.close());

type Extra = Record<string, unknown>;

describe('a model without multi-token steps over a past, through the openai client', () => {
  test('the probe found the limit', () => {
    assert.equal(server.runtime.serving!.model.loaded.capabilities.multiTokenOverPast, false);
  });

  test('chat turn 2 on a session equals a one-shot request; a prompt over one chunk and a concurrent stream succeed', async () => {
    const ask = (messages: OpenAI.ChatCompletionMessageParam[], extra: Extra = {}) =>
      client.chat.completions.create({ model, messages, max_completion_tokens: 12, temperature: 0, ignore_eos: true, ...extra } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    const turn1: OpenAI.ChatCompletionMessageParam[] = [
      { role: 'system', content: 'You are terse and you answer every question about the old castle on the hill.' },
      { role: 'user', content: 'Where is the castle?' },
    ];
    const first = await ask(turn1, { session_id: 'genai' });
    assert.ok(first.usage!.prompt_tokens > 16, `the prompt spans several chunks (${first.usage!.prompt_tokens} tokens)`);
    const turn2: OpenAI.ChatCompletionMessageParam[] = [...turn1, first.choices[0].message as OpenAI.ChatCompletionMessageParam, { role: 'user', content: 'How old is it?' }];

    // Turn 2 runs while another stream decodes.
    const other = client.chat.completions.create({ model, messages: turn1, max_completion_tokens: 30, temperature: 0, ignore_eos: true, stream: true } as OpenAI.ChatCompletionCreateParamsStreaming);
    const second = await ask(turn2, { session_id: 'genai' });
    let otherText = '';
    for await (const chunk of await other) otherText += chunk.choices[0]?.delta.content ?? '';
    assert.ok(second.usage!.prompt_tokens_details!.cached_tokens! >= first.usage!.prompt_tokens, 'turn 2 reused the cache');
    const oneShot = await ask(turn2);
    assert.equal(second.choices[0].message.content, oneShot.choices[0].message.content);
    const alone = await ask(turn1, { max_completion_tokens: 30 });
    assert.equal(otherText, alone.choices[0].message.content);
  });
});
