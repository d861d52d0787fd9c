/**
 * The byte budget every in-memory KV cache lives under. Memory is handed out in blocks of
 * `blockTokens` tokens, so reserved (blocks) versus used (tokens) bytes shows fragmentation.
 * "No room" is a return value the scheduler acts on, never an exception.
 */
export class KvBudget {
  private reserved = 0;

  constructor(
    readonly capacityBytes: number,
    readonly blockTokens: number,
  ) {
    if (!(capacityBytes > 0)) throw new Error('KV budget must be positive');
    if (!(blockTokens >= 1)) throw new Error('KV block size must be at least one token');
  }

  get reservedBytes(): number {
    return this.reserved;
  }

  get freeBytes(): number {
    return this.capacityBytes - this.reserved;
  }

  blocksFor(tokens: number): number {
    return Math.ceil(tokens / this.blockTokens);
  }

  /** Bytes of the whole blocks that hold `tokens` tokens at `bytesPerToken`. */
  bytesFor(tokens: number, bytesPerToken: number): number {
    return this.blocksFor(tokens) * this.blockTokens * bytesPerToken;
  }

  /** Changes a holder's reservation; refuses (returns false, nothing changed) past the capacity. */
  resize(holder: { reservedBytes: number }, bytes: number): boolean {
    const delta = bytes - holder.reservedBytes;
    if (delta > 0 && this.reserved + delta > this.capacityBytes) return false;
    this.reserved += delta;
    holder.reservedBytes = bytes;
    return true;
  }
}
