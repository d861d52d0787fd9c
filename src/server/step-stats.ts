/**
 * Per-step timings of one request, for `stream_options.include_step_stats` (a warmkv extension):
 * the engine's decode steps and prefill chunks, as its observer hook reports them, collected for the
 * requests that asked and handed to their streams.
 *
 * One observer per engine, whatever the number of requests: it looks up each step's sequences by
 * their request's abort signal (one per HTTP request, made by runGeneration, shared by the choices of
 * a request with several prompts), so two requests that share an X-Request-Id never see each other's
 * steps.
 */
import type { Engine, EngineObserver } from '../engine/engine.ts';

/** One engine step as this request saw it. */
export type StepStat =
  | { type: 'prefill'; tokens: number; kv_tokens: number; ms: number }
  | { type: 'decode'; batch: number; kv_tokens: number; ms: number };

/** Rounds a duration to 0.001 ms: the JSON stays short, the chart loses nothing. */
const ms = (value: number) => Math.round(value * 1000) / 1000;

export class StepStatsObserver implements EngineObserver {
  private readonly pending = new Map<AbortSignal, StepStat[]>();

  /** Starts collecting the steps of the request submitted with this signal. */
  watch(signal: AbortSignal): void {
    this.pending.set(signal, []);
  }

  /** The steps collected since the last call (none when nothing happened). */
  take(signal: AbortSignal): StepStat[] {
    const steps = this.pending.get(signal);
    if (!steps || steps.length === 0) return [];
    this.pending.set(signal, []);
    return steps;
  }

  /** Stops collecting; what was not taken is dropped. */
  unwatch(signal: AbortSignal): void {
    this.pending.delete(signal);
  }

  get watching(): number {
    return this.pending.size;
  }

  prefillChunk(sequence: { request: { signal?: AbortSignal } }, info: { tokens: number; kvTokens: number; durationMs: number }): void {
    const steps = sequence.request.signal && this.pending.get(sequence.request.signal);
    if (steps) steps.push({ type: 'prefill', tokens: info.tokens, kv_tokens: info.kvTokens, ms: ms(info.durationMs) });
  }

  decodeStep(info: { sequences: ReadonlyArray<{ request: { signal?: AbortSignal } }>; kvTokens: number; durationMs: number }): void {
    if (this.pending.size === 0) return;
    // A request with several prompts has several rows in one step, all with its signal: one entry per step.
    const seen = new Set<AbortSignal>();
    for (const sequence of info.sequences) {
      const signal = sequence.request.signal;
      const steps = signal && !seen.has(signal) ? this.pending.get(signal) : undefined;
      if (!steps || !signal) continue;
      seen.add(signal);
      steps.push({ type: 'decode', batch: info.sequences.length, kv_tokens: info.kvTokens, ms: ms(info.durationMs) });
    }
  }
}

const observers = new WeakMap<Engine, StepStatsObserver>();

/** The engine's one step-stats observer, added on first use. */
export function stepStatsOf(engine: Engine): StepStatsObserver {
  let observer = observers.get(engine);
  if (!observer) {
    observer = new StepStatsObserver();
    engine.addObserver(observer);
    observers.set(engine, observer);
  }
  return observer;
}
