/**
 * Which generation runs on each session, so that a new request can supersede one nobody reads any
 * more: a chat UI that pressed Stop (the client closed its connection) and sends the next message
 * must get it answered at once, not a 409 while the abandoned generation runs on for resumption.
 *
 * A run "has a reader" while a client waits for its output: a connection reading its stream, or,
 * for a non-streaming request, the open request itself. A new request on a session whose run has
 * no reader cancels it (reason `superseded`, written into the old stream's log as its terminal
 * event) and waits for the engine to let the session go; one whose run still has a reader is left
 * to the engine, which answers 409 session_busy.
 */
import type { CancelReason } from '../streams/registry.ts';

export interface SessionRun {
  /** Whether a client is still waiting for this generation's output. */
  hasReader(): boolean;
  /** Stops the generation at its next step. */
  cancel(reason: CancelReason): void;
  /** Settles once the generation has ended (its session is released). */
  readonly ended: Promise<void>;
}

/** How long a new request waits for a superseded generation to stop (one model step, normally). */
const SUPERSEDE_WAIT_MS = 10_000;
/**
 * How long a new request waits for the running generation's reader to leave. A client that pressed
 * Stop and at once sends its next message (on another pooled connection) can get there before the
 * server has seen its old connection close; a reader that stays this long is really reading.
 */
const READER_GRACE_MS = 250;
const READER_POLL_MS = 5;

export class SessionRuns {
  private readonly runs = new Map<string, SessionRun>();

  private static key(owner: string, sessionId: string): string {
    return `${owner}\u0000${sessionId}`;
  }

  /** Registers the run of a request on a session; forgotten when it ends. */
  track(owner: string, sessionId: string, run: SessionRun): void {
    const key = SessionRuns.key(owner, sessionId);
    this.runs.set(key, run);
    void run.ended.then(() => {
      if (this.runs.get(key) === run) this.runs.delete(key);
    });
  }

  /**
   * When the session's running generation has no reader: cancels it as superseded and waits until it
   * has ended. Returns whether one was superseded.
   */
  async supersede(owner: string, sessionId: string): Promise<boolean> {
    const run = this.runs.get(SessionRuns.key(owner, sessionId));
    if (!run || !(await SessionRuns.readerLeaves(run))) return false;
    run.cancel('superseded');
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([run.ended, new Promise<void>((resolve) => (timer = setTimeout(resolve, SUPERSEDE_WAIT_MS).unref()))]);
    clearTimeout(timer);
    return true;
  }

  /** Whether the run's reader is gone, or goes within READER_GRACE_MS (or the run ends meanwhile: nothing to supersede). */
  private static async readerLeaves(run: SessionRun): Promise<boolean> {
    let ended = false;
    void run.ended.then(() => (ended = true));
    const deadline = Date.now() + READER_GRACE_MS;
    while (run.hasReader()) {
      if (ended || Date.now() >= deadline) return false;
      await new Promise((resolve) => setTimeout(resolve, READER_POLL_MS));
    }
    return !ended;
  }

  /** Runs being tracked (tests, stats). */
  get size(): number {
    return this.runs.size;
  }
}
