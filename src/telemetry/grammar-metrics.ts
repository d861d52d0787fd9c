/**
 * Constrained-decoding metrics, read from the grammar service's counters at scrape time: a histogram
 * of grammar compile times (each compile since the last scrape becomes one sample) and the compiled-
 * grammar cache's hits and misses.
 */
import { Counter, Histogram, type Registry } from 'prom-client';

/** What GrammarService.counters() reports (the telemetry room does not import the engine's types). */
export interface GrammarCountersSource {
  compiles: number;
  cacheHits: number;
  cacheMisses: number;
  recentCompileMs: readonly number[];
}

/** A JSON schema compiles in milliseconds; a large vocabulary or a big tool list takes longer. */
const COMPILE_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

/** `read` returns null until the model has a grammar service (a model without a tokenizer vocabulary). */
export function registerGrammarMetrics(registry: Registry, modelId: string, read: () => GrammarCountersSource | null): void {
  const registers = [registry];
  const labels = { gen_ai_request_model: modelId };
  let observed = 0;
  new Histogram({
    name: 'warmkv_grammar_compile_seconds',
    help: 'Time to compile one grammar (a response_format schema or a request\'s tool-call structure); cache hits compile nothing.',
    labelNames: ['gen_ai_request_model'],
    buckets: COMPILE_BUCKETS,
    registers,
    collect(this: Histogram<string>) {
      const counters = read();
      if (!counters) return;
      const fresh = Math.min(counters.compiles - observed, counters.recentCompileMs.length);
      for (const ms of counters.recentCompileMs.slice(counters.recentCompileMs.length - fresh)) this.observe(labels, ms / 1000);
      observed = counters.compiles;
    },
  });
  const total = (name: string, help: string, value: (c: GrammarCountersSource) => number) =>
    new Counter({
      name,
      help,
      labelNames: ['gen_ai_request_model'],
      registers,
      collect(this: Counter<string>) {
        const counters = read();
        if (!counters) return;
        this.reset();
        this.inc(labels, value(counters));
      },
    });
  total('warmkv_grammar_cache_hits_total', 'Constrained requests whose grammar was already compiled (the LRU of compiled grammars).', (c) => c.cacheHits);
  total('warmkv_grammar_cache_misses_total', 'Constrained requests whose grammar had to be compiled.', (c) => c.cacheMisses);
}
