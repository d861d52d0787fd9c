/**
 * The persistent decode batch: one KV tensor pair per layer holding every decoding sequence as a row,
 * left-padded to a common length, so a step's present output is fed back as the next past without a
 * copy. Rows join (copied into a free row), leave (copied out, the row freed) or are re-packed when
 * too many slots are wasted. Works on any member with a row index and its own KV, so it is unit-tested
 * on plain arrays (tests/engine/batch.test.ts).
 */
import { performance } from 'node:perf_hooks';
import { extractRow, gatherRows } from '../cache/kv-ops.ts';
import { kvOnHost, type KvLayout, type KvTensors } from '../model/types.ts';

/** What the batch needs of a sequence: its row (-1: not in the batch) and its own KV while outside. */
export interface BatchMember {
  batchRow: number;
  /** `// [1, numKvHeads, length, headDim]` while the member is outside the batch; null inside. */
  kv: KvTensors | null;
}

/** Copies the batch made, for the engine's counters. */
export interface BatchCounters {
  repacks: number;
  inPlaceJoins: number;
  repackMs: number;
}

export interface BatchRows<T> {
  /**
   * The sequence of each row, or null for a free row: its sequence left and the row waits for a
   * newcomer. Free rows are still computed (on a dummy token) but nobody reads their output.
   */
  rows: Array<T | null>;
  /** `// [rows.length, numKvHeads, length, headDim]`, row r left-padded by padding[r] slots. */
  kv: KvTensors;
  padding: number[];
  /** Rows whose sequence is still in the batch. */
  live: number;
}

/**
 * Re-pack (copy every row into a new, tight tensor) when more than this share of the batch's cache
 * slots could be saved by doing so (free rows, and padding beyond what the live rows need).
 */
const REPACK_WASTE_SHARE = 0.2;

export class DecodeBatch<T extends BatchMember> {
  current: BatchRows<T> | null = null;

  constructor(
    private readonly layout: KvLayout,
    private readonly counters: BatchCounters,
  ) {}

  get live(): number {
    return this.current?.live ?? 0;
  }

  get onDevice(): boolean {
    return Boolean(this.current?.kv.device);
  }

  /** Brings the batch's KV to host memory, where joins, leaves and drops work. */
  async toHost(): Promise<void> {
    if (this.current?.kv.device) this.current.kv = await kvOnHost(this.current.kv);
  }

  /**
   * Makes the decode batch hold exactly the sequences `decoding` (in any row order). While nobody
   * joins or leaves, the batch stays as it is: the model's present output is fed straight back as the
   * next past, without a copy. A sequence that leaves frees its row (no copy of the others); a newcomer
   * that fits the batch length takes a free row and only its own cache is copied in. Everything is
   * re-packed into a new, tight tensor only when a newcomer finds no free row or is longer than the
   * batch, or when more than REPACK_WASTE_SHARE of the cache slots are free rows or avoidable padding.
   */
  sync(decoding: T[]): BatchRows<T> {
    const current = this.current;
    const joining = decoding.filter((s) => s.batchRow < 0);
    if (current && current.live + joining.length !== decoding.length) throw new Error('a batch row is not decoding');
    if (current && joining.length === 0 && current.live === current.rows.length) return current;
    if (current && joining.length <= current.rows.length - current.live) {
      const length = current.kv.length;
      if (joining.every((s) => s.kv!.length <= length) && this.wasteAfterJoin(current, joining) <= REPACK_WASTE_SHARE) {
        this.joinInPlace(current, joining);
        return current;
      }
    }
    return this.repack(decoding);
  }

  /** The share of cache slots a re-pack would save, once `joining` took free rows of `batch`. */
  private wasteAfterJoin(batch: BatchRows<T>, joining: readonly T[]): number {
    const length = batch.kv.length;
    let longest = 0;
    let used = 0;
    batch.rows.forEach((s, r) => {
      if (!s) return;
      longest = Math.max(longest, length - batch.padding[r]);
      used++;
    });
    for (const s of joining) longest = Math.max(longest, s.kv!.length);
    used += joining.length;
    // Slots now (all rows at the batch length) against slots after a re-pack (live rows at the longest).
    const now = batch.rows.length * (length + 1);
    const tight = used * (longest + 1);
    return (now - tight) / now;
  }

  /** Copies each newcomer's own cache into a free row of the batch, left-padded to the batch length. */
  private joinInPlace(batch: BatchRows<T>, joining: readonly T[]): void {
    const copyStart = performance.now();
    const { numKvHeads: heads, headDim, numLayers } = this.layout;
    const length = batch.kv.length;
    for (const sequence of joining) {
      const row = batch.rows.indexOf(null);
      const own = sequence.kv!;
      const n = own.length;
      const padding = length - n;
      for (let layer = 0; layer < numLayers; layer++) {
        const target = batch.kv.layers[layer];
        const source = own.layers[layer];
        for (let h = 0; h < heads; h++) {
          const to = ((row * heads + h) * length + padding) * headDim;
          const from = h * own.length * headDim;
          (target.key as Float32Array).set((source.key as Float32Array).subarray(from, from + n * headDim), to);
          (target.value as Float32Array).set((source.value as Float32Array).subarray(from, from + n * headDim), to);
        }
      }
      batch.rows[row] = sequence;
      batch.padding[row] = padding;
      batch.live++;
      sequence.batchRow = row;
      sequence.kv = null;
    }
    this.counters.inPlaceJoins += joining.length;
    this.counters.repackMs += performance.now() - copyStart;
  }

  /** A new batch of exactly `rows`, each copied once (a single newcomer alone is used as it is). */
  private repack(rows: T[]): BatchRows<T> {
    const current = this.current;
    let kv: KvTensors;
    let padding: number[];
    if (rows.length === 1 && rows[0].batchRow < 0) {
      kv = rows[0].kv!;
      padding = [0];
    } else {
      const copyStart = performance.now();
      const packed = gatherRows(
        this.layout,
        rows.map((s) => {
          if (s.batchRow >= 0 && current) return { kv: current.kv, row: s.batchRow, segments: [[current.padding[s.batchRow], current.kv.length] as const] };
          return { kv: s.kv!, row: 0, segments: [[0, s.kv!.length] as const] };
        }),
      );
      kv = packed.kv;
      padding = packed.padding;
      this.counters.repacks++;
      this.counters.repackMs += performance.now() - copyStart;
    }
    rows.forEach((s, i) => {
      s.batchRow = i;
      s.kv = null;
    });
    this.current = { rows: rows.slice(), kv, padding, live: rows.length };
    return this.current;
  }

  /** Gives a sequence its own KV back out of the decode batch; its row becomes free. */
  leave(sequence: T): void {
    const batch = this.current;
    if (sequence.batchRow < 0 || !batch) return;
    sequence.kv = extractRow(this.layout, batch.kv, sequence.batchRow, batch.padding[sequence.batchRow]);
    batch.rows[sequence.batchRow] = null;
    batch.live--;
    sequence.batchRow = -1;
    // With nobody left, the batch goes (a lone row's tensor may now be the session's cache itself).
    if (batch.live === 0) this.current = null;
  }
}
