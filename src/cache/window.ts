import type { PositionEncoding } from '../model/types.ts';

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

/** Cache slots removed by one drop. */
export function droppedSlots(policy: WindowPolicy): readonly [number, number] {
  return [policy.sinkTokens, policy.sinkTokens + policy.dropTokens];
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
