/**
 * Function tools on the Responses API through the official openai client against a listening server:
 * function_call output items (strict arguments validate over seeds), the streamed function-call events,
 * and a chained turn that brings the call's output back with previous_response_id on the warm cache and
 * equals a stateless run of the same full input. On the default model (Hermes template, rendered
 * natively) and a builder model whose template renders no tools (the fallback rendering).
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createOpenAI } from '@ai-sdk/openai';
import { generateText, jsonSchema, stepCountIs, streamText, tool } from 'ai';
import { Ajv } from 'ajv';
import OpenAI from 'openai';
import { GPT2 } from '../support/fixtures.ts';
import { expectError, listen, listenDefaultModel, openAiClient, post, type Listening } from './helpers.ts';

type Tool = OpenAI.Responses.FunctionTool;
type Call = OpenAI.Responses.ResponseFunctionToolCall;

// Bounded values only: the builder models' random weights would fill a free string to the token limit.
const weather = {
  type: 'object',
  properties: { city: { type: 'string', enum: ['Paris', 'Oslo', 'Rome'] }, unit: { type: 'string', enum: ['celsius', 'fahrenheit'] }, days: { type: 'integer', minimum: 1, maximum: 7 } },
  required: ['city', 'unit', 'days'],
  additionalProperties: false,
};
const search = { type: 'object', properties: { query: { type: 'string', enum: ['cats', 'dogs'] }, safe: { type: 'boolean' } }, required: ['query', 'safe'], additionalProperties: false };
const TOOLS: Tool[] = [
  { type: 'function', name: 'get_weather', description: 'Weather for a city', parameters: weather, strict: true },
  { type: 'function', name: 'search', description: 'Search the web', parameters: search, strict: true },
];
const ajv = new Ajv({ strict: false });
const validators: Record<string, ReturnType<Ajv['compile']>> = { get_weather: ajv.compile(weather), search: ajv.compile(search) };

/** The output without its random ids: messages as text, calls as name and arguments. */
const shape = (r: OpenAI.Responses.Response) =>
  r.output.map((item) => (item.type === 'message' ? { text: item.content.map((c) => (c.type === 'output_text' ? c.text : '')).join('') } : item.type === 'function_call' ? { call: item.name, arguments: item.arguments } : item.type));

const callsOf = (r: OpenAI.Responses.Response): Call[] => r.output.filter((item): item is Call => item.type === 'function_call');

function assertValidCall(call: Call, name?: string): void {
  assert.match(call.id!, /^fc_/);
  assert.match(call.call_id, /^call_/);
  assert.equal(call.status, 'completed');
  if (name) assert.equal(call.name, name);
  const validate = validators[call.name];
  assert.ok(validate, `a declared tool: ${call.name}`);
  assert.ok(validate(JSON.parse(call.arguments)), JSON.stringify(validate.errors));
}

const MODELS: Array<[string, () => Promise<Listening>]> = [
  ['default model (Hermes)', listenDefaultModel],
  ['gpt2 builder (fallback tool rendering)', () => listen({ model: GPT2 })],
];

for (const [label, start] of MODELS) {
  describe(`responses tools: ${label}`, () => {
    let server: Listening;
    let client: OpenAI;
    let model: string;
    before(async () => {
      server = await start();
      client = openAiClient(server);
      model = server.runtime.serving!.model.id;
    });
    after(() => server.close());

    test("create with tool_choice 'required' and a named function: function_call items whose strict arguments validate over seeds", async () => {
      for (let seed = 0; seed < 3; seed++) {
        for (const toolChoice of ['required', { type: 'function', name: 'get_weather' }] as const) {
          // seed is a warmkv extension the client's types do not know.
          const params = { model, input: 'What is the weather in Paris?', tools: TOOLS, tool_choice: toolChoice, parallel_tool_calls: false, max_output_tokens: 200, temperature: 1, seed };
          const r = await client.responses.create(params as OpenAI.Responses.ResponseCreateParamsNonStreaming);
          assert.equal(r.status, 'completed', JSON.stringify(r.output));
          const calls = callsOf(r);
          assert.equal(calls.length, 1, 'one call without parallel_tool_calls');
          assertValidCall(calls[0], typeof toolChoice === 'object' ? 'get_weather' : undefined);
          assert.deepEqual(r.tools, TOOLS);
          assert.deepEqual(r.tool_choice, toolChoice);
          assert.equal(r.parallel_tool_calls, false);
          const stored = await client.responses.retrieve(r.id);
          assert.deepEqual(stored.output, r.output);
        }
      }
    });

    test('responses.stream: the function_call item, its arguments deltas piece by piece and done events, in order; parsed_arguments for a strict tool', async () => {
      const stream = client.responses.stream({ model, input: 'Find cats', tools: TOOLS, tool_choice: { type: 'function', name: 'search' }, parallel_tool_calls: false, max_output_tokens: 200, seed: 3 });
      const types: string[] = [];
      const sequence: number[] = [];
      let deltas = '';
      let pieces = 0;
      let done: OpenAI.Responses.ResponseFunctionCallArgumentsDoneEvent | undefined;
      let added: OpenAI.Responses.ResponseOutputItemAddedEvent | undefined;
      for await (const event of stream) {
        types.push(event.type);
        sequence.push(event.sequence_number);
        if (event.type === 'response.function_call_arguments.delta') {
          deltas += event.delta;
          pieces++;
          assert.notEqual(event.delta, '');
          assert.equal(event.output_index, 0);
        }
        if (event.type === 'response.function_call_arguments.done') done = event;
        if (event.type === 'response.output_item.added') added = event;
      }
      const final = await stream.finalResponse();
      assert.deepEqual(sequence, sequence.map((_, i) => i));
      assert.ok(pieces > 1, `the arguments in ${pieces} deltas, as the tokens came`);
      // One or more deltas in a row, in OpenAI's order around them.
      assert.deepEqual(types.filter((type, i) => type !== 'response.function_call_arguments.delta' || types[i - 1] !== type), [
        'response.created',
        'response.in_progress',
        'response.output_item.added',
        'response.function_call_arguments.delta',
        'response.function_call_arguments.done',
        'response.output_item.done',
        'response.completed',
      ]);
      assert.equal(added!.item.type, 'function_call');
      assert.equal((added!.item as Call).status, 'in_progress');
      const [call] = callsOf(final);
      assertValidCall(call, 'search');
      assert.equal(deltas, call.arguments);
      assert.equal(done!.arguments, call.arguments);
      assert.equal(done!.name, 'search');
      assert.equal(done!.item_id, call.id);
      assert.deepEqual((call as Call & { parsed_arguments: unknown }).parsed_arguments, JSON.parse(call.arguments));
    });

    test('a chained turn with function_call_output prefills only its new tokens and equals a stateless run of the full input', async () => {
      const input = 'Weather in Rome?';
      const turn1 = await client.responses.create({ model, input, tools: TOOLS, tool_choice: 'required', parallel_tool_calls: false, max_output_tokens: 200, temperature: 0 });
      const [call] = callsOf(turn1);
      assertValidCall(call);
      const result: OpenAI.Responses.ResponseInputItem = { type: 'function_call_output', call_id: call.call_id, output: '{"temperature": 18}' };
      const settings = { model, tools: TOOLS, max_output_tokens: 12, temperature: 0 } as const;
      const turn2 = await client.responses.create({ ...settings, input: [result], previous_response_id: turn1.id });
      assert.equal(turn2.previous_response_id, turn1.id);
      const cached = turn2.usage!.input_tokens_details.cached_tokens;
      if (label.startsWith('default')) {
        // The template writes the call exactly as the model did: the whole first turn is cached.
        const chain = turn1.usage!.input_tokens + turn1.usage!.output_tokens - 1;
        assert.ok(cached >= chain, `cached ${cached} of a ${chain}-token chain`);
      } else assert.ok(cached >= turn1.usage!.input_tokens - 1, `cached ${cached} of turn 1's ${turn1.usage!.input_tokens} prompt tokens`);
      const items = await client.responses.inputItems.list(turn2.id);
      assert.deepEqual(
        items.data.map((item) => item.type),
        ['function_call_output'],
      );

      const full: OpenAI.Responses.ResponseInputItem[] = [{ role: 'user', content: input }, { type: 'function_call', call_id: call.call_id, name: call.name, arguments: call.arguments }, result];
      const stateless = await client.responses.create({ ...settings, input: full, store: false });
      // The resent call continues the model's own tokens of turn 1 (found by call_id), not a re-tokenization.
      assert.equal(stateless.usage!.input_tokens, turn2.usage!.input_tokens, 'the same prompt tokens');
      if (label.startsWith('default')) assert.ok(stateless.usage!.input_tokens_details.cached_tokens >= cached, 'warm through the prefix index');
      assert.equal(stateless.status, turn2.status);
      assert.deepEqual(shape(stateless), shape(turn2), 'the same output');
    });

    test("the AI SDK's openai.responses: generateText calls the tool, and its second step sends the result back", async () => {
      const openai = createOpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused' });
      const executed: unknown[] = [];
      const tools = {
        get_weather: tool({
          description: 'Weather for a city',
          inputSchema: jsonSchema<{ city: string; unit: string; days: number }>(weather as never),
          execute: async (args) => {
            executed.push(args);
            return { temperature: 21 };
          },
        }),
      };
      const result = await generateText({
        model: openai.responses(model),
        tools,
        prompt: 'Weather in Oslo?',
        maxOutputTokens: 200,
        temperature: 0,
        maxRetries: 0,
        stopWhen: stepCountIs(2),
        // The first step must call; the second may answer or call again (the run stops after it).
        prepareStep: ({ stepNumber }) => (stepNumber === 0 ? { toolChoice: 'required' } : { toolChoice: 'auto' }),
        providerOptions: { openai: { parallelToolCalls: false } },
      });
      assert.equal(result.steps.length, 2, JSON.stringify(result.steps.map((s) => s.finishReason)));
      const [first, second] = result.steps;
      assert.equal(first.finishReason, 'tool-calls');
      assert.equal(first.toolCalls.length, 1);
      assert.equal(executed.length >= 1, true);
      assert.ok(validators.get_weather(executed[0]), JSON.stringify(validators.get_weather.errors));
      // Step 2 is a stateless request holding the whole conversation: the call by reference, then its result.
      const sent = (second.request.body as { input: Array<{ type?: string }> }).input.map((item) => item.type ?? 'message');
      assert.deepEqual(sent.slice(-2), ['item_reference', 'function_call_output']);
      assert.match(second.response.id, /^resp_/);
      // Warm: the resent first step is found through the prefix index (on the default model, its reply too).
      const cached = second.usage.cachedInputTokens ?? 0;
      const warm = (first.usage.inputTokens ?? 0) + (label.startsWith('default') ? (first.usage.outputTokens ?? 0) : 0) - 1;
      assert.ok(cached >= warm, `cached ${cached} of ${warm}`);

      // streamText reads the same call from the streamed events (output_item.added, arguments, output_item.done).
      const streamed = streamText({ model: openai.responses(model), tools, toolChoice: 'required', prompt: 'Weather in Oslo?', maxOutputTokens: 200, temperature: 0, maxRetries: 0, providerOptions: { openai: { parallelToolCalls: false } } });
      const streamedCalls = await streamed.toolCalls;
      assert.equal(streamedCalls.length, 1);
      assert.deepEqual(streamedCalls[0].input, first.toolCalls[0].input, 'the same call as generateText (greedy)');
    });
  });
}

describe('responses tools: bad input', () => {
  let server: Listening;
  let model: string;
  before(async () => {
    server = await listen({ model: GPT2 });
    model = server.runtime.serving!.model.id;
  });
  after(() => server.close());
  const create = (body: Record<string, unknown>) => fetch(`${server.url}/v1/responses`, post({ model, max_output_tokens: 4, ...body }));

  test('built-in tools, other tool_choice types, unknown call ids and references: errors naming the field', async () => {
    const e1 = await expectError(await create({ input: 'hi', tools: [{ type: 'web_search' }] }), 400, 'unsupported_parameter', 'tools[0].type');
    assert.match(e1.message, /web_search/);
    await expectError(await create({ input: 'hi', tools: TOOLS, tool_choice: { type: 'web_search_preview' } }), 400, 'unsupported_parameter', 'tool_choice');
    await expectError(await create({ input: 'hi', tools: TOOLS, tool_choice: { type: 'function', name: 'nope' } }), 400, 'invalid_value', 'tool_choice');
    await expectError(await create({ input: 'hi', tool_choice: 'required' }), 400, 'invalid_value', 'tool_choice');
    await expectError(await create({ input: 'hi', tools: [{ type: 'function', name: 'bad name' }] }), 400, 'invalid_value', 'tools[0].name');
    const badSchema = [{ type: 'function', name: 'f', parameters: { type: 'object', properties: { e: { type: 'string', format: 'email' } } } }];
    await expectError(await create({ input: 'hi', tools: badSchema, tool_choice: 'required' }), 400, 'invalid_value', 'tools[0].parameters');
    await expectError(await create({ input: 'hi', tools: TOOLS, tool_choice: 'required', text: { format: { type: 'json_object' } } }), 400, 'unsupported_parameter', 'text.format');
    const orphan = [{ role: 'user', content: 'hi' }, { type: 'function_call_output', call_id: 'call_x', output: '1' }];
    await expectError(await create({ input: orphan }), 400, 'invalid_value', 'input[1].call_id');
    await expectError(await create({ input: [{ type: 'item_reference', id: 'fc_unknown' }] }), 404, 'not_found', 'input[0].id');
    await expectError(await create({ input: [{ type: 'computer_call_output', call_id: 'c' }] }), 400, 'unsupported_parameter', 'input[0].type');
    assert.equal((await fetch(`${server.url}/v1/responses/none`)).status, 404);
  });

  test('a call cut by max_output_tokens: an incomplete response whose call keeps its arguments as written; it goes back as history', async () => {
    const request = { input: 'Find dogs', tools: TOOLS, tool_choice: { type: 'function', name: 'search' }, parallel_tool_calls: false, seed: 1 };
    const full = (await (await create({ ...request, max_output_tokens: 200 })).json()) as OpenAI.Responses.Response;
    const [whole] = callsOf(full);
    assertValidCall(whole, 'search');
    // Fewer tokens, one at a time, until the call is cut inside its arguments (the same seed writes the same tokens).
    let cut: OpenAI.Responses.Response | undefined;
    for (let tokens = full.usage!.output_tokens - 1; tokens > 0 && !cut; tokens--) {
      const r = (await (await create({ ...request, max_output_tokens: tokens })).json()) as OpenAI.Responses.Response;
      const [call] = callsOf(r);
      if (call && call.arguments !== '' && !call.arguments.endsWith('}')) cut = r;
    }
    assert.ok(cut, 'a reply cut inside its arguments');
    assert.equal(cut.status, 'incomplete');
    assert.deepEqual(cut.incomplete_details, { reason: 'max_output_tokens' });
    const [call] = callsOf(cut);
    assert.equal(call.name, 'search');
    assert.equal(call.status, 'incomplete', 'the item the limit cut is incomplete, as OpenAI marks it');
    assert.equal(whole.status, 'completed');
    assert.ok(whole.arguments.startsWith(call.arguments), `${call.arguments} begins ${whole.arguments}`);
    assert.throws(() => JSON.parse(call.arguments));
    const stored = (await (await fetch(`${server.url}/v1/responses/${cut.id}`)).json()) as OpenAI.Responses.Response;
    assert.deepEqual(stored.output, cut.output, 'stored as answered');

    const result = { type: 'function_call_output', call_id: call.call_id, output: 'none found' };
    const chained = await create({ input: [result], previous_response_id: cut.id, tools: TOOLS, store: false });
    assert.equal(chained.status, 200, await chained.clone().text());
    // Resent by value (OpenAI takes any string as arguments), the template gets it as written.
    const byValue = await create({ input: [{ role: 'user', content: 'Find dogs' }, { type: 'function_call', call_id: call.call_id, name: call.name, arguments: call.arguments }, result], tools: TOOLS, store: false });
    assert.equal(byValue.status, 200, await byValue.clone().text());
  });

  test("a reply's items resent with its call before its message (the order it streamed in) render the same turn as message first", async () => {
    const user = { role: 'user', content: 'Find dogs' };
    const call = { type: 'function_call', call_id: 'call_1', name: 'search', arguments: '{"query": "dogs", "safe": true}' };
    const text = { role: 'assistant', content: 'Searching.' };
    const result = { type: 'function_call_output', call_id: 'call_1', output: 'none found' };
    const tokens = async (input: unknown[]) => {
      const res = await create({ input, tools: TOOLS, store: false });
      assert.equal(res.status, 200, await res.clone().text());
      return ((await res.json()) as OpenAI.Responses.Response).usage!.input_tokens;
    };
    const messageFirst = await tokens([user, text, call, result]);
    assert.equal(await tokens([user, call, text, result]), messageFirst);
    assert.notEqual(await tokens([user, call, result, text]), messageFirst, 'a message after the result is another turn');
  });

  test('item_reference to a stored call stands for the call; a result for it continues the conversation', async () => {
    const res = await create({ input: 'Find dogs', tools: TOOLS, tool_choice: { type: 'function', name: 'search' }, parallel_tool_calls: false, max_output_tokens: 200, seed: 1 });
    const first = (await res.json()) as OpenAI.Responses.Response;
    const [call] = callsOf(first);
    assertValidCall(call, 'search');
    const input = [{ role: 'user', content: 'Find dogs' }, { type: 'item_reference', id: call.id }, { type: 'function_call_output', call_id: call.call_id, output: 'none found' }];
    const next = await create({ input, tools: TOOLS, store: false });
    assert.equal(next.status, 200, await next.clone().text());
    const byValue = await create({ input: [input[0], { type: 'function_call', call_id: call.call_id, name: call.name, arguments: call.arguments }, input[2]], tools: TOOLS, store: false });
    assert.equal(((await next.json()) as OpenAI.Responses.Response).usage!.input_tokens, ((await byValue.json()) as OpenAI.Responses.Response).usage!.input_tokens);
  });
});
