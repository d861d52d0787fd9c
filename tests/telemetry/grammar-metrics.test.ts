/** Constrained decoding in /metrics on a listening server: compile-time histogram and grammar cache hits/misses. */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { openAiServer, post, type Listening } from '../server/helpers.ts';

let server: Listening;
let model: string;
before(async () => ({ server, model } = await openAiServer()));
after(() => server.close());

async function scrape(): Promise<(name: string) => number | undefined> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  return (name) => {
    const line = text.split('\n').find((l) => l.startsWith(`${name}{gen_ai_request_model="${model}"} `));
    return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
  };
}

const schemaA = { type: 'object', properties: { ok: { type: 'boolean' } }, required: ['ok'], additionalProperties: false };
const schemaB = { type: 'object', properties: { n: { type: 'integer', minimum: 0, maximum: 9 } }, required: ['n'], additionalProperties: false };
const tools = [{ type: 'function', function: { name: 'pick', parameters: schemaB } }];

async function chat(fields: Record<string, unknown>): Promise<number> {
  const res = await fetch(`${server.url}/v1/chat/completions`, post({ model, messages: [{ role: 'user', content: 'go' }], max_tokens: 40, seed: 1, ...fields }));
  await res.arrayBuffer();
  return res.status;
}
const withSchema = (schema: object) => ({ response_format: { type: 'json_schema', json_schema: { name: 's', schema, strict: true } } });

test('each compile is one histogram sample; a repeated schema is a cache hit and compiles nothing', async () => {
  const start = await scrape();
  assert.equal(start('warmkv_grammar_compile_seconds_count'), undefined, 'no grammar compiled before the first constrained request');

  assert.equal(await chat(withSchema(schemaA)), 200);
  assert.equal(await chat(withSchema(schemaA)), 200);
  assert.equal(await chat(withSchema(schemaB)), 200);
  assert.equal(await chat({ tools, tool_choice: 'required' }), 200);
  const first = await scrape();
  assert.equal(first('warmkv_grammar_compile_seconds_count'), 3);
  assert.ok(first('warmkv_grammar_compile_seconds_sum')! > 0);
  assert.equal(first('warmkv_grammar_cache_misses_total'), 3);
  assert.equal(first('warmkv_grammar_cache_hits_total'), 1);

  // Keyword order does not matter (canonical keys); an unsupported schema is refused before the cache.
  assert.equal(await chat(withSchema({ additionalProperties: false, required: ['ok'], properties: { ok: { type: 'boolean' } }, type: 'object' })), 200);
  assert.equal(await chat({ tools, tool_choice: 'required' }), 200);
  assert.equal(await chat(withSchema({ type: 'string', format: 'email' })), 400);
  const second = await scrape();
  assert.equal(second('warmkv_grammar_compile_seconds_count'), 3, 'scraping again does not observe old compiles twice');
  assert.equal(second('warmkv_grammar_cache_misses_total'), 3);
  assert.equal(second('warmkv_grammar_cache_hits_total'), 3);
});
