import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { describe, test } from 'node:test';
import { propagation } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { BasicTracerProvider, BatchSpanProcessor, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { Metrics } from '../../src/telemetry/metrics.ts';
import { Tracing } from '../../src/telemetry/tracing.ts';
import { collect, makeEngine, randomTokens, request, type EngineFixture } from '../support/fixtures.ts';

propagation.setGlobalPropagator(new W3CTraceContextPropagator());

async function tracedTurn(fixture: EngineFixture, tracing: Tracing, input: number[], requestId: string, headers: Record<string, string> = {}) {
  const submitted = request(input, { requestId, sessionId: 'traced', mode: 'append', maxTokens: 8, seed: 3 });
  tracing.startRequest(submitted, { headers, stream: true });
  const result = await collect(fixture.engine.submit(submitted));
  tracing.endRequest(submitted, { responseId: `cmpl-${requestId}`, finishReason: result.end.finishReason, usage: result.usage });
  return result;
}

describe('tracing', () => {
  test('a session-resume request produces the GenAI span tree: queue, cache lookup, prefill, one span per decode step', async () => {
    const exporter = new InMemorySpanExporter();
    const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
    const fixture = await makeEngine({});
    const tracing = new Tracing(provider.getTracer('test'), 'tiny-llama');
    fixture.engine.addObserver(tracing);
    await tracedTurn(fixture, tracing, randomTokens(20, 1), 'first');
    exporter.reset();
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    const parentSpanId = '00f067aa0ba902b7';
    const second = await tracedTurn(fixture, tracing, randomTokens(6, 2), 'second', { traceparent: `00-${traceId}-${parentSpanId}-01` });
    assert.ok(second.usage.cachedTokens > 0);

    const spans = exporter.getFinishedSpans();
    const root = spans.find((s) => s.name === 'text_completion tiny-llama');
    assert.ok(root, `spans: ${spans.map((s) => s.name).join(', ')}`);
    assert.equal(root.spanContext().traceId, traceId, 'incoming traceparent is honoured');
    assert.equal(root.parentSpanContext?.spanId, parentSpanId);
    assert.equal(root.attributes['gen_ai.operation.name'], 'text_completion');
    assert.equal(root.attributes['gen_ai.request.model'], 'tiny-llama');
    assert.equal(root.attributes['gen_ai.request.max_tokens'], 8);
    assert.equal(root.attributes['gen_ai.request.temperature'], 0);
    assert.equal(root.attributes['gen_ai.request.seed'], 3);
    assert.equal(root.attributes['gen_ai.request.stream'], true);
    assert.equal(root.attributes['gen_ai.conversation.id'], 'traced');
    assert.equal(root.attributes['gen_ai.response.id'], 'cmpl-second');
    assert.deepEqual(root.attributes['gen_ai.response.finish_reasons'], ['length']);
    assert.equal(root.attributes['gen_ai.usage.input_tokens'], second.usage.promptTokens);
    assert.equal(root.attributes['gen_ai.usage.output_tokens'], 8);
    assert.equal(root.attributes['gen_ai.usage.cache_read.input_tokens'], second.usage.cachedTokens);

    const children = spans.filter((s) => s.parentSpanContext?.spanId === root.spanContext().spanId);
    const names = children.map((s) => s.name);
    assert.equal(names.filter((n) => n === 'queue').length, 1);
    const lookup = children.find((s) => s.name === 'cache.lookup')!;
    assert.equal(lookup.attributes['warmkv.cache.tier'], 'hot');
    assert.equal(lookup.attributes['warmkv.cache.cached_tokens'], second.usage.cachedTokens);
    assert.equal(names.filter((n) => n === 'prefill').length, 1);
    const decodes = children.filter((s) => s.name === 'decode');
    assert.equal(decodes.length, 7, 'one span per decode step (the first token comes from the prefill)');
    for (const d of decodes) {
      assert.equal(d.attributes['warmkv.batch.size'], 1);
      assert.ok((d.attributes['warmkv.kv.tokens'] as number) > second.usage.cachedTokens);
    }
    // Nothing that could hold text: only counts, ids and names.
    for (const span of spans) {
      for (const value of Object.values(span.attributes)) assert.ok(typeof value !== 'string' || value.length < 64);
    }
    await provider.shutdown();
  });

  test('spans reach a collector through the real OTLP/HTTP exporter', async () => {
    const bodies: unknown[] = [];
    const receiver = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => {
        bodies.push({ path: req.url, contentType: req.headers['content-type'], body: JSON.parse(Buffer.concat(chunks).toString('utf8')) });
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      });
    });
    await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
    const { port } = receiver.address() as AddressInfo;
    const provider = new BasicTracerProvider({
      spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter({ url: `http://127.0.0.1:${port}/v1/traces` }))],
    });
    const fixture = await makeEngine({});
    const tracing = new Tracing(provider.getTracer('test'), 'tiny-llama');
    fixture.engine.addObserver(tracing);
    await tracedTurn(fixture, tracing, randomTokens(10, 4), 'otlp');
    await provider.forceFlush();
    await provider.shutdown();
    receiver.close();
    assert.ok(bodies.length >= 1);
    const first = bodies[0] as { path: string; contentType: string; body: { resourceSpans: Array<{ scopeSpans: Array<{ spans: Array<{ name: string; attributes: Array<{ key: string }> }> }> }> } };
    assert.equal(first.path, '/v1/traces');
    assert.match(first.contentType, /json/);
    const received = first.body.resourceSpans.flatMap((r) => r.scopeSpans.flatMap((s) => s.spans));
    const root = received.find((s) => s.name === 'text_completion tiny-llama');
    assert.ok(root, `received ${received.map((s) => s.name).join(', ')}`);
    assert.ok(root.attributes.some((a) => a.key === 'gen_ai.usage.output_tokens'));
    assert.ok(received.filter((s) => s.name === 'decode').length >= 7);
  });
});

/** Parses Prometheus text exposition into sample name{labels} -> value. */
function parsePrometheus(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$/.exec(line);
    assert.ok(match, `unparseable line: ${line}`);
    samples.set(match[1] + (match[2] ?? ''), Number(match[3]));
  }
  return samples;
}

describe('metrics', () => {
  test('Prometheus output parses, uses the semantic conventions buckets, and counters move', async () => {
    const fixture = await makeEngine({ tiers: {} });
    const metrics = new Metrics(
      {
        modelId: 'tiny',
        engineStats: () => fixture.engine.stats(),
        budget: () => ({ capacityBytes: fixture.store.budget.capacityBytes, reservedBytes: fixture.store.budget.reservedBytes }),
        tiers: () => fixture.tiers!.counts(),
      },
      { processMetrics: false },
    );
    fixture.engine.addObserver(metrics);
    fixture.store.onTierMove((e) => metrics.recordTierMove(e));
    const before = parsePrometheus((await metrics.render()).body);
    assert.equal(before.get('warmkv_running_requests'), 0);
    await collect(fixture.engine.submit(request(randomTokens(12, 1), { sessionId: 'm', maxTokens: 5, operation: 'chat' })));
    await collect(fixture.engine.submit(request(randomTokens(3, 2), { sessionId: 'm', mode: 'append', maxTokens: 5, operation: 'chat' })));
    fixture.store.demoteOne();
    const { body, contentType } = await metrics.render();
    assert.match(contentType, /text\/plain/);
    const after = parsePrometheus(body);
    const labels = '{gen_ai_operation_name="chat",gen_ai_request_model="tiny"}';
    assert.equal(after.get(`gen_ai_server_time_to_first_token_seconds_count${labels}`), 2);
    assert.equal(after.get(`gen_ai_server_time_per_output_token_seconds_count${labels}`), 2);
    assert.ok(after.has(`gen_ai_server_time_to_first_token_seconds_bucket{le="0.001",gen_ai_operation_name="chat",gen_ai_request_model="tiny"}`));
    assert.ok(after.has(`gen_ai_server_time_per_output_token_seconds_bucket{le="2.5",gen_ai_operation_name="chat",gen_ai_request_model="tiny"}`));
    assert.ok(after.has(`gen_ai_server_request_duration_seconds_bucket{le="81.92",gen_ai_operation_name="chat",gen_ai_request_model="tiny",error_type=""}`));
    assert.equal(after.get('warmkv_generation_tokens_total{gen_ai_request_model="tiny"}'), 10);
    assert.equal(after.get('warmkv_prompt_tokens_total{gen_ai_request_model="tiny"}'), 12 + 12 + 5 + 3);
    assert.equal(after.get('warmkv_cache_requests_total{gen_ai_request_model="tiny",result="hit"}'), 1);
    assert.equal(after.get('warmkv_cache_requests_total{gen_ai_request_model="tiny",result="miss"}'), 1);
    assert.equal(after.get('warmkv_prefix_cache_hits_total{gen_ai_request_model="tiny",tier="hot"}'), 12 + 5 - 1);
    assert.equal(after.get('warmkv_tier_moves_total{from="hot",to="int8"}'), 1);
    assert.equal(after.get('warmkv_sessions{tier="int8"}'), 1);
    const utilization = after.get('warmkv_kv_cache_utilization')!;
    assert.ok(utilization > 0 && utilization < 1);
    assert.equal(after.get('warmkv_queue_size'), 0);
    assert.ok((after.get('warmkv_decode_step_seconds_count{gen_ai_request_model="tiny"}') ?? 0) >= 8);
  });

  test('the background snapshot writer: its backlog while a demotion is written, then the write counted', async () => {
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const fixture = await makeEngine({ tiers: { snapshotDir: mkdtempSync(join(tmpdir(), 'warmkv-metrics-')), int8: false, writer: { beforeChunk: () => held } } });
    const tiers = fixture.tiers!;
    const metrics = new Metrics(
      {
        modelId: 'tiny',
        engineStats: () => fixture.engine.stats(),
        budget: () => ({ capacityBytes: fixture.store.budget.capacityBytes, reservedBytes: fixture.store.budget.reservedBytes }),
        tiers: () => tiers.counts(),
        snapshotWrites: () => tiers.writeCounts(),
      },
      { processMetrics: false },
    );
    await collect(fixture.engine.submit(request(randomTokens(12, 3), { sessionId: 'w', maxTokens: 2 })));
    fixture.store.demoteOne();
    const writing = parsePrometheus((await metrics.render()).body);
    assert.equal(writing.get('warmkv_snapshot_writes_pending{kind="session"}'), 1);
    assert.equal(writing.get('warmkv_snapshot_writes_total{kind="session",result="written"}'), 0);
    release();
    await tiers.flush();
    const written = parsePrometheus((await metrics.render()).body);
    assert.equal(written.get('warmkv_snapshot_writes_pending{kind="session"}'), 0);
    assert.equal(written.get('warmkv_snapshot_writes_total{kind="session",result="written"}'), 1);
    assert.equal(written.get('warmkv_snapshot_writes_total{kind="session",result="refused"}'), 0);
  });
});
