import { randomInt } from 'node:crypto';
import type { Session, Tier, WindowState } from '../cache/session.ts';
import { Channel } from '../lib/channel.ts';
import { Rng } from '../lib/rng.ts';
import type { KvTensors } from '../model/types.ts';
import type { Constraint } from './grammar.ts';
import type { InPlaceKv } from './inplace-kv.ts';
import { IncrementalDetokenizer, type TokenDecoder } from './detokenizer.ts';
import { TokenCounts, TokenSet, type RowState } from './sampler.ts';
import { StopStringMatcher } from './stop.ts';
import type { TokenLogprob } from './logprobs.ts';
import type { EngineError, FinishReason, GenerationEvent, GenerationRequest } from './types.ts';

export type SequenceState = 'queued' | 'prefill' | 'decode' | 'finished';

/** One request's generation: its place in the cache, its sampler state and its event stream. */
export class Sequence {
  state: SequenceState = 'queued';
  readonly events = new Channel<GenerationEvent>();
  readonly enqueuedAt: number;
  admittedAt = 0;
  firstTokenAt = 0;

  /** The whole sequence this request conditions on (set when admitted). */
  fullInput: number[] = [];
  /** Transcript before this request, to roll back to if it fails. */
  originalTokens: number[] = [];

  /** Own KV while not in the decode batch (and not in `buffer`). `// [1, numKvHeads, cacheLength, headDim]` */
  kv: KvTensors | null = null;
  /**
   * KV_MODE=inplace: own KV as a one-row buffer while prefilling or stepping alone (own-buffer.ts), the
   * first cacheLength slots valid; `kv` is then null. `// [1, numKvHeads, capacity, headDim]`
   */
  buffer: InPlaceKv | null = null;
  cacheLength = 0;
  window!: WindowState;
  /** Tokens still to feed, in order; `pending[pendingIndex]` is next. In decode, the last sampled token. */
  pending: number[] = [];
  pendingIndex = 0;
  /** Row in the decode batch, or -1. */
  batchRow = -1;
  /** A prefill chunk of this sequence is running on the prefill lane (prefill-lane.ts): nothing else may touch its cache. */
  inLane = false;

  cachedTokens = 0;
  restoredFrom: Tier = 'evicted';
  droppedDuringRequest = 0;
  readonly generated: number[] = [];
  finishReason: FinishReason | null = null;
  /** Set by the engine (e.g. when draining times out) to end the sequence with this error. */
  abortReason: EngineError | null = null;
  error: EngineError | undefined;

  readonly rng: Rng;
  seen: TokenSet | null = null;
  /** What the sampler needs of this row beyond its parameters; `masked` clears once min_tokens is reached. */
  readonly row: RowState = { counts: null, masked: null };
  /** The grammar the output must match (per request; the session's cache never sees it). */
  constraint: Constraint | null = null;
  /** Made when the request is admitted, with the prompt's tail as context (see startOutput). */
  private detokenizer!: IncrementalDetokenizer;
  private stoppedByString = false;
  private readonly stopMatcher: StopStringMatcher;
  /** EOS (unless ignoreEos) and the request's stop ids. */
  private readonly stopIds: ReadonlySet<number>;
  private readonly eos: ReadonlySet<number>;
  private readonly minTokens: number;

  constructor(
    readonly request: GenerationRequest,
    readonly session: Session,
    eosTokenIds: readonly number[],
    now: number,
  ) {
    this.enqueuedAt = now;
    this.rng = new Rng(request.seed ?? randomInt(2 ** 47));
    this.stopMatcher = new StopStringMatcher(request.stop, request.includeStopInOutput ?? false);
    this.eos = new Set(request.ignoreEos ? [] : eosTokenIds);
    this.stopIds = new Set([...this.eos, ...(request.stopTokenIds ?? [])]);
    this.minTokens = Math.min(request.minTokens ?? 0, request.maxTokens);
    if (this.minTokens > 0 && this.stopIds.size > 0) this.row.masked = [...this.stopIds];
    this.window = session.window;
  }

  /** Called once the prompt is known, so the first output tokens decode with the prompt's tail as context. */
  startOutput(tokenizer: TokenDecoder, vocabSize: number): void {
    this.detokenizer = new IncrementalDetokenizer(tokenizer, this.fullInput);
    const sampling = this.request.sampling;
    if (sampling.repetitionPenalty !== 1) this.seen = new TokenSet(vocabSize, this.fullInput);
    if ((sampling.presencePenalty ?? 0) !== 0 || (sampling.frequencyPenalty ?? 0) !== 0) this.row.counts = new TokenCounts(vocabSize);
  }

  get remainingPending(): number {
    return this.pending.length - this.pendingIndex;
  }

  /**
   * Records a sampled token: appends it to the transcript, streams its text, and decides whether
   * generation ends here. Returns the finish reason or null to continue.
   */
  accept(tokenId: number, logprob?: TokenLogprob): FinishReason | null {
    this.generated.push(tokenId);
    this.session.tokens.push(tokenId);
    this.seen?.add(tokenId);
    // The token was drawn from the grammar's mask, so the matcher always takes it.
    this.constraint?.accept(tokenId);
    this.row.counts?.add(tokenId);
    const count = this.generated.length;
    if (count === this.minTokens) this.row.masked = null;
    // Before min_tokens the sampler masks these ids, so this is never reached early.
    if (this.stopIds.has(tokenId)) {
      // EOS text never shows (a special token); a stop id's only with includeStopInOutput.
      const keep = this.request.includeStopInOutput && !this.eos.has(tokenId);
      // Text the matcher held back came before this token's.
      this.events.push({ type: 'token', tokenId, text: keep ? this.stopMatcher.flush() + this.detokenizer.push(tokenId) : '', logprob });
      return 'stop';
    }
    if (count < this.minTokens) {
      // Before min_tokens no stop string ends the output (as vLLM): the text passes the matcher by.
      this.events.push({ type: 'token', tokenId, text: this.detokenizer.push(tokenId), logprob });
      return null;
    }
    const { text, stopped } = this.stopMatcher.push(this.detokenizer.push(tokenId));
    this.events.push({ type: 'token', tokenId, text, logprob });
    if (stopped) {
      this.stoppedByString = true;
      return 'stop';
    }
    if (this.constraint?.isTerminated) return 'stop';
    if (this.generated.length >= this.request.maxTokens) return 'length';
    return null;
  }

  /** Text held back by the detokenizer or the stop matcher, released at the end. */
  finalText(): string {
    if (this.stoppedByString) return '';
    const { text, stopped } = this.stopMatcher.push(this.detokenizer.flush());
    return stopped ? text : text + this.stopMatcher.flush();
  }
}
