/**
 * Finds stop strings in streamed text. Text that could still be the start of a stop string is held
 * back until the next delta decides it, so a stop string split across tokens is never emitted.
 */
export class StopStringMatcher {
  private held = '';
  private readonly longest: number;

  /** `includeStop`: the text given back ends with the stop string itself (vLLM's include_stop_str_in_output). */
  constructor(
    private readonly stops: readonly string[],
    private readonly includeStop = false,
  ) {
    this.longest = stops.reduce((max, s) => Math.max(max, s.length), 0);
  }

  /** Returns the text that is safe to emit now and whether a stop string ended the output. */
  push(delta: string): { text: string; stopped: boolean } {
    if (this.stops.length === 0) return { text: delta, stopped: false };
    const buffer = this.held + delta;
    let stopAt = -1;
    let stopLength = 0;
    for (const stop of this.stops) {
      const index = buffer.indexOf(stop);
      if (index !== -1 && (stopAt === -1 || index < stopAt)) {
        stopAt = index;
        stopLength = stop.length;
      }
    }
    if (stopAt !== -1) {
      this.held = '';
      return { text: buffer.slice(0, this.includeStop ? stopAt + stopLength : stopAt), stopped: true };
    }
    const keep = this.partialMatchLength(buffer);
    this.held = buffer.slice(buffer.length - keep);
    return { text: buffer.slice(0, buffer.length - keep), stopped: false };
  }

  /** At the end of generation nothing can complete a stop string any more. */
  flush(): string {
    const rest = this.held;
    this.held = '';
    return rest;
  }

  /** Length of the longest suffix of `buffer` that is a proper prefix of some stop string. */
  private partialMatchLength(buffer: string): number {
    const maxLength = Math.min(buffer.length, this.longest - 1);
    for (let length = maxLength; length > 0; length--) {
      const suffix = buffer.slice(buffer.length - length);
      if (this.stops.some((stop) => stop.startsWith(suffix))) return length;
    }
    return 0;
  }
}
