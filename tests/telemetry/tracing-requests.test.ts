/**
 * Request spans through a real server: they are keyed by the request itself, not by the client's
 * X-Request-Id, so two concurrent requests that send one id get two whole span trees.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { trace } from '@opentelemetry/api';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { openAiServer, post, type Listening } from '../server/helpers.ts';

const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
trace.setGlobalTracerProvider(provider);

let server: Listening;
let model: string;
before(async () => ({ server, model } = await openAiServer()));
after(async () => {
  await server.close();
  await provider.shutdown();
});

const MAX_TOKENS = 6;

/** Each finished request span with X-Request-Id `requestId`, and the spans whose parent it is. */
function requestTrees(requestId: string): Array<{ root: ReadableSpan; children: ReadableSpan[] }> {
  const spans = exporter.getFinishedSpans();
  return spans
    .filter((s) => s.attributes['warmkv.request.id'] === requestId)
    .map((root) => ({ root, children: spans.filter((s) => s.parentSpanContext?.spanId === root.spanContext().spanId) }));
}

function assertWholeTree(tree: { root: ReadableSpan; children: ReadableSpan[] }, operation: string): void {
  const names = tree.children.map((s) => s.name);
  assert.equal(tree.root.name, `${operation} ${model}`);
  assert.equal(tree.root.attributes['gen_ai.usage.output_tokens'], MAX_TOKENS);
  assert.deepEqual(tree.root.attributes['gen_ai.response.finish_reasons'], ['length']);
  assert.equal(names.filter((n) => n === 'queue').length, 1, `children: ${names.join(', ')}`);
  assert.equal(names.filter((n) => n === 'cache.lookup').length, 1);
  assert.ok(names.includes('prefill'));
  assert.equal(names.filter((n) => n === 'decode').length, MAX_TOKENS - 1, 'one decode span per step after the first token');
}

describe('request spans with a shared X-Request-Id', () => {
  test('two concurrent completions with one X-Request-Id produce two separate, complete span trees', async () => {
    exporter.reset();
    const requestId = 'shared-completion-id';
    const body = (prompt: string) => ({ model, prompt, max_tokens: MAX_TOKENS, temperature: 0, ignore_eos: true });
    const responses = await Promise.all(
      ['The first prompt', 'A second, longer prompt of its own'].map((prompt) =>
        fetch(`${server.url}/v1/completions`, post(body(prompt), { 'X-Request-Id': requestId })),
      ),
    );
    for (const response of responses) {
      assert.equal(response.status, 200);
      assert.equal(response.headers.get('x-request-id'), requestId);
      await response.json();
    }
    const trees = requestTrees(requestId);
    assert.equal(trees.length, 2, `spans: ${exporter.getFinishedSpans().map((s) => s.name).join(', ')}`);
    assert.notEqual(trees[0].root.spanContext().spanId, trees[1].root.spanContext().spanId);
    for (const tree of trees) assertWholeTree(tree, 'text_completion');
    const prompts = trees.map((t) => t.root.attributes['gen_ai.usage.input_tokens']);
    assert.notEqual(prompts[0], prompts[1], 'each span carries its own request');
  });

  test('two concurrent Responses calls with one X-Request-Id produce two separate, complete span trees', async () => {
    exporter.reset();
    const requestId = 'shared-response-id';
    const responses = await Promise.all(
      ['Hello there', 'Something else entirely, and longer'].map((input) =>
        fetch(`${server.url}/v1/responses`, post({ model, input, max_output_tokens: MAX_TOKENS, temperature: 0, store: false }, { 'X-Request-Id': requestId })),
      ),
    );
    for (const response of responses) {
      assert.equal(response.status, 200);
      await response.json();
    }
    const trees = requestTrees(requestId);
    assert.equal(trees.length, 2, `spans: ${exporter.getFinishedSpans().map((s) => s.name).join(', ')}`);
    for (const tree of trees) assertWholeTree(tree, 'chat');
  });
});
