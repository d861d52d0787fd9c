/** Shared pieces of the benchmarks: model loading, engine assembly, timing, result files. */
import { mkdirSync, existsSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import type { ReadableSpan, SpanExporter } from '@opentelemetry/sdk-trace-base';
import { loadConfig, type Config } from '../src/config.ts';
import { assemble } from '../src/runtime.ts';
import type { SharedSessions } from '../src/cache/shared-sessions.ts';
import { createApp } from '../src/server/app.ts';
import type { Serving, ServingSource } from '../src/serving.ts';
import { silentLogger, type Logger } from '../src/lib/logger.ts';
import { loadModel, type LoadedModel } from '../src/model/index.ts';
import { GREEDY } from '../src/engine/sampler.ts';
import type { GenerationRequest } from '../src/engine/types.ts';
import { buildModelFolder } from '../tools/model-builder/index.ts';

export const DEFAULT_MODEL = 'models/warmkv-brown';
export const RESULTS_DIR = 'bench/results';
/** The node flags `npm start` and the images run the server with (package.json): bench server children use them too. */
export const SERVER_NODE_FLAGS = ['--max-semi-space-size=64', '--initial-old-space-size=128'];

/** Builds the benchmarks' stand-in model (a long-context builder llama) in `dir` unless it is there already. */
async function ensureBuilderLlama(dir: string): Promise<void> {
  if (existsSync(join(dir, 'config.json'))) return;
  await buildModelFolder(dir, { family: 'llama', hiddenSize: 256, numLayers: 6, numHeads: 8, numKvHeads: 2, vocabSize: 4096, maxPositions: 4096 });
}

/**
 * The default model, or a builder model of similar size while the trained one does not exist.
 * `newRowOutputs`: load the decoder with new-row outputs, which KV_MODE=inplace (the default) needs.
 */
export async function benchModel(dir: string | undefined, threads: number, newRowOutputs = true): Promise<{ model: LoadedModel; source: string }> {
  let path = dir ?? DEFAULT_MODEL;
  let source = path;
  if (!dir && !existsSync(join(path, 'config.json'))) {
    path = '/tmp/warmkv-bench-builder-llama';
    source = 'builder llama (hidden 256, 6 layers, 8 heads / 2 KV heads, vocab 4096): the trained default model is missing';
    await ensureBuilderLlama(path);
  }
  const model = await loadModel(path, { logger: silentLogger, intraOpThreads: threads, newRowOutputs });
  return { model, source };
}

/**
 * `--model DIR`, or (without one) the builder llama in `builderDir`: the benchmarks whose histories
 * outgrow the trained model's context (1,024 tokens) run on this 4,096-position stand-in.
 */
export async function longContextModel(dir: string | undefined, builderDir: string, threads: number, newRowOutputs = true): Promise<{ model: LoadedModel; source: string }> {
  if (!dir) await ensureBuilderLlama(builderDir);
  const model = await loadModel(dir ?? builderDir, { logger: silentLogger, intraOpThreads: threads, newRowOutputs });
  return { model, source: dir ?? 'builder llama (hidden 256, 6 layers, 8 heads / 2 KV heads, vocab 4096, 4096 positions)' };
}

export function benchConfig(overrides: Record<string, string>): Config {
  return loadConfig(overrides, []);
}

/** `shared`: where sessions live beyond the process (a replica of a fleet); embedded by default. */
export function serving(config: Config, model: LoadedModel, shared?: SharedSessions): Serving {
  return assemble(config, model, { logger: silentLogger }, undefined, shared);
}

export type BenchApp = ReturnType<typeof createApp>;

/** The HTTP app around assembled, ready serving parts (the app's own log lines go to `logger`). */
export function benchApp(config: Config, parts: Serving, logger: Logger = silentLogger): BenchApp {
  const runtime: ServingSource = { config, logger: silentLogger, modelId: parts.model.id, state: 'ready', serving: parts };
  return createApp(runtime, { logger });
}

/** A JSON POST to the app as the holder of API key `key`. */
export async function postAs(app: BenchApp, path: string, body: unknown, key: string): Promise<Response> {
  return app.request(path, { method: 'POST', headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${key}` }, body: JSON.stringify(body) });
}

export function machine() {
  return {
    cpu: cpus()[0]?.model ?? 'unknown',
    cores: cpus().length,
    memoryGiB: Math.round(totalmem() / 1024 ** 3),
    node: process.version,
    onnxruntime: ort.env.versions.common,
  };
}

export function writeResult(name: string, data: unknown): string {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const file = join(RESULTS_DIR, `${name}.json`);
  writeFileSync(file, `${JSON.stringify({ date: new Date().toISOString(), machine: machine(), ...(data as object) }, null, 2)}\n`);
  return file;
}

export const median = (values: number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

export { emptyKv, forward, lastArgmax } from './bare-loop.ts';

export function table(headers: string[], rows: Array<Array<string | number>>): string {
  return [`| ${headers.join(' | ')} |`, `| ${headers.map(() => '---').join(' | ')} |`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

/** A greedy request that ignores end-of-text, so every run does the same work; `overrides` adjust it. */
export function greedyRequest(input: number[], overrides: Partial<GenerationRequest> = {}): GenerationRequest {
  return {
    requestId: `bench-${Math.random().toString(36).slice(2)}`,
    owner: '',
    onUnknownSession: 'create',
    mode: 'replace',
    input,
    maxTokens: 1,
    sampling: GREEDY,
    stop: [],
    ignoreEos: true,
    truncation: 'auto',
    ...overrides,
  };
}

/** Counts what it would send: the export cost that remains is serialisation-free, as with a fast collector. */
export class CountingExporter implements SpanExporter {
  spans = 0;
  export(spans: ReadableSpan[], done: (result: { code: number }) => void): void {
    this.spans += spans.length;
    done({ code: 0 });
  }
  async shutdown(): Promise<void> {}
}
