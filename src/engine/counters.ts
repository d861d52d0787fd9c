/** The engine's running totals: admission, the steps and commits add to one object through EngineParts; engine.counters() copies it. */

/** Running totals, for benchmarks and profiling (what the loop spent its time on). */
export interface EngineCounters {
  decodeSteps: number;
  /** Rows over all decode steps (mean batch size = decodeRows / decodeSteps). */
  decodeRows: number;
  decodeMs: number;
  /** Bytes the decode steps copied out of the model runtime into JavaScript: logits, and present KV when it comes back to the host. */
  decodeBytesOut: number;
  /** The same for prefill chunks (in place: logits and the chunk's new rows; concat: the whole present). */
  prefillBytesOut: number;
  /** Cache slots of all decode steps' batches, and how many of them were left padding. */
  batchSlots: number;
  paddingSlots: number;
  prefillChunks: number;
  prefillTokens: number;
  prefillMs: number;
  /** Prefill chunks that ran on the prefill lane, beside the decode steps (counted in prefillChunks too). */
  laneChunks: number;
  /** Batch re-packs (every row copied into a new tensor), newcomers copied into a free row, and the copy time. */
  repacks: number;
  inPlaceJoins: number;
  repackMs: number;
  /** Window shifts done inside in-place buffers (no copy of the row out and back in). */
  inPlaceWindowShifts: number;
  /** Turns that left their cache in the session as the buffer they ran on, and turns that ran on such a buffer: no copy out, no copy in. */
  heldCommits: number;
  heldResumes: number;
}

export function zeroCounters(): EngineCounters {
  return {
    decodeSteps: 0, decodeRows: 0, decodeMs: 0, decodeBytesOut: 0, prefillBytesOut: 0, batchSlots: 0, paddingSlots: 0,
    prefillChunks: 0, prefillTokens: 0, prefillMs: 0, laneChunks: 0, repacks: 0, inPlaceJoins: 0, repackMs: 0,
    inPlaceWindowShifts: 0, heldCommits: 0, heldResumes: 0,
  };
}
