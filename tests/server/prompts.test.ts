/** Several prompts in one /v1/completions call through the openai client: one choice each, batched. */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { openAiServer, readChoices, type Listening } from './helpers.ts';

let server: Listening;
let client: OpenAI;
let model: string;

before(async () => ({ server, client, model } = await openAiServer()));
after(() => server.close());

type Extra = Record<string, unknown>;
const PROMPTS = ['Once upon a time', 'The castle stood', 'In the morning the king'];
const complete = (extra: Extra) =>
  client.completions.create({ model, max_tokens: 8, temperature: 0, ignore_eos: true, ...extra } as unknown as OpenAI.CompletionCreateParamsNonStreaming);

describe('several prompts in one completions call', () => {
  test('each prompt is its own choice, equal to a single-prompt call; usage sums them; the engine batched them', async () => {
    const singles: OpenAI.Completion[] = [];
    for (const prompt of PROMPTS) singles.push(await complete({ prompt }));
    const counters = () => server.runtime.serving!.engine.counters();
    const before = { ...counters() };
    const multi = await complete({ prompt: PROMPTS, logprobs: 1 });
    const after = counters();
    assert.deepEqual(multi.choices.map((c) => c.index), [0, 1, 2]);
    multi.choices.forEach((choice, i) => {
      assert.equal(choice.text, singles[i].choices[0].text, `choice ${i}`);
      assert.equal(choice.logprobs!.tokens!.length, 8);
    });
    assert.equal(multi.usage!.prompt_tokens, singles.reduce((sum, s) => sum + s.usage!.prompt_tokens, 0));
    assert.equal(multi.usage!.completion_tokens, 24);
    const steps = after.decodeSteps - before.decodeSteps;
    const rows = after.decodeRows - before.decodeRows;
    assert.equal(rows, 3 * 7, 'seven decode steps per prompt after the token its prefill gave');
    assert.ok(steps < rows, `decoded in batches: ${steps} steps for ${rows} rows`);
  });

  test('token-id prompts and streaming: chunks carry their choice index, each with its own finish and one usage chunk', async () => {
    const tokenizer = server.runtime.serving!.model.loaded.tokenizer;
    const ids = PROMPTS.map((p) => tokenizer.encode(p, true));
    const whole = await complete({ prompt: ids });
    const stream = await client.completions.create({ model, prompt: ids, max_tokens: 8, temperature: 0, ignore_eos: true, stream: true, stream_options: { include_usage: true } } as unknown as OpenAI.CompletionCreateParamsStreaming);
    const { texts, finishes, usage } = await readChoices(stream, 3, (choice) => choice.text);
    assert.deepEqual(texts, whole.choices.map((c) => c.text));
    assert.deepEqual(finishes, ['length', 'length', 'length']);
    assert.equal(usage?.completion_tokens, 24);
    assert.equal(usage?.prompt_tokens, whole.usage?.prompt_tokens);
  });

  test('echo applies to each prompt; several prompts with a session_id are refused; one bad prompt fails the call and stops the others', async () => {
    const echoed = await complete({ prompt: PROMPTS.slice(0, 2), echo: true, max_tokens: 2 });
    echoed.choices.forEach((c, i) => assert.ok(c.text.startsWith(PROMPTS[i])));
    const refused = await complete({ prompt: PROMPTS, session_id: 'several' }).then(() => assert.fail('expected a 400'), (e: unknown) => e);
    assert.ok(refused instanceof OpenAI.BadRequestError);
    assert.equal(refused.param, 'session_id');
    assert.equal(server.runtime.serving!.store.list('').some((s) => s.id === 'several'), false, 'no session was made');
    const vocab = server.runtime.serving!.model.loaded.vocabSize;
    const bad = await complete({ prompt: [[1, 2, 3], [vocab + 5]], max_tokens: 50 }).then(() => assert.fail('expected a 400'), (e: unknown) => e);
    assert.ok(bad instanceof OpenAI.BadRequestError, String(bad));
    const engine = server.runtime.serving!.engine;
    for (let i = 0; i < 200 && engine.stats().running + engine.stats().waiting > 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(engine.stats().running + engine.stats().waiting, 0, 'the good prompt was cancelled with the call');
  });
});
