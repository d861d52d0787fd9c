/** Stored responses survive a restart through SNAPSHOT_DIR: turn 4 after the restart is warm from disk and exact. */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { makeApp, post } from './helpers.ts';

type Body = { id: string; output: Array<{ content: Array<{ text: string }> }>; usage: { input_tokens: number; output_tokens: number; input_tokens_details: { cached_tokens: number } } };
const GREEDY = { temperature: 0, max_output_tokens: 6 };

test('a chain continues after a restart: the response is found on disk, its session restores from its snapshot', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'warmkv-responses-restart-'));
  try {
    const first = await makeApp({ settings: { 'snapshot-dir': dir } });
    const ask = async (app: typeof first.app, input: string, previous?: string) => {
      const res = await app.request('/v1/responses', post({ input, ...GREEDY, ...(previous ? { previous_response_id: previous } : {}) }));
      assert.equal(res.status, 200, await res.clone().text());
      return (await res.json()) as Body;
    };
    let previous: Body | undefined;
    const turns: Body[] = [];
    for (const input of ['Once upon a time', 'there was a king', 'who had a castle']) turns.push((previous = await ask(first.app, input, previous?.id)));
    const root = (await (await first.app.request(`/v1/responses/${previous!.id}/input_items`)).json()) as { data: unknown[] };
    assert.equal(root.data.length, 1);
    // What main.ts does on SIGTERM after draining: every session to its snapshot.
    await first.runtime.serving!.tiers.flushAll();

    const second = await makeApp({ settings: { 'snapshot-dir': dir } });
    const kept = (await (await second.app.request(`/v1/responses/${previous!.id}`)).json()) as Body;
    assert.equal(kept.output[0].content[0].text, previous!.output[0].content[0].text);
    // A branch off turn 2 while the chain's session is still on disk: restored, then its prefix copied.
    const branch = await ask(second.app, 'by the sea.', turns[1].id);
    const turn2Chain = turns[1].usage.input_tokens + turns[1].usage.output_tokens - 1;
    assert.ok(branch.usage.input_tokens_details.cached_tokens >= turn2Chain, `branch cached ${branch.usage.input_tokens_details.cached_tokens} of ${turn2Chain}`);
    const turn4 = await ask(second.app, 'on a hill.', previous!.id);
    const chain = previous!.usage.input_tokens + previous!.usage.output_tokens - 1;
    assert.ok(turn4.usage.input_tokens_details.cached_tokens >= chain, `cached ${turn4.usage.input_tokens_details.cached_tokens} of ${chain}`);
    // Exact: the same as one stateless call on its token transcript, on a server without the chain.
    const session = second.runtime.serving!.store.get('', turns[0].id)!;
    assert.ok(second.runtime.serving!.store.get('', branch.id), 'the branch has a session of its own');
    const prompt = session.tokens.slice(0, turn4.usage.input_tokens);
    const stop = second.runtime.serving!.model.chatTemplate.implicitStops;
    const fresh = await makeApp();
    const oneShot = (await (await fresh.app.request('/v1/completions', post({ prompt, max_tokens: 6, temperature: 0, ...(stop.length ? { stop } : {}) }))).json()) as { choices: Array<{ text: string }> };
    assert.equal(turn4.output[0].content[0].text, oneShot.choices[0].text);

    // A deleted response is gone from disk too.
    assert.equal((await second.app.request(`/v1/responses/${turn4.id}`, { method: 'DELETE' })).status, 200);
    const third = await makeApp({ settings: { 'snapshot-dir': dir } });
    assert.equal((await third.app.request(`/v1/responses/${turn4.id}`)).status, 404);
    assert.equal((await third.app.request(`/v1/responses/${previous!.id}`)).status, 200);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a tool call survives a restart: its function_call item is kept, and its result continues the chain warm', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'warmkv-responses-restart-tools-'));
  const tools = [{ type: 'function', name: 'search', parameters: { type: 'object', properties: { query: { type: 'string', enum: ['cats', 'dogs'] } }, required: ['query'], additionalProperties: false } }];
  try {
    const first = await makeApp({ settings: { 'snapshot-dir': dir } });
    const res = await first.app.request('/v1/responses', post({ input: 'Find cats', tools, tool_choice: 'required', parallel_tool_calls: false, max_output_tokens: 200, temperature: 0 }));
    assert.equal(res.status, 200, await res.clone().text());
    const turn1 = (await res.json()) as Omit<Body, 'output'> & { output: Array<{ type: string; call_id: string; arguments: string }> };
    const call = turn1.output.find((item) => item.type === 'function_call')!;
    assert.deepEqual(Object.keys(JSON.parse(call.arguments)), ['query']);
    await first.runtime.serving!.tiers.flushAll();

    const second = await makeApp({ settings: { 'snapshot-dir': dir } });
    const kept = (await (await second.app.request(`/v1/responses/${turn1.id}`)).json()) as typeof turn1;
    assert.deepEqual(kept.output, turn1.output);
    const next = await second.app.request('/v1/responses', post({ input: [{ type: 'function_call_output', call_id: call.call_id, output: '3 cats' }], previous_response_id: turn1.id, tools, ...GREEDY }));
    assert.equal(next.status, 200, await next.clone().text());
    const turn2 = (await next.json()) as Body;
    assert.ok(turn2.usage.input_tokens_details.cached_tokens >= turn1.usage.input_tokens - 1, `cached ${turn2.usage.input_tokens_details.cached_tokens} of ${turn1.usage.input_tokens}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
