/**
 * What the in-place probes (inplace-kv.ts, prefill-past.ts) share: a builder llama sized like
 * models/warmkv-brown, opened twice in bare onnxruntime (the graph as exported, and rewritten as the
 * engine loads it: src/model/kv-rewrite.ts's new-row outputs, and attention over the unrepeated KV heads
 * where the builder's graph repeats them), and seeded synthetic KV so no past needs prefilling.
 */
import * as ort from 'onnxruntime-node';
import { detectDecoderIo, withPatch, type DecoderIo } from '../../src/model/index.ts';
import { rewriteDecoder } from '../../src/model/kv-rewrite.ts';
import type { ValueInfo } from '../../src/model/layout.ts';
import { buildModelBytes } from '../../tools/model-builder/index.ts';

export interface RewrittenPair {
  modelOptions: { family: 'llama'; hiddenSize: number; numLayers: number; numHeads: number; numKvHeads: number; intermediateSize: number; vocabSize: number; maxPositions: number };
  io: DecoderIo;
  vocab: number;
  /** The graph as exported: fetches logits and every present.*. */
  exported: ort.InferenceSession;
  /** The rewritten graph, to be run with `leanFetches` (logits and new_rows.* only). */
  rewritten: ort.InferenceSession;
  leanFetches: string[];
  /** Per layer, the rewritten graph's new-row outputs. */
  newRows: { keys: readonly string[]; values: readonly string[] };
}

/** 6 layers, hidden 256, 8 heads / 2 KV heads (head_dim 32), vocab 4096, float32 KV, `maxPositions` positions. */
export async function openRewrittenPair(maxPositions: number, threads: number): Promise<RewrittenPair> {
  const modelOptions = { family: 'llama', hiddenSize: 256, numLayers: 6, numHeads: 8, numKvHeads: 2, intermediateSize: 688, vocabSize: 4096, maxPositions } as const;
  const built = buildModelBytes(modelOptions);
  const sessionOptions: ort.InferenceSession.SessionOptions = {
    executionProviders: ['cpu'],
    graphOptimizationLevel: 'all',
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    enableCpuMemArena: true,
    enableMemPattern: true,
  };
  const exported = await ort.InferenceSession.create(built.onnx, sessionOptions);
  const io = detectDecoderIo(exported.inputMetadata as readonly ValueInfo[], exported.outputMetadata as readonly ValueInfo[], {});
  // The LM head stays whole: the probes compare every position's logits with the exported graph's.
  const rewrite = rewriteDecoder(built.onnx, io.names, modelOptions.numHeads, modelOptions.numKvHeads, false);
  if (!rewrite.ok) throw new Error(`not rewritable: ${rewrite.reason}`);
  const rewritten = await ort.InferenceSession.create(rewrite.model ?? withPatch(built.onnx, rewrite.patch), sessionOptions);
  return { modelOptions, io, vocab: built.options.vocabSize, exported, rewritten, leanFetches: [io.names.logits, ...rewrite.newKeys, ...rewrite.newValues], newRows: { keys: rewrite.newKeys, values: rewrite.newValues } };
}

/** Seeded values in about [-2.45, 2.45] (sum of two uniforms), cheap enough for hundreds of MB of synthetic KV. */
export function syntheticKv(length: number, seed: number): Float32Array {
  const out = new Float32Array(length);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    const a = (s >>> 0) / 2 ** 32;
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = (a + (s >>> 0) / 2 ** 32 - 1) * 2.45;
  }
  return out;
}
