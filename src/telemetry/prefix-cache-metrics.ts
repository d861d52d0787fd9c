/**
 * The stateless requests' automatic prefix cache (cache/prefix-cache.ts), read from its counters at
 * scrape time: requests that reused an entry (hit) or not (miss), their prompt tokens and the reused
 * ones (token hit rate = reused / prompt), how entries were reused, evictions, and what is kept now.
 * Registered even when the cache is off, so a dashboard's queries always name exported metrics.
 */
import { Counter, Gauge, type Registry } from 'prom-client';

/** What PrefixCache.counters() reports (the telemetry room does not import the cache's types). */
export interface PrefixCacheCountersSource {
  hits: number;
  misses: number;
  promptTokens: number;
  reusedTokens: number;
  takeovers: number;
  copies: number;
  evictions: number;
  entries: number;
  bytes: number;
}

export function registerPrefixCacheMetrics(registry: Registry, read: () => PrefixCacheCountersSource | null): void {
  const registers = [registry];
  const total = (name: string, help: string, values: (c: PrefixCacheCountersSource) => Array<[Record<string, string>, number]>, labelNames: string[] = []) =>
    new Counter({
      name,
      help,
      labelNames,
      registers,
      collect(this: Counter<string>) {
        const counters = read();
        if (!counters) return;
        this.reset();
        for (const [labels, value] of values(counters)) this.inc(labels, value);
      },
    });
  total('warmkv_stateless_prefix_requests_total', 'Stateless requests by whether their prompt reused a kept prefix entry (hit) or was prefilled in full (miss).', (c) => [[{ result: 'hit' }, c.hits], [{ result: 'miss' }, c.misses]], ['result']);
  total('warmkv_stateless_prefix_prompt_tokens_total', 'Prompt tokens of stateless requests on the prefix cache.', (c) => [[{}, c.promptTokens]]);
  total('warmkv_stateless_prefix_reused_tokens_total', 'Prompt tokens of stateless requests served from a kept prefix entry (cached_tokens).', (c) => [[{}, c.reusedTokens]]);
  total('warmkv_stateless_prefix_reuses_total', 'Prefix entries reused by taking one over (a linear resend) or copying its shared prefix (a branch).', (c) => [[{ mode: 'takeover' }, c.takeovers], [{ mode: 'copy' }, c.copies]], ['mode']);
  total('warmkv_stateless_prefix_evictions_total', 'Prefix entries whose KV was dropped to make room (entries go before any session).', (c) => [[{}, c.evictions]]);
  const gauge = (name: string, help: string, value: (c: PrefixCacheCountersSource) => number) =>
    new Gauge({
      name,
      help,
      registers,
      collect(this: Gauge<string>) {
        const counters = read();
        this.set(counters ? value(counters) : 0);
      },
    });
  gauge('warmkv_stateless_prefix_entries', 'Anonymous prefix entries kept now (PREFIX_CACHE_ENTRIES bounds them).', (c) => c.entries);
  gauge('warmkv_stateless_prefix_bytes', 'KV bytes the prefix entries reserve (part of the KV budget, not of warmkv_kv_cache_bytes).', (c) => c.bytes);
}
