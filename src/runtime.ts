/**
 * Assembles what the server serves from a Config: the model, the session store under its KV budget,
 * the window policy and the engine. Loading runs in the background so the HTTP server can listen
 * (healthz 200, readyz 503) while the weights load.
 */
import { freemem } from 'node:os';
import { basename, resolve } from 'node:path';
import { KvBudget } from './cache/budget.ts';
import { PrefixCache } from './cache/prefix-cache.ts';
import { SessionStore } from './cache/session-store.ts';
import { EmbeddedSessions, type SharedSessions } from './cache/shared-sessions.ts';
import { resolveWindowPolicy } from './cache/window.ts';
import { defaultKvCacheBytes, type Config } from './config.ts';
import { PrefixSnapshots } from './cache/prefix-snapshots.ts';
import { TierManager } from './cache/tiers.ts';
import { Engine } from './engine/engine.ts';
import { measureInt8, type Int8GateResult } from './engine/int8-gate.ts';
import { inPlaceRefusal } from './engine/own-buffer.ts';
import { silentLogger, type Logger } from './lib/logger.ts';
import { loadModel, type Decoder, type LoadedModel } from './model/index.ts';
import { ChatTemplate } from './model/chat-template.ts';
import type { RuntimeState, ServedModel, Serving, ServingSource } from './serving.ts';
import type { EventLogRegistry } from './streams/registry.ts';
import { Metrics } from './telemetry/metrics.ts';
import { Tracing, globalTracer } from './telemetry/tracing.ts';

export class RuntimeError extends Error {
  override name = 'RuntimeError';
}

export interface RuntimeOptions {
  logger?: Logger;
  /** Replaces loading from `config.model` (tests share one loaded model). */
  load?: (config: Config, logger: Logger) => Promise<LoadedModel>;
  /** Wraps the decoder (tests slow it down or count calls). */
  wrapDecoder?: (decoder: Decoder) => Decoder;
  /** Free memory used for the default KV budget. */
  freeMemoryBytes?: () => number;
  /** Node process metrics in /metrics (off in tests that create many runtimes). */
  processMetrics?: boolean;
  /** The resumable streams the server keeps; `close` closes them with the rest. */
  streams?: EventLogRegistry;
}

/** Whether the int8 tier is on, and the gate's measurement when INT8_TIER=auto decided it. */
export interface Int8Decision {
  enabled: boolean;
  gate: Int8GateResult | null;
}

/** INT8_TIER: true / false as set; auto runs the measured gate (int8-gate.ts) on the loaded decoder. */
export async function decideInt8(config: Config, loaded: LoadedModel, logger: Logger): Promise<Int8Decision> {
  if (config.int8Tier !== 'auto') return { enabled: config.int8Tier, gate: null };
  let gate: Int8GateResult;
  try {
    const inPlace = inPlaceRefusal(loaded) === null;
    gate = await measureInt8(loaded.decoder, { vocabSize: loaded.vocabSize, keyMode: 'channel', multiTokenOverPast: loaded.capabilities.multiTokenOverPast, inPlace });
  } catch (error) {
    logger.warn({ err: (error as Error).message }, 'int8 tier disabled: the int8 gate could not run on this model');
    return { enabled: false, gate: null };
  }
  const fields = { agreement: gate.agreement, perplexityDrift: Number(gate.perplexityDrift.toFixed(5)), maxLogitDrift: Number(gate.maxLogitDrift.toFixed(4)), positions: gate.positions, ms: Math.round(gate.ms) };
  if (gate.enabled) logger.info(fields, 'int8 tier enabled: the measured gate passed');
  else logger.warn(fields, 'int8 tier disabled: int8 KV changes this model\'s greedy output or perplexity too much');
  return { enabled: gate.enabled, gate };
}

/** The model's context length under the config, checked against what the architecture allows. */
export function contextLengthFor(config: Config, loaded: LoadedModel): number {
  const folder = loaded.folder;
  const length = config.maxContextTokens ?? folder.maxPositions ?? 2048;
  const positions = folder.positionEncoding;
  if (positions.kind === 'learned' && length > positions.maxPositions) {
    throw new RuntimeError(
      `MAX_CONTEXT_TOKENS=${length} exceeds the ${positions.maxPositions} positions of the model's learned position table (${folder.modelType}); use at most ${positions.maxPositions}`,
    );
  }
  return length;
}

/** Builds the serving parts from a loaded model. Throws RuntimeError / WindowConfigError on bad settings. */
/** The shared session store SESSION_STORE_URL names, or the embedded one. */
export async function sharedSessionsFor(config: Config): Promise<SharedSessions> {
  if (!config.sessionStoreUrl) return new EmbeddedSessions();
  // ioredis (about 12 MiB of resident memory) is loaded only by a server that names a store.
  const { RedisSessions } = await import('./cache/redis-sessions.ts');
  return new RedisSessions({ url: config.sessionStoreUrl, leaseMs: Math.max(1, config.sessionLeaseSeconds * 1000), ttlMs: config.sessionIdleSeconds * 1000 });
}

export function assemble(config: Config, loaded: LoadedModel, options: RuntimeOptions = {}, int8Decision?: Int8Decision, shared: SharedSessions = new EmbeddedSessions()): Serving {
  // Without a measurement, auto means off: the lossy tier is used only where it was measured.
  const int8: Int8Decision = int8Decision ?? { enabled: config.int8Tier === true, gate: null };
  const logger = options.logger ?? silentLogger;
  const folder = loaded.folder;
  const contextLength = contextLengthFor(config, loaded);
  const window = resolveWindowPolicy(
    contextLength,
    { sinkTokens: config.sinkTokens, dropTokens: config.windowDropTokens, strategy: config.windowStrategy },
    folder.positionEncoding,
  );
  const budgetBytes = config.kvCacheBytes ?? defaultKvCacheBytes((options.freeMemoryBytes ?? freemem)());
  const store = new SessionStore(new KvBudget(budgetBytes, config.kvBlockTokens));
  const decoder = options.wrapDecoder ? options.wrapDecoder(loaded.decoder) : loaded.decoder;
  const engine = new Engine(
    { decoder, tokenizer: loaded.tokenizer, vocabSize: loaded.vocabSize, eosTokenIds: folder.eosTokenIds, positionEncoding: folder.positionEncoding, capabilities: loaded.capabilities,
      grammarVocabulary: () => loaded.tokenizer.encodedVocabulary(), prefillDecoder: loaded.prefillDecoder },
    store,
    {
      maxBatchSize: config.maxBatchSize,
      maxQueue: config.maxQueue,
      prefillChunkTokens: config.prefillChunkTokens,
      queueTimeoutMs: config.queueTimeoutSeconds * 1000,
      window,
      kvMode: config.kvMode,
      kvCapacityBlock: config.kvCapacityBlock,
    },
    logger.child({ component: 'engine' }),
  );
  const identity = { layout: decoder.io.kv, modelFingerprint: folder.modelFingerprint, tokenizerFingerprint: folder.tokenizerFingerprint };
  // In a fleet, SNAPSHOT_DIR holds immutable prefix snapshots any replica may load (per-session files stay off).
  const prefixes = shared.shared && config.snapshotDir
    ? new PrefixSnapshots({ ...identity, dir: config.snapshotDir, logger: logger.child({ component: 'prefix-snapshots' }), ttlMs: config.sessionIdleSeconds * 1000, maxBytes: config.snapshotMaxBytes, writer: { maxQueue: config.snapshotWriteQueue } })
    : null;
  const tiers = new TierManager(store, {
    layout: decoder.io.kv,
    int8: int8.enabled,
    keyMode: 'channel',
    // With a shared store, per-session snapshot files on a shared folder would be restored by one replica under another's feet.
    snapshotDir: shared.shared ? null : (config.snapshotDir ?? null),
    modelFingerprint: folder.modelFingerprint,
    tokenizerFingerprint: folder.tokenizerFingerprint,
    logger: logger.child({ component: 'tiers' }),
    idleTtlMs: config.sessionIdleSeconds * 1000,
    maxSnapshotBytes: config.snapshotMaxBytes,
    writer: { maxQueue: config.snapshotWriteQueue },
    prefixes,
  });
  const prefixCache = config.prefixCache === 'on' ? new PrefixCache(store, decoder.io.kv, config.prefixCacheEntries) : undefined;
  if (prefixCache) engine.addObserver(prefixCache);
  engine.setTierRestorer((session) => tiers.restore(session));
  engine.setSessionSuperseder((session) => tiers.supersede(session));
  const modelId = config.modelId ?? folder.id;
  const metrics = new Metrics(
    {
      modelId,
      engineStats: () => engine.stats(),
      budget: () => ({ capacityBytes: store.budget.capacityBytes, reservedBytes: store.budget.reservedBytes }),
      tiers: () => tiers.counts(),
      int8: () => ({ enabled: int8.enabled, agreement: int8.gate?.agreement ?? null, perplexityDrift: int8.gate?.perplexityDrift ?? null }),
      snapshotFiles: () => tiers.files,
      snapshotWrites: () => tiers.writeCounts(),
      modelInfo: {
        gen_ai_request_model: modelId,
        kv_path: engine.kvPath,
        decoder_thread: loaded.decoder.thread ?? 'unknown',
        execution_provider: loaded.decoder.executionProvider,
        intra_op_threads: String(loaded.decoder.intraOpThreads ?? 'unknown'),
        grouped_attention: loaded.decoder.io.groupedAttention ? 'true' : 'false',
        prefill_lane: loaded.prefillDecoder ? 'worker' : 'off',
      },
      grammar: () => engine.grammarCounters(),
      prefixCache: () => prefixCache?.counters() ?? null,
    },
    { processMetrics: options.processMetrics ?? true },
  );
  engine.addObserver(metrics);
  // A prefix entry losing its KV is the prefix cache's eviction (counted there), not a session's tier move.
  store.onTierMove((event) => {
    if (!store.isPrefixEntry(event.session)) metrics.recordTierMove(event);
  });
  const tracing = new Tracing(globalTracer(), modelId);
  engine.addObserver(tracing);
  const model: ServedModel = {
    id: modelId,
    loaded,
    contextLength,
    window,
    chatTemplate: ChatTemplate.forTokenizer(loaded.tokenizer),
    createdAt: Math.floor(Date.now() / 1000),
    fingerprint: `fp_${folder.modelFingerprint.slice(0, 10)}`,
  };
  return { model, engine, store, tiers, prefixCache, metrics, tracing, shared };
}

/**
 * The server's view of the model: its state, and once loaded, the engine and store. `ready` settles
 * when loading ends (rejecting with the load error).
 */
export class Runtime implements ServingSource {
  private currentState: RuntimeState = 'loading';
  private parts: Serving | null = null;
  private failure: Error | null = null;
  /** Stops the tier sweeps; set once they run. */
  private stopSweeps: (() => void) | null = null;
  private closing: Promise<void> | null = null;
  private shared: SharedSessions | null = null;
  readonly ready: Promise<Serving>;
  /** Model name known before loading (for /v1/models and logs). */
  readonly modelId: string;
  readonly logger: Logger;
  private readonly streams: EventLogRegistry | null;

  constructor(
    readonly config: Config,
    options: RuntimeOptions = {},
  ) {
    const logger = options.logger ?? silentLogger;
    this.logger = logger;
    this.streams = options.streams ?? null;
    this.modelId = config.modelId ?? basename(resolve(config.model));
    const load = options.load ?? ((c, logger) => loadModel(c.model, {
      id: c.modelId,
      executionProvider: c.executionProvider,
      fallbackToCpu: c.executionProviderFallback,
      intraOpThreads: c.intraOpThreads,
      newRowOutputs: c.kvMode === 'inplace',
      decoderThread: c.decoderThread,
      workerMinStepMs: c.decoderWorkerMinStepMs,
      prefillLaneThreads: c.prefillLane === 'worker' ? c.prefillLaneThreads : undefined,
      logger,
    }));
    this.ready = (async () => {
      try {
        // Checked before the weights load: an unreachable store is a clear error at once.
        const shared = await sharedSessionsFor(config);
        await shared.connect();
        this.shared = shared;
        const loaded = await load(config, logger.child({ component: 'model' }));
        const int8 = await decideInt8(config, loaded, logger.child({ component: 'tiers' }));
        const parts = assemble(config, loaded, { ...options, logger }, int8, shared);
        await parts.tiers.init();
        if (this.closing) {
          // Closed while loading: nothing was served with these parts.
          await disposeDecoders(parts);
          throw new RuntimeError('the runtime was closed while the model loaded');
        }
        const stopTierSweeps = parts.tiers.startSweeps({ int8AfterMs: config.int8AfterSeconds * 1000, idleTtlMs: config.sessionIdleSeconds * 1000 });
        const stopPrefixSweeps = parts.prefixCache?.startSweeps(config.sessionIdleSeconds * 1000);
        this.stopSweeps = () => {
          stopTierSweeps();
          stopPrefixSweeps?.();
        };
        this.parts = parts;
        if (this.currentState === 'loading') this.currentState = 'ready';
        return parts;
      } catch (error) {
        this.failure = error as Error;
        if (this.currentState === 'loading') this.currentState = 'failed';
        throw error;
      }
    })();
    // The server reports a failed load through readyz; main.ts decides whether to exit.
    this.ready.catch(() => {});
  }

  get state(): RuntimeState {
    return this.currentState;
  }

  get serving(): Serving | null {
    return this.parts;
  }

  get error(): Error | null {
    return this.failure;
  }

  /** Refuse new work from now on (readyz 503); running requests go on. */
  markDraining(): void {
    this.currentState = 'draining';
  }

  /** Marks draining and lets running requests finish for up to `timeoutMs` (the engine cancels the rest). */
  async drain(timeoutMs: number): Promise<void> {
    this.markDraining();
    await this.parts?.engine.drain(timeoutMs);
  }

  /**
   * Frees what the runtime built, the pair of its constructor: cancels what still runs, stops the tier
   * sweeps, lets queued snapshot writes land, closes the resumable streams and disposes the decoder.
   * Call after `drain`; idempotent.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.markDraining();
      this.streams?.close();
      const parts = this.parts;
      if (!parts) {
        await this.shared?.close();
        return;
      }
      await parts.engine.drain(0);
      this.stopSweeps?.();
      this.stopSweeps = null;
      // Snapshots still being written land before the process may exit.
      await parts.tiers.flush();
      await this.shared?.close();
      await disposeDecoders(parts);
    })();
    return this.closing;
  }
}

/** The model's sessions: the decoder, and the prefill lane's when there is one (idle once the engine drained). */
async function disposeDecoders(parts: Serving): Promise<void> {
  await parts.engine.model.decoder.dispose();
  await parts.engine.model.prefillDecoder?.dispose();
}
