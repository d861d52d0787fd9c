/**
 * Per-key limits that need state: concurrent generations (`MAX_STREAMS_PER_KEY`) and sessions
 * (`MAX_SESSIONS_PER_KEY`). The stateless limits (body size, prompt tokens, max_tokens, stop
 * sequences) are checked where the request is read; admission.ts decides when each check runs.
 *
 * A generation counts from the moment it is submitted until the engine finishes it, streaming or not,
 * whether or not a client is still reading: the count comes from the engine's own queue/finish events,
 * so it can never leak. Submissions in flight (between the check and the engine queueing the request)
 * are counted too, so a burst of simultaneous requests cannot slip past the limit; a request moves from
 * "submitting" to "running" when the engine queues it, so it is never counted twice.
 */
import type { GenerationRequest } from '../engine/types.ts';
import { ApiError } from './errors.ts';

/** What the counters need of an engine observer event: the request it is about. */
interface RequestEvent {
  readonly request: GenerationRequest;
}

export class KeyLimits {
  private readonly running = new Map<string, number>();
  private readonly submitting = new Map<string, number>();
  private readonly counted = new WeakSet<RequestEvent>();
  /** Requests inside `submit`; the engine's sequence holds the same request object. */
  private readonly inSubmit = new WeakSet<GenerationRequest>();

  constructor(
    readonly maxStreamsPerKey: number,
    readonly maxSessionsPerKey: number,
  ) {}

  /** Generations of `owner` queued or running in the engine, plus those being submitted. */
  streams(owner: string): number {
    return (this.running.get(owner) ?? 0) + (this.submitting.get(owner) ?? 0);
  }

  /** Engine observer: the request is queued; from now on it counts as running, not as being submitted. */
  requestQueued(sequence: RequestEvent): void {
    if (this.inSubmit.delete(sequence.request)) bump(this.submitting, sequence.request.owner, -1);
    this.counted.add(sequence);
    bump(this.running, sequence.request.owner, 1);
  }

  /** Engine observer: the request is over. */
  requestFinished(sequence: RequestEvent): void {
    if (this.counted.delete(sequence)) bump(this.running, sequence.request.owner, -1);
  }

  /** 429 too_many_streams when `owner` is at the limit, else null. */
  streamsError(owner: string): ApiError | null {
    if (this.streams(owner) < this.maxStreamsPerKey) return null;
    return new ApiError(
      'too_many_streams',
      `This API key already has ${this.maxStreamsPerKey} generations running, the most this server allows per key; wait for one to finish.`,
      null,
      1,
    );
  }

  /** Throws 429 too_many_streams when `owner` is at the limit. */
  checkStreams(owner: string): void {
    const error = this.streamsError(owner);
    if (error) throw error;
  }

  /** Throws 403 too_many_sessions when `owner` already holds `count` >= the limit sessions. */
  checkSessions(count: number): void {
    if (count >= this.maxSessionsPerKey) {
      throw new ApiError(
        'too_many_sessions',
        `This API key already has ${count} sessions, the most this server allows per key; delete one (DELETE /v1/sessions/{id}) before creating another.`,
        'session_id',
      );
    }
  }

  /** Counts `request` as being submitted until `settled` settles (the engine queues it, or refuses it). */
  async whileSubmitting<T>(request: GenerationRequest, settled: () => Promise<T>): Promise<T> {
    bump(this.submitting, request.owner, 1);
    this.inSubmit.add(request);
    try {
      return await settled();
    } finally {
      if (this.inSubmit.delete(request)) bump(this.submitting, request.owner, -1);
    }
  }
}

function bump(counts: Map<string, number>, owner: string, delta: number): void {
  const next = (counts.get(owner) ?? 0) + delta;
  if (next <= 0) counts.delete(owner);
  else counts.set(owner, next);
}
