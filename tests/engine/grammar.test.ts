/** Constrained decoding in the engine: random-weight builder models still produce valid JSON. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Ajv } from 'ajv';
import fc from 'fast-check';
import { checkSchema, canonicalJson } from '../../src/engine/grammar-schema.ts';
import { GrammarService, type GrammarSpec } from '../../src/engine/grammar.ts';
import { collect, GPT2, LLAMA, makeEngine, request, sampling, testModel } from '../support/fixtures.ts';

const ajv = new Ajv({ strict: false });

const PERSON = {
  type: 'object',
  properties: {
    name: { type: 'string', enum: ['ann', 'bob', 'cy'] },
    note: { anyOf: [{ type: 'null' }, { type: 'number' }] },
    age: { type: 'integer', minimum: 0, maximum: 120 },
    tags: { type: 'array', items: { type: 'string', enum: ['a', 'b', 'c'] }, maxItems: 3 },
    alive: { type: 'boolean' },
    pet: { anyOf: [{ type: 'null' }, { $ref: '#/$defs/pet' }] },
  },
  required: ['name', 'note', 'age', 'tags', 'alive', 'pet'],
  additionalProperties: false,
  $defs: { pet: { type: 'object', properties: { kind: { const: 'cat' } }, required: ['kind'], additionalProperties: false } },
};

const PROMPT = [5, 17, 42, 9, 88, 3, 61];

for (const family of [LLAMA, GPT2]) {
  describe(`constrained decoding (${family.family})`, async () => {
    const fixture = await makeEngine({ model: family });
    const { engine } = fixture;

    test('a JSON schema: every seed, greedy and sampled, gives output that validates; EOS ends it', async () => {
      const validate = ajv.compile(PERSON);
      for (let seed = 0; seed < 6; seed++) {
        const params = seed === 0 ? sampling({}) : sampling({ temperature: 1.2, topP: 0.95 });
        const out = await collect(engine.submit(request(PROMPT, { seed, sampling: params, maxTokens: 200, ignoreEos: false, grammar: { kind: 'json_schema', schema: PERSON } })));
        assert.equal(out.end.finishReason, 'stop', out.text);
        let value;
        try { value = JSON.parse(out.text); } catch { assert.fail(JSON.stringify(out.text)); }
        assert.ok(validate(value), `${out.text}: ${JSON.stringify(validate.errors)}`);
      }
      const counters = engine.grammarCounters()!;
      assert.equal(counters.compiles, 1);
      assert.equal(counters.cacheMisses, 1);
      assert.equal(counters.cacheHits, 5);
    });

    test('json_object always parses to an object, even with ignore_eos', async () => {
      for (let seed = 0; seed < 4; seed++) {
        const out = await collect(engine.submit(request(PROMPT, { seed, sampling: sampling({ temperature: 0.8 }), maxTokens: 400, ignoreEos: true, grammar: { kind: 'json_object' } })));
        if (out.end.finishReason === 'length') continue; // an unbounded object may run out of tokens; it must still be a prefix
        assert.equal(out.end.finishReason, 'stop');
        const value = JSON.parse(out.text);
        assert.equal(typeof value, 'object');
        assert.ok(value !== null && !Array.isArray(value));
      }
    });

    test('a turn after a constrained turn reuses the session cache as usual and is unconstrained', async () => {
      const first = await collect(engine.submit(request(PROMPT, { sessionId: `s-${family.family}`, maxTokens: 60, ignoreEos: false, grammar: { kind: 'json_schema', schema: PERSON } })));
      const transcript = [...PROMPT, ...first.tokens];
      const second = await collect(engine.submit(request([...transcript, 7, 8], { sessionId: `s-${family.family}`, maxTokens: 8 })));
      assert.equal(second.usage.cachedTokens, transcript.length - 1);
      const oneShot = await collect(engine.submit(request([...transcript, 7, 8], { maxTokens: 8 })));
      assert.deepEqual(second.tokens, oneShot.tokens);
    });

    test('unsupported keywords and bad references are refused, naming the keyword', async () => {
      const cases: Array<[Record<string, unknown>, RegExp]> = [
        [{ type: 'string', format: 'email' }, /'format'/],
        [{ type: 'object', patternProperties: { x: {} } }, /'patternProperties'/],
        [{ oneOf: [{ type: 'string' }] }, /'oneOf'/],
        [{ not: { type: 'string' } }, /'not'/],
        [{ type: 'string', pattern: '^a$' }, /'pattern'/],
        [{ type: 'string', maxLength: 3 }, /'maxLength'/],
        [{ $ref: '#/$defs/missing' }, /'\$ref'/],
        [{ type: 'strung' }, /'type'/],
      ];
      for (const [schema, message] of cases) {
        const result = await engine.submit(request(PROMPT, { grammar: { kind: 'json_schema', schema } }));
        assert.equal(result.ok, false);
        if (!result.ok) {
          assert.equal(result.error.kind, 'invalid_request');
          assert.equal(result.error.param, 'response_format');
          assert.match(result.error.message, message);
        }
      }
    });
  });
}

/** Random schemas from the supported subset. */
const leaf = fc.oneof(
  fc.constant({ type: 'boolean' }),
  fc.constant({ type: 'null' }),
  fc.integer({ min: -50, max: 50 }).chain((lo) => fc.integer({ min: lo, max: lo + 100 }).map((hi) => ({ type: 'integer', minimum: lo, maximum: hi }))),
  fc.constant({ type: 'string' }),
  fc.uniqueArray(fc.oneof(fc.string({ maxLength: 4 }), fc.integer()), { minLength: 1, maxLength: 4 }).map((values) => ({ enum: values })),
);
const schemaArb = fc.letrec<{ node: Record<string, unknown> }>((tie) => ({
  node: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    leaf,
    fc.record({ items: tie('node'), maxItems: fc.integer({ min: 0, max: 3 }) }).map((r) => ({ type: 'array', ...r })),
    fc.uniqueArray(fc.stringMatching(/^[a-z]{1,5}$/), { minLength: 1, maxLength: 3 }).chain((names) =>
      fc.tuple(...names.map(() => tie('node'))).map((children) => ({
        type: 'object',
        properties: Object.fromEntries(names.map((n, i) => [n, children[i]])),
        required: names,
        additionalProperties: false,
      })),
    ),
    fc.tuple(tie('node'), tie('node')).map(([a, b]) => ({ anyOf: [a, b] })),
  ),
})).node;

test('property: for random supported schemas and seeds, the output validates', async () => {
  const { engine } = await makeEngine({ model: LLAMA });
  await fc.assert(
    fc.asyncProperty(schemaArb, fc.integer({ min: 0, max: 2 ** 30 }), async (schema, seed) => {
      checkSchema(schema);
      const grammar: GrammarSpec = { kind: 'json_schema', schema };
      const out = await collect(engine.submit(request(PROMPT, { seed, sampling: sampling({ temperature: 1 }), maxTokens: 300, ignoreEos: false, grammar })));
      fc.pre(out.end.finishReason === 'stop');
      const validate = ajv.compile(schema);
      assert.ok(validate(JSON.parse(out.text)), `${canonicalJson(schema)} -> ${out.text}: ${JSON.stringify(validate.errors)}`);
    }),
    { numRuns: 25, seed: 18 },
  );
});

test('canonical JSON sorts keywords but keeps the order of properties', () => {
  assert.equal(canonicalJson({ type: 'object', properties: { b: { type: 'string' }, a: {} } }), '{"properties":{"b":{"type":"string"},"a":{}},"type":"object"}');
  assert.equal(canonicalJson({ required: ['x'], type: 'object' }), canonicalJson({ type: 'object', required: ['x'] }));
});

test('triggered tool calls (tool_choice auto, strict): free text is free, a started call must match its schema', async () => {
  const model = await testModel(LLAMA);
  const tokenizer = model.tokenizer;
  const service = new GrammarService(tokenizer.encodedVocabulary(), model.vocabSize, model.folder.eosTokenIds);
  const schema = { type: 'object', properties: { city: { type: 'string', enum: ['Paris', 'Oslo'] } }, required: ['city'], additionalProperties: false };
  const spec: GrammarSpec = {
    kind: 'tagged_json',
    tags: [{ begin: '<tool_call>\n{"name": "get_weather", "arguments": ', schema, end: '}\n</tool_call>', param: 'tools[0]' }],
    separator: '\n',
    triggers: ['<tool_call>'],
  };
  /** How many of `text`'s tokens the grammar accepts, in order, before the first it refuses. */
  const accepted = async (text: string) => {
    const made = await service.constraint(spec);
    if (!made.ok) assert.fail(made.error.message);
    const ids = tokenizer.encode(text, false);
    let n = 0;
    for (const id of ids) {
      if (!made.constraint.accept(id)) break;
      n++;
    }
    made.constraint.dispose();
    return { n, of: ids.length };
  };
  const free = await accepted('the king walked towards the castle, and then');
  assert.equal(free.n, free.of, 'text without a call is not constrained');
  const valid = await accepted('Let me look. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>');
  assert.equal(valid.n, valid.of, 'a call that matches the schema');
  const unknownCity = await accepted('Let me look. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>');
  assert.ok(unknownCity.n < unknownCity.of, 'a value outside the enum is refused');
  const otherTool = await accepted('<tool_call>\n{"name": "search", "arguments": {}}');
  assert.ok(otherTool.n < otherTool.of, 'an undeclared tool name is refused');
});
