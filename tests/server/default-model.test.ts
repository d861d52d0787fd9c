/**
 * The committed default model (DEFAULT_MODEL_DIR, models/warmkv-chat) through the HTTP API: its chat
 * template renders ChatML, a greedy reply ends with its end-of-turn token well within the default reply
 * budget, and a later turn of a warm session is served from the cache and equals a full recompute.
 * (How often its answers are right is measured by `npm run eval -- --suite chat`, not asserted here.)
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { configSchema, DEFAULT_MODEL_DIR } from '../../src/config.ts';
import type { Runtime } from '../../src/runtime.ts';
import { listenDefaultModel, post, type Listening } from './helpers.ts';

let server: Listening;
let runtime: Runtime;

before(async () => {
  server = await listenDefaultModel();
  runtime = server.runtime;
});
after(() => server.close());

async function chat(messages: Array<{ role: string; content: string }>, sessionId?: string) {
  const res = await fetch(`${server.url}/v1/chat/completions`, post({ model: runtime.modelId, messages, temperature: 0, ...(sessionId ? { session_id: sessionId } : {}) }));
  assert.equal(res.status, 200);
  return (await res.json()) as {
    choices: Array<{ message: { content: string }; finish_reason: string }>;
    usage: { completion_tokens: number; prompt_tokens_details: { cached_tokens: number } };
  };
}

test('the default model is the chat model, with a reply-sized default budget', () => {
  assert.equal(DEFAULT_MODEL_DIR, 'models/warmkv-chat');
  const serving = runtime.serving!;
  const defaults = configSchema.parse({});
  assert.ok(defaults.defaultChatMaxTokens < serving.model.contextLength, 'the default reply budget is not the whole context');
  assert.equal(serving.model.chatTemplate.source, 'model');
});

test('its chat template renders ChatML and ends with the assistant opening', () => {
  const text = runtime.serving!.model.chatTemplate.render([
    { role: 'system', content: 'You are a helpful assistant.' },
    { role: 'user', content: 'Hello!' },
  ]);
  assert.equal(text, '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n');
});

test('a short greedy chat reply ends with the end-of-turn token within the default max tokens', async () => {
  const limit = configSchema.parse({}).defaultChatMaxTokens;
  for (const question of ['What is the capital of France?', 'Hello!', 'Who are you?']) {
    const r = await chat([{ role: 'user', content: question }]);
    assert.equal(r.choices[0]!.finish_reason, 'stop', `${question} -> ${r.choices[0]!.message.content}`);
    assert.ok(r.usage.completion_tokens < limit);
    assert.ok(!r.choices[0]!.message.content.includes('<|im_end|>'));
  }
});

test('turn 3 of a warm session reuses the cached turns 1-2 and answers as a full recompute does', async () => {
  const messages = [{ role: 'user', content: 'My name is Alice.' }];
  const first = await chat(messages, 'default-model-memory');
  messages.push({ role: 'assistant', content: first.choices[0]!.message.content }, { role: 'user', content: 'What is 2 plus 3?' });
  const second = await chat(messages, 'default-model-memory');
  messages.push({ role: 'assistant', content: second.choices[0]!.message.content }, { role: 'user', content: 'What is my name?' });
  const third = await chat(messages, 'default-model-memory');
  assert.ok(third.usage.prompt_tokens_details.cached_tokens > 0);
  assert.equal(third.choices[0]!.finish_reason, 'stop');
  const recomputed = await chat(messages);
  assert.equal(recomputed.usage.prompt_tokens_details.cached_tokens, 0);
  assert.equal(third.choices[0]!.message.content, recomputed.choices[0]!.message.content);
});
