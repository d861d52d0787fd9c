/**
 * The tiered cache: bytes per token in each tier, and time to first token when a session with 512 or
 * 2048 cached tokens resumes (16 new tokens) from each tier, against recomputing it from scratch.
 *
 *   npm run bench -- tiers [--model DIR] [--threads N] [--repeats N] [--lengths 512,2048]
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Tier } from '../src/cache/session.ts';
import { int8BytesPerToken } from '../src/cache/int8.ts';
import type { GenerationRequest } from '../src/engine/types.ts';
import type { Serving } from '../src/serving.ts';
import { benchConfig, benchModel, greedyRequest as request, median, serving, table, writeResult } from './common.ts';
import { MODEL_OPTIONS, parseBenchArgs, repeatsOption } from './cli.ts';

const values = parseBenchArgs('tiers', 'The tiered cache: bytes per token in each tier, and time to first token when a session resumes from each tier, against recomputing it.', {
  ...MODEL_OPTIONS,
  repeats: repeatsOption('3'),
  lengths: { type: 'string', default: '512,2048', value: 'LIST', help: 'comma-separated cached session lengths in tokens' },
});

async function drain(parts: Serving, req: GenerationRequest): Promise<{ ttftMs: number; cachedTokens: number; restoredFrom: Tier | undefined }> {
  const submitted = performance.now();
  const result = await parts.engine.submit(req);
  if (!result.ok) throw new Error(result.error.message);
  let ttftMs = 0;
  let cachedTokens = 0;
  let restoredFrom: Tier | undefined;
  for await (const event of result.events) {
    if (event.type === 'start') restoredFrom = event.restoredFrom;
    if (event.type === 'token' && ttftMs === 0) ttftMs = performance.now() - submitted;
    if (event.type === 'end') {
      if (event.error) throw new Error(event.error.message);
      cachedTokens = event.usage.cachedTokens;
    }
  }
  return { ttftMs, cachedTokens, restoredFrom };
}

const TIERS: Tier[] = ['hot', 'int8', 'disk', 'evicted'];

async function main(): Promise<void> {
  const threads = Number(values.threads);
  const repeats = Number(values.repeats);
  const lengths = values.lengths!.split(',').map(Number);
  const { model, source } = await benchModel(values.model, threads);
  const history = Array.from({ length: Math.max(...lengths) }, (_, i) => (i * 7919 + 13) % 600);
  const next = Array.from({ length: 16 }, (_, i) => (i * 31 + 7) % 600);
  const results: Array<{ cachedTokens: number; tier: Tier; ttftMs: number; reusedTokens: number; vsRecompute: number }> = [];
  const bytes: Record<string, number> = {};

  for (const length of lengths) {
    const perTier = new Map<Tier, number[]>();
    for (let r = 0; r < repeats; r++) {
      for (const tier of TIERS) {
        const snapshotDir = mkdtempSync(join(tmpdir(), 'warmkv-bench-tiers-'));
        // Without snapshots int8 falls straight to evicted (the transcript only).
        const settings: Record<string, string> = { KV_CACHE_BYTES: '1GiB', MAX_CONTEXT_TOKENS: '4096', PREFILL_CHUNK_TOKENS: '4096' };
        if (tier !== 'evicted') settings.SNAPSHOT_DIR = snapshotDir;
        const parts = serving(benchConfig(settings), model);
        await parts.tiers.init();
        const input = history.slice(0, length);
        // max_tokens 0: the session caches exactly the history.
        await drain(parts, request(input, { sessionId: 's', maxTokens: 0 }));
        const session = parts.store.get('', 's')!;
        const demotions = { hot: 0, int8: 1, disk: 2, evicted: 2 }[tier];
        for (let i = 0; i < demotions; i++) parts.store.demoteOne();
        if (session.tier !== tier) throw new Error(`expected ${tier}, got ${session.tier}`);
        if (r === 0 && length === Math.max(...lengths)) {
          if (tier === 'hot') bytes.hot = session.reservedBytes / length;
          if (tier === 'int8') bytes.int8 = session.reservedBytes / length;
          if (tier === 'disk') bytes.disk = statSync(parts.tiers.pathOf('', 's')).size / length;
        }
        const resumed = await drain(parts, request([...input, ...next], { sessionId: 's' }));
        if (tier !== 'evicted' && resumed.cachedTokens !== length) throw new Error(`${tier}: reused ${resumed.cachedTokens} of ${length}`);
        perTier.set(tier, [...(perTier.get(tier) ?? []), resumed.ttftMs]);
        rmSync(snapshotDir, { recursive: true, force: true });
      }
    }
    const recompute = median(perTier.get('evicted')!);
    for (const tier of TIERS) {
      const ttftMs = median(perTier.get(tier)!);
      results.push({ cachedTokens: length, tier, ttftMs, reusedTokens: tier === 'evicted' ? 0 : length, vsRecompute: ttftMs / recompute });
      console.error(`${length} tokens from ${tier}: ${ttftMs.toFixed(1)} ms (${(ttftMs / recompute).toFixed(3)} of a recompute)`);
    }
  }

  const layout = model.decoder.io.kv;
  const bytesTable = table(
    ['tier', 'bytes per token', 'vs hot', 'what it holds'],
    [
      ['hot', bytes.hot.toFixed(0), '1.000', `model dtype (${layout.dtype}), ${layout.numLayers} layers x ${layout.numKvHeads} KV heads x ${layout.headDim}, K and V, in ${16}-token blocks`],
      ['int8', bytes.int8.toFixed(1), (bytes.int8 / bytes.hot).toFixed(3), `int8 values + float16 scales (payload alone: ${int8BytesPerToken(layout, 'channel')} bytes per token)`],
      ['disk', bytes.disk.toFixed(1), (bytes.disk / bytes.hot).toFixed(3), 'snapshot file (int8 payload, transcript, header, checksums); 0 bytes of memory'],
      ['evicted', '4 (transcript)', '—', 'token ids only; the KV is recomputed on the next request'],
    ],
  );
  const ttftTable = table(
    ['cached tokens', 'resumed from', 'TTFT (ms), 16 new tokens', 'vs full recompute'],
    results.map((r) => [r.cachedTokens, r.tier === 'evicted' ? 'evicted (full recompute)' : r.tier, r.ttftMs.toFixed(1), r.vsRecompute.toFixed(3)]),
  );
  const markdown = `${bytesTable}\n\n${ttftTable}`;
  console.log(markdown);
  const file = writeResult('tiers', { model: source, threads, repeats, bytesPerToken: bytes, results, markdown });
  console.error(`wrote ${file}`);
}

await main();
