/** `n` > 1 through the openai client: n choices of one prompt, prefilled once, each with seed + index. */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { openAiServer, readChoices, type Listening } from './helpers.ts';

let server: Listening;
let client: OpenAI;
let model: string;

before(async () => ({ server, client, model } = await openAiServer({ settings: { 'max-n': '6' } })));
after(() => server.close());

type Extra = Record<string, unknown>;
const PROMPT = 'Once upon a time in a castle by the sea there lived';
const SAMPLING = { temperature: 1.3, max_tokens: 10, ignore_eos: true };
const complete = (extra: Extra) =>
  client.completions.create({ model, prompt: PROMPT, ...SAMPLING, ...extra } as unknown as OpenAI.CompletionCreateParamsNonStreaming);
const counters = () => server.runtime.serving!.engine.counters();
const promptLength = () => server.runtime.serving!.model.loaded.tokenizer.encode(PROMPT, true).length;
/** The server's sessions of the choices are deleted shortly after the response. */
async function onlyClientSessions(expected: string[]): Promise<void> {
  const ids = () => server.runtime.serving!.store.list('').map((s) => s.id).sort();
  for (let i = 0; i < 100 && ids().length !== expected.length; i++) await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(ids(), [...expected].sort());
}

describe('n choices', () => {
  test('n=4 with a seed: each choice equals a single-choice run with seed + index; the prompt is prefilled once and counted once', async () => {
    const singles: OpenAI.Completion[] = [];
    for (let i = 0; i < 4; i++) singles.push(await complete({ seed: 100 + i, logprobs: 2 }));
    const before = counters();
    const many = await complete({ seed: 100, n: 4, logprobs: 2 });
    const after = counters();
    assert.deepEqual(many.choices.map((c) => c.index), [0, 1, 2, 3]);
    many.choices.forEach((choice, i) => {
      assert.equal(choice.text, singles[i].choices[0].text, `choice ${i}`);
      assert.deepEqual(choice.logprobs!.tokens, singles[i].choices[0].logprobs!.tokens);
      const got = choice.logprobs!.token_logprobs!;
      got.forEach((lp, j) => assert.ok(Math.abs(lp! - singles[i].choices[0].logprobs!.token_logprobs![j]!) < 1e-4, `choice ${i} token ${j}`));
    });
    assert.ok(new Set(many.choices.map((c) => c.text)).size > 1, 'the seeds differ, so do the choices');
    assert.equal(after.prefillTokens - before.prefillTokens, promptLength() + 4, 'the prompt once, then one token per choice');
    assert.equal(many.usage!.prompt_tokens, promptLength(), 'usage counts the prompt once');
    assert.equal(many.usage!.completion_tokens, 40);
    assert.equal(many.usage!.total_tokens, promptLength() + 40);
    await onlyClientSessions([]);
  });

  test('chat: n choices stream with their index, each finishing once, one usage chunk', async () => {
    const messages = [{ role: 'user' as const, content: 'Tell me about the sea.' }];
    const whole = await client.chat.completions.create({ model, messages, ...SAMPLING, seed: 7, n: 3 } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    assert.equal(whole.choices.length, 3);
    const stream = await client.chat.completions.create({ model, messages, ...SAMPLING, seed: 7, n: 3, stream: true, stream_options: { include_usage: true } } as OpenAI.ChatCompletionCreateParamsStreaming);
    const { texts, finishes, usage } = await readChoices(stream, 3, (choice) => choice.delta.content ?? '');
    assert.deepEqual(texts, whole.choices.map((c) => c.message.content));
    assert.deepEqual(finishes, ['length', 'length', 'length']);
    assert.equal(usage?.prompt_tokens, whole.usage?.prompt_tokens);
    assert.equal(usage?.completion_tokens, 30);
    await onlyClientSessions([]);
  });

  test('with a session_id, choice 0 runs on the session (and is what it keeps); the others are copies, gone afterwards', async () => {
    const single = await complete({ seed: 5, session_id: 'n-single' });
    const before = counters();
    const many = await complete({ seed: 5, n: 3, session_id: 'n-keeper' });
    const after = counters();
    assert.equal(many.choices[0].text, single.choices[0].text);
    assert.equal((many as unknown as { session_id: string }).session_id, 'n-keeper');
    assert.equal(after.prefillTokens - before.prefillTokens, promptLength() + 3);
    const tokenizer = server.runtime.serving!.model.loaded.tokenizer;
    const kept = server.runtime.serving!.store.get('', 'n-keeper')!;
    assert.equal(tokenizer.decode(kept.tokens.slice(promptLength()), false).startsWith(many.choices[0].text.slice(0, 5)), true);
    assert.deepEqual(kept.tokens, server.runtime.serving!.store.get('', 'n-single')!.tokens, 'the session holds choice 0, as a single run would');
    await onlyClientSessions(['n-keeper', 'n-single']);
  });

  test('n above MAX_N, n below 1, and n with several prompts are 400s that leave no session', async () => {
    const refusal = (extra: Extra) => complete(extra).then(() => assert.fail('expected a 400'), (e: unknown) => e);
    const tooMany = await refusal({ n: 7 });
    assert.ok(tooMany instanceof OpenAI.BadRequestError);
    assert.equal(tooMany.param, 'n');
    assert.match(tooMany.message, /MAX_N/);
    const none = await refusal({ n: 0 });
    assert.ok(none instanceof OpenAI.BadRequestError && none.param === 'n');
    const several = await refusal({ prompt: ['a', 'b'], n: 2 });
    assert.ok(several instanceof OpenAI.BadRequestError && several.param === 'n');
    await assert.rejects(
      client.chat.completions.create({ model, messages: [{ role: 'user', content: 'x' }], n: 7 }),
      (e: unknown) => e instanceof OpenAI.BadRequestError && e.param === 'n',
    );
    await onlyClientSessions(['n-keeper', 'n-single']);
  });
});
