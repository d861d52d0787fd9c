/**
 * Tools in chat completions through a listening server: the openai client and the AI SDK against the
 * default model (Hermes template) and builder models (a Llama 3.x JSON template; ChatML without tools,
 * which takes the fallback rendering). Every call's arguments validate against the tool's schema; a
 * stream sends them piece by piece and adds up to the non-streaming answer, in raw SSE and in the clients.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createOpenAI } from '@ai-sdk/openai';
import { generateText, jsonSchema, streamText, tool } from 'ai';
import { Ajv } from 'ajv';
import OpenAI from 'openai';
import { GPT2, LLAMA } from '../support/fixtures.ts';
import { chunksOf, expectError, listen, listenDefaultModel, openAiOn, post, type Listening } from './helpers.ts';

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

interface StreamedChat {
  content: string;
  calls: Array<{ id: string; name: string; args: string }>;
  /** Every non-empty arguments delta, with how many tokens (counted by their logprobs) had come by then. */
  argumentDeltas: Array<{ index: number; atToken: number }>;
  finish: string | null;
  tokens: number;
  usage: OpenAI.CompletionUsage;
}

/** A streamed chat completion (with logprobs) read as a client assembles it, checking each delta's shape. */
async function streamedChat(server: Listening, body: Record<string, unknown>): Promise<StreamedChat> {
  const res = await fetch(`${server.url}/v1/chat/completions`, post({ ...body, stream: true, stream_options: { include_usage: true } }));
  assert.equal(res.status, 200);
  const out: StreamedChat = { content: '', calls: [], argumentDeltas: [], finish: null, tokens: 0, usage: null as never };
  for (const chunk of chunksOf(await res.text()).chunks) {
    if (chunk.usage) out.usage = chunk.usage;
    for (const choice of chunk.choices) {
      out.tokens += choice.logprobs?.content?.length ?? 0;
      out.content += choice.delta.content ?? '';
      if (choice.finish_reason) out.finish = choice.finish_reason;
      for (const delta of choice.delta.tool_calls ?? []) {
        if (delta.id !== undefined) {
          assert.equal(delta.index, out.calls.length, 'a new call takes the next index');
          assert.match(delta.id, /^call_[0-9a-f]{24}$/);
          assert.equal(delta.type, 'function');
          assert.equal(delta.function.arguments, '', 'a call starts with its name and empty arguments');
          out.calls.push({ id: delta.id, name: delta.function.name, args: '' });
        } else {
          assert.deepEqual(Object.keys(delta).sort(), ['function', 'index']);
          assert.notEqual(delta.function.arguments, '');
          out.calls[delta.index].args += delta.function.arguments;
          out.argumentDeltas.push({ index: delta.index, atToken: out.tokens });
        }
      }
    }
  }
  return out;
}

/** A chat answer without ids: content, calls as name and arguments, finish reason. */
const answerShape = (completion: OpenAI.ChatCompletion) => {
  const { message, finish_reason } = completion.choices[0];
  const calls = (message.tool_calls ?? []) as OpenAI.ChatCompletionMessageFunctionToolCall[];
  return { content: message.content || null, calls: calls.map((c) => [c.function.name, c.function.arguments]), finish: finish_reason };
};
const assembledShape = (s: StreamedChat) => ({ content: s.content || null, calls: s.calls.map((c) => [c.name, c.args]), finish: s.finish });

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

    test('streaming sends tool_calls deltas as OpenAI does, piece by piece as the tokens come, adding up to the non-streaming answer', async () => {
      const body = { model, messages: [{ role: 'user', content: 'Find cats' }], tools: TOOLS, tool_choice: { type: 'function', function: { name: 'search' } }, max_tokens: 200, seed: 3, logprobs: true };
      const streamed = await streamedChat(server, body);
      assert.equal(streamed.calls[0].name, 'search');
      assert.ok(validators.search(JSON.parse(streamed.calls[0].args)));
      assert.equal(streamed.finish, 'tool_calls');
      // Each chunk carries the logprobs of the tokens whose text it brings: every token's, once.
      assert.equal(streamed.tokens, streamed.usage.completion_tokens);
      const argumentDeltas = streamed.argumentDeltas.filter((d) => d.index === 0);
      assert.ok(argumentDeltas.length > 1, `the arguments in ${argumentDeltas.length} deltas`);
      const [first, last] = [argumentDeltas[0].atToken, argumentDeltas.at(-1)!.atToken];
      assert.ok(first < last && last < streamed.usage.completion_tokens, `arguments from token ${first} to ${last} of ${streamed.usage.completion_tokens}, not all at the end`);

      const whole = (await (await fetch(`${server.url}/v1/chat/completions`, post(body))).json()) as OpenAI.ChatCompletion;
      assert.deepEqual(assembledShape(streamed), answerShape(whole), 'the stream adds up to the non-streaming answer');

      // The openai client's stream helper assembles the same calls from the pieces.
      const helper = client.chat.completions.stream({ ...(body as OpenAI.ChatCompletionCreateParamsNonStreaming), stream: true });
      let pieces = 0;
      helper.on('tool_calls.function.arguments.delta', (event) => {
        if (event.arguments_delta !== '') pieces++;
      });
      const final = await helper.finalChatCompletion();
      assert.ok(pieces > 1, `${pieces} argument pieces`);
      assert.deepEqual(answerShape(final as OpenAI.ChatCompletion), answerShape(whole));
    });

    test('a reply cut by max_tokens inside a call: finish_reason length, the call as written in stream and body alike, and it can go back as history', async () => {
      const request = { model, messages: [{ role: 'user', content: 'Find cats' }], tools: TOOLS, tool_choice: { type: 'function', function: { name: 'search' } }, seed: 3, logprobs: true };
      const full = await streamedChat(server, { ...request, max_tokens: 200 });
      // One token past the first piece of the arguments: the call has started, its JSON is not whole.
      const maxTokens = full.argumentDeltas[0].atToken + 1;
      const cut = await streamedChat(server, { ...request, max_tokens: maxTokens });
      const whole = (await (await fetch(`${server.url}/v1/chat/completions`, post({ ...request, max_tokens: maxTokens }))).json()) as OpenAI.ChatCompletion;
      assert.equal(whole.choices[0].finish_reason, 'length');
      assert.deepEqual(assembledShape(cut), answerShape(whole));
      const [call] = whole.choices[0].message.tool_calls as OpenAI.ChatCompletionMessageFunctionToolCall[];
      assert.equal(call.function.name, 'search');
      assert.ok(full.calls[0].args.startsWith(call.function.arguments) && call.function.arguments !== '', call.function.arguments);
      assert.throws(() => JSON.parse(call.function.arguments), 'a cut call: not JSON yet');

      // OpenAI takes any string as arguments: the cut call and its result are the next turn's history.
      const messages = [...request.messages, whole.choices[0].message, { role: 'tool', tool_call_id: call.id, content: 'no results' }];
      const next = await fetch(`${server.url}/v1/chat/completions`, post({ model, messages, tools: TOOLS, max_tokens: 8 }));
      assert.equal(next.status, 200, await next.clone().text());
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

    test("AI SDK streamText: the call it assembles from the streamed pieces equals generateText's", async () => {
      const openai = createOpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused' });
      const tools = { get_weather: tool({ description: 'Weather for a city', inputSchema: jsonSchema<{ city: string; unit: string; days: number }>(weather as never) }) };
      const settings = { model: openai.chat(model), tools, toolChoice: 'required' as const, prompt: 'Weather in Oslo?', maxOutputTokens: 200, seed: 5, maxRetries: 0, providerOptions: { openai: { parallelToolCalls: false } } };
      const generated = await generateText(settings);
      const streamed = streamText(settings);
      let pieces = 0;
      for await (const part of streamed.fullStream) if (part.type === 'tool-input-delta') pieces++;
      assert.ok(pieces > 1, `${pieces} input pieces`);
      assert.equal(await streamed.finishReason, 'tool-calls');
      const calls = (await streamed.toolCalls).map((c) => [c.toolName, c.input]);
      assert.deepEqual(calls, generated.toolCalls.map((c) => [c.toolName, c.input]));
      assert.ok(validators.get_weather(calls[0][1]), JSON.stringify(validators.get_weather.errors));
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
