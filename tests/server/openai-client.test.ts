/** A real listening server driven by the official `openai` npm client, streaming and not. */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { chunksOf, listen, waitFor, type Listening } from './helpers.ts';
import { type TestDecoder, wrapDecoder } from '../support/test-decoder.ts';

let server: Listening;
let slow: TestDecoder;
let client: OpenAI;
let model: string;

before(async () => {
  // Pings every 5 ms: the client must skip SSE comments and `id:` lines.
  server = await listen({ pingIntervalMs: 5, wrapDecoder: (d) => (slow = wrapDecoder(d)) });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  model = server.runtime.serving!.model.id;
});
after(() => server.close());

/** Fields the openai types do not know pass through as they are. */
type Extra = Record<string, unknown>;

describe('openai client against a listening server', () => {
  test('completions, non-streaming and streaming, give the same text; usage arrives in its own chunk', async () => {
    const params = { model, prompt: 'Once upon a time', max_tokens: 10, temperature: 0, ignore_eos: true } as Extra;
    const whole = await client.completions.create(params as unknown as OpenAI.CompletionCreateParamsNonStreaming);
    assert.equal(whole.object, 'text_completion');
    assert.equal(whole.choices[0].finish_reason, 'length');
    assert.equal(whole.usage?.completion_tokens, 10);
    slow.decodeDelayMs = 10; // long enough for pings between tokens
    const stream = await client.completions.create({ ...params, stream: true, stream_options: { include_usage: true } } as unknown as OpenAI.CompletionCreateParamsStreaming);
    let text = '';
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | undefined | null;
    const ids = new Set<string>();
    for await (const chunk of stream) {
      ids.add(chunk.id);
      if (chunk.choices.length > 0) {
        text += chunk.choices[0].text;
        finish = chunk.choices[0].finish_reason ?? finish;
      } else usage = chunk.usage;
    }
    slow.decodeDelayMs = 0;
    assert.equal(ids.size, 1);
    assert.equal(text, whole.choices[0].text);
    assert.equal(finish, 'length');
    assert.equal(usage?.completion_tokens, 10);
    assert.equal(usage?.prompt_tokens, whole.usage?.prompt_tokens);
  });

  test('chat: a resumed session counts cached tokens and equals a one-shot request of the whole conversation', async () => {
    const ask = (messages: OpenAI.ChatCompletionMessageParam[], extra: Extra = {}) =>
      client.chat.completions
        .create({ model, messages, max_completion_tokens: 8, temperature: 0, ignore_eos: true, ...extra } as OpenAI.ChatCompletionCreateParamsNonStreaming)
        .withResponse();
    const turn1: OpenAI.ChatCompletionMessageParam[] = [
      { role: 'system', content: 'You are terse.' },
      { role: 'user', content: 'Where is the castle?' },
    ];
    const first = await ask(turn1, { session_id: 'openai-chat' });
    assert.equal(first.response.headers.get('x-session-id'), 'openai-chat');
    assert.equal((first.data as unknown as Extra).session_id, 'openai-chat');
    assert.equal(first.data.usage?.prompt_tokens_details?.cached_tokens, 0);
    const turn2: OpenAI.ChatCompletionMessageParam[] = [...turn1, first.data.choices[0].message as OpenAI.ChatCompletionMessageParam, { role: 'user', content: 'How old is it?' }];
    const second = await ask(turn2, { session_id: 'openai-chat' });
    const cached = second.data.usage?.prompt_tokens_details?.cached_tokens ?? 0;
    assert.ok(cached >= first.data.usage!.prompt_tokens, `cached ${cached} of ${second.data.usage?.prompt_tokens}`);
    const oneShot = await ask(turn2);
    assert.equal(oneShot.data.usage?.prompt_tokens_details?.cached_tokens, 0);
    assert.equal(second.data.choices[0].message.content, oneShot.data.choices[0].message.content);

    // The same conversation streamed through the session again: every chunk names the session.
    const stream = await client.chat.completions.create({
      model,
      messages: turn2,
      max_completion_tokens: 8,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
      ignore_eos: true,
      session_id: 'openai-chat',
    } as OpenAI.ChatCompletionCreateParamsStreaming);
    let content = '';
    let role: string | undefined;
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const chunk of stream) {
      assert.equal((chunk as unknown as Extra).session_id, 'openai-chat');
      if (chunk.choices.length === 0) usage = chunk.usage;
      else {
        role ??= chunk.choices[0].delta.role;
        content += chunk.choices[0].delta.content ?? '';
      }
    }
    assert.equal(role, 'assistant');
    assert.equal(content, oneShot.data.choices[0].message.content);
    assert.ok((usage?.prompt_tokens_details?.cached_tokens ?? 0) >= cached);
  });

  test('aborting a stream leaves it running (resumable); DELETE /v1/streams/{id} stops it and frees the session', async () => {
    slow.decodeDelayMs = 3;
    try {
      const stream = await client.completions.create({
        model,
        prompt: 'Hello',
        max_tokens: 2000,
        ignore_eos: true,
        stream: true,
        session_id: 'openai-abort',
      } as unknown as OpenAI.CompletionCreateParamsStreaming);
      let chunks = 0;
      let id = '';
      for await (const chunk of stream) {
        id = chunk.id;
        if (++chunks === 5) break; // break aborts the request
      }
      const session = server.runtime.serving!.store.get('', 'openai-abort')!;
      const length = session.tokens.length;
      await waitFor(() => session.tokens.length > length + 5);
      assert.ok(session.busy, 'the generation goes on after the disconnect');
      const deleted = await fetch(`${server.url}/v1/streams/${id}`, { method: 'DELETE' });
      assert.deepEqual(await deleted.json(), { id, object: 'stream.deleted', deleted: true });
      assert.ok(!session.busy, 'DELETE answers once the generation has stopped');
      assert.ok(session.tokens.length < 1000, `${session.tokens.length} tokens`);
      assert.equal(session.cachedLength, session.tokens.length - 1);
    } finally {
      slow.decodeDelayMs = 0;
    }
  });

  test('Stop, then the next message: the abandoned stream is superseded at once; the turn reuses the cache and equals a one-shot run; the old stream ends cancelled', async () => {
    slow.decodeDelayMs = 3;
    const session = () => server.runtime.serving!.store.get('', 'openai-stop')!;
    let oldId = '';
    let partial = '';
    try {
      const turn1: OpenAI.ChatCompletionMessageParam[] = [{ role: 'user', content: 'Tell me about the castle.' }];
      const stream = await client.chat.completions.create({
        model, messages: turn1, max_completion_tokens: 2000, temperature: 0, ignore_eos: true, stream: true, session_id: 'openai-stop',
      } as OpenAI.ChatCompletionCreateParamsStreaming);
      let chunks = 0;
      for await (const chunk of stream) {
        oldId = chunk.id;
        partial += chunk.choices[0]?.delta.content ?? '';
        if (++chunks === 6) {
          stream.controller.abort();
          break;
        }
      }
      // What a chat UI does after Stop: the next message, with the partial answer it showed.
      const turn2: OpenAI.ChatCompletionMessageParam[] = [...turn1, { role: 'assistant', content: partial }, { role: 'user', content: 'Go on.' }];
      const ask = (extra: Extra) =>
        client.chat.completions.create({ model, messages: turn2, max_completion_tokens: 8, temperature: 0, ignore_eos: true, ...extra } as OpenAI.ChatCompletionCreateParamsNonStreaming);
      const next = await ask({ session_id: 'openai-stop' });
      assert.ok(!session().busy);
      const cached = next.usage?.prompt_tokens_details?.cached_tokens ?? 0;
      assert.ok(cached > 0, `cached ${cached} of ${next.usage?.prompt_tokens}`);
      const oneShot = await ask({});
      assert.equal(next.choices[0].message.content, oneShot.choices[0].message.content);
      // The session's transcript is this turn's prompt and answer, and its cache a prefix of it.
      assert.equal(session().tokens.length, next.usage!.prompt_tokens + 8);
      assert.equal(session().cachedLength, session().tokens.length - 1);
    } finally {
      slow.decodeDelayMs = 0;
    }
    // Whoever resumes the old stream sees it end: a cancelled chunk that says why, then [DONE].
    const resumed = await fetch(`${server.url}/v1/streams/${oldId}`);
    assert.equal(resumed.status, 200);
    const { chunks, done } = chunksOf(await resumed.text());
    assert.ok(done, 'the old stream ends with [DONE]');
    const last = chunks.at(-1)!;
    assert.equal(last.choices[0].finish_reason, 'cancelled');
    assert.equal(last.cancel_reason, 'superseded');
    const replayed = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
    assert.ok(replayed.startsWith(partial), 'the log holds what the client saw, and what came after it');
  });

  test('a second request while the first stream is still read gets 409, not a supersede', async () => {
    slow.decodeDelayMs = 3;
    try {
      const holder = await client.completions.create({ model, prompt: 'x', max_tokens: 300, ignore_eos: true, stream: true, session_id: 'openai-held' } as unknown as OpenAI.CompletionCreateParamsStreaming);
      const reading = (async () => {
        let text = '';
        let finish: string | null = null;
        for await (const chunk of holder) {
          text += chunk.choices[0]?.text ?? '';
          finish = chunk.choices[0]?.finish_reason ?? finish;
        }
        return { text, finish };
      })();
      await waitFor(() => (server.runtime.serving!.store.get('', 'openai-held')?.tokens.length ?? 0) > 5);
      await assert.rejects(
        client.completions.create({ model, prompt: 'y', max_tokens: 2, session_id: 'openai-held' } as unknown as OpenAI.CompletionCreateParamsNonStreaming),
        (e: unknown) => e instanceof OpenAI.ConflictError && e.code === 'session_busy',
      );
      slow.decodeDelayMs = 0;
      assert.equal((await reading).finish, 'length', 'the first stream ran to its end');
    } finally {
      slow.decodeDelayMs = 0;
    }
  });

  test('a disconnected non-streaming request stops too', async () => {
    slow.decodeDelayMs = 3;
    try {
      const controller = new AbortController();
      const pending = client.completions.create(
        { model, prompt: 'Hello', max_tokens: 2000, ignore_eos: true, session_id: 'openai-abort-2' } as unknown as OpenAI.CompletionCreateParamsNonStreaming,
        { signal: controller.signal },
      );
      await waitFor(() => (server.runtime.serving!.store.get('', 'openai-abort-2')?.tokens.length ?? 0) > 5);
      controller.abort();
      await assert.rejects(pending, OpenAI.APIUserAbortError);
      const session = server.runtime.serving!.store.get('', 'openai-abort-2')!;
      await waitFor(() => !session.busy);
      assert.ok(session.tokens.length < 200, `${session.tokens.length} tokens`);
    } finally {
      slow.decodeDelayMs = 0;
    }
  });

  test('errors map onto the client error classes with type, code and param', async () => {
    await assert.rejects(
      client.completions.create({ model, prompt: 'x', best_of: 2 }),
      (e: unknown) => e instanceof OpenAI.BadRequestError && e.param === 'best_of' && e.code === 'unsupported_parameter',
    );
    await assert.rejects(
      client.chat.completions.create({ model, messages: [{ role: 'user', content: 'x' }], temperature: 3 }),
      (e: unknown) => e instanceof OpenAI.BadRequestError && e.param === 'temperature' && e.type === 'invalid_request_error',
    );
    await assert.rejects(client.completions.create({ model: 'nope', prompt: 'x' }), OpenAI.NotFoundError);

    slow.decodeDelayMs = 5;
    try {
      const holder = await client.completions.create({ model, prompt: 'x', max_tokens: 500, ignore_eos: true, stream: true, session_id: 'openai-busy' } as unknown as OpenAI.CompletionCreateParamsStreaming);
      await assert.rejects(
        client.chat.completions.create({ model, messages: [{ role: 'user', content: 'x' }], session_id: 'openai-busy' } as OpenAI.ChatCompletionCreateParamsNonStreaming),
        (e: unknown) => e instanceof OpenAI.ConflictError && e.code === 'session_busy',
      );
      let id = '';
      for await (const chunk of holder) {
        id = chunk.id;
        break;
      }
      await fetch(`${server.url}/v1/streams/${id}`, { method: 'DELETE' });
      const session = server.runtime.serving!.store.get('', 'openai-busy')!;
      assert.ok(!session.busy);
    } finally {
      slow.decodeDelayMs = 0;
    }
  });

  test('an error after the stream started reaches the client as an APIError', async () => {
    let calls = 0;
    slow.failWhen = (step) => step.seqLength === 1 && ++calls === 2;
    try {
      const stream = await client.completions.create({ model, prompt: 'x', max_tokens: 20, ignore_eos: true, stream: true } as unknown as OpenAI.CompletionCreateParamsStreaming);
      await assert.rejects(async () => {
        for await (const _ of stream) {
          // consume
        }
      }, (e: unknown) => e instanceof OpenAI.APIError && (e.error as { type?: string }).type === 'server_error');
    } finally {
      slow.failWhen = null;
    }
  });

  test('GET /v1/models through the client', async () => {
    const list = await client.models.list();
    assert.deepEqual(list.data.map((m) => m.id), [model]);
  });
});
