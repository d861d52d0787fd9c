/** presence/frequency penalties, logit_bias, min_tokens, stop_token_ids and include_stop_str_in_output through the openai client. */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { argmax } from '../../src/engine/sampler.ts';
import { fullRecompute } from '../support/fixtures.ts';
import { openAiServer, type Listening } from './helpers.ts';

let server: Listening;
let client: OpenAI;
let model: string;

before(async () => ({ server, client, model } = await openAiServer()));
after(() => server.close());

type Extra = Record<string, unknown>;
const complete = (extra: Extra) =>
  client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 8, temperature: 0, ignore_eos: true, ...extra } as unknown as OpenAI.CompletionCreateParamsNonStreaming);

async function badRequest(call: Promise<unknown>, param: string): Promise<InstanceType<typeof OpenAI.APIError>> {
  const error = await call.then(
    () => assert.fail('expected a 400'),
    (e: unknown) => e,
  );
  assert.ok(error instanceof OpenAI.BadRequestError, String(error));
  assert.equal(error.param, param);
  assert.ok(error.message.length > 20, error.message);
  return error;
}

describe('penalties, logit_bias and stop ids on a listening server', () => {
  test('logit_bias +100 on one id makes greedy output that token every step; -100 on the greedy token removes it', async () => {
    const tokenizer = server.runtime.serving!.model.loaded.tokenizer;
    const [id] = tokenizer.encode(' castle', false);
    const forced = await complete({ logit_bias: { [String(id)]: 100 } });
    assert.equal(forced.choices[0].text, tokenizer.decode(new Array(8).fill(id)));
    const loaded = server.runtime.serving!.model.loaded;
    const first = argmax(await fullRecompute(loaded.decoder, tokenizer.encode('Once upon a time', true)), loaded.vocabSize);
    const plain = await complete({});
    const banned = await complete({ logit_bias: { [String(first)]: -100 } });
    assert.notEqual(banned.choices[0].text, plain.choices[0].text);
    const again = await complete({ logit_bias: { [String(first)]: 0 } });
    assert.equal(again.choices[0].text, plain.choices[0].text, 'a zero bias changes nothing');
  });

  test('presence and frequency penalties change greedy chat output ', async () => {
    const messages: OpenAI.ChatCompletionMessageParam[] = [{ role: 'user', content: 'Say something.' }];
    const ask = (extra: Extra) =>
      client.chat.completions.create({ model, messages, max_completion_tokens: 24, temperature: 0, ignore_eos: true, ...extra } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    const plain = await ask({});
    const penalised = await ask({ presence_penalty: 2, frequency_penalty: 2 });
    assert.notEqual(penalised.choices[0].message.content, plain.choices[0].message.content);
    assert.equal(penalised.usage?.completion_tokens, 24);
  });

  test('stop_token_ids, include_stop_str_in_output and min_tokens', async () => {
    const tokenizer = server.runtime.serving!.model.loaded.tokenizer;
    const free = await complete({ max_tokens: 12 });
    const text = free.choices[0].text;
    const stop = text.slice(4, 7);
    const kept = await complete({ max_tokens: 12, stop: [stop], include_stop_str_in_output: true });
    assert.equal(kept.choices[0].text, text.slice(0, text.indexOf(stop) + stop.length));
    assert.equal(kept.choices[0].finish_reason, 'stop');
    const held = await complete({ max_tokens: 12, stop: [stop], min_tokens: 12 });
    assert.equal(held.choices[0].text, text, 'no stop string before min_tokens');
    const ids = tokenizer.encode(text, false);
    const stopped = await complete({ max_tokens: 12, stop_token_ids: [ids[ids.length - 1]] });
    assert.equal(stopped.choices[0].finish_reason, 'stop');
    assert.ok(stopped.usage!.completion_tokens <= 12);
  });

  test('bad values are 400s naming the field', async () => {
    const vocab = server.runtime.serving!.model.loaded.vocabSize;
    const outside = await badRequest(complete({ logit_bias: { [String(vocab)]: 5 } }), `logit_bias.${vocab}`);
    assert.match(outside.message, /vocabulary/);
    await badRequest(complete({ logit_bias: { '5': 101 } }), 'logit_bias.5');
    await badRequest(complete({ logit_bias: { abc: 1 } }), 'logit_bias.abc');
    await badRequest(complete({ presence_penalty: 2.5 }), 'presence_penalty');
    await badRequest(complete({ frequency_penalty: -3 }), 'frequency_penalty');
    await badRequest(complete({ min_tokens: 9 }), 'min_tokens');
    await badRequest(complete({ min_tokens: -1 }), 'min_tokens');
    await badRequest(complete({ stop_token_ids: [1, vocab + 3] }), 'stop_token_ids[1]');
    await badRequest(complete({ include_stop_str_in_output: 'yes' }), 'include_stop_str_in_output');
  });
});
