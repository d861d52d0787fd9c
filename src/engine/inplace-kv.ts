/**
 * In-place KV (issue 25): per layer one pre-allocated key and value buffer
 * `// [rows, numKvHeads, capacity, headDim]`, row r's valid slots 0..lengths[r]-1 followed by unused
 * capacity (masked out). Each step feeds the buffers as the past with `attentionMask(newTokens)`, fetches
 * only the new rows (`fetch: 'new-rows'`) and writes them in place with `append`, so neither the past's
 * bytes nor a present the size of the cache cross between the runtime and JavaScript. The decode batch
 * holds one with a row per sequence (inplace-batch.ts); a prefilling or lone sequence owns a one-row
 * buffer (own-buffer.ts). Capacity grows to the next whole block (one copy of every row each time) and
 * never exceeds `maxCapacity` (the context). Not by doubling: the masked slots still cost attention
 * compute in every call, and a capacity up to twice the cache made prefill chunks over a long past
 * about twice as slow (bench/probes/prefill-past.ts, docs/benchmarks.md), while a copy per block is a
 * few milliseconds. A row joins by one copy of its own cache and leaves by one copy out (`extract`).
 * Works on plain arrays, unit-tested in tests/engine/inplace-kv.test.ts and inplace-prefill.test.ts.
 */
import { shiftRotaryKeys } from '../cache/kv-ops.ts';
import type { HeldKv } from '../cache/session.ts';
import { allocateKvData, kvIntact, type KvData, type KvLayout, type KvTensors } from '../model/types.ts';

export class InPlaceKv implements HeldKv {
  /** Slots per row in the buffers: a multiple of the block, or `maxCapacity`. */
  capacity = 0;
  /**
   * Each growth adds at least this share of the capacity (rounded to blocks): 0 grows block by block;
   * a prefilling buffer (own-buffer.ts) grows faster, so a long prompt is not copied at every block.
   */
  growthShare = 0;
  /** Valid slots of each row; 0 for a free row. */
  readonly lengths: number[];
  /** Rows that hold a sequence (a free row is computed on a dummy token, but nothing is written for it). */
  readonly live: boolean[];
  layers: Array<{ key: KvData; value: KvData }> = [];

  constructor(
    private readonly layout: KvLayout,
    readonly rows: number,
    /** Capacity grows in whole multiples of this many slots. */
    private readonly block: number,
    /** Most slots a row can need: the context (a step never holds more than the window's capacity). */
    readonly maxCapacity = Number.POSITIVE_INFINITY,
  ) {
    if (!(Number.isInteger(block) && block > 0)) throw new Error('the block must be a positive integer');
    if (!(maxCapacity > 0)) throw new Error('the capacity cap must be positive');
    this.lengths = new Array(rows).fill(0);
    this.live = new Array(rows).fill(false);
    this.resize(0);
  }

  /** The buffers as a step's past: every row has `capacity` slots, the mask says which hold KV. */
  get past(): KvTensors {
    return { batchSize: this.rows, length: this.capacity, layers: this.layers };
  }

  /**
   * Copies a sequence's own cache `// [1, numKvHeads, length, headDim]` into free row `row`, with room
   * for `newTokens` more (the next step's).
   */
  join(row: number, kv: KvTensors, newTokens = 1): void {
    this.copyIn(row, kv.layers, kv.length, 0, kv.length, newTokens);
  }

  /** Copies row `fromRow` of another buffer (a sequence's own, joining the batch) into free row `row`. */
  joinFrom(row: number, from: InPlaceKv, fromRow: number, newTokens = 1): void {
    if (!from.live[fromRow]) throw new Error(`row ${fromRow} of the source holds nothing`);
    this.copyIn(row, from.layers, from.capacity, fromRow, from.lengths[fromRow], newTokens);
  }

  /** Row `sourceRow` of `layers` (`// [rows, numKvHeads, sourceCapacity, headDim]`, its first `length` slots valid) copied into free row `row`. */
  private copyIn(row: number, layers: Array<{ key: KvData; value: KvData }>, sourceCapacity: number, sourceRow: number, length: number, newTokens: number): void {
    if (this.live[row]) throw new Error(`row ${row} is taken`);
    this.ensureCapacity(length + newTokens);
    const { numKvHeads: heads, headDim: dim } = this.layout;
    const span = length * dim;
    for (let layer = 0; layer < this.layout.numLayers; layer++) {
      const from = layers[layer];
      const to = this.layers[layer];
      for (let h = 0; h < heads; h++) {
        const source = (sourceRow * heads + h) * sourceCapacity * dim;
        const target = ((row * heads + h) * this.capacity) * dim;
        to.key.set(from.key.subarray(source, source + span), target);
        to.value.set(from.value.subarray(source, source + span), target);
      }
    }
    this.lengths[row] = length;
    this.live[row] = true;
  }

  /**
   * Whether the buffers still hold their bytes: a step lends them to the decoder (`lendPast`), and a
   * decoder thread that died mid-step takes them with it.
   */
  get intact(): boolean {
    return kvIntact(this.layout, this.past);
  }

  /** A one-row buffer kept by its session between turns (cache/session.ts): its valid slots. */
  get heldLength(): number {
    return this.lengths[0];
  }

  /** A held one-row buffer's tight cache (one copy); the buffer is spent. */
  toTight(): KvTensors | null {
    return this.takeOut(0);
  }

  /** Keeps only row `row`'s first `length` slots (the rest become unused capacity): a turn that keeps a prefix of its session's cache. */
  truncate(row: number, length: number): void {
    if (!(length >= 0 && length <= this.lengths[row])) throw new Error(`row ${row} holds ${this.lengths[row]} slots, not ${length}`);
    this.lengths[row] = length;
  }

  /** Row `row`'s cache as `extract` gives it, or null (and the row freed) when the buffers were lost. */
  takeOut(row: number): KvTensors | null {
    if (this.intact) return this.extract(row);
    this.lengths[row] = 0;
    this.live[row] = false;
    return null;
  }

  /**
   * The sliding window's shift inside the buffers: removes slots `[start, start + count)` of row `row`,
   * moves the slots after them back and rotates those keys back by `count` positions (as
   * cache/kv-ops.ts's dropAndShift does on a tight cache), with no copy of the row out and back in.
   */
  shiftRow(row: number, start: number, count: number, inverseFrequencies: Float32Array): void {
    const { numKvHeads: heads, headDim: dim } = this.layout;
    const length = this.lengths[row];
    const kept = length - count;
    for (const layer of this.layers) {
      for (let h = 0; h < heads; h++) {
        const base = (row * heads + h) * this.capacity * dim;
        layer.key.copyWithin(base + start * dim, base + (start + count) * dim, base + length * dim);
        layer.value.copyWithin(base + start * dim, base + (start + count) * dim, base + length * dim);
      }
      shiftRotaryKeys(this.layout, layer.key, this.capacity, row, start, kept, -count, inverseFrequencies);
    }
    this.lengths[row] = kept;
  }

  /** Row `row`'s cache as its own tensors `// [1, numKvHeads, length, headDim]`, and the row freed. */
  extract(row: number): KvTensors {
    const kv = this.copyRow(row, this.lengths[row]);
    this.lengths[row] = 0;
    this.live[row] = false;
    return kv;
  }

  /** A held one-row buffer's first `length` slots, copied; the buffer stays. */
  prefixCopy(length: number): KvTensors {
    if (!(length >= 0 && length <= this.lengths[0])) throw new Error(`the buffer holds ${this.lengths[0]} slots, not ${length}`);
    return this.copyRow(0, length);
  }

  /** The first `length` slots of row `row` as tight tensors `// [1, numKvHeads, length, headDim]`. */
  private copyRow(row: number, length: number): KvTensors {
    const { numKvHeads: heads, headDim: dim, dtype } = this.layout;
    const span = length * dim;
    const layers = this.layers.map((buffers) => {
      const key = allocateKvData(dtype, heads * span);
      const value = allocateKvData(dtype, heads * span);
      for (let h = 0; h < heads; h++) {
        const source = ((row * heads + h) * this.capacity) * dim;
        key.set(buffers.key.subarray(source, source + span), h * span);
        value.set(buffers.value.subarray(source, source + span), h * span);
      }
      return { key, value };
    });
    return { batchSize: 1, length, layers };
  }

  /**
   * Grows the buffers so every row has at least `slots` slots (a step needs length + its new tokens):
   * to the next multiple of the block, at most `maxCapacity`.
   */
  ensureCapacity(slots: number): void {
    if (slots <= this.capacity) return;
    if (slots > this.maxCapacity) throw new Error(`${slots} slots exceed the buffer's cap of ${this.maxCapacity}`);
    const needed = Math.ceil(slots / this.block) * this.block;
    const grown = Math.ceil((this.capacity * (1 + this.growthShare)) / this.block) * this.block;
    this.resize(Math.min(Math.max(needed, grown), this.maxCapacity));
  }

  /**
   * `// [rows, capacity + newTokens]`: 1 on each live row's valid slots and on the step's new tokens (the
   * last `newTokens` columns), 0 on unused capacity; a free row attends only to its own tokens. The new
   * tokens' causal order among themselves is the model's: they sit after the whole capacity.
   */
  attentionMask(newTokens = 1): BigInt64Array {
    const width = this.capacity + newTokens;
    const mask = new BigInt64Array(this.rows * width);
    for (let r = 0; r < this.rows; r++) {
      if (this.live[r]) mask.fill(1n, r * width, r * width + this.lengths[r]);
      mask.fill(1n, (r + 1) * width - newTokens, (r + 1) * width);
    }
    return mask;
  }

  /** Writes one step's new rows `// [rows, numKvHeads, newTokens, headDim]` after each live row's valid slots. */
  append(newRows: KvTensors): void {
    const n = newRows.length;
    if (newRows.batchSize !== this.rows || n < 1) throw new Error('new rows must be one or more slots per batch row');
    this.ensureCapacity(Math.max(...this.lengths) + n);
    const { numKvHeads: heads, headDim: dim } = this.layout;
    const span = n * dim;
    for (let layer = 0; layer < this.layout.numLayers; layer++) {
      const from = newRows.layers[layer];
      const to = this.layers[layer];
      for (let r = 0; r < this.rows; r++) {
        if (!this.live[r]) continue;
        for (let h = 0; h < heads; h++) {
          const source = (r * heads + h) * span;
          const target = ((r * heads + h) * this.capacity + this.lengths[r]) * dim;
          to.key.set(from.key.subarray(source, source + span), target);
          to.value.set(from.value.subarray(source, source + span), target);
        }
      }
    }
    for (let r = 0; r < this.rows; r++) if (this.live[r]) this.lengths[r] += n;
  }

  private resize(capacity: number): void {
    const { numKvHeads: heads, headDim: dim, dtype, numLayers } = this.layout;
    const old = this.layers;
    const oldCapacity = this.capacity;
    this.layers = [];
    for (let layer = 0; layer < numLayers; layer++) {
      const key = allocateKvData(dtype, this.rows * heads * capacity * dim);
      const value = allocateKvData(dtype, this.rows * heads * capacity * dim);
      const previous = old[layer];
      if (previous) {
        for (let r = 0; r < this.rows; r++) {
          const span = this.lengths[r] * dim;
          for (let h = 0; h < heads; h++) {
            const bh = r * heads + h;
            key.set(previous.key.subarray(bh * oldCapacity * dim, bh * oldCapacity * dim + span), bh * capacity * dim);
            value.set(previous.value.subarray(bh * oldCapacity * dim, bh * oldCapacity * dim + span), bh * capacity * dim);
          }
        }
      }
      this.layers.push({ key, value });
    }
    this.capacity = capacity;
  }
}
