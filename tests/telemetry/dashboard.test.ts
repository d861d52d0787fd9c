import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { Metrics } from '../../src/telemetry/metrics.ts';

test('every metric the Grafana dashboard queries is one warmkv exports', async () => {
  const dashboard = JSON.parse(readFileSync('infra/grafana/warmkv-dashboard.json', 'utf8')) as {
    panels: Array<{ type: string; targets?: Array<{ expr: string }> }>;
  };
  const metrics = new Metrics({
    modelId: 'm',
    engineStats: () => ({ running: 0, waiting: 0, batchSize: 0 }),
    budget: () => ({ capacityBytes: 1, reservedBytes: 0 }),
    tiers: () => ({ sessions: { hot: 0, int8: 0, disk: 0, evicted: 0 }, bytes: { hot: 0, int8: 0, disk: 0, evicted: 0 }, usedBytes: 0 }),
  });
  const exported = new Set((await metrics.registry.getMetricsAsJSON()).map((m) => m.name));
  const queried = new Set<string>();
  for (const panel of dashboard.panels) {
    for (const target of panel.targets ?? []) {
      // Label selectors and grouping clauses name labels, not metrics.
      const expr = target.expr.replace(/\{[^}]*\}/g, '').replace(/by \([^)]*\)/g, '');
      for (const [name] of expr.matchAll(/\b(?:warmkv|gen_ai|process|nodejs)_[a-z0-9_]+/g)) {
        queried.add(name.replace(/_(bucket|count|sum)$/, ''));
      }
    }
  }
  assert.ok(queried.size >= 15, `only ${queried.size} metrics queried`);
  for (const name of queried) assert.ok(exported.has(name), `the dashboard queries ${name}, which /metrics does not export`);
  // The three gauges the Gateway API Inference Extension's endpoint picker reads are on the dashboard.
  for (const name of ['warmkv_queue_size', 'warmkv_running_requests', 'warmkv_kv_cache_utilization']) assert.ok(queried.has(name), name);
});
