/**
 * In-place KV for a decode batch (issue 25): per layer one pre-allocated key and value buffer
 * `// [rows, numKvHeads, capacity, headDim]`, row r's valid slots 0..lengths[r]-1 followed by unused
 * capacity (masked out). Each step feeds the buffers as the past with `attentionMask()`, fetches only
 * the new rows (`fetch: 'new-rows'`) and writes them in place with `append`, so neither the past's bytes
 * nor a present the size of the cache cross between the runtime and JavaScript. Capacity grows in
 * blocks (one copy of every row per block); a row joins by one copy of its own cache and leaves by one
 * copy out (`extract`). Works on plain arrays, unit-tested in tests/engine/inplace-kv.test.ts.
 */
import { allocateKvData, type KvData, type KvLayout, type KvTensors } from '../model/types.ts';

export class InPlaceKv {
  /** Slots per row in the buffers, a multiple of the block. */
  capacity = 0;
  /** Valid slots of each row; 0 for a free row. */
  readonly lengths: number[];
  /** Rows that hold a sequence (a free row is computed on a dummy token, but nothing is written for it). */
  readonly live: boolean[];
  layers: Array<{ key: KvData; value: KvData }> = [];

  constructor(
    private readonly layout: KvLayout,
    readonly rows: number,
    /** Capacity grows in multiples of this many slots. */
    private readonly block: number,
  ) {
    if (!(Number.isInteger(block) && block > 0)) throw new Error('the block must be a positive integer');
    this.lengths = new Array(rows).fill(0);
    this.live = new Array(rows).fill(false);
    this.resize(0);
  }

  /** The buffers as a step's past: every row has `capacity` slots, the mask says which hold KV. */
  get past(): KvTensors {
    return { batchSize: this.rows, length: this.capacity, layers: this.layers };
  }

  /** Copies a sequence's own cache `// [1, numKvHeads, length, headDim]` into free row `row`. */
  join(row: number, kv: KvTensors): void {
    if (this.live[row]) throw new Error(`row ${row} is taken`);
    this.ensureCapacity(kv.length + 1);
    const { numKvHeads: heads, headDim: dim } = this.layout;
    const span = kv.length * dim;
    for (let layer = 0; layer < this.layout.numLayers; layer++) {
      const from = kv.layers[layer];
      const to = this.layers[layer];
      for (let h = 0; h < heads; h++) {
        const target = ((row * heads + h) * this.capacity) * dim;
        to.key.set(from.key.subarray(h * span, (h + 1) * span), target);
        to.value.set(from.value.subarray(h * span, (h + 1) * span), target);
      }
    }
    this.lengths[row] = kv.length;
    this.live[row] = true;
  }

  /** Row `row`'s cache as its own tensors `// [1, numKvHeads, length, headDim]`, and the row freed. */
  extract(row: number): KvTensors {
    const { numKvHeads: heads, headDim: dim, dtype } = this.layout;
    const length = this.lengths[row];
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
    this.lengths[row] = 0;
    this.live[row] = false;
    return { batchSize: 1, length, layers };
  }

  /** Grows the buffers (in blocks) so every row has at least `slots` slots; a step needs length + 1. */
  ensureCapacity(slots: number): void {
    if (slots > this.capacity) this.resize(Math.ceil(slots / this.block) * this.block);
  }

  /**
   * `// [rows, capacity + 1]`: 1 on each live row's valid slots and on the new token (the last column),
   * 0 on unused capacity; a free row attends only to its own token.
   */
  attentionMask(): BigInt64Array {
    const width = this.capacity + 1;
    const mask = new BigInt64Array(this.rows * width);
    for (let r = 0; r < this.rows; r++) {
      if (this.live[r]) mask.fill(1n, r * width, r * width + this.lengths[r]);
      mask[(r + 1) * width - 1] = 1n;
    }
    return mask;
  }

  /** Writes one step's new rows `// [rows, numKvHeads, 1, headDim]` after each live row's valid slots. */
  append(newRows: KvTensors): void {
    if (newRows.batchSize !== this.rows || newRows.length !== 1) throw new Error('new rows must be one slot per batch row');
    this.ensureCapacity(Math.max(...this.lengths) + 1);
    const { numKvHeads: heads, headDim: dim } = this.layout;
    for (let layer = 0; layer < this.layout.numLayers; layer++) {
      const from = newRows.layers[layer];
      const to = this.layers[layer];
      for (let r = 0; r < this.rows; r++) {
        if (!this.live[r]) continue;
        for (let h = 0; h < heads; h++) {
          const source = (r * heads + h) * dim;
          const target = ((r * heads + h) * this.capacity + this.lengths[r]) * dim;
          to.key.set(from.key.subarray(source, source + dim), target);
          to.value.set(from.value.subarray(source, source + dim), target);
        }
      }
    }
    for (let r = 0; r < this.rows; r++) if (this.live[r]) this.lengths[r]++;
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
