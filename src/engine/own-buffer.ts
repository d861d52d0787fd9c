/**
 * In-place KV outside the decode batch (KV_MODE=inplace, issue 25): a prefilling sequence, or one that
 * steps alone (exports that cannot batch), owns a one-row `InPlaceKv` holding its past, so each chunk
 * feeds that buffer as the past with the unused capacity masked out and writes only its new rows in
 * place; a chunk over a 4,000-token past no longer copies the past into the call and the whole present
 * out of it. The buffer is made from the sequence's own cache on its first step (one copy), handed to the
 * decode batch when the sequence joins it (one copy, or none when it is the batch's only row, see
 * inplace-batch.ts), and turned back into the sequence's own tight cache (one copy) where the cache code
 * works on that: a window drop, and finishing (the session keeps its cache as in concat mode).
 */
import type { Logger } from '../lib/logger.ts';
import { emptyKv, type KvLayout, type KvTensors } from '../model/types.ts';
import type { EngineModel, EngineOptions } from './engine.ts';
import { InPlaceKv } from './inplace-kv.ts';

/** What an own buffer needs of a sequence: its tight KV and its buffer, at most one of them set. */
export interface BufferOwner {
  /** `// [1, numKvHeads, cacheLength, headDim]` while the sequence holds its KV as its own tight tensors. */
  kv: KvTensors | null;
  /** `// [1, numKvHeads, capacity, headDim]`, the first cacheLength slots valid, while it holds a buffer. */
  buffer: InPlaceKv | null;
}

/**
 * A prefilling buffer grows by at least a quarter of its capacity: a 4,096-token prompt in 16-token
 * chunks was copied into a larger buffer every fourth chunk at 64-slot blocks (each copy delaying the
 * running streams' next step by up to a few ms); the masked slack this leaves costs the chunks less.
 */
const PREFILL_GROWTH_SHARE = 0.25;

/**
 * A buffer prefilled on the prefill lane doubles: its 512-token chunks outgrew a quarter's growth at every
 * chunk, and each growth copies the whole buffer on the loop's thread (3 ms at 4,096 slots, 25 ms at
 * 32,768, with every running stream waiting); room for the whole prompt at once made each chunk attend
 * over the whole capacity instead (a 32,768-token prompt took twice as long). Doubling copies a few
 * times and leaves at most as much masked slack as valid slots.
 */
export const LANE_GROWTH_SHARE = 1;

export class OwnBuffers {
  constructor(
    private readonly layout: KvLayout,
    /** The buffers' capacity grows in whole multiples of this many slots. */
    readonly block: number,
    /** The context: no buffer grows past it. */
    readonly maxCapacity: number,
  ) {}

  /**
   * The owner's buffer with room for `newTokens` more slots, made from its tight cache (or empty) on
   * first use; the owner's tight `kv` is then null. An empty buffer keeps a capacity of 0 until the
   * chunk's new rows are appended (which grows it): the chunk's past is then empty, so a fresh prompt
   * attends to itself alone. Reserving the room first made the first chunk attend over as many masked
   * slots as it has tokens, twice the attention, and on warmkv-brown each fresh 400-token prompt
   * planned a wider shape in onnxruntime's arena: 84 against 35 MiB more resident memory after five
   * (docs/benchmarks.md).
   */
  take(owner: BufferOwner, newTokens: number, growthShare = PREFILL_GROWTH_SHARE): InPlaceKv {
    let buffer = owner.buffer;
    if (!buffer) {
      buffer = new InPlaceKv(this.layout, 1, this.block, this.maxCapacity);
      const cached = owner.kv !== null && owner.kv.length > 0;
      buffer.join(0, owner.kv ?? emptyKv(this.layout, 1), cached ? newTokens : 0);
      owner.buffer = buffer;
      owner.kv = null;
    }
    buffer.growthShare = growthShare;
    if (buffer.lengths[0] > 0) buffer.ensureCapacity(buffer.lengths[0] + newTokens);
    return buffer;
  }

}

/** Gives the owner its tight cache back out of its buffer (no-op without one), for the window and commit code. */
export function settleOwnBuffer(owner: Partial<BufferOwner> & Pick<BufferOwner, 'kv'>): void {
  if (!owner.buffer) return;
  owner.kv = owner.buffer.takeOut(0);
  owner.buffer = null;
}

/**
 * Which KV path the engine runs: `inplace` (the default) needs a decoder loaded with new-row outputs
 * (graphs without the Concat shape have none) and an export whose steps honour masked slots (the
 * unused capacity; the probe's leftPadding); otherwise `concat`, logged with the reason.
 */
export function inPlaceKv(model: EngineModel, options: Pick<EngineOptions, 'kvMode'>, logger: Logger): 'inplace' | 'concat' {
  if ((options.kvMode ?? 'inplace') === 'concat') return 'concat';
  const reason = inPlaceRefusal(model);
  if (!reason) return 'inplace';
  logger.info({ kvMode: 'concat', reason }, 'in-place KV unavailable; the engine runs the concat path');
  return 'concat';
}

/** Why a decoder cannot run in place (no new-row outputs, or an export that ignores masked slots), or null. */
export function inPlaceRefusal(model: Pick<EngineModel, 'decoder' | 'capabilities'>): string | null {
  if (model.decoder.io.newRows === undefined) return 'the decoder has no new-row outputs';
  if (model.capabilities && !model.capabilities.leftPadding) return 'the export does not honour masked slots in attention_mask';
  return null;
}
