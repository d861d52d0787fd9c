/** Shared test fixtures: builder models on disk, an engine around them, and stream collection. */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildModelFolder, type BuildOptions } from '../../tools/model-builder/index.ts';
import { KvBudget } from '../../src/cache/budget.ts';
import { SessionStore } from '../../src/cache/session-store.ts';
import { resolveWindowPolicy, type WindowSettings } from '../../src/cache/window.ts';
import type { KeyScaleMode } from '../../src/cache/int8.ts';
import { TierManager } from '../../src/cache/tiers.ts';
import type { SnapshotWriterOptions } from '../../src/cache/snapshot-writer.ts';
import { Engine, type EngineOptions } from '../../src/engine/engine.ts';
import { GREEDY, type SamplingParams } from '../../src/engine/sampler.ts';
import type { GenerationEvent, GenerationRequest, SubmitResult, Usage } from '../../src/engine/types.ts';
import { silentLogger } from '../../src/lib/logger.ts';
import { emptyKv, loadModel, readModelFolder, WorkerDecoder, type Decoder, type DecoderOutput, type LoadedModel } from '../../src/model/index.ts';

const building = new Map<string, Promise<string>>();

/** A builder model folder under the OS temp dir, built once per option set (and reused across runs). */
export function testModelDir(options: BuildOptions): Promise<string> {
  const key = createHash('sha256').update(JSON.stringify(options)).digest('hex').slice(0, 16);
  let pending = building.get(key);
  if (!pending) {
    const dir = join(tmpdir(), 'warmkv-test-models', `${options.family}-${key}`);
    pending = existsSync(join(dir, 'config.json')) ? Promise.resolve(dir) : buildModelFolder(dir, options).then(() => dir);
    building.set(key, pending);
  }
  return pending;
}

const loaded = new Map<string, Promise<LoadedModel>>();

/** `newRowOutputs`: the decoder is loaded with new-row outputs, for in-place KV. */
export function testModel(options: BuildOptions, newRowOutputs = false): Promise<LoadedModel> {
  const key = JSON.stringify(options) + (newRowOutputs ? ' new-rows' : '');
  let model = loaded.get(key);
  if (!model) {
    model = testModelDir(options).then((dir) => loadModel(dir, { logger: silentLogger, intraOpThreads: 1, newRowOutputs }));
    loaded.set(key, model);
  }
  return model;
}

const lanes = new Map<string, Promise<Decoder>>();

/** The prefill lane's decoder for a builder model: a worker thread, loaded once per option set; `closeLaneDecoders` ends them. */
export function laneDecoder(options: BuildOptions, newRowOutputs: boolean): Promise<Decoder> {
  const key = JSON.stringify(options) + (newRowOutputs ? ' new-rows' : '');
  let decoder = lanes.get(key);
  if (!decoder) {
    decoder = testModelDir(options).then(async (dir) => {
      const folder = readModelFolder(dir);
      const hints = { numKvHeads: folder.numKvHeadsHint, headDim: folder.headDimHint, numHeads: folder.numHeadsHint };
      return WorkerDecoder.load(folder.onnxPath, hints, { executionProvider: 'cpu', fallbackToCpu: false, intraOpThreads: 1, newRowOutputs, logger: silentLogger });
    });
    lanes.set(key, decoder);
  }
  return decoder;
}

/** Ends every lane decoder's thread (a test file's `after`: a live worker keeps the process running). */
export async function closeLaneDecoders(): Promise<void> {
  const open = [...lanes.values()];
  lanes.clear();
  for (const decoder of open) await (await decoder).dispose();
}

export const LLAMA: BuildOptions = { family: 'llama', seed: 7 };
export const GPT2: BuildOptions = { family: 'gpt2', seed: 7 };

export interface EngineFixtureOptions extends Partial<Omit<EngineOptions, 'window'>> {
  model?: BuildOptions;
  budgetBytes?: number;
  blockTokens?: number;
  capacity?: number;
  window?: Partial<WindowSettings>;
  wrapDecoder?: (decoder: Decoder) => Decoder;
  /** A prefill lane: the same model on a worker thread (one intra-op thread) for long prompts' chunks. */
  prefillLane?: boolean;
  eos?: number[];
  /** Enables the int8 / disk tiers (disk only with a snapshot directory). */
  tiers?: { snapshotDir?: string; keyMode?: KeyScaleMode; int8?: boolean; idleTtlMs?: number; maxSnapshotBytes?: number; now?: () => number; writer?: Partial<SnapshotWriterOptions> };
}

export interface EngineFixture {
  engine: Engine;
  store: SessionStore;
  model: LoadedModel;
  decoder: Decoder;
  tiers: TierManager | null;
}

export async function makeEngine(options: EngineFixtureOptions = {}): Promise<EngineFixture> {
  // KV_MODE's default is inplace: every engine test runs in place unless it asks for concat.
  const model = await testModel(options.model ?? LLAMA, options.kvMode !== 'concat');
  const decoder = options.wrapDecoder ? options.wrapDecoder(model.decoder) : model.decoder;
  const store = new SessionStore(new KvBudget(options.budgetBytes ?? 256 * 1024 * 1024, options.blockTokens ?? 16));
  const window = resolveWindowPolicy(
    options.capacity ?? 1024,
    { sinkTokens: 4, strategy: 'auto', ...options.window },
    model.folder.positionEncoding,
  );
  const engine = new Engine(
    {
      decoder,
      tokenizer: model.tokenizer,
      vocabSize: model.vocabSize,
      eosTokenIds: options.eos ?? model.folder.eosTokenIds,
      positionEncoding: model.folder.positionEncoding,
      capabilities: model.capabilities,
      grammarVocabulary: () => model.tokenizer.encodedVocabulary(),
      prefillDecoder: options.prefillLane ? await laneDecoder(options.model ?? LLAMA, options.kvMode !== 'concat') : undefined,
    },
    store,
    {
      maxBatchSize: options.maxBatchSize ?? 8,
      maxQueue: options.maxQueue ?? 64,
      prefillChunkTokens: options.prefillChunkTokens ?? 64,
      queueTimeoutMs: options.queueTimeoutMs ?? 30_000,
      window,
      kvMode: options.kvMode,
      kvCapacityBlock: options.kvCapacityBlock,
    },
  );
  let tiers: TierManager | null = null;
  if (options.tiers) {
    tiers = new TierManager(store, {
      layout: model.decoder.io.kv,
      int8: options.tiers.int8 ?? true,
      keyMode: options.tiers.keyMode ?? 'channel',
      snapshotDir: options.tiers.snapshotDir ?? null,
      modelFingerprint: model.folder.modelFingerprint,
      tokenizerFingerprint: model.folder.tokenizerFingerprint,
      logger: silentLogger,
      idleTtlMs: options.tiers.idleTtlMs,
      maxSnapshotBytes: options.tiers.maxSnapshotBytes,
      now: options.tiers.now,
      writer: options.tiers.writer,
    });
    await tiers.init();
    engine.setTierRestorer((session) => tiers!.restore(session));
    engine.setSessionSuperseder((session) => tiers!.supersede(session));
  }
  return { engine, store, model, decoder, tiers };
}

export function request(input: number[], overrides: Partial<GenerationRequest> = {}): GenerationRequest {
  return {
    requestId: `req-${Math.random().toString(36).slice(2)}`,
    owner: '',
    onUnknownSession: 'create',
    mode: 'replace',
    input,
    maxTokens: 16,
    sampling: GREEDY,
    stop: [],
    ignoreEos: true,
    truncation: 'auto',
    ...overrides,
  };
}

export function sampling(overrides: Partial<SamplingParams>): SamplingParams {
  return { ...GREEDY, ...overrides };
}

export interface Collected {
  tokens: number[];
  text: string;
  start: Extract<GenerationEvent, { type: 'start' }> | undefined;
  end: Extract<GenerationEvent, { type: 'end' }>;
  usage: Usage;
}

export async function collect(submitted: SubmitResult | Promise<SubmitResult>): Promise<Collected> {
  const result = await submitted;
  if (!result.ok) throw new Error(`submit failed: ${JSON.stringify(result.error)}`);
  const tokens: number[] = [];
  let text = '';
  let start: Collected['start'];
  let end: Collected['end'] | undefined;
  for await (const event of result.events) {
    if (event.type === 'start') start = event;
    else if (event.type === 'token') {
      tokens.push(event.tokenId);
      text += event.text;
    } else {
      end = event;
      text += event.text;
    }
  }
  if (!end) throw new Error('stream ended without an end event');
  return { tokens, text, start, end, usage: end.usage };
}

/** Random token ids below `limit` from a seeded generator (for prompts that are not text). */
export function randomTokens(count: number, seed: number, limit = 600): number[] {
  let state = seed >>> 0 || 1;
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    out.push((state >>> 0) % limit);
  }
  return out;
}

/** One model call on `tokens` with no cache at all (positions start at `positionOffset`). */
export function runFromScratch(decoder: Decoder, tokens: readonly number[], positionOffset = 0): Promise<DecoderOutput> {
  return decoder.run({
    batchSize: 1,
    seqLength: tokens.length,
    inputIds: BigInt64Array.from(tokens, (t) => BigInt(t)),
    attentionMask: new BigInt64Array(tokens.length).fill(1n),
    positionIds: BigInt64Array.from(tokens, (_, i) => BigInt(i + positionOffset)),
    past: emptyKv(decoder.io.kv, 1),
  });
}

/** Last-position logits of `tokens` computed from scratch (full recomputation, no cache). */
export async function fullRecompute(decoder: Decoder, tokens: readonly number[]): Promise<Float32Array> {
  const out = await runFromScratch(decoder, tokens);
  const n = tokens.length;
  return (out.logits as Float32Array).slice((n - 1) * out.vocabSize, n * out.vocabSize);
}

/** A from-scratch log-softmax of one logits row, in float64: the reference the logprobs tests compare with. */
export function logSoftmax(logits: Float32Array): Float64Array {
  let max = -Infinity;
  for (const v of logits) max = Math.max(max, v);
  let sum = 0;
  for (const v of logits) sum += Math.exp(v - max);
  const logZ = max + Math.log(sum);
  return Float64Array.from(logits, (v) => v - logZ);
}
