import type { PositionEncoding } from '../model/types.ts';
import type { WindowState } from './session.ts';

/**
 * StreamingLLM-style truncation: keep the first `sinkTokens` tokens (attention sinks) and the most
 * recent ones; when the cache is full, drop `dropTokens` tokens right after the sinks at once, so the
 * cost of a drop is paid once per `dropTokens` tokens rather than every step.
 */
export type WindowStrategy = 'shift' | 'recompute';

export interface WindowPolicy {
  /** Most tokens the cache may hold (the context the model sees). */
  capacity: number;
  sinkTokens: number;
  dropTokens: number;
  /**
   * shift: rotate the kept keys back by the dropped count in place (rotary models only).
   * recompute: prefill the kept tokens again at their new positions (any model).
   */
  strategy: WindowStrategy;
}

export interface WindowSettings {
  sinkTokens: number;
  /** Tokens dropped per truncation; default a quarter of the capacity. */
  dropTokens?: number;
  strategy: 'auto' | WindowStrategy;
}

export class WindowConfigError extends Error {
  override name = 'WindowConfigError';
}

export function resolveWindowPolicy(capacity: number, settings: WindowSettings, positions: PositionEncoding): WindowPolicy {
  const sinkTokens = settings.sinkTokens;
  const dropTokens = settings.dropTokens ?? Math.max(1, Math.floor(capacity / 4));
  if (sinkTokens < 0 || dropTokens < 1 || sinkTokens + dropTokens >= capacity) {
    throw new WindowConfigError(
      `window of ${capacity} tokens cannot keep ${sinkTokens} sink tokens and drop ${dropTokens} at a time (need sinks + drop < context)`,
    );
  }
  let strategy: WindowStrategy;
  if (settings.strategy === 'auto') strategy = positions.kind === 'rotary' ? 'shift' : 'recompute';
  else strategy = settings.strategy;
  if (strategy === 'shift' && positions.kind !== 'rotary') {
    const why = positions.kind === 'learned' ? 'it has learned absolute positions' : positions.reason;
    throw new WindowConfigError(`WINDOW_STRATEGY=shift needs a model with a known rotary layout, but ${why}; use recompute`);
  }
  return { capacity, sinkTokens, dropTokens, strategy };
}

/** Cache slots removed by one drop: `[start, end)`, right after the sinks. */
export function droppedSlots(policy: WindowPolicy): readonly [number, number] {
  return [policy.sinkTokens, policy.sinkTokens + policy.dropTokens];
}

/**
 * The one drop rule, shared by the engine and the scorer (so the quality harness measures what serving
 * does): a cache that holds `capacity` slots must drop before it takes another token; below that it
 * never drops. Drops depend on slot counts alone, so every path over one transcript drops alike.
 */
export function needsDrop(policy: WindowPolicy, cacheLength: number): boolean {
  return cacheLength >= policy.capacity;
}

/** What one drop does to a cache. */
export interface WindowDrop {
  /** Cache slots removed: `[start, end)` (see droppedSlots). */
  slots: readonly [number, number];
  /** Slots left: kept in place by `shift`, prefilled again by `recompute`. */
  keptLength: number;
  /** The window state after the drop. */
  window: WindowState;
}

/** One drop of `policy.dropTokens` slots from a cache of `cacheLength` slots whose window state is `window`. */
export function planDrop(policy: WindowPolicy, window: WindowState, cacheLength: number): WindowDrop {
  return {
    slots: droppedSlots(policy),
    keptLength: cacheLength - policy.dropTokens,
    window: {
      droppedTokens: window.droppedTokens + policy.dropTokens,
      // The transcript index of the next token: everything before it was dropped or is cached.
      lastDropAt: window.droppedTokens + cacheLength,
      dropEvents: window.dropEvents + 1,
    },
  };
}

/**
 * The transcript tokens a cache of `cacheLength` slots holds, slot by slot, under `window` (see
 * WindowState): the sinks, then the tokens after everything dropped. What `recompute` prefills again.
 */
export function cachedTranscript(transcript: readonly number[], sinkTokens: number, window: Pick<WindowState, 'droppedTokens'>, cacheLength: number): number[] {
  const dropped = window.droppedTokens;
  if (dropped === 0) return transcript.slice(0, cacheLength);
  return transcript.slice(0, sinkTokens).concat(transcript.slice(sinkTokens + dropped, dropped + cacheLength));
}

/**
 * How many cache slots stay valid for a new token sequence that agrees with the transcript on its first
 * `prefixMatch` tokens. Without drops that is the match itself. After drops the kept tokens' KV was
 * computed under the drop events so far, which a sequence shares only if it agrees past the latest
 * drop; otherwise (0) the cache must be rebuilt from the start.
 */
export function reusableSlots(window: { droppedTokens: number; lastDropAt: number }, cachedLength: number, prefixMatch: number): number {
  if (window.droppedTokens === 0) return Math.min(cachedLength, prefixMatch);
  if (prefixMatch < window.lastDropAt) return 0;
  return Math.min(cachedLength, prefixMatch - window.droppedTokens);
}
