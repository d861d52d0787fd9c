/**
 * Stateless prefix reuse: a response without previous_response_id whose prompt starts with a kept
 * transcript of the same API key copies that KV, reports it as cached, and answers as a cold run does.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import OpenAI from 'openai';
import { listen, openAiClient, type Listening } from './helpers.ts';

const KEY_A = 'key-aaaaaaaaaaaaaaaa';
const KEY_B = 'key-bbbbbbbbbbbbbbbb';
const GREEDY = { temperature: 0, max_output_tokens: 6 } as const;

let server: Listening;
let a: OpenAI;
let b: OpenAI;
let model: string;

before(async () => {
  server = await listen({ settings: { 'api-keys': `${KEY_A},${KEY_B}` } });
  a = openAiClient(server, KEY_A);
  b = openAiClient(server, KEY_B);
  model = server.runtime.serving!.model.id;
});
after(() => server.close());

const story = 'Once upon a time there was a king who lived in a castle on a hill above the river, and every morning he walked slowly towards the bright water. '.repeat(3);

test('a stateless response on a kept transcript of the same key reuses its KV and equals a cold run; another key does not', async () => {
  const store = server.runtime.serving!.store;
  const t1 = await a.responses.create({ model, input: story, ...GREEDY });
  const t2 = await a.responses.create({ model, input: 'And then?', previous_response_id: t1.id, ...GREEDY });
  const transcript: OpenAI.Responses.ResponseInputItem[] = [
    { role: 'user', content: story },
    { role: 'assistant', content: t1.output_text },
    { role: 'user', content: 'And then?' },
    { role: 'assistant', content: t2.output_text },
    { role: 'user', content: 'What did he see?' },
  ];
  const sessions = store.size;
  const warm = await a.responses.create({ model, input: transcript, store: false, ...GREEDY });
  const cold = await b.responses.create({ model, input: transcript, store: false, ...GREEDY });
  assert.equal(cold.usage!.input_tokens_details.cached_tokens, 0, "another key never reuses this key's cache");
  assert.equal(warm.usage!.input_tokens, cold.usage!.input_tokens);
  const cached = warm.usage!.input_tokens_details.cached_tokens;
  assert.ok(cached >= t1.usage!.input_tokens - 1, `cached ${cached} of turn 1's ${t1.usage!.input_tokens} prompt tokens`);
  assert.equal(warm.output_text, cold.output_text, 'the same output as a cold run');
  assert.equal(store.size, sessions, 'the unstored response left no session behind');
  // A stored one starts a chain of its own, seeded the same way, and the source chain stays warm.
  const stored = await a.responses.create({ model, input: transcript, ...GREEDY });
  assert.ok(stored.usage!.input_tokens_details.cached_tokens >= cached);
  assert.equal(stored.output_text, cold.output_text);
  const t3 = await a.responses.create({ model, input: 'The end.', previous_response_id: t2.id, ...GREEDY });
  assert.ok(t3.usage!.input_tokens_details.cached_tokens >= t2.usage!.input_tokens + t2.usage!.output_tokens - 1, 'the source chain is still warm');
  // Key B's cold run was not stored: it left nothing to reuse.
  const again = await b.responses.create({ model, input: transcript, store: false, ...GREEDY });
  assert.equal(again.usage!.input_tokens_details.cached_tokens, 0, 'an unstored response is not indexed');
});
