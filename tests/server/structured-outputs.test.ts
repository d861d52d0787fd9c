/** response_format through a listening server: the openai client's chat.completions.parse with zod. */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Ajv } from 'ajv';
import OpenAI from 'openai';
import { zodResponseFormat } from 'openai/helpers/zod';
import { z } from 'zod';
import { GPT2, LLAMA } from '../support/fixtures.ts';
import { expectError, openAiServer, post, type Listening } from './helpers.ts';

const Answer = z.object({
  verdict: z.enum(['yes', 'no', 'maybe']),
  score: z.number().int(),
  flags: z.array(z.boolean()).max(3),
  detail: z.object({ ok: z.boolean() }).nullable(),
});

for (const family of [LLAMA, GPT2]) {
  describe(`structured outputs (${family.family})`, () => {
    let server: Listening;
    let client: OpenAI;
    let model: string;
    before(async () => ({ server, client, model } = await openAiServer({ model: family })));
    after(() => server.close());

    test('chat.completions.parse with a zod response format: every seed parses and validates', async () => {
      const format = zodResponseFormat(Answer, 'answer');
      const validate = new Ajv({ strict: false }).compile(format.json_schema.schema!);
      for (let seed = 0; seed < 4; seed++) {
        const completion = await client.chat.completions.parse({
          model,
          messages: [{ role: 'user', content: 'Is the castle open?' }],
          response_format: format,
          max_completion_tokens: 200,
          temperature: 1,
          seed,
        });
        const choice = completion.choices[0];
        assert.equal(choice.finish_reason, 'stop');
        assert.ok(choice.message.parsed);
        assert.ok(validate(JSON.parse(choice.message.content!)), JSON.stringify(validate.errors));
      }
    });

    test('json_object output parses; bad schemas get a 400 naming the keyword', async () => {
      const res = await fetch(`${server.url}/v1/chat/completions`, post({ model, messages: [{ role: 'user', content: 'hi' }], response_format: { type: 'json_object' }, max_tokens: 300, temperature: 0 }));
      assert.equal(res.status, 200);
      const body = (await res.json()) as { choices: Array<{ message: { content: string }; finish_reason: string }> };
      if (body.choices[0].finish_reason === 'stop') assert.equal(typeof JSON.parse(body.choices[0].message.content), 'object');
      const bad = await fetch(`${server.url}/v1/chat/completions`, post({ model, messages: [{ role: 'user', content: 'hi' }], response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'string', format: 'email' } } } }));
      const error = await expectError(bad, 400, 'invalid_value', 'response_format');
      assert.match(JSON.stringify(error), /'format'/);
      const withMinTokens = await fetch(`${server.url}/v1/chat/completions`, post({ model, messages: [{ role: 'user', content: 'hi' }], response_format: { type: 'json_object' }, min_tokens: 3 }));
      await expectError(withMinTokens, 400, 'unsupported_parameter', 'min_tokens');
      const malformed = await fetch(`${server.url}/v1/completions`, post({ model, prompt: 'a', response_format: { type: 'json_schema' } }));
      await expectError(malformed, 400, 'invalid_value');
    });
  });
}
