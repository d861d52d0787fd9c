/**
 * Per-key limits that need state: concurrent generations (`MAX_STREAMS_PER_KEY`) and sessions
 * (`MAX_SESSIONS_PER_KEY`). The stateless limits (body size, prompt tokens, max_tokens, stop
 * sequences) are checked where the request is read.
 *
 * A generation counts from the moment it is submitted until the engine finishes it, streaming or not,
 * whether or not a client is still reading: the count comes from the engine's own queue/finish events,
 * so it can never leak. Submissions in flight (between the check and the engine queueing the request)
 * are counted too, so a burst of simultaneous requests cannot slip past the limit; a request moves from
 * "submitting" to "running" when the engine queues it, so it is never counted twice.
 */
import type { Engine, EngineObserver } from '../engine/engine.ts';
import type { Sequence } from '../engine/sequence.ts';
import type { EngineError, EngineErrorKind, GenerationRequest, SubmitResult } from '../engine/types.ts';
import { ApiError, type ErrorKind } from './errors.ts';

export class KeyLimits implements EngineObserver {
  private readonly running = new Map<string, number>();
  private readonly submitting = new Map<string, number>();
  private readonly counted = new WeakSet<Sequence>();
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

  requestQueued(sequence: Sequence): void {
    // Queued: from now on the request counts as running, not as being submitted.
    if (this.inSubmit.delete(sequence.request)) bump(this.submitting, sequence.request.owner, -1);
    this.counted.add(sequence);
    bump(this.running, sequence.request.owner, 1);
  }

  requestFinished(sequence: Sequence): void {
    if (this.counted.delete(sequence)) bump(this.running, sequence.request.owner, -1);
  }

  private streamsError(): { kind: ErrorKind; message: string; retryAfterSeconds: number } {
    return {
      kind: 'too_many_streams',
      message: `This API key already has ${this.maxStreamsPerKey} generations running, the most this server allows per key; wait for one to finish.`,
      retryAfterSeconds: 1,
    };
  }

  /** Throws 429 too_many_streams when `owner` is at the limit (a cheap early check; `gate` enforces it). */
  checkStreams(owner: string): void {
    if (this.streams(owner) >= this.maxStreamsPerKey) {
      const e = this.streamsError();
      throw new ApiError(e.kind, e.message, null, e.retryAfterSeconds);
    }
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

  /**
   * The engine as the HTTP layer sees it: `submit` refuses a request whose key is at the limit and
   * counts it while it is being submitted; everything else is the engine's own.
   */
  gate(engine: Engine): Engine {
    const submit = async (request: GenerationRequest): Promise<SubmitResult> => {
      const owner = request.owner;
      if (this.streams(owner) >= this.maxStreamsPerKey) {
        // The error table knows this kind; the engine's own kinds do not include it.
        return { ok: false, error: this.streamsError() as unknown as EngineError & { kind: EngineErrorKind } };
      }
      bump(this.submitting, owner, 1);
      this.inSubmit.add(request);
      try {
        return await engine.submit(request);
      } finally {
        if (this.inSubmit.delete(request)) bump(this.submitting, owner, -1);
      }
    };
    return new Proxy(engine, {
      get(target, property) {
        if (property === 'submit') return submit;
        const value: unknown = Reflect.get(target, property, target);
        return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      },
    });
  }
}

function bump(counts: Map<string, number>, owner: string, delta: number): void {
  const next = (counts.get(owner) ?? 0) + delta;
  if (next <= 0) counts.delete(owner);
  else counts.set(owner, next);
}
