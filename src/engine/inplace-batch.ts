/**
 * The decode batch for in-place KV (issue 25): which sequence holds which row of an `InPlaceKv`. The
 * same membership rules as batch.ts from the sequences' side (a member outside the batch owns its KV,
 * inside it owns none), but rows are right-padded and never re-packed on a step: a newcomer takes a
 * free row (one copy of its cache, tight or its own buffer), a leaver is copied out to a tight cache
 * (one copy; the row of a one-row batch takes the buffers as its own), and the buffers are made anew
 * only when newcomers find no free row or more than REBUILD_FREE_SHARE of the rows are free. A batch
 * made anew for one newcomer that owns a buffer takes that buffer as it is (a lone stream after its
 * prefill is never copied).
 */
import { performance } from 'node:perf_hooks';
import type { KvLayout } from '../model/types.ts';
import type { BatchCounters, BatchMember } from './batch.ts';
import { InPlaceKv } from './inplace-kv.ts';

/** A batch member that may hold its KV in its own one-row buffer (own-buffer.ts) instead of `kv`. */
export interface InPlaceMember extends BatchMember {
  /** `// [1, numKvHeads, capacity, headDim]` while outside the batch holding its KV this way; null otherwise. */
  buffer?: InPlaceKv | null;
}

/** Make the buffers anew (dropping free rows) when more than this share of the rows is free. */
const REBUILD_FREE_SHARE = 0.2;

export interface InPlaceRows<T> {
  /** The sequence of each row, or null for a free row (computed on a dummy token, never written). */
  rows: Array<T | null>;
  kv: InPlaceKv;
}

export class InPlaceBatch<T extends InPlaceMember> {
  current: InPlaceRows<T> | null = null;

  constructor(
    private readonly layout: KvLayout,
    /** The buffers' capacity grows in whole multiples of this many slots. */
    private readonly block: number,
    private readonly counters: BatchCounters,
    /** The context: no buffer grows past it. */
    private readonly maxCapacity = Number.POSITIVE_INFINITY,
  ) {}

  get live(): number {
    return this.current?.rows.filter((r) => r !== null).length ?? 0;
  }

  /** The buffers live in host memory. */
  get onDevice(): boolean {
    return false;
  }

  async toHost(): Promise<void> {}

  /** Makes the batch hold exactly `decoding`: newcomers join free rows, or the buffers are made anew. */
  sync(decoding: T[]): InPlaceRows<T> {
    const joining = decoding.filter((s) => s.batchRow < 0);
    const current = this.current;
    const live = this.live;
    if (current && live + joining.length !== decoding.length) throw new Error('a batch row is not decoding');
    const free = current ? current.rows.length - live : 0;
    if (current && joining.length <= free && (current.rows.length - decoding.length) <= REBUILD_FREE_SHARE * current.rows.length) {
      if (joining.length === 0) return current;
      const start = performance.now();
      for (const sequence of joining) this.place(current, current.rows.indexOf(null), sequence);
      this.counters.inPlaceJoins += joining.length;
      this.counters.repackMs += performance.now() - start;
      return current;
    }
    const start = performance.now();
    for (const sequence of decoding) if (sequence.batchRow >= 0) this.leave(sequence);
    const alone = decoding.length === 1 ? decoding[0] : null;
    if (alone?.buffer) {
      // Decoding, the buffer grows block by block again: every slot of slack costs each step attention.
      alone.buffer.growthShare = 0;
      this.current = { rows: [alone], kv: alone.buffer };
      alone.buffer = null;
      alone.batchRow = 0;
      return this.current;
    }
    const rebuilt: InPlaceRows<T> = { rows: new Array(decoding.length).fill(null), kv: new InPlaceKv(this.layout, decoding.length, this.block, this.maxCapacity) };
    decoding.forEach((sequence, row) => this.place(rebuilt, row, sequence));
    this.current = rebuilt;
    this.counters.repacks++;
    this.counters.repackMs += performance.now() - start;
    return rebuilt;
  }

  /**
   * Copies `sequence`'s KV out of the batch into its own tensors and frees its row (the only row of a
   * one-row batch leaves with the buffers themselves as its own); none when the buffers were lost with
   * a decoder thread (the session is then recomputed from its transcript).
   */
  leave(sequence: T): void {
    const current = this.current;
    if (!current || sequence.batchRow < 0) return;
    if (current.rows.length === 1 && current.kv.intact) {
      // A batch of one row is that sequence's buffer: it takes it back as its own, with no copy.
      sequence.buffer = current.kv;
      sequence.kv = null;
      this.current = null;
      sequence.batchRow = -1;
      return;
    }
    sequence.kv = current.kv.takeOut(sequence.batchRow);
    current.rows[sequence.batchRow] = null;
    sequence.batchRow = -1;
    if (current.rows.every((r) => r === null)) this.current = null;
  }

  private place(batch: InPlaceRows<T>, row: number, sequence: T): void {
    if (sequence.buffer) batch.kv.joinFrom(row, sequence.buffer, 0);
    else batch.kv.join(row, sequence.kv!);
    batch.rows[row] = sequence;
    sequence.batchRow = row;
    sequence.kv = null;
    sequence.buffer = null;
  }
}
