/** Shapes and dtypes the rest of warmkv sees; nothing here depends on onnxruntime. */

export type KvDtype = 'float32' | 'float16';
/** float16 values travel as their raw bit patterns (Node 20 has no Float16Array). */
export type KvData = Float32Array | Uint16Array;

export interface KvLayout {
  numLayers: number;
  numKvHeads: number;
  headDim: number;
  dtype: KvDtype;
  /** Bytes of keys and values of one token across all layers. */
  bytesPerToken: number;
}

/**
 * Keys and values of a batch of sequences, one tensor pair per layer.
 * Every tensor is `// [batchSize, numKvHeads, length, headDim]`, row-major.
 */
export interface KvTensors {
  batchSize: number;
  length: number;
  layers: Array<{ key: KvData; value: KvData }>;
}

/** How the model turns positions into signal: what the sliding window may do to a cache depends on it. */
export type PositionEncoding =
  | { kind: 'rotary'; theta: number; rotaryDim: number; style: 'rotate_half' }
  | { kind: 'rotary-unknown'; reason: string }
  | { kind: 'learned'; maxPositions: number };

export interface DecoderIoNames {
  inputIds: string;
  attentionMask: string;
  positionIds: string | null;
  useCacheBranch: string | null;
  pastKeys: string[];
  pastValues: string[];
  logits: string;
  presentKeys: string[];
  presentValues: string[];
}

export interface DecoderIo {
  names: DecoderIoNames;
  kv: KvLayout;
  logitsDtype: KvDtype;
}

/** One call of the decoder: `batchSize` rows of `seqLength` new tokens after `past.length` cached ones. */
export interface DecoderStep {
  batchSize: number;
  seqLength: number;
  inputIds: BigInt64Array; // [batchSize, seqLength]
  attentionMask: BigInt64Array; // [batchSize, past.length + seqLength]
  positionIds: BigInt64Array; // [batchSize, seqLength]
  past: KvTensors;
}

export interface DecoderOutput {
  /** `// [batchSize, seqLength, vocabSize]`, float32 or float16 bits as the model emits it. */
  logits: KvData;
  vocabSize: number;
  present: KvTensors;
}

export function kvElementCount(layout: KvLayout, batchSize: number, length: number): number {
  return batchSize * layout.numKvHeads * length * layout.headDim;
}

export function allocateKvData(dtype: KvDtype, elements: number): KvData {
  return dtype === 'float16' ? new Uint16Array(elements) : new Float32Array(elements);
}

export function emptyKv(layout: KvLayout, batchSize: number): KvTensors {
  const layers = [];
  for (let i = 0; i < layout.numLayers; i++) {
    layers.push({ key: allocateKvData(layout.dtype, 0), value: allocateKvData(layout.dtype, 0) });
  }
  return { batchSize, length: 0, layers };
}

export function kvBytes(layout: KvLayout, kv: KvTensors): number {
  return kv.batchSize * kv.length * layout.bytesPerToken;
}

/** What the engine needs from a model runtime; tests wrap it to inject faults. */
export interface Decoder {
  readonly io: DecoderIo;
  /** The execution provider actually in use (after any fallback). */
  readonly executionProvider: string;
  run(step: DecoderStep): Promise<DecoderOutput>;
  dispose(): Promise<void>;
}
