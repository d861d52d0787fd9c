/**
 * Structured outputs and tools through the clients agents are written with, against a listening server:
 * LangChain's `bindTools` and `withStructuredOutput` and the AI SDK's `generateObject` with a zod schema,
 * on the default model (Hermes) and builder models of both families. Every output validates (ajv).
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createOpenAI } from '@ai-sdk/openai';
import { ChatOpenAI } from '@langchain/openai';
import { generateObject } from 'ai';
import { Ajv } from 'ajv';
import { z } from 'zod';
import { GPT2, LLAMA } from '../support/fixtures.ts';
import { listen, listenDefaultModel, openAiOn, type Listening } from './helpers.ts';

// Bounded values only: the builder models' random weights would fill a free string to the token limit.
const Forecast = z.object({
  city: z.enum(['Paris', 'Oslo', 'Rome']),
  days: z.number().int().min(1).max(7),
  alerts: z.array(z.boolean()).max(3),
});
const forecastSchema = z.toJSONSchema(Forecast, { target: 'draft-7' });
const validateForecast = new Ajv({ strict: false }).compile(forecastSchema);

const weatherTool = {
  type: 'function' as const,
  function: { name: 'get_weather', description: 'Weather for a city', parameters: forecastSchema },
};

const MODELS: Array<[string, () => Promise<Listening>]> = [
  ['default model', listenDefaultModel],
  ['llama builder', () => listen({ model: LLAMA })],
  ['gpt2 builder', () => listen({ model: GPT2 })],
];

for (const [label, start] of MODELS) {
  describe(`agent clients: ${label}`, () => {
    let server: Listening;
    let model: string;
    // One call per reply: with parallel calls allowed, the builder models' random weights keep adding
    // calls until the token limit, and a reply cut at the limit ends with a call cut short.
    const langchain = (seed: number) =>
      new ChatOpenAI({ model, apiKey: 'unused', configuration: { baseURL: `${server.url}/v1` }, maxRetries: 0, temperature: 1, maxTokens: 200, useResponsesApi: false, modelKwargs: { seed, parallel_tool_calls: false } });
    before(async () => ({ server, model } = openAiOn(await start())));
    after(() => server.close());

    test('LangChain bindTools with a required and a named tool: every call validates', async () => {
      for (let seed = 0; seed < 2; seed++) {
        for (const toolChoice of ['required', 'get_weather'] as const) {
          const reply = await langchain(seed).bindTools([weatherTool], { tool_choice: toolChoice, parallel_tool_calls: false }).invoke('Weather in Paris?');
          assert.ok(reply.tool_calls && reply.tool_calls.length >= 1, JSON.stringify(reply));
          for (const call of reply.tool_calls) {
            assert.equal(call.name, 'get_weather');
            assert.match(call.id ?? '', /^call_/);
            assert.ok(validateForecast(call.args), JSON.stringify(validateForecast.errors));
          }
        }
      }
    });

    test('LangChain withStructuredOutput, json_schema and function calling: every result validates', async () => {
      for (let seed = 0; seed < 2; seed++) {
        for (const method of ['jsonSchema', 'functionCalling'] as const) {
          const result = await langchain(seed).withStructuredOutput(Forecast, { method, strict: true, name: 'forecast' }).invoke('Forecast for Rome?');
          assert.ok(validateForecast(result), `${method}: ${JSON.stringify(validateForecast.errors)}`);
        }
      }
    });

    test('AI SDK generateObject with a zod schema: every seed validates', async () => {
      const openai = createOpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused' });
      for (let seed = 0; seed < 3; seed++) {
        const { object, finishReason } = await generateObject({ model: openai.chat(model), schema: Forecast, prompt: 'Forecast for Oslo?', maxOutputTokens: 200, temperature: 1, seed, maxRetries: 0 });
        assert.equal(finishReason, 'stop');
        assert.ok(validateForecast(object), JSON.stringify(validateForecast.errors));
      }
    });
  });
}
