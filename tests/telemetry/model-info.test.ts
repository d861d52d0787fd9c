/**
 * warmkv_model_info: what runs the model, as labels of an always-1 gauge a dashboard can join on
 * (the KV path, the decoder's thread, the execution provider, its threads, grouped attention).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { GPT2, LLAMA } from '../support/fixtures.ts';
import { makeApp } from '../server/helpers.ts';

const infoLine = async (app: Awaited<ReturnType<typeof makeApp>>['app']) => {
  const text = await (await app.request('/metrics')).text();
  const line = text.split('\n').find((l) => l.startsWith('warmkv_model_info{'));
  assert.ok(line, 'warmkv_model_info is exported');
  return line;
};

test('warmkv_model_info says how the model runs: in place on the main thread, grouped attention where the export repeats KV heads', async () => {
  const llama = await infoLine((await makeApp({ model: LLAMA })).app);
  assert.match(llama, /kv_path="inplace"/);
  assert.match(llama, /decoder_thread="main"/);
  assert.match(llama, /execution_provider="cpu"/);
  assert.match(llama, /intra_op_threads="\d+"/);
  assert.match(llama, /grouped_attention="true"/, 'the builder llama repeats its 2 KV heads');
  assert.match(llama, / 1$/);
  const gpt2 = await infoLine((await makeApp({ model: GPT2, settings: { 'kv-mode': 'concat' } })).app);
  assert.match(gpt2, /kv_path="concat"/);
  assert.match(gpt2, /grouped_attention="false"/);
});
