/**
 * What the server needs from the runtime, as types: runtime.ts builds these parts, server/ serves them.
 * Both import this file, so neither imports the other (main.ts wires them together).
 */
import type { PrefixCache } from './cache/prefix-cache.ts';
import type { SessionStore } from './cache/session-store.ts';
import type { SharedSessions } from './cache/shared-sessions.ts';
import type { TierManager } from './cache/tiers.ts';
import type { WindowPolicy } from './cache/window.ts';
import type { Config } from './config.ts';
import type { Engine } from './engine/engine.ts';
import type { Logger } from './lib/logger.ts';
import type { ChatTemplate } from './model/chat-template.ts';
import type { LoadedModel } from './model/index.ts';
import type { Metrics } from './telemetry/metrics.ts';
import type { Tracing } from './telemetry/tracing.ts';

export type RuntimeState = 'loading' | 'ready' | 'draining' | 'failed';

/** Facts about the served model the API needs. */
export interface ServedModel {
  id: string;
  loaded: LoadedModel;
  contextLength: number;
  window: WindowPolicy;
  chatTemplate: ChatTemplate;
  /** Unix seconds the model finished loading (`created` in /v1/models). */
  createdAt: number;
  /** Short fingerprint of the weights, sent as `system_fingerprint`. */
  fingerprint: string;
}

export interface Serving {
  model: ServedModel;
  engine: Engine;
  store: SessionStore;
  tiers: TierManager;
  /** The stateless requests' automatic prefix cache; absent with PREFIX_CACHE=off. */
  prefixCache?: PrefixCache;
  /** Where sessions live beyond this process: embedded (none) or Redis (SESSION_STORE_URL). */
  shared?: SharedSessions;
  metrics: Metrics;
  tracing: Tracing;
}

/** The runtime as the server sees it: its state, and the serving parts once the model has loaded. */
export interface ServingSource {
  readonly config: Config;
  readonly logger: Logger;
  /** Model name known before loading (for /v1/models and logs). */
  readonly modelId: string;
  readonly state: RuntimeState;
  readonly serving: Serving | null;
}
