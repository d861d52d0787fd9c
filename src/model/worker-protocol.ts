/**
 * Messages between WorkerDecoder (the main thread) and decoder-worker.ts. Only a step's inputs and its
 * outputs cross: the inputs are copied, the outputs are moved. A past the engine lends (`lendPast`: its
 * in-place buffers, which nothing else views) is moved instead of copied, and moved back with the
 * result or the failure. Nothing is kept across steps on the worker side, so the KV the engine holds
 * stays its own.
 */
import type { ConfigHints } from './layout.ts';
import type { DecoderOptions } from './onnx-decoder.ts';
import type { DecoderIo, DecoderOutput, DecoderStep, KvData } from './types.ts';

export interface WorkerLoad {
  source: string;
  hints: ConfigHints;
  options: Omit<DecoderOptions, 'logger'>;
  /** The main thread's onnxruntime log level, so the worker's runtime prints what the main one would. */
  runtimeLogLevel: string;
}

export type ToWorker =
  | { kind: 'run'; id: number; step: DecoderStep; quiet: boolean; lent: boolean }
  | { kind: 'dispose' };

export type FromWorker =
  | { kind: 'loaded'; io: DecoderIo; executionProvider: string; intraOpThreads: number }
  | { kind: 'load-failed'; name: string; message: string }
  | { kind: 'log'; level: 'debug' | 'info' | 'warn' | 'error'; fields: Record<string, unknown>; message: string }
  | { kind: 'result'; id: number; output: DecoderOutput; past?: LentLayers }
  | { kind: 'failed'; id: number; name: string; message: string; past?: LentLayers }
  | { kind: 'disposed' };

/**
 * A view as it should cross: structured cloning copies a view's whole underlying buffer, so a view
 * over part of a larger buffer (a cache slot range, one half of a stacked present) is cut to its own
 * bytes first. A view of a SharedArrayBuffer is copied too: onnxruntime-node 1.26 refuses tensors over
 * shared memory ("Invalid argument"), so the past cannot be shared with the worker without a copy.
 */
export function crossing<T extends KvData | BigInt64Array>(view: T): T {
  return whole(view) ? view : (view.slice() as T);
}

/** A lent past's layers, on their way to the worker or back. */
export type LentLayers = Array<{ key: KvData; value: KvData }>;

/** Whether a view covers its whole buffer, so moving that buffer moves exactly the view's bytes. */
function whole(view: KvData | BigInt64Array): boolean {
  return view.buffer instanceof ArrayBuffer && view.byteOffset === 0 && view.byteLength === view.buffer.byteLength;
}

/**
 * The buffers to move for a lent past, or null when it cannot be moved as it is (a view of part of a
 * buffer, two layers sharing one, a shared buffer): the past is then copied as any other.
 */
export function lentTransfers(layers: LentLayers): ArrayBuffer[] | null {
  const buffers = new Set<ArrayBuffer>();
  for (const { key, value } of layers) {
    for (const view of [key, value]) {
      if (!whole(view) || buffers.has(view.buffer as ArrayBuffer)) return null;
      buffers.add(view.buffer as ArrayBuffer);
    }
  }
  return [...buffers];
}

/** The step with every array ready to post (see `crossing`). */
export function stepForPosting(step: DecoderStep, lent = false): DecoderStep {
  if (step.past.device) throw new Error('KV on the device cannot cross to the decoder thread (DECODER_THREAD=worker runs with host KV)');
  return {
    ...step,
    inputIds: crossing(step.inputIds),
    attentionMask: crossing(step.attentionMask),
    positionIds: crossing(step.positionIds),
    past: { ...step.past, layers: lent ? step.past.layers.map(({ key, value }) => ({ key, value })) : step.past.layers.map(({ key, value }) => ({ key: crossing(key), value: crossing(value) })) },
  };
}

/** The distinct buffers of an output, to move to the main thread (two views may share one: stacked KV). */
export function outputTransfers(output: DecoderOutput): ArrayBuffer[] {
  const buffers = new Set<ArrayBuffer>();
  const add = (view: KvData) => {
    if (view.buffer instanceof ArrayBuffer) buffers.add(view.buffer);
  };
  add(output.logits);
  for (const { key, value } of output.present.layers) {
    add(key);
    add(value);
  }
  return [...buffers];
}
