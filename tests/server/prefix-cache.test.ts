/**
 * Automatic prefix caching for stateless requests (docs/api.md, "Stateless requests and the prefix
 * cache"): through the official openai client against real listening servers, one with the prefix
 * cache and one with PREFIX_CACHE=off; every answer must be the same, only cached_tokens (and speed)
 * differ.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import OpenAI from 'openai';
import type { Session } from '../../src/cache/session.ts';
import { keyId } from '../../src/server/auth.ts';
import { wrapDecoder, type TestDecoder } from '../support/test-decoder.ts';
import { listen, openAiClient, post, waitFor, type Listening } from './helpers.ts';

const KEY_A = 'key-aaaaaaaaaaaaaaaa';
const KEY_B = 'key-bbbbbbbbbbbbbbbb';
const KEYS = { 'api-keys': `${KEY_A},${KEY_B}` };

type Message = OpenAI.ChatCompletionMessageParam;
type Chat = OpenAI.ChatCompletion;

/** Long enough that every prompt shares at least one whole index block (64 tokens) with the last. */
const system = (topic: string): Message => ({
  role: 'system',
  content: `You are a patient storyteller. Every answer continues the tale of ${topic}, who lived in a castle on a hill above the river, and the walks towards the water every morning.`,
});
const QUESTIONS = ['Tell me about the king.', 'What did he see at the river?', 'And then?', 'Who came to the castle?', 'How does it end?'];

/** Greedy and seeded sampling: both must come out the same on a reused prefix. */
const GREEDY = { temperature: 0, max_tokens: 12 } as const;
const SEEDED = { temperature: 0.9, top_p: 0.95, seed: 11, max_tokens: 12 } as const;

let warm: Listening;
let cold: Listening;
let model: string;

before(async () => {
  [warm, cold] = await Promise.all([
    listen({ settings: { ...KEYS, 'max-sessions-per-key': '1' } }),
    listen({ settings: { ...KEYS, 'prefix-cache': 'off' } }),
  ]);
  model = warm.runtime.serving!.model.id;
});
after(() => Promise.all([warm.close(), cold.close()]));

const chat = (server: Listening, key: string, messages: Message[], sampling: object = GREEDY): Promise<Chat> =>
  openAiClient(server, key).chat.completions.create({ model, messages, ...sampling } as OpenAI.ChatCompletionCreateParamsNonStreaming);

const cachedOf = (answer: { usage?: OpenAI.CompletionUsage }) => answer.usage!.prompt_tokens_details!.cached_tokens!;

const entriesOf = (server: Listening, key: string): Session[] =>
  [...server.runtime.serving!.store.prefixEntriesInLruOrder()].filter((entry) => entry.owner === keyId(key));

async function promptTokens(server: Listening, key: string, messages: Message[]): Promise<number[]> {
  const res = await fetch(`${server.url}/tokenize`, post({ messages }, { Authorization: `Bearer ${key}` }));
  assert.equal(res.status, 200);
  return ((await res.json()) as { tokens: number[] }).tokens;
}

/** What a prompt may reuse of an entry: their common token prefix within the entry's cache, the last prompt token always fed. */
function reusable(entry: Session, prompt: readonly number[]): number {
  const limit = Math.min(entry.cachedLength, prompt.length - 1);
  let shared = 0;
  while (shared < limit && entry.tokens[shared] === prompt[shared]) shared++;
  return shared;
}

for (const [name, sampling] of [['greedy', GREEDY], ['seeded sampling', SEEDED]] as const) {
  test(`a 5-turn conversation resent without a session reuses each turn's cache in place and answers as without the cache (${name})`, async () => {
    const counters = () => warm.runtime.serving!.prefixCache!.counters();
    const before = { ...counters(), entries: entriesOf(warm, KEY_A).length };
    const messages: Message[] = [system(`the ${name} king`)];
    let previous: Chat | null = null;
    for (const [turn, question] of QUESTIONS.entries()) {
      messages.push({ role: 'user', content: question });
      const kept = entriesOf(warm, KEY_A).at(-1);
      const expected: number = previous && kept ? reusable(kept, await promptTokens(warm, KEY_A, messages)) : 0;
      const [answer, reference] = await Promise.all([chat(warm, KEY_A, messages, sampling), chat(cold, KEY_A, messages, sampling)]);
      assert.equal(answer.choices[0].message.content, reference.choices[0].message.content, `turn ${turn + 1}: the same reply as with PREFIX_CACHE=off`);
      assert.equal(answer.usage!.prompt_tokens, reference.usage!.prompt_tokens);
      assert.equal(answer.usage!.completion_tokens, reference.usage!.completion_tokens);
      assert.equal(cachedOf(reference), 0, 'PREFIX_CACHE=off keeps nothing');
      assert.equal((answer as unknown as { session_id?: string }).session_id, undefined, 'no session is shown');
      if (previous) {
        // All of the previous prompt, and of its reply as far as the reply's text re-tokenizes to the generated ids.
        assert.equal(cachedOf(answer), expected, `turn ${turn + 1}: the common prefix with the kept transcript`);
        assert.ok(cachedOf(answer) >= previous.usage!.prompt_tokens, `turn ${turn + 1}: cached ${cachedOf(answer)} covers turn ${turn}'s ${previous.usage!.prompt_tokens} prompt tokens`);
      }
      previous = answer;
      messages.push({ role: 'assistant', content: answer.choices[0].message.content });
    }
    const now = counters();
    assert.equal(now.takeovers - before.takeovers, QUESTIONS.length - 1, 'every later turn took the kept entry over');
    assert.equal(now.copies, before.copies, 'nothing was copied');
    assert.equal(entriesOf(warm, KEY_A).length, before.entries + 1, 'the conversation holds one entry');
  });
}

test("another API key never reuses a key's prefix entries", async () => {
  const messages: Message[] = [system('the guarded king'), { role: 'user', content: QUESTIONS[0] }];
  const first = await chat(warm, KEY_A, messages);
  messages.push({ role: 'assistant', content: first.choices[0].message.content }, { role: 'user', content: QUESTIONS[1] });
  const other = await chat(warm, KEY_B, messages);
  assert.equal(cachedOf(other), 0, "key B's prompt starts with key A's transcript, and reuses none of it");
  const own = await chat(warm, KEY_A, messages);
  assert.ok(cachedOf(own) >= first.usage!.prompt_tokens, 'key A reuses its own');
  assert.equal(own.choices[0].message.content, other.choices[0].message.content);
});

test('two concurrent branches off one kept prefix both reuse it, both answer as one-shot runs, and the source stays', async () => {
  const base: Message[] = [system('the branching king'), { role: 'user', content: QUESTIONS[0] }];
  const first = await chat(warm, KEY_A, base);
  const history: Message[] = [...base, { role: 'assistant', content: first.choices[0].message.content }];
  const second = await chat(warm, KEY_A, [...history, { role: 'user', content: QUESTIONS[1] }]);
  const copiesBefore = warm.runtime.serving!.prefixCache!.counters().copies;
  // Two edits of turn 2's question: each shares turn 1 and less than all of turn 2's prompt with the kept entry.
  const branches = ['What did he hear at the river?', 'What did he find at the river?'].map((q): Message[] => [...history, { role: 'user', content: q }]);
  const warmAnswers = await Promise.all(branches.map((messages) => chat(warm, KEY_A, messages, SEEDED)));
  const coldAnswers = await Promise.all(branches.map((messages) => chat(cold, KEY_A, messages, SEEDED)));
  for (const [i, answer] of warmAnswers.entries()) {
    assert.ok(cachedOf(answer) >= first.usage!.prompt_tokens, `branch ${i}: cached ${cachedOf(answer)} covers turn 1's prompt`);
    assert.ok(cachedOf(answer) < second.usage!.prompt_tokens, `branch ${i} diverges inside turn 2's prompt`);
    assert.equal(answer.choices[0].message.content, coldAnswers[i].choices[0].message.content, `branch ${i} equals its one-shot run`);
  }
  assert.equal(warm.runtime.serving!.prefixCache!.counters().copies - copiesBefore, 2, 'each branch copied the shared prefix');
  // The source still holds turn 2: its own continuation reuses all of turn 2's prompt.
  const third = await chat(warm, KEY_A, [...history, { role: 'user', content: QUESTIONS[1] }, { role: 'assistant', content: second.choices[0].message.content }, { role: 'user', content: QUESTIONS[2] }]);
  assert.ok(cachedOf(third) >= second.usage!.prompt_tokens, `cached ${cachedOf(third)} of turn 2's ${second.usage!.prompt_tokens} prompt tokens`);
});

test('two concurrent continuations of one kept transcript answer as one-shot runs; at least one reuses it', async () => {
  const base: Message[] = [system('the racing king'), { role: 'user', content: QUESTIONS[0] }];
  const first = await chat(warm, KEY_A, base);
  const history: Message[] = [...base, { role: 'assistant', content: first.choices[0].message.content }];
  const turns = [QUESTIONS[1], QUESTIONS[3]].map((q): Message[] => [...history, { role: 'user', content: q }]);
  const warmAnswers = await Promise.all(turns.map((messages) => chat(warm, KEY_A, messages, SEEDED)));
  const coldAnswers = await Promise.all(turns.map((messages) => chat(cold, KEY_A, messages, SEEDED)));
  for (const [i, answer] of warmAnswers.entries()) assert.equal(answer.choices[0].message.content, coldAnswers[i].choices[0].message.content);
  assert.ok(warmAnswers.some((answer) => cachedOf(answer) >= first.usage!.prompt_tokens));
});

test('a streamed resend reports its cached tokens in the usage chunk and no session in any chunk', async () => {
  const messages: Message[] = [system('the streaming king'), { role: 'user', content: QUESTIONS[0] }];
  const first = await chat(warm, KEY_A, messages);
  messages.push({ role: 'assistant', content: first.choices[0].message.content }, { role: 'user', content: QUESTIONS[1] });
  const stream = await openAiClient(warm, KEY_A).chat.completions.create({ model, messages, ...GREEDY, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let usage: OpenAI.CompletionUsage | null | undefined;
  for await (const chunk of stream) {
    assert.equal((chunk as unknown as { session_id?: string }).session_id, undefined);
    text += chunk.choices[0]?.delta.content ?? '';
    if (chunk.usage) usage = chunk.usage;
  }
  assert.ok(usage!.prompt_tokens_details!.cached_tokens! >= first.usage!.prompt_tokens);
  assert.equal(text, (await chat(cold, KEY_A, messages)).choices[0].message.content);
});

test('a request that fails leaves the entry as it was; n > 1 still works', async () => {
  const messages: Message[] = [system('the careful king'), { role: 'user', content: QUESTIONS[0] }];
  const first = await chat(warm, KEY_A, messages);
  messages.push({ role: 'assistant', content: first.choices[0].message.content }, { role: 'user', content: QUESTIONS[1] });
  const entries = entriesOf(warm, KEY_A).length;
  const contextLength = warm.runtime.serving!.model.contextLength;
  await assert.rejects(chat(warm, KEY_A, messages, { max_tokens: contextLength }), (error: InstanceType<typeof OpenAI.APIError>) => error.status === 400);
  assert.equal(entriesOf(warm, KEY_A).length, entries, 'the refused request left no entry behind');
  const several = await openAiClient(warm, KEY_A).chat.completions.create({ model, messages, ...SEEDED, n: 2 });
  const severalCold = await openAiClient(cold, KEY_A).chat.completions.create({ model, messages, ...SEEDED, n: 2 });
  assert.deepEqual(several.choices.map((c) => c.message.content), severalCold.choices.map((c) => c.message.content));
  const next = await chat(warm, KEY_A, messages);
  assert.ok(cachedOf(next) >= first.usage!.prompt_tokens, 'the kept entry is intact');
  assert.equal(next.choices[0].message.content, (await chat(cold, KEY_A, messages)).choices[0].message.content);
});

test('completions reuse a kept prefix too; entries are neither listed nor counted as sessions; metrics count hits', async () => {
  const client = openAiClient(warm, KEY_B);
  const prompt = 'Once upon a time there was a king who lived in a castle on a hill above the river, and every morning he walked slowly towards the bright water. '.repeat(2);
  const first = await client.completions.create({ model, prompt, max_tokens: 8, temperature: 0 });
  const longer = prompt + first.choices[0].text + ' Then he';
  const [{ data: again, response }, reference] = await Promise.all([
    client.completions.create({ model, prompt: longer, max_tokens: 8, temperature: 0 }).withResponse(),
    openAiClient(cold, KEY_B).completions.create({ model, prompt: longer, max_tokens: 8, temperature: 0 }),
  ]);
  assert.equal(response.headers.get('x-session-id'), null, 'no session header');
  assert.ok(cachedOf(again) >= first.usage!.prompt_tokens - 1, `cached ${cachedOf(again)} of ${first.usage!.prompt_tokens}`);
  assert.equal(again.choices[0].text, reference.choices[0].text);
  // MAX_SESSIONS_PER_KEY is 1 on this server: the key's entries do not count against it.
  assert.ok(entriesOf(warm, KEY_B).length >= 1);
  const created = await fetch(`${warm.url}/v1/sessions`, post({ session_id: 'named' }, { Authorization: `Bearer ${KEY_B}` }));
  assert.equal(created.status, 201, await created.clone().text());
  const listed = (await (await fetch(`${warm.url}/v1/sessions`, { headers: { Authorization: `Bearer ${KEY_B}` } })).json()) as { data: Array<{ id: string }> };
  assert.deepEqual(listed.data.map((s) => s.id), ['named']);
  const metrics = await (await fetch(`${warm.url}/metrics`)).text();
  const hits = Number(/^warmkv_stateless_prefix_requests_total\{result="hit"\} (\d+)/m.exec(metrics)?.[1]);
  const reused = Number(/^warmkv_stateless_prefix_reused_tokens_total (\d+)/m.exec(metrics)?.[1]);
  assert.ok(hits > 0 && reused >= hits, `hits ${hits}, reused tokens ${reused}`);
  assert.match(metrics, /^warmkv_stateless_prefix_requests_total\{result="miss"\} [1-9]/m);
});

test('under a tiny KV budget prefix entries are evicted before sessions, which costs only speed', async () => {
  const bytesPerToken = warm.runtime.serving!.engine.layout.bytesPerToken;
  const tiny = await listen({ settings: { ...KEYS, 'kv-cache-bytes': String(400 * bytesPerToken) } });
  try {
    const client = openAiClient(tiny, KEY_A);
    const session = (messages: Message[]) =>
      client.chat.completions.create({ model, messages, ...GREEDY, session_id: 'kept' } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    const named: Message[] = [system('the named king'), { role: 'user', content: QUESTIONS[0] }];
    const namedFirst = await session(named);
    const conversations = ['first', 'second', 'third'].map((topic): Message[] => [system(`the ${topic} evicted king`), { role: 'user', content: QUESTIONS[0] }]);
    for (const messages of conversations) {
      const answer = await chat(tiny, KEY_A, messages);
      messages.push({ role: 'assistant', content: answer.choices[0].message.content }, { role: 'user', content: QUESTIONS[1] });
    }
    const counters = tiny.runtime.serving!.prefixCache!.counters();
    assert.ok(counters.evictions > 0, 'the entries did not all fit');
    // The first conversation's entry went first; resending it is a full prefill with the same answer.
    const [resent, reference] = await Promise.all([chat(tiny, KEY_A, conversations[0]), chat(cold, KEY_A, conversations[0])]);
    assert.equal(cachedOf(resent), 0);
    assert.equal(resent.choices[0].message.content, reference.choices[0].message.content);
    named.push({ role: 'assistant', content: namedFirst.choices[0].message.content }, { role: 'user', content: QUESTIONS[1] });
    const namedNext = await session(named);
    assert.ok(cachedOf(namedNext) >= namedFirst.usage!.prompt_tokens, 'the named session kept its cache');
  } finally {
    await tiny.close();
  }
});

test('a request that fails mid-generation leaves the entry it took over as it was', async () => {
  let decoder: TestDecoder | undefined;
  const failing = await listen({ settings: KEYS, wrapDecoder: (inner) => (decoder = wrapDecoder(inner)) });
  try {
    const messages: Message[] = [system('the failing king'), { role: 'user', content: QUESTIONS[0] }];
    const first = await chat(failing, KEY_A, messages);
    messages.push({ role: 'assistant', content: first.choices[0].message.content }, { role: 'user', content: QUESTIONS[1] });
    const entry = entriesOf(failing, KEY_A).at(-1)!;
    const before = { tokens: entry.tokens.slice(), cachedLength: entry.cachedLength, version: entry.version };
    // The third decode step of the next turn throws, as onnxruntime does on a failed run: after the takeover.
    let decodes = 0;
    decoder!.failWhen = (step) => step.seqLength === 1 && ++decodes === 3;
    await assert.rejects(chat(failing, KEY_A, messages), (error: InstanceType<typeof OpenAI.APIError>) => error.status === 500);
    assert.equal(decodes, 3);
    decoder!.failWhen = null;
    await waitFor(() => !entry.busy);
    assert.equal(entriesOf(failing, KEY_A).at(-1), entry, 'the same entry, still kept');
    assert.deepEqual({ tokens: entry.tokens, version: entry.version }, { tokens: before.tokens, version: before.version }, 'rolled back to its transcript');
    // Of the cache, the part the failed prompt shared with it (as a session's rollback keeps): at least turn 1's prompt.
    assert.ok(entry.cachedLength >= first.usage!.prompt_tokens && entry.cachedLength <= before.cachedLength, `cache ${entry.cachedLength} of ${before.cachedLength}`);
    assert.equal(entry.tier, 'hot');
    const [retry, reference] = await Promise.all([chat(failing, KEY_A, messages), chat(cold, KEY_A, messages)]);
    assert.ok(cachedOf(retry) >= first.usage!.prompt_tokens);
    assert.equal(retry.choices[0].message.content, reference.choices[0].message.content);
  } finally {
    await failing.close();
  }
});
