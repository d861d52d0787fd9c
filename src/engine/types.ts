import type { Tier } from '../cache/session.ts';
import type { GrammarSpec } from './grammar.ts';
import type { TokenLogprob } from './logprobs.ts';
import type { SamplingParams } from './sampler.ts';

export type FinishReason = 'stop' | 'length' | 'cancelled' | 'error';

export type EngineErrorKind =
  | 'invalid_request'
  | 'session_not_found'
  | 'session_busy'
  | 'context_length_exceeded'
  | 'request_too_large'
  | 'queue_full'
  | 'cache_full'
  | 'batch_full'
  | 'shutting_down'
  /** The shared session store (SESSION_STORE_URL) could not be reached: nothing was committed. */
  | 'session_store_unavailable'
  | 'internal';

/** Failures are values: the HTTP layer maps each kind to a status and an OpenAI error body. */
export interface EngineError {
  kind: EngineErrorKind;
  message: string;
  param?: string;
  retryAfterSeconds?: number;
}

export interface GenerationRequest {
  requestId: string;
  /** What kind of call this is, for telemetry labels only. */
  operation?: 'chat' | 'text_completion';
  /** The API key (or "" when the server runs open) the session belongs to. */
  owner: string;
  /** Absent: a one-off session that is not kept. */
  sessionId?: string;
  /** What an unknown `sessionId` does: create it, or fail with session_not_found. */
  onUnknownSession: 'create' | 'fail';
  /**
   * replace: `input` is the whole sequence, and the session's longest matching cached prefix is reused.
   * append: `input` is added to the end of the session's transcript.
   */
  mode: 'replace' | 'append';
  input: number[];
  /** 0 prefills the input into the session's cache and generates nothing. */
  maxTokens: number;
  sampling: SamplingParams;
  /** Makes sampling reproducible; absent: a random seed. */
  seed?: number;
  stop: string[];
  /** Ids that end generation like EOS (also with ignoreEos); their text is kept only with includeStopInOutput. */
  stopTokenIds?: readonly number[];
  /** EOS and stop ids are masked, and stop strings not looked for, until this many tokens are generated. */
  minTokens?: number;
  /** The stop string or stop id's text that ended generation stays in the output (vLLM's include_stop_str_in_output). */
  includeStopInOutput?: boolean;
  /** Absent: no logprobs. Otherwise each token event carries its log-probability and this many top alternatives (0-20). */
  logprobs?: number;
  ignoreEos: boolean;
  /** auto: slide the window when the context fills up; error: refuse requests that would not fit. */
  truncation: 'auto' | 'error';
  /** Constrained decoding: every output token keeps the text a prefix of something the grammar accepts. */
  grammar?: GrammarSpec;
  signal?: AbortSignal;
}

export interface Usage {
  /** Tokens the generation was conditioned on (the whole sequence, not only the uncached part). */
  promptTokens: number;
  completionTokens: number;
  /** Prompt tokens whose KV came from the session's cache (any tier) rather than a prefill. */
  cachedTokens: number;
  /** Tokens the sliding window dropped from the cache during this request. */
  droppedTokens: number;
}

export type GenerationEvent =
  | {
      type: 'start';
      sessionId: string;
      promptTokens: number;
      cachedTokens: number;
      /** Where the reused KV came from. */
      restoredFrom: Tier;
      queueMs: number;
    }
  | { type: 'token'; tokenId: number; text: string; logprob?: TokenLogprob }
  | { type: 'end'; finishReason: FinishReason; text: string; usage: Usage; error?: EngineError };

export type SubmitResult = { ok: true; sessionId: string; events: AsyncIterable<GenerationEvent> } | { ok: false; error: EngineError };

export type { Tier };

/**
 * What an observer (telemetry, per-key limits) sees of a request: a read-only view of the engine's
 * sequence. The same object is passed to every hook of one request, so observers may key on it; they
 * never write to it. Timestamps are epoch ms (0: not yet).
 */
export interface RequestRecord {
  readonly request: Readonly<GenerationRequest>;
  readonly enqueuedAt: number;
  readonly admittedAt: number;
  readonly firstTokenAt: number;
  /** The whole sequence the request conditions on (set when admitted). */
  readonly fullInput: readonly number[];
  readonly generated: readonly number[];
  /** Cache slots the request fills so far. */
  readonly cacheLength: number;
  readonly cachedTokens: number;
  readonly restoredFrom: Tier;
  readonly finishReason: FinishReason | null;
  readonly error: EngineError | undefined;
}

export type { TierMove } from '../cache/session-store.ts';
