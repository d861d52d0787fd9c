/**
 * Prometheus metrics: the OpenTelemetry GenAI server histograms (with the semantic conventions'
 * bucket boundaries), token and cache counters, and gauges read at scrape time. The three gauges the
 * Gateway API Inference Extension's endpoint picker reads are warmkv_queue_size,
 * warmkv_running_requests and warmkv_kv_cache_utilization.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { EngineObserver } from '../engine/engine.ts';
import type { RequestRecord, Tier, TierMove } from '../engine/types.ts';
import { registerGrammarMetrics, type GrammarCountersSource } from './grammar-metrics.ts';
import { registerPrefixCacheMetrics, type PrefixCacheCountersSource } from './prefix-cache-metrics.ts';

const TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];
const TPOT_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5];
const DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92];
/** Decode steps on a CPU take milliseconds; finer buckets than the request-level ones. */
const STEP_BUCKETS = [0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024];
const TIERS: Tier[] = ['hot', 'int8', 'disk', 'evicted'];

/** What the gauges read when Prometheus scrapes. */
export interface MetricsSources {
  modelId: string;
  engineStats(): { running: number; waiting: number; batchSize: number };
  budget(): { capacityBytes: number; reservedBytes: number };
  tiers(): { sessions: Record<Tier, number>; bytes: Record<Tier, number>; usedBytes: number };
  /** The int8 tier decision and, when INT8_TIER=auto measured it, the gate's numbers. */
  int8?(): { enabled: boolean; agreement: number | null; perplexityDrift: number | null };
  /** Snapshot files and their bytes (the SNAPSHOT_MAX_BYTES cap applies). */
  snapshotFiles?(): { count: number; bytes: number };
  /** What runs the model, as an info metric's labels (kv_path, decoder_thread, execution_provider, ...). */
  modelInfo?: Record<string, string>;
  /** The background snapshot writers (SNAPSHOT_WRITE_QUEUE): writes queued or under way, written, refused for a full queue. */
  snapshotWrites?(): Array<{ kind: string; pending: number; written: number; refused: number }>;
  /** Constrained decoding's grammar counters (null while no grammar service exists). */
  grammar?(): GrammarCountersSource | null;
  /** The stateless prefix cache's counters (null when PREFIX_CACHE=off). */
  prefixCache?(): PrefixCacheCountersSource | null;
}

export class Metrics implements EngineObserver {
  readonly registry = new Registry();
  private readonly ttft: Histogram<string>;
  private readonly tpot: Histogram<string>;
  private readonly duration: Histogram<string>;
  private readonly queueTime: Histogram<string>;
  /** Bound to the model label once: observed every decode step, where label hashing would show. */
  private readonly stepTime: ReturnType<Histogram<string>['labels']>;
  private readonly promptTokens: Counter<string>;
  private readonly generatedTokens: Counter<string>;
  private readonly cacheQueryTokens: Counter<string>;
  private readonly cacheHitTokens: Counter<string>;
  private readonly cacheRequests: Counter<string>;
  private readonly requests: Counter<string>;
  private readonly tierMoves: Counter<string>;
  private readonly evictions: Counter<string>;
  private readonly windowDrops: Counter<string>;
  private readonly clientDisconnects: Counter<string>;
  private readonly int8Resumes: Counter<string>;

  constructor(private readonly sources: MetricsSources, options: { processMetrics?: boolean } = {}) {
    const registers = [this.registry];
    if (options.processMetrics ?? true) collectDefaultMetrics({ register: this.registry });
    const labels = ['gen_ai_operation_name', 'gen_ai_request_model'];
    this.ttft = new Histogram({ name: 'gen_ai_server_time_to_first_token_seconds', help: 'Time to generate first token for successful responses (queue included).', labelNames: labels, buckets: TTFT_BUCKETS, registers });
    this.tpot = new Histogram({ name: 'gen_ai_server_time_per_output_token_seconds', help: 'Time per output token generated after the first token for successful responses.', labelNames: labels, buckets: TPOT_BUCKETS, registers });
    this.duration = new Histogram({ name: 'gen_ai_server_request_duration_seconds', help: 'Generative AI server request duration, to the last output token.', labelNames: [...labels, 'error_type'], buckets: DURATION_BUCKETS, registers });
    this.queueTime = new Histogram({ name: 'warmkv_queue_time_seconds', help: 'Time requests waited in the queue before admission.', labelNames: ['gen_ai_request_model'], buckets: TTFT_BUCKETS, registers });
    this.stepTime = new Histogram({ name: 'warmkv_decode_step_seconds', help: 'Latency of one batched decode step (one model call).', labelNames: ['gen_ai_request_model'], buckets: STEP_BUCKETS, registers }).labels({ gen_ai_request_model: sources.modelId });
    this.promptTokens = new Counter({ name: 'warmkv_prompt_tokens_total', help: 'Prompt tokens of finished requests (cached ones included).', labelNames: ['gen_ai_request_model'], registers });
    this.generatedTokens = new Counter({ name: 'warmkv_generation_tokens_total', help: 'Generated tokens.', labelNames: ['gen_ai_request_model'], registers });
    this.cacheQueryTokens = new Counter({ name: 'warmkv_prefix_cache_queries_total', help: 'Prompt tokens looked up in session caches.', labelNames: ['gen_ai_request_model'], registers });
    this.cacheHitTokens = new Counter({ name: 'warmkv_prefix_cache_hits_total', help: 'Prompt tokens served from session caches (any tier).', labelNames: ['gen_ai_request_model', 'tier'], registers });
    this.cacheRequests = new Counter({ name: 'warmkv_cache_requests_total', help: 'Requests by whether any prompt token came from a cache.', labelNames: ['gen_ai_request_model', 'result'], registers });
    this.requests = new Counter({ name: 'warmkv_requests_total', help: 'Finished generation requests by finish reason.', labelNames: ['gen_ai_request_model', 'finish_reason'], registers });
    this.tierMoves = new Counter({ name: 'warmkv_tier_moves_total', help: 'Idle sessions moved down a tier under memory pressure.', labelNames: ['from', 'to'], registers });
    this.evictions = new Counter({ name: 'warmkv_evictions_total', help: 'Sessions whose KV was dropped from memory entirely (to disk or to the transcript).', registers });
    this.int8Resumes = new Counter({ name: 'warmkv_int8_resumes_total', help: 'Requests that resumed a session from its int8 (lossy) cache.', registers });
    this.windowDrops = new Counter({ name: 'warmkv_window_drops_total', help: 'Sliding-window truncations.', labelNames: ['strategy'], registers });
    this.clientDisconnects = new Counter({ name: 'warmkv_client_disconnects_total', help: 'Clients that left before their answer: mid-body (body) or before a non-streamed answer (generation).', labelNames: ['phase'], registers });

    const gauge = (name: string, help: string, collect: (g: Gauge<string>) => void, labelNames: string[] = []) =>
      new Gauge({ name, help, labelNames, registers, collect(this: Gauge<string>) { collect(this); } });
    gauge('warmkv_running_requests', 'Requests admitted and generating (Inference Extension: running requests).', (g) => g.set(sources.engineStats().running));
    gauge('warmkv_queue_size', 'Requests waiting for admission (Inference Extension: queued requests).', (g) => g.set(sources.engineStats().waiting));
    gauge('warmkv_batch_size', 'Rows in the current decode batch.', (g) => g.set(sources.engineStats().batchSize));
    gauge('warmkv_kv_cache_utilization', 'Share of the KV byte budget in use, 0..1 (Inference Extension: KV cache utilization).', (g) => {
      const b = sources.budget();
      g.set(b.capacityBytes > 0 ? b.reservedBytes / b.capacityBytes : 0);
    });
    gauge('warmkv_kv_cache_capacity_bytes', 'The KV byte budget.', (g) => g.set(sources.budget().capacityBytes));
    gauge('warmkv_kv_cache_bytes', 'Bytes held in memory by sessions, per tier.', (g) => {
      const counts = sources.tiers();
      for (const tier of TIERS) g.set({ tier }, counts.bytes[tier]);
    }, ['tier']);
    gauge('warmkv_kv_cache_used_bytes', 'Bytes the cached tokens occupy; reserved (warmkv_kv_cache_bytes) minus this is block fragmentation.', (g) => g.set(sources.tiers().usedBytes));
    const int8 = sources.int8;
    if (int8) {
      gauge('warmkv_int8_tier_enabled', 'Whether idle sessions may be quantized to int8 (INT8_TIER, or the gate at load when auto).', (g) => g.set(int8().enabled ? 1 : 0));
      gauge('warmkv_int8_gate_agreement', 'Share of calibration positions where the int8 cache kept the greedy token (INT8_TIER=auto only).', (g) => {
        const value = int8().agreement;
        if (value !== null) g.set(value);
      });
      gauge('warmkv_int8_gate_perplexity_drift', 'Relative perplexity change of the calibration continuation on the int8 cache (INT8_TIER=auto only).', (g) => {
        const value = int8().perplexityDrift;
        if (value !== null) g.set(value);
      });
    }
    const files = sources.snapshotFiles;
    if (files) {
      gauge('warmkv_snapshot_files', 'Session snapshot files in SNAPSHOT_DIR.', (g) => g.set(files().count));
      gauge('warmkv_snapshot_bytes', 'Bytes of the session snapshot files (capped by SNAPSHOT_MAX_BYTES).', (g) => g.set(files().bytes));
    }
    const info = sources.modelInfo;
    if (info) {
      const labelNames = Object.keys(info);
      new Gauge({ name: 'warmkv_model_info', help: 'What runs the model: always 1, the labels say how (KV path, decoder thread, execution provider, threads, grouped attention).', labelNames, registers }).set(info, 1);
    }
    const writes = sources.snapshotWrites;
    if (writes) {
      gauge('warmkv_snapshot_writes_pending', 'Snapshot writes queued or under way in the background writer, per kind (session, prefix).', (g) => {
        for (const w of writes()) g.set({ kind: w.kind }, w.pending);
      }, ['kind']);
      new Counter({
        name: 'warmkv_snapshot_writes_total',
        help: 'Background snapshot writes by kind and result: written, or refused because SNAPSHOT_WRITE_QUEUE was full.',
        labelNames: ['kind', 'result'],
        registers,
        collect(this: Counter<string>) {
          this.reset();
          for (const w of writes()) {
            this.inc({ kind: w.kind, result: 'written' }, w.written);
            this.inc({ kind: w.kind, result: 'refused' }, w.refused);
          }
        },
      });
    }
    if (sources.grammar) registerGrammarMetrics(this.registry, sources.modelId, sources.grammar);
    registerPrefixCacheMetrics(this.registry, () => sources.prefixCache?.() ?? null);
    gauge('warmkv_sessions', 'Sessions per tier.', (g) => {
      const counts = sources.tiers();
      for (const tier of TIERS) g.set({ tier }, counts.sessions[tier]);
    }, ['tier']);
  }

  /** For store.onTierMove. */
  recordTierMove(event: TierMove): void {
    this.tierMoves.inc({ from: event.from, to: event.to });
    if (event.to === 'disk' || event.to === 'evicted') this.evictions.inc();
  }

  clientDisconnected(phase: string): void {
    this.clientDisconnects.inc({ phase });
  }

  requestStarted(sequence: RequestRecord): void {
    if (sequence.restoredFrom === 'int8') this.int8Resumes.inc();
  }

  decodeStep(info: { sequences: readonly RequestRecord[]; durationMs: number }): void {
    this.stepTime.observe(info.durationMs / 1000);
  }

  windowDrop(_sequence: RequestRecord, info: { strategy: string }): void {
    this.windowDrops.inc({ strategy: info.strategy });
  }

  requestFinished(sequence: RequestRecord): void {
    const model = this.sources.modelId;
    const operation = sequence.request.operation ?? 'text_completion';
    const labels = { gen_ai_operation_name: operation, gen_ai_request_model: model };
    const end = Date.now();
    const reason = sequence.finishReason ?? 'error';
    this.requests.inc({ gen_ai_request_model: model, finish_reason: reason });
    const errorType = reason === 'error' ? (sequence.error?.kind ?? '_OTHER') : '';
    this.duration.observe({ ...labels, error_type: errorType }, (end - sequence.enqueuedAt) / 1000);
    if (sequence.admittedAt === 0) return;
    this.queueTime.observe({ gen_ai_request_model: model }, (sequence.admittedAt - sequence.enqueuedAt) / 1000);
    const generated = sequence.generated.length;
    this.promptTokens.inc({ gen_ai_request_model: model }, sequence.fullInput.length);
    this.generatedTokens.inc({ gen_ai_request_model: model }, generated);
    this.cacheQueryTokens.inc({ gen_ai_request_model: model }, sequence.fullInput.length);
    if (sequence.cachedTokens > 0) this.cacheHitTokens.inc({ gen_ai_request_model: model, tier: sequence.restoredFrom }, sequence.cachedTokens);
    this.cacheRequests.inc({ gen_ai_request_model: model, result: sequence.cachedTokens > 0 ? 'hit' : 'miss' });
    if (reason === 'error' || sequence.firstTokenAt === 0) return;
    this.ttft.observe(labels, (sequence.firstTokenAt - sequence.enqueuedAt) / 1000);
    if (generated > 1) this.tpot.observe(labels, (end - sequence.firstTokenAt) / 1000 / (generated - 1));
  }

  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
