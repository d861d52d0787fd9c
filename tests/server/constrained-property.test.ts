/**
 * Property test of constrained decoding through a listening server: for random schemas from the
 * supported subset and random seeds, at temperature 1 on builder models of both families (random
 * weights, so nothing but the grammar keeps the output in shape), every output finishes and validates.
 * Runs are seeded and few; for a longer hunt:
 *   PROPERTY_RUNS=200 PROPERTY_SEED=$RANDOM node --import tsx --test tests/server/constrained-property.test.ts
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Ajv } from 'ajv';
import fc from 'fast-check';
import { GPT2, LLAMA } from '../support/fixtures.ts';
import { openAiServer, post, type Listening } from './helpers.ts';

type Schema = Record<string, unknown>;

const SEED = Number(process.env.PROPERTY_SEED ?? 18);
const RUNS = Number(process.env.PROPERTY_RUNS ?? 12);

/**
 * Bounded leaves only (enums, consts, ranged integers, booleans, null): a free string or an unbounded
 * number lets random weights write until the token limit, which says nothing about the grammar.
 */
const word = fc.constantFrom('red', 'green', 'blue', 'a b', 'quote"d', 'back\\slash', 'ünï', '');
const leaf: fc.Arbitrary<Schema> = fc.oneof(
  fc.constant({ type: 'boolean' }),
  fc.constant({ type: 'null' }),
  fc.uniqueArray(word, { minLength: 1, maxLength: 4 }).map((values) => ({ type: 'string', enum: values })),
  fc.oneof(word, fc.integer({ min: -5, max: 5 }), fc.boolean()).map((value) => ({ const: value })),
  fc.tuple(fc.integer({ min: -50, max: 50 }), fc.integer({ min: 0, max: 40 })).map(([min, span]) => ({ type: 'integer', minimum: min, maximum: min + span })),
);

const { schema } = fc.letrec<{ schema: Schema; node: Schema }>((tie) => ({
  node: fc.oneof({ depthSize: 'small', withCrossShrink: true }, leaf, tie('object'), tie('array'), tie('anyOf')) as fc.Arbitrary<Schema>,
  object: fc
    .dictionary(fc.constantFrom('id', 'name', 'ok', 'tags', 'kind', 'x'), tie('node') as fc.Arbitrary<Schema>, { minKeys: 1, maxKeys: 3 })
    .chain((properties) =>
      fc.subarray(Object.keys(properties)).map((required) => ({ type: 'object', properties, required, additionalProperties: false })),
    ),
  array: fc
    .tuple(tie('node') as fc.Arbitrary<Schema>, fc.integer({ min: 0, max: 2 }), fc.integer({ min: 0, max: 2 }))
    .map(([items, min, span]) => ({ type: 'array', items, minItems: min, maxItems: min + span })),
  anyOf: fc.array(leaf, { minLength: 2, maxLength: 3 }).map((options) => ({ anyOf: options })),
  schema: tie('object') as fc.Arbitrary<Schema>,
}));

for (const family of [LLAMA, GPT2]) {
  describe(`constrained decoding property (${family.family})`, () => {
    let server: Listening;
    let model: string;
    before(async () => ({ server, model } = await openAiServer({ model: family })));
    after(() => server.close());

    test('random supported schemas x random seeds: the output always validates', async () => {
      const ajv = new Ajv({ strict: false });
      await fc.assert(
        fc.asyncProperty(schema, fc.integer({ min: 0, max: 2 ** 31 - 1 }), async (jsonSchema, seed) => {
          const res = await fetch(
            `${server.url}/v1/chat/completions`,
            post({ model, messages: [{ role: 'user', content: 'Answer in JSON.' }], response_format: { type: 'json_schema', json_schema: { name: 'out', schema: jsonSchema, strict: true } }, max_tokens: 400, temperature: 1, seed }),
          );
          const body = (await res.json()) as { choices: Array<{ message: { content: string }; finish_reason: string }> };
          assert.equal(res.status, 200, JSON.stringify(body));
          const [choice] = body.choices;
          assert.equal(choice.finish_reason, 'stop', choice.message.content);
          const validate = ajv.compile(jsonSchema);
          assert.ok(validate(JSON.parse(choice.message.content)), `${choice.message.content}: ${JSON.stringify(validate.errors)}`);
        }),
        { numRuns: RUNS, seed: SEED, endOnFailure: true },
      );
    });
  });
}
