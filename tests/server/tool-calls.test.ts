/**
 * Tools in chat completions through a listening server: the openai client and the AI SDK against the
 * default model (Hermes template) and builder models (a Llama 3.x JSON template; ChatML without tools,
 * which takes the fallback rendering). Every call's arguments validate against the tool's schema.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createOpenAI } from '@ai-sdk/openai';
import { generateText, jsonSchema, tool } from 'ai';
import { Ajv } from 'ajv';
import OpenAI from 'openai';
import { GPT2, LLAMA } from '../support/fixtures.ts';
import { expectError, listen, listenDefaultModel, openAiOn, parseSse, post, type Listening } from './helpers.ts';

const LLAMA3_TEMPLATE =
  "{%- if tools %}{{- 'tools: ' + (tools | tojson) + '\\n' }}{%- endif %}{%- for message in messages %}{%- if message.role == 'tool' %}{{- '<|ipython|>' + message.content + '\\n' }}" +
  "{%- elif message.tool_calls %}{{- 'assistant:' }}{%- for call in message.tool_calls %}{{- '{\"name\": \"' + call.function.name + '\", \"parameters\": ' + (call.function.arguments | tojson) + '}' }}{%- endfor %}{{- '\\n' }}" +
  "{%- else %}{{- message.role + ': ' + message.content + '\\n' }}{%- endif %}{%- endfor %}" +
  "{%- if add_generation_prompt %}{{- 'assistant:' }}{%- endif %}";

const weather = {
  type: 'object',
  properties: { city: { type: 'string', enum: ['Paris', 'Oslo', 'Rome'] }, unit: { type: 'string', enum: ['celsius', 'fahrenheit'] }, days: { type: 'integer', minimum: 1, maximum: 7 } },
  required: ['city', 'unit', 'days'],
  additionalProperties: false,
};
// Bounded values only: the builder models' random weights would fill a free string to the token limit.
const search = { type: 'object', properties: { query: { type: 'string', enum: ['cats', 'dogs'] }, safe: { type: 'boolean' } }, required: ['query', 'safe'], additionalProperties: false };
const TOOLS = [
  { type: 'function' as const, function: { name: 'get_weather', description: 'Weather for a city', parameters: weather } },
  { type: 'function' as const, function: { name: 'search', description: 'Search the web', parameters: search } },
];
const ajv = new Ajv({ strict: false });
const validators: Record<string, ReturnType<Ajv['compile']>> = { get_weather: ajv.compile(weather), search: ajv.compile(search) };

const MODELS: Array<[string, () => Promise<Listening>]> = [
  ['default model (Hermes)', listenDefaultModel],
  ['llama builder (Llama 3 JSON template)', () => listen({ model: { ...LLAMA, chatTemplate: LLAMA3_TEMPLATE } })],
  ['gpt2 builder (ChatML, fallback tool rendering)', () => listen({ model: GPT2 })],
];

for (const [label, start] of MODELS) {
  describe(`tool calls: ${label}`, () => {
    let server: Listening;
    let client: OpenAI;
    let model: string;
    before(async () => ({ server, client, model } = openAiOn(await start())));
    after(() => server.close());

    test("tool_choice 'required' and a named tool: valid calls over several seeds", async () => {
      for (let seed = 0; seed < 3; seed++) {
        for (const toolChoice of ['required', { type: 'function', function: { name: 'get_weather' } }] as const) {
          const completion = await client.chat.completions.create({
            model,
            messages: [{ role: 'user', content: 'What is the weather in Paris?' }],
            tools: TOOLS,
            tool_choice: toolChoice,
            max_completion_tokens: 200,
            temperature: 1,
            seed,
          });
          const choice = completion.choices[0];
          assert.equal(choice.finish_reason, 'tool_calls', JSON.stringify(choice));
          const calls = choice.message.tool_calls!;
          assert.ok(calls.length >= 1);
          for (const call of calls) {
            assert.match(call.id, /^call_/);
            assert.equal(call.type, 'function');
            if (call.type !== 'function') continue;
            if (typeof toolChoice === 'object') assert.equal(call.function.name, 'get_weather');
            const validate = validators[call.function.name];
            assert.ok(validate(JSON.parse(call.function.arguments)), JSON.stringify(validate.errors));
          }
        }
      }
    });

    test('streaming sends tool_calls deltas as OpenAI does, then finish_reason tool_calls', async () => {
      const res = await fetch(
        `${server.url}/v1/chat/completions`,
        post({ model, messages: [{ role: 'user', content: 'Find cats' }], tools: TOOLS, tool_choice: { type: 'function', function: { name: 'search' } }, stream: true, max_tokens: 200, seed: 3 }),
      );
      assert.equal(res.status, 200);
      const chunks = parseSse(await res.text()).events.filter((e) => e.data !== '[DONE]').map((e) => JSON.parse(e.data));
      const deltas = chunks.flatMap((c) => c.choices.map((ch: { delta: { tool_calls?: unknown[] } }) => ch.delta.tool_calls ?? [])).flat() as Array<{ index: number; id?: string; type?: string; function: { name?: string; arguments: string } }>;
      assert.equal(deltas[0].index, 0);
      assert.match(deltas[0].id!, /^call_/);
      assert.equal(deltas[0].type, 'function');
      assert.equal(deltas[0].function.name, 'search');
      const args = deltas.filter((d) => d.index === 0).map((d) => d.function.arguments).join('');
      assert.ok(validators.search(JSON.parse(args)));
      assert.equal(chunks.at(-1).choices[0].finish_reason, 'tool_calls');
    });

    test('AI SDK generateText: a required tool, then its result comes back as the next turn on a warm session', async () => {
      const openai = createOpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused' });
      let executed = 0;
      const tools = {
        get_weather: tool({
          description: 'Weather for a city',
          inputSchema: jsonSchema<{ city: string; unit: string; days: number }>(weather as never),
          execute: async (input) => {
            executed++;
            assert.ok(validators.get_weather(input));
            return { temperature: 21 };
          },
        }),
      };
      const first = await generateText({ model: openai.chat(model), tools, toolChoice: 'required', prompt: 'Weather in Oslo?', maxOutputTokens: 200, seed: 1 });
      assert.equal(first.toolCalls.length >= 1, true);
      assert.equal(executed, first.toolCalls.length);
      const named = await generateText({ model: openai.chat(model), tools, toolChoice: { type: 'tool', toolName: 'get_weather' }, prompt: 'Weather?', maxOutputTokens: 200, seed: 2 });
      assert.equal(named.toolCalls[0].toolName, 'get_weather');

      // The tool result as the next turn of a session: the first turn's prompt and reply are cached.
      const session = 'tools-loop';
      const messages: OpenAI.ChatCompletionMessageParam[] = [{ role: 'user', content: 'Weather in Rome?' }];
      const turn1 = await client.chat.completions.create({ model, messages, tools: TOOLS, tool_choice: 'required', parallel_tool_calls: false, max_tokens: 200, seed: 4, session_id: session } as never);
      const call = turn1.choices[0].message.tool_calls![0];
      messages.push(turn1.choices[0].message, { role: 'tool', tool_call_id: call.id, content: '{"temperature": 18}' });
      const turn2 = await client.chat.completions.create({ model, messages, tools: TOOLS, max_tokens: 20, seed: 4, session_id: session } as never);
      const cached = (turn2.usage as { prompt_tokens_details: { cached_tokens: number } }).prompt_tokens_details.cached_tokens;
      assert.ok(cached >= turn1.usage!.prompt_tokens, `cached ${cached} of the first turn's ${turn1.usage!.prompt_tokens} prompt tokens`);
    });

    test('bad input: unsupported schema keyword, a choice naming no tool, a tool message answering no call', async () => {
      const messages = [{ role: 'user', content: 'hi' }];
      const badSchema = [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: { e: { type: 'string', format: 'email' } } } } }];
      const e1 = await expectError(await fetch(`${server.url}/v1/chat/completions`, post({ model, messages, tools: badSchema, tool_choice: 'required' })), 400, 'invalid_value', 'tools[0].function.parameters');
      assert.match(JSON.stringify(e1), /'format'/);
      await expectError(await fetch(`${server.url}/v1/chat/completions`, post({ model, messages, tools: TOOLS, tool_choice: { type: 'function', function: { name: 'nope' } } })), 400, 'invalid_value', 'tool_choice');
      const orphan = [...messages, { role: 'tool', tool_call_id: 'call_x', content: '1' }];
      await expectError(await fetch(`${server.url}/v1/chat/completions`, post({ model, messages: orphan, tools: TOOLS })), 400, 'invalid_value', 'messages[1].tool_call_id');
    });
  });
}
