/**
 * The prefill lane (`PREFILL_LANE=worker`, issue 15): a second decoder, on a thread of its own, that
 * runs one long prompt's chunks while the engine's loop keeps stepping the decode batch on the main
 * decoder. Without it a chunk and a decode step share one call sequence, so every running stream's next
 * token waits for the chunk in flight: a 16-token chunk over a 30,000-token past costs 20-45 ms against
 * a 3 ms decode step, and no chunk size removes that (docs/benchmarks.md, "Prefill fairness").
 *
 * The lane only executes: the scheduler picks what it runs (`lanePlan`), the step executor prepares the
 * chunk and applies its result at the top of a loop iteration, so every change to a sequence's state
 * besides its own cache happens inside the loop as before. While a chunk is in flight its sequence is
 * `inLane`: no other step, reaping or window drop touches it (its in-place buffer may be on the lane's
 * thread), and the loop may sleep until the lane wakes it.
 */
import type { Runner, StepResult } from './runner.ts';
import type { Sequence } from './sequence.ts';

/** A chunk the lane finished: its sequence, how many prompt tokens it fed, and the call's result. */
export interface LandedChunk {
  sequence: Sequence;
  tokens: number;
  step: StepResult;
}

export class PrefillLane {
  private inFlight: Promise<void> | null = null;
  private landed: LandedChunk | null = null;

  constructor(
    /** Runs the lane's calls on the lane's decoder (its counters are the engine's). */
    readonly runner: Runner,
    /** Wakes the engine's loop when a chunk lands (it may be asleep with nothing else to do). */
    private readonly wake: () => void,
  ) {}

  /** A chunk is in flight or waits to be applied: the lane takes nothing new. */
  get busy(): boolean {
    return this.inFlight !== null || this.landed !== null;
  }

  /** Starts `call` (a prefill chunk of `sequence` on this lane's runner) without waiting for it. */
  start(sequence: Sequence, tokens: number, call: Promise<StepResult>): void {
    sequence.inLane = true;
    this.inFlight = call
      .catch((error: unknown): StepResult => ({ ok: false, error }))
      .then((step) => {
        this.inFlight = null;
        this.landed = { sequence, tokens, step };
        this.wake();
      });
  }

  /** The chunk that landed since the last call, for the loop to apply; its sequence is no longer in the lane. */
  take(): LandedChunk | null {
    const landed = this.landed;
    if (!landed) return null;
    this.landed = null;
    landed.sequence.inLane = false;
    return landed;
  }
}
