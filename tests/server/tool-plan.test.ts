/**
 * What the grammar enforces per tool_choice (src/server/tool-calls.ts, responses-tools.ts): under `auto`,
 * strict tools (chat: `strict: true`; Responses: strict unless `strict: false`, OpenAI's default) get
 * triggered tags, so a call the model starts must match; without a strict tool `auto` stays free.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { responseToolsOf } from '../../src/server/responses-tools.ts';
import { toolPlanOf } from '../../src/server/tool-calls.ts';

const schema = { type: 'object', properties: { city: { type: 'string' } }, required: ['city'], additionalProperties: false };
const chatTool = (name: string, strict?: boolean) => ({ type: 'function', function: { name, parameters: schema, ...(strict === undefined ? {} : { strict }) } });

test('chat completions: auto is free without strict tools; with one, calls are triggered tags, the strict one held to its schema', () => {
  assert.equal(toolPlanOf([chatTool('a'), chatTool('b')], 'auto', null, 'hermes')?.grammar, undefined);
  const plan = toolPlanOf([chatTool('a', true), chatTool('b')], 'auto', null, 'hermes')!;
  assert.equal(plan.grammar?.kind, 'tagged_json');
  if (plan.grammar?.kind !== 'tagged_json') return;
  assert.deepEqual(plan.grammar.triggers, ['<tool_call>']);
  assert.deepEqual(plan.grammar.tags.map((t) => t.schema), [schema, { type: 'object' }], 'a non-strict tool may still be called, with any object');
  assert.equal(plan.grammar.separator, '\n');
  const llama = toolPlanOf([chatTool('a', true)], 'auto', false, 'llama3_json')!;
  assert.ok(llama.grammar?.kind === 'tagged_json' && llama.grammar.triggers?.[0] === '{"name": ' && llama.grammar.separator === null);
  // required and a named tool are untriggered: a call is the whole output.
  const required = toolPlanOf([chatTool('a', true)], 'required', null, 'hermes')!;
  assert.ok(required.grammar?.kind === 'tagged_json' && required.grammar.triggers === undefined);
});

test('Responses: function tools are strict unless they say otherwise', () => {
  const tool = (strict?: boolean) => ({ type: 'function', name: 'a', parameters: schema, ...(strict === undefined ? {} : { strict }) });
  const byDefault = responseToolsOf({ tools: [tool()], tool_choice: 'auto' }, 'hermes');
  assert.ok(byDefault.plan?.grammar?.kind === 'tagged_json' && byDefault.plan.grammar.triggers !== undefined);
  assert.equal(responseToolsOf({ tools: [tool(false)], tool_choice: 'auto' }, 'hermes').plan?.grammar, undefined);
});
