/** Logprobs in OpenAI's shapes through the openai client, checked against a from-scratch log-softmax of the model's logits. */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { argmax } from '../../src/engine/sampler.ts';
import { fullRecompute, logSoftmax } from '../support/fixtures.ts';
import { openAiServer, post, type Listening } from './helpers.ts';

let server: Listening;
let client: OpenAI;
let model: string;

before(async () => ({ server, client, model } = await openAiServer()));
after(() => server.close());

type Extra = Record<string, unknown>;

/** Greedy steps from scratch: each step's chosen id, its log-softmax row, and the ids ranked by it. */
async function reference(prompt: number[], steps: number) {
  const { decoder, vocabSize } = server.runtime.serving!.model.loaded;
  const sequence = prompt.slice();
  const out: Array<{ chosen: number; row: Float64Array; ranked: number[] }> = [];
  for (let i = 0; i < steps; i++) {
    const logits = await fullRecompute(decoder, sequence);
    const row = logSoftmax(logits);
    const chosen = argmax(logits, vocabSize);
    const ranked = Array.from(row.keys()).sort((a, b) => row[b] - row[a] || a - b);
    out.push({ chosen, row, ranked });
    sequence.push(chosen);
  }
  return out;
}

const decode = (id: number) => server.runtime.serving!.model.loaded.tokenizer.decode([id], false);
const close = (a: number, b: number, what: string) => assert.ok(Math.abs(a - b) < 1e-3, `${what}: ${a} vs ${b}`);

describe('logprobs on a listening server', () => {
  test('chat logprobs and top_logprobs equal a from-scratch log-softmax: values, ranks, tokens and bytes', async () => {
    const messages: OpenAI.ChatCompletionMessageParam[] = [{ role: 'user', content: 'Tell me about the castle.' }];
    const steps = 10;
    const chat = await client.chat.completions.create({ model, messages, max_completion_tokens: steps, temperature: 0, ignore_eos: true, logprobs: true, top_logprobs: 5 } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    const content = chat.choices[0].logprobs!.content!;
    assert.equal(content.length, chat.usage!.completion_tokens);
    assert.equal(chat.choices[0].logprobs!.refusal, null);
    const prompt = ((await (await fetch(`${server.url}/tokenize`, post({ messages }))).json()) as { tokens: number[] }).tokens;
    const ref = await reference(prompt, steps);
    for (let i = 0; i < steps; i++) {
      const entry = content[i];
      const { chosen, row, ranked } = ref[i];
      assert.equal(entry.token, decode(chosen), `step ${i} token`);
      assert.deepEqual(entry.bytes, [...Buffer.from(entry.token, 'utf8')]);
      close(entry.logprob, row[chosen], `step ${i} logprob`);
      assert.ok(entry.logprob <= 0);
      assert.equal(entry.top_logprobs.length, 5);
      entry.top_logprobs.forEach((top, rank) => {
        assert.equal(top.token, decode(ranked[rank]), `step ${i} rank ${rank}`);
        close(top.logprob, row[ranked[rank]], `step ${i} rank ${rank} logprob`);
      });
      const mass = entry.top_logprobs.reduce((sum, t) => sum + Math.exp(t.logprob), 0);
      assert.ok(mass <= 1 + 1e-6, `top-5 mass ${mass}`);
      // Greedy: the chosen token is the most likely one.
      close(entry.top_logprobs[0].logprob, entry.logprob, 'greedy picks rank 0');
    }
    assert.equal(content.map((c) => c.token).join(''), chat.choices[0].message.content);
  });

  test('logprobs are the raw model distribution: logit_bias and temperature do not change them', async () => {
    const tokenizer = server.runtime.serving!.model.loaded.tokenizer;
    const [forced] = tokenizer.encode(' castle', false);
    const prompt = tokenizer.encode('Once upon a time', true);
    const res = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 1, temperature: 1.7, seed: 3, logit_bias: { [String(forced)]: 100 }, logprobs: 0 } as unknown as OpenAI.CompletionCreateParamsNonStreaming);
    const lp = res.choices[0].logprobs!;
    assert.deepEqual(lp.tokens, [decode(forced)]);
    const [{ row }] = await reference(prompt, 1);
    close(lp.token_logprobs![0], row[forced], 'raw logprob of the forced token');
    assert.ok(lp.token_logprobs![0] < -0.5, 'not the biased distribution, where it would be ~0');
    assert.deepEqual(lp.top_logprobs, [{}], 'logprobs: 0 gives no alternatives');
  });

  test('completions logprobs, streamed per chunk, equal the non-streamed ones; text_offset follows the tokens', async () => {
    const params = { model, prompt: 'The king said', max_tokens: 12, temperature: 0, ignore_eos: true, logprobs: 3 } as Extra;
    const whole = await client.completions.create(params as unknown as OpenAI.CompletionCreateParamsNonStreaming);
    const lp = whole.choices[0].logprobs!;
    assert.equal(lp.tokens!.length, 12);
    assert.equal(lp.tokens!.join(''), whole.choices[0].text);
    lp.text_offset!.forEach((offset, i) => assert.equal(offset, i === 0 ? 0 : lp.text_offset![i - 1] + lp.tokens![i - 1].length));
    for (const [i, top] of lp.top_logprobs!.entries()) {
      assert.ok(Object.keys(top).length >= 1 && Object.keys(top).length <= 4, JSON.stringify(top));
      assert.ok(lp.tokens![i] in top, 'the sampled token is among the alternatives');
    }
    const stream = await client.completions.create({ ...params, stream: true } as unknown as OpenAI.CompletionCreateParamsStreaming);
    const tokens: string[] = [];
    const values: number[] = [];
    let text = '';
    for await (const chunk of stream) {
      const choice = chunk.choices[0];
      text += choice.text;
      if (choice.logprobs) {
        assert.equal(choice.logprobs.tokens!.join(''), choice.text, 'a chunk carries the logprobs of its own text');
        tokens.push(...choice.logprobs.tokens!);
        values.push(...choice.logprobs.token_logprobs!);
      }
    }
    assert.equal(text, whole.choices[0].text);
    assert.deepEqual(tokens, lp.tokens);
    values.forEach((v, i) => close(v, lp.token_logprobs![i], `token ${i}`));
  });

  test('streamed chat: every content token has its logprob in the chunks', async () => {
    const stream = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Hi' }], max_completion_tokens: 8, temperature: 0, ignore_eos: true, logprobs: true, top_logprobs: 2, stream: true, stream_options: { include_usage: true } } as OpenAI.ChatCompletionCreateParamsStreaming);
    let count = 0;
    let usage = 0;
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage.completion_tokens;
      for (const entry of chunk.choices[0]?.logprobs?.content ?? []) {
        assert.equal(entry.top_logprobs.length, 2);
        count++;
      }
    }
    assert.equal(count, usage);
  });

  test('without logprobs the choice has logprobs: null; bad values are 400s naming the field', async () => {
    const plain = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Hi' }], max_completion_tokens: 2 });
    assert.equal(plain.choices[0].logprobs, null);
    const bad = async (call: Promise<unknown>, param: string) => {
      const error = await call.then(() => assert.fail('expected a 400'), (e: unknown) => e);
      assert.ok(error instanceof OpenAI.BadRequestError, String(error));
      assert.equal(error.param, param);
    };
    const chat = (extra: Extra) => client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Hi' }], max_completion_tokens: 2, ...extra } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    await bad(chat({ logprobs: true, top_logprobs: 21 }), 'top_logprobs');
    await bad(chat({ top_logprobs: 2 }), 'top_logprobs');
    await bad(chat({ logprobs: true, top_logprobs: -1 }), 'top_logprobs');
    const complete = (extra: Extra) => client.completions.create({ model, prompt: 'x', max_tokens: 2, ...extra } as unknown as OpenAI.CompletionCreateParamsNonStreaming);
    await bad(complete({ logprobs: 21 }), 'logprobs');
  });
});
