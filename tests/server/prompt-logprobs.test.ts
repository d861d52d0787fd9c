/** `echo` with `logprobs` on /v1/completions through the openai client, against a from-scratch log-softmax of the model's logits. */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { fullRecompute, logSoftmax } from '../support/fixtures.ts';
import { openAiServer, type Listening } from './helpers.ts';

let server: Listening;
let client: OpenAI;
let model: string;

before(async () => ({ server, client, model } = await openAiServer()));
after(() => server.close());

type Extra = Record<string, unknown>;
const complete = (extra: Extra) =>
  client.completions.create({ model, max_tokens: 4, temperature: 0, ignore_eos: true, ...extra } as unknown as OpenAI.CompletionCreateParamsNonStreaming);

const decode = (id: number) => server.runtime.serving!.model.loaded.tokenizer.decode([id], false);
const close = (a: number, b: number, what: string) => assert.ok(Math.abs(a - b) < 1e-3, `${what}: ${a} vs ${b}`);
const PROMPT_TEXT = 'The king rode out of the castle at dawn, and the';

describe('echo with logprobs', () => {
  test("the prompt's tokens come first: null for the first, then each the log-softmax of the model given the ones before, with ranked alternatives", async () => {
    const prompt = server.runtime.serving!.model.loaded.tokenizer.encode(PROMPT_TEXT, true);
    const K = 3;
    const echoed = await complete({ prompt, echo: true, logprobs: K });
    const plain = await complete({ prompt, logprobs: K });
    const lp = echoed.choices[0].logprobs!;
    assert.equal(lp.tokens!.length, prompt.length + 4);
    assert.equal(lp.token_logprobs![0], null);
    assert.equal(lp.top_logprobs![0], null);
    const { decoder } = server.runtime.serving!.model.loaded;
    for (let i = 1; i < prompt.length; i++) {
      const row = logSoftmax(await fullRecompute(decoder, prompt.slice(0, i)));
      assert.equal(lp.tokens![i], decode(prompt[i]), `prompt token ${i}`);
      close(lp.token_logprobs![i]!, row[prompt[i]], `prompt token ${i} logprob`);
      const ranked = Array.from(row.keys()).sort((a, b) => row[b] - row[a] || a - b);
      const top = lp.top_logprobs![i]!;
      // The K alternatives by their strings (the more likely id first where two decode alike), plus the prompt's own token.
      const expected: Record<string, number> = {};
      for (const id of ranked.slice(0, K)) expected[decode(id)] ??= row[id];
      expected[decode(prompt[i])] ??= row[prompt[i]];
      assert.deepEqual(Object.keys(top).sort(), Object.keys(expected).sort(), `prompt token ${i} alternatives`);
      for (const [token, value] of Object.entries(expected)) close(top[token], value, `prompt token ${i} alternative ${JSON.stringify(token)}`);
    }
    // The completion's part equals the same request without echo.
    const completion = plain.choices[0].logprobs!;
    assert.deepEqual(lp.tokens!.slice(prompt.length), completion.tokens);
    lp.token_logprobs!.slice(prompt.length).forEach((v, j) => close(v!, completion.token_logprobs![j]!, `completion token ${j}`));
    // text_offset: from 0, each token's string after the ones before it.
    let offset = 0;
    lp.tokens!.forEach((token, i) => {
      assert.equal(lp.text_offset![i], offset, `offset ${i}`);
      offset += token.length;
    });
    assert.equal(echoed.choices[0].text, server.runtime.serving!.model.loaded.tokenizer.decode(prompt, false) + plain.choices[0].text);
  });

  test('streamed: the echo chunk carries the prompt logprobs, the rest follow; n choices each carry them', async () => {
    const whole = await complete({ prompt: PROMPT_TEXT, echo: true, logprobs: 2, n: 2, seed: 3, temperature: 1 });
    const stream = await client.completions.create({ model, prompt: PROMPT_TEXT, max_tokens: 4, ignore_eos: true, echo: true, logprobs: 2, n: 2, seed: 3, temperature: 1, stream: true } as unknown as OpenAI.CompletionCreateParamsStreaming);
    const tokens: string[][] = [[], []];
    const values: Array<Array<number | null>> = [[], []];
    for await (const chunk of stream) {
      for (const choice of chunk.choices) {
        tokens[choice.index].push(...(choice.logprobs?.tokens ?? []));
        values[choice.index].push(...(choice.logprobs?.token_logprobs ?? []));
      }
    }
    whole.choices.forEach((choice, i) => {
      assert.deepEqual(tokens[i], choice.logprobs!.tokens, `choice ${i} tokens`);
      assert.equal(values[i][0], null);
      values[i].forEach((v, j) => (j === 0 ? assert.equal(v, null) : close(v!, choice.logprobs!.token_logprobs![j]!, `choice ${i} token ${j}`)));
    });
    assert.deepEqual(whole.choices[0].logprobs!.token_logprobs!.slice(0, 8), whole.choices[1].logprobs!.token_logprobs!.slice(0, 8), 'one prompt, the same prompt logprobs');
  });

  test('a prompt longer than the context cannot be scored in one pass: 400', async () => {
    const context = server.runtime.serving!.model.contextLength;
    const prompt = Array.from({ length: context + 1 }, (_, i) => 5 + (i % 50));
    await assert.rejects(
      complete({ prompt, echo: true, logprobs: 1, max_tokens: 1, truncation: 'auto' }),
      (e: unknown) => e instanceof OpenAI.BadRequestError && e.param === 'prompt' && /context/.test(e.message),
    );
  });
});
