/** text.format on the Responses API through the openai client: json_schema (strict) and json_object, by constrained decoding. */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Ajv } from 'ajv';
import OpenAI from 'openai';
import { zodTextFormat } from 'openai/helpers/zod';
import { z } from 'zod';
import { GPT2, LLAMA } from '../support/fixtures.ts';
import { openAiServer, type Listening } from './helpers.ts';

const Answer = z.object({
  verdict: z.enum(['yes', 'no', 'maybe']),
  score: z.number().int(),
  flags: z.array(z.boolean()).max(3),
});

for (const family of [LLAMA, GPT2]) {
  describe(`responses text.format (${family.family})`, () => {
    let server: Listening;
    let client: OpenAI;
    let model: string;
    before(async () => ({ server, client, model } = await openAiServer({ model: family })));
    after(() => server.close());

    test('responses.parse with a strict json_schema: every seed parses and validates; the format is echoed; a chain continues it', async () => {
      const format = zodTextFormat(Answer, 'answer');
      const validate = new Ajv({ strict: false }).compile(format.schema);
      let last: OpenAI.Responses.Response | undefined;
      for (let seed = 0; seed < 3; seed++) {
        const r = await client.responses.parse({ model, input: 'Is the castle open?', text: { format }, max_output_tokens: 200, temperature: 1, seed } as Parameters<typeof client.responses.parse>[0]);
        assert.equal(r.status, 'completed');
        assert.ok(r.output_parsed, 'the client parsed the output');
        assert.ok(validate(JSON.parse(r.output_text)), JSON.stringify(validate.errors));
        assert.deepEqual(r.text?.format, { type: 'json_schema', name: 'answer', schema: format.schema, strict: true });
        last = r;
      }
      const stored = await client.responses.retrieve(last!.id);
      assert.equal(stored.text?.format?.type, 'json_schema');
      // The next turn without a format is free text again, on the warm chain.
      const next = await client.responses.create({ model, input: 'Why?', previous_response_id: last!.id, max_output_tokens: 4, temperature: 0 });
      assert.ok(next.usage!.input_tokens_details.cached_tokens > 0);
      assert.deepEqual(next.text?.format, { type: 'text' });
    });

    test('json_object, streamed: the assembled output_text is a JSON object', async () => {
      const stream = client.responses.stream({ model, input: 'Describe the castle.', text: { format: { type: 'json_object' } }, max_output_tokens: 300, temperature: 0 });
      const done = await stream.finalResponse();
      if (done.status === 'completed') {
        const value = JSON.parse(done.output_text) as unknown;
        assert.ok(value !== null && typeof value === 'object' && !Array.isArray(value));
      } else assert.equal(done.incomplete_details?.reason, 'max_output_tokens');
      assert.deepEqual(done.text?.format, { type: 'json_object' });
    });
  });
}
