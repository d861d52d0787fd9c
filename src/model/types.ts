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
 * When `device` is set the tensors stay on the accelerator and `layers` is empty: only the decoder that
 * made them can use them, as the next step's past; `kvOnHost` brings them to host memory.
 */
export interface KvTensors {
  batchSize: number;
  length: number;
  layers: Array<{ key: KvData; value: KvData }>;
  device?: DeviceKv;
}

/** KV kept in accelerator memory between steps; opaque outside the decoder that made it. */
export interface DeviceKv {
  /** Copies the tensors to host memory and frees the device buffers. */
  download(): Promise<Array<{ key: KvData; value: KvData }>>;
  /** Frees the device buffers (the KV is no longer needed). */
  release(): void;
}

/** How the model turns positions into signal: what the sliding window may do to a cache depends on it. */
export type PositionEncoding =
  | { kind: 'rotary'; theta: number; rotaryDim: number; style: 'rotate_half' }
  | { kind: 'rotary-unknown'; reason: string }
  | { kind: 'learned'; maxPositions: number };

export interface DecoderIoNames {
  /**
   * 'separate': past_key_values.N.key/value, each [batch, kv_heads, seq, head_dim] (Optimum);
   * 'stacked': one past_N / present_N [2, batch, kv_heads, seq, head_dim] per layer, keys first
   * (ONNX Runtime's GPT-2 exporter); pastKeys and pastValues (presentKeys, presentValues) then name the same tensors.
   */
  kvPacking: 'separate' | 'stacked';
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

/** Element types of the inputs the engine fills (it always builds int64; the decoder converts). */
export interface DecoderInputTypes {
  inputIds: 'int64' | 'int32';
  attentionMask: 'int64' | 'int32' | 'float32';
  positionIds: 'int64' | 'int32';
}

export interface DecoderIo {
  names: DecoderIoNames;
  /**
   * Per layer, the outputs holding only the new rows of keys and values (`// [batch, kv_heads, seqLength, head_dim]`),
   * added at load by kv-rewrite.ts when asked for and the graph has the Concat shape; absent otherwise.
   */
  newRows?: { keys: readonly string[]; values: readonly string[] };
  /** MatMuls the load-time rewrite made attend over the unrepeated KV heads (gqa-rewrite.ts); 0 or absent: none. */
  groupedAttention?: number;
  /** The input the load-time rewrite added that cuts the logits to the last positions (logits-rewrite.ts); absent: every position's. */
  logitsToKeep?: string;
  inputTypes: DecoderInputTypes;
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
  /**
   * 'present' (default): the output's present is the whole cache, past and new rows. 'new-rows' (only
   * when `io.newRows` is set): only logits and the new rows are fetched, so present holds `seqLength`
   * slots and the past's bytes are never copied out of the runtime.
   */
  fetch?: 'present' | 'new-rows';
  /**
   * The past's buffers belong to this call alone (the engine's in-place buffers, nothing else holds a
   * view of them), so a decoder on another thread may move them there and back instead of copying them.
   * `past.layers[i].key` / `.value` then hold the same bytes in new views once the call settles; views
   * of length 0 afterwards mean the bytes were lost with the thread (see `kvIntact`).
   */
  lendPast?: boolean;
  /**
   * Logits of the last this many positions only, where the decoder can cut them (`io.logitsToKeep`):
   * a prefill chunk samples from its last position alone. Absent: every position's.
   */
  logitsToKeep?: number;
}

export interface DecoderOutput {
  /** `// [batchSize, logitPositions, vocabSize]`, float32 or float16 bits as the model emits it. */
  logits: KvData;
  vocabSize: number;
  /** Positions the logits hold, the step's last ones: seqLength, or fewer when `logitsToKeep` cut them. Absent: seqLength. */
  logitPositions?: number;
  present: KvTensors;
}

/** Whether every layer of `kv` still has its bytes (a past lent to a decoder thread that died has none). */
export function kvIntact(layout: KvLayout, kv: KvTensors): boolean {
  const elements = kvElementCount(layout, kv.batchSize, kv.length);
  return kv.layers.every(({ key, value }) => key.length === elements && value.length === elements);
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

/** What a loaded export can do, probed at load (see probe.ts); the engine adapts to what is false. */
export interface ModelCapabilities {
  /** Several new tokens in one call over a non-empty past (chunked prefill, a session's next turn). */
  multiTokenOverPast: boolean;
  /** More than one row per call (batched decode). */
  batched: boolean;
  /** Rows whose attention_mask starts with zeros give the same logits as alone (how batch rows of different lengths line up). */
  leftPadding: boolean;
}

export const FULL_CAPABILITIES: ModelCapabilities = Object.freeze({ multiTokenOverPast: true, batched: true, leftPadding: true });

export interface RunOptions {
  /** The call may fail by design (a capability probe): the runtime does not log the failure. */
  quiet?: boolean;
}

/** What the engine needs from a model runtime; tests wrap it to inject faults. */
export interface Decoder {
  readonly io: DecoderIo;
  /** The execution provider actually in use (after any fallback). */
  readonly executionProvider: string;
  /** onnxruntime's intra-op threads (set, or calibrated at load); absent for decoders that do not say. */
  readonly intraOpThreads?: number;
  /** Where steps compute: the calling thread or a worker (DECODER_THREAD); absent for decoders that do not say. */
  readonly thread?: 'main' | 'worker';
  /**
   * Runs one step. A `past` on the device is consumed: once the step succeeded it must not be used
   * again (its buffers may be reused or freed); after a failure it is still valid.
   */
  run(step: DecoderStep, options?: RunOptions): Promise<DecoderOutput>;
  dispose(): Promise<void>;
}

/** The same KV in host memory: host KV as it is, device KV downloaded (and its device copy freed). */
export async function kvOnHost(kv: KvTensors): Promise<KvTensors> {
  if (!kv.device) return kv;
  return { batchSize: kv.batchSize, length: kv.length, layers: await kv.device.download() };
}
