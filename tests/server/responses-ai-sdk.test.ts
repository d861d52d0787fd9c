/** The Vercel AI SDK's OpenAI provider in Responses mode against a real listening server: chains and streams. */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { createOpenAI } from '@ai-sdk/openai';
import { generateText, streamText } from 'ai';
import { openAiServer, type Listening } from './helpers.ts';

let server: Listening;
let model: string;

before(async () => ({ server, model } = await openAiServer()));
after(() => server.close());

test('generateText chains with providerOptions.openai.previousResponseId on the warm cache; streamText streams the same text', async () => {
  const openai = createOpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused' });
  const settings = { model: openai.responses(model), temperature: 0, maxOutputTokens: 6, maxRetries: 0 } as const;
  const first = await generateText({ ...settings, prompt: 'Once upon a time' });
  const firstId = first.providerMetadata?.openai?.responseId as string;
  assert.match(firstId, /^resp_/);
  assert.equal(first.usage.cachedInputTokens ?? 0, 0);

  const second = await generateText({ ...settings, prompt: 'there was a king', providerOptions: { openai: { previousResponseId: firstId } } });
  const chain = (first.usage.inputTokens ?? 0) + (first.usage.outputTokens ?? 0) - 1;
  assert.ok((second.usage.cachedInputTokens ?? 0) >= chain, `cached ${second.usage.cachedInputTokens} of ${chain}`);

  // A branch off the first turn, streamed: the same input gives the same text as the chained call.
  const streamed = streamText({ ...settings, prompt: 'there was a king', providerOptions: { openai: { previousResponseId: firstId } } });
  let text = '';
  for await (const part of streamed.textStream) text += part;
  assert.equal(text, second.text);
  assert.ok(((await streamed.usage).cachedInputTokens ?? 0) >= chain, 'the branch reused the first turn');
});
