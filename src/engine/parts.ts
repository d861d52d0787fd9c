/**
 * What the loop's pieces share: admission (admit.ts), step execution (step.ts) and finishing
 * (commit.ts). The Engine builds one of these in its constructor and owns everything in it; beyond it
 * the pieces hold only admission's two hooks (the tier restorer and the snapshot superseder).
 */
import type { SessionStore } from '../cache/session-store.ts';
import type { WindowPolicy } from '../cache/window.ts';
import type { Logger } from '../lib/logger.ts';
import type { KvLayout, ModelCapabilities } from '../model/types.ts';
import type { DecodeBatch } from './batch.ts';
import type { EngineCounters } from './counters.ts';
import type { EngineModel, EngineObserver } from './engine.ts';
import type { InPlaceBatch } from './inplace-batch.ts';
import type { OwnBuffers } from './own-buffer.ts';
import type { PrefillLane } from './prefill-lane.ts';
import type { Runner } from './runner.ts';
import type { Scheduler } from './scheduler.ts';
import type { Sequence } from './sequence.ts';
import type { EngineError, FinishReason } from './types.ts';

export interface EngineParts {
  readonly model: EngineModel;
  /** What the export can do: the model's own, else everything (a getter over `model`). */
  readonly capabilities: ModelCapabilities;
  readonly layout: KvLayout;
  readonly store: SessionStore;
  readonly window: WindowPolicy;
  /** Rotary frequencies for `shift` window drops; null for `recompute`. */
  readonly inverseFrequencies: Float32Array | null;
  readonly scheduler: Scheduler<Sequence>;
  /** The decoding sequences' shared KV (batch.ts, or inplace-batch.ts under KV_MODE=inplace). */
  readonly decodeBatch: DecodeBatch<Sequence> | InPlaceBatch<Sequence>;
  /** KV_MODE=inplace: the prefilling and lone sequences' own buffers; null in concat mode. */
  readonly ownBuffers: OwnBuffers | null;
  readonly runner: Runner;
  /** `PREFILL_LANE=worker`: long prompts' chunks on a second decoder beside the decode steps; null otherwise. */
  readonly lane: PrefillLane | null;
  /** The engine's counters (engine.counters() copies them). */
  readonly counters: EngineCounters;
  readonly observers: readonly EngineObserver[];
  readonly logger: Logger;
  readonly now: () => number;
  /** Ends a sequence (commit.ts's finishSequence) and wakes the loop. */
  finish(sequence: Sequence, reason: FinishReason, error?: EngineError): void;
}
