/** The Responses API through the official `openai` client against a real listening server: state on warm KV. */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { openAiServer, parseSse, waitFor, type Listening } from './helpers.ts';
import { type TestDecoder, wrapDecoder } from '../support/test-decoder.ts';

let server: Listening;
let slow: TestDecoder;
let client: OpenAI;
let model: string;

before(async () => {
  ({ server, client, model } = await openAiServer({ pingIntervalMs: 5, wrapDecoder: (d) => (slow = wrapDecoder(d)) }));
});
after(() => server.close());

type Item = OpenAI.Responses.ResponseInputItem;
const GREEDY = { temperature: 0, max_output_tokens: 6 } as const;

function ask(input: string | Item[], extra: Partial<OpenAI.Responses.ResponseCreateParamsNonStreaming> = {}) {
  return client.responses.create({ model, input, ...GREEDY, ...extra });
}

/**
 * One stateless call on a response's whole transcript: its exact prompt tokens (read from the chain's
 * session: the prompt, then the reply) through /v1/completions, greedy, with the chat stops.
 */
async function oneShot(r: OpenAI.Responses.Response, sessionId: string): Promise<string> {
  const session = server.runtime.serving!.store.get('', sessionId)!;
  const prompt = session.tokens.slice(0, r.usage!.input_tokens);
  const stop = server.runtime.serving!.model.chatTemplate.implicitStops;
  const params = { model, prompt, max_tokens: GREEDY.max_output_tokens, temperature: 0, ...(stop.length > 0 ? { stop } : {}) };
  const c = await client.completions.create(params);
  assert.equal(c.usage?.prompt_tokens, r.usage!.input_tokens);
  return c.choices[0].text;
}

describe('responses: the openai client against a listening server', () => {
  test('create: the response object, its message item and usage, as OpenAI sends them', async () => {
    const r = await ask('Where is the castle?', { metadata: { run: 'a' } });
    assert.match(r.id, /^resp_[0-9a-f]{32}$/);
    assert.equal(r.object, 'response');
    assert.ok(r.status === 'completed' || r.status === 'incomplete');
    assert.equal(r.model, model);
    assert.equal(r.output.length, 1);
    const message = r.output[0] as OpenAI.Responses.ResponseOutputMessage;
    assert.equal(message.type, 'message');
    assert.equal(message.role, 'assistant');
    assert.match(message.id, /^msg_/);
    assert.equal(message.content[0].type, 'output_text');
    assert.equal(r.output_text, (message.content[0] as OpenAI.Responses.ResponseOutputText).text);
    assert.equal(r.usage!.input_tokens_details.cached_tokens, 0);
    assert.equal(r.usage!.output_tokens_details.reasoning_tokens, 0);
    assert.equal(r.usage!.total_tokens, r.usage!.input_tokens + r.usage!.output_tokens);
    assert.deepEqual(r.metadata, { run: 'a' });
    assert.equal(r.previous_response_id, null);
    assert.equal(r.truncation, 'disabled');
    if (r.status === 'incomplete') assert.deepEqual(r.incomplete_details, { reason: 'max_output_tokens' });
    const again = await client.responses.retrieve(r.id);
    assert.equal(again.output_text, r.output_text);
    assert.deepEqual(again.usage, r.usage);
  });

  test('stream(): named events in order with consecutive sequence numbers; the helper assembles output_text', async () => {
    const oneShot = await ask('Tell me a story.');
    slow.decodeDelayMs = 8;
    const stream = client.responses.stream({ model, input: 'Tell me a story.', ...GREEDY });
    const types: string[] = [];
    const sequence: number[] = [];
    let deltas = '';
    for await (const event of stream) {
      types.push(event.type);
      sequence.push(event.sequence_number);
      if (event.type === 'response.output_text.delta') deltas += event.delta;
    }
    slow.decodeDelayMs = 0;
    const final = await stream.finalResponse();
    assert.deepEqual(sequence, sequence.map((_, i) => i));
    const frame = types.filter((t) => t !== 'response.output_text.delta');
    const last = final.status === 'completed' ? 'response.completed' : 'response.incomplete';
    assert.deepEqual(frame, [
      'response.created',
      'response.in_progress',
      'response.output_item.added',
      'response.content_part.added',
      'response.output_text.done',
      'response.content_part.done',
      'response.output_item.done',
      last,
    ]);
    assert.equal(final.output_text, deltas);
    assert.equal(final.output_text, oneShot.output_text);
    assert.equal((await client.responses.retrieve(final.id)).output_text, deltas);
  });

  test('a 5-turn chain prefills only each new turn and equals one stateless call on the whole transcript', async () => {
    let previous = null as OpenAI.Responses.Response | null;
    let root = '';
    for (let i = 1; i <= 5; i++) {
      const r: OpenAI.Responses.Response = await ask(`Turn ${i}: and what happened next?`, previous ? { previous_response_id: previous.id } : {});
      root ||= r.id;
      assert.equal(r.previous_response_id, previous?.id ?? null);
      const cached = r.usage!.input_tokens_details.cached_tokens;
      if (previous) {
        // The whole chain so far is cached: the previous prompt and its reply (its last token is fed again).
        const chain = previous.usage!.input_tokens + previous.usage!.output_tokens - 1;
        assert.ok(cached >= chain, `turn ${i}: cached ${cached} of a ${chain}-token chain`);
      } else assert.equal(cached, 0);
      assert.equal(r.output_text, await oneShot(r, root), `turn ${i}: same output as one call`);
      previous = r;
    }
    // The first turn's prompt is just its rendered input: a stateless response gives the same.
    const first = await client.responses.retrieve(root);
    assert.equal((await ask('Turn 1: and what happened next?', { store: false })).output_text, first.output_text);
  });

  test('two branches off turn 3 both reuse its cache, equal their one-shot runs, and keep their own caches', async () => {
    const t1 = await ask('Once upon a time');
    const t2 = await ask('there was a king', { previous_response_id: t1.id });
    const t3 = await ask('who had a castle', { previous_response_id: t2.id });
    const chain = t3.usage!.input_tokens + t3.usage!.output_tokens - 1;
    const store = server.runtime.serving!.store;
    // The first child takes over the chain's session; the second (a branch) gets one of its own.
    const first = await ask('on a hill.', { previous_response_id: t3.id });
    const second = await ask('by the sea.', { previous_response_id: t3.id });
    assert.ok(store.get('', second.id), 'the branch has its own session');
    for (const [child, sessionId] of [[first, t1.id], [second, second.id]] as const) {
      const cached = child.usage!.input_tokens_details.cached_tokens;
      assert.ok(cached >= chain, `${child.id}: cached ${cached} of ${chain}`);
      assert.equal(child.output_text, await oneShot(child, sessionId));
    }
    // Both branches continue warm: neither overwrote the other's cache.
    for (const branch of [first, second]) {
      const next = await ask('The end.', { previous_response_id: branch.id });
      const covered = branch.usage!.input_tokens + branch.usage!.output_tokens - 1;
      assert.ok(next.usage!.input_tokens_details.cached_tokens >= covered, `continuing ${branch.id}`);
    }
  });

  test('warmkv extensions: seed makes sampling reproducible; a stop string cuts the reply and the chain still continues it', async () => {
    const seeded = { temperature: 1, top_k: 40, seed: 7, max_output_tokens: 8 } as Record<string, unknown>;
    const a = await ask('Seeded', seeded);
    const b = await ask('Seeded', seeded);
    assert.equal(a.output_text, b.output_text);
    const full = await ask('Cut me');
    const stop = full.output_text.trim().slice(1, 3);
    assert.equal(stop.length, 2, `a reply long enough to cut: ${JSON.stringify(full.output_text)}`);
    const cut = await ask('Cut me', { stop } as Record<string, unknown>);
    assert.ok(!cut.output_text.includes(stop) && full.output_text.startsWith(cut.output_text));
    // The reply's tokens no longer decode to its text: the child renders its prompt from the messages.
    const next = await ask('Go on', { previous_response_id: cut.id });
    assert.ok(next.usage!.input_tokens_details.cached_tokens >= cut.usage!.input_tokens - 1, 'the parent prompt is still reused');
  });

  test('store: false is not kept and cannot be chained; delete removes a response', async () => {
    const loose = await ask('Not kept', { store: false });
    await assert.rejects(client.responses.retrieve(loose.id), (e: InstanceType<typeof OpenAI.APIError>) => e.status === 404);
    await assert.rejects(ask('next', { previous_response_id: loose.id }), (e: InstanceType<typeof OpenAI.APIError>) => e.status === 404 && e.code === 'previous_response_not_found');
    const kept = await ask('Kept for now');
    const deleted = (await client.responses.delete(kept.id)) as unknown;
    assert.deepEqual(deleted, { id: kept.id, object: 'response', deleted: true });
    await assert.rejects(client.responses.retrieve(kept.id), (e: InstanceType<typeof OpenAI.APIError>) => e.status === 404);
    await assert.rejects(ask('next', { previous_response_id: kept.id }), (e: InstanceType<typeof OpenAI.APIError>) => e.code === 'previous_response_not_found');
    assert.equal(server.runtime.serving!.store.get('', kept.id), undefined, 'its session went with it');
  });

  test('input_items lists the turn input, newest first, paginated', async () => {
    const input: Item[] = [
      { role: 'system', content: 'Be terse.' },
      { role: 'user', content: [{ type: 'input_text', text: 'One' }] },
      { role: 'assistant', content: 'Two' },
      { role: 'user', content: 'Three' },
    ];
    const r = await ask(input);
    const page1 = await client.responses.inputItems.list(r.id, { limit: 3 });
    assert.equal(page1.data.length, 3);
    assert.equal(page1.has_more, true);
    const texts = (page: { data: unknown[] }) => page.data.map((item) => ((item as OpenAI.Responses.ResponseInputMessageItem).content[0] as { text: string }).text);
    assert.deepEqual(texts(page1), ['Three', 'Two', 'One']);
    const page2 = await client.responses.inputItems.list(r.id, { limit: 3, after: page1.data[2].id });
    assert.deepEqual(texts(page2), ['Be terse.']);
    assert.equal(page2.has_more, false);
    const asc = await client.responses.inputItems.list(r.id, { order: 'asc' });
    assert.deepEqual(texts(asc), ['Be terse.', 'One', 'Two', 'Three']);
  });

  test('background: cancel stops a running response; a chain on it waits for it (409)', async () => {
    slow.decodeDelayMs = 20;
    const r = await ask('A long tale', { background: true, max_output_tokens: 200 });
    assert.equal(r.status, 'queued');
    const busy = await fetch(`${server.url}/v1/responses`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ input: 'next', previous_response_id: r.id }) });
    assert.equal(busy.status, 409);
    assert.equal(((await busy.json()) as { error: { code: string } }).error.code, 'response_in_progress');
    const cancelled = await client.responses.cancel(r.id);
    slow.decodeDelayMs = 0;
    assert.equal(cancelled.status, 'cancelled');
    assert.ok(cancelled.usage!.output_tokens < 200);
    assert.equal((await client.responses.retrieve(r.id)).status, 'cancelled');
  });

  test('background: a cut stream resumes with starting_after, every event exactly once', async () => {
    slow.decodeDelayMs = 10;
    const r = await ask('Resume me', { background: true, max_output_tokens: 20 });
    const first = await fetch(`${server.url}/v1/responses/${r.id}?stream=true`);
    const reader = first.body!.getReader();
    let text = '';
    while ((text.match(/\n\n/g) ?? []).length < 6) text += new TextDecoder().decode((await reader.read()).value);
    await reader.cancel();
    const head = parseSse(text.slice(0, text.lastIndexOf('\n\n') + 2)).events;
    const lastSeen = JSON.parse(head.at(-1)!.data).sequence_number as number;
    const rest = await fetch(`${server.url}/v1/responses/${r.id}?stream=true&starting_after=${lastSeen}`);
    const tail = parseSse(await rest.text()).events;
    slow.decodeDelayMs = 0;
    const all = [...head, ...tail].map((e) => ({ event: e.event, data: JSON.parse(e.data) }));
    assert.deepEqual(all.map((e) => e.data.sequence_number), all.map((_, i) => i));
    for (const e of all) assert.equal(e.event, e.data.type);
    const deltas = all.filter((e) => e.event === 'response.output_text.delta').map((e) => e.data.delta).join('');
    await waitFor(() => all.at(-1)!.event !== 'response.in_progress');
    const done = await client.responses.retrieve(r.id);
    assert.equal(all.at(-1)!.data.response.output[0].content[0].text, deltas);
    assert.equal(done.output_text, deltas);
  });
});
