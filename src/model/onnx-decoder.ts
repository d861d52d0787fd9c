import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { dirname } from 'node:path';
import { availableParallelism } from 'node:os';
import * as ort from 'onnxruntime-node';
import type { Logger } from '../lib/logger.ts';
import { rewriteDecoder, withPatch } from './kv-rewrite.ts';
import { calibrateThreads } from './thread-calibration.ts';
import { detectDecoderIo, type ConfigHints, type ValueInfo } from './layout.ts';
import type { Decoder, DecoderIo, DecoderOutput, DecoderStep, DeviceKv, KvData, KvTensors, RunOptions } from './types.ts';

export type ExecutionProvider = 'cpu' | 'cuda' | 'webgpu';

export interface DecoderOptions {
  executionProvider: ExecutionProvider;
  /**
   * WebGPU only: keep present.* in GPU memory between steps (`preferredOutputLocation: 'gpu-buffer'`)
   * instead of copying the whole cache to the host and back every step. Default true.
   */
  keepKvOnDevice?: boolean;
  /** Use the CPU when the requested provider cannot start, with a warning, instead of failing. */
  fallbackToCpu: boolean;
  intraOpThreads?: number;
  /**
   * Without `intraOpThreads`, the calibration tries thread counts up to this many (default: every
   * core); a prefill lane beside the decoder keeps its own threads' cores out of it.
   */
  maxIntraOpThreads?: number;
  /**
   * Rewrite the graph at load so that it also outputs just the new KV rows (kv-rewrite.ts), for
   * in-place KV (`fetch: 'new-rows'`). Graphs without the Concat shape load as they are, with the reason logged.
   */
  newRowOutputs?: boolean;
  logger: Logger;
}

export class ExecutionProviderError extends Error {
  override name = 'ExecutionProviderError';
}

function sessionOptions(provider: ExecutionProvider, threads: number, deviceOutputs: string[]): ort.InferenceSession.SessionOptions {
  return {
    ...(deviceOutputs.length > 0 ? { preferredOutputLocation: Object.fromEntries(deviceOutputs.map((name) => [name, 'gpu-buffer' as const])) } : {}),
    executionProviders: [provider],
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    enableCpuMemArena: true,
    enableMemPattern: true,
  };
}

/** What the first open of a model learned, for opening it again at another thread count. */
interface PreparedModel {
  /** The file, or the rewritten graph's bytes. */
  model: string | Uint8Array;
  extraOptions: ort.InferenceSession.SessionOptions;
  deviceOutputs: string[];
  provider: ExecutionProvider;
  io: DecoderIo;
}

/** onnxruntime-node session for an Optimum-style decoder; the only place the runtime is touched. */
export class OnnxDecoder implements Decoder {
  readonly thread = 'main' as const;

  private constructor(
    private readonly session: ort.InferenceSession,
    readonly io: DecoderIo,
    readonly executionProvider: ExecutionProvider,
    /** onnxruntime intra-op threads of this session (set, or calibrated at load). */
    readonly intraOpThreads: number,
  ) {}

  /**
   * Opens the model. Without an explicit `intraOpThreads` on the CPU, the thread count is calibrated
   * (thread-calibration.ts): the fastest per decode step of 1, 2, 4 ... up to the available cores.
   */
  static async load(source: string | Uint8Array, hints: ConfigHints, options: DecoderOptions): Promise<OnnxDecoder> {
    const cores = Math.max(1, Math.min(availableParallelism(), options.maxIntraOpThreads ?? Infinity));
    if (options.intraOpThreads !== undefined || options.executionProvider !== 'cpu' || cores < 2) {
      const { decoder } = await OnnxDecoder.open(source, hints, options, options.intraOpThreads ?? cores);
      decoder.logLoaded(options.logger, {});
      return decoder;
    }
    const started = performance.now();
    // The first open reads the graph and rewrites it; the other thread counts load those bytes as they are.
    // Only this calibration holds them (a model without external weights is whole in them).
    let prepared: PreparedModel | undefined;
    const openAt = async (threads: number): Promise<OnnxDecoder> => {
      if (prepared) return OnnxDecoder.reopen(prepared, threads);
      const opened = await OnnxDecoder.open(source, hints, options, threads);
      prepared = opened.prepared;
      return opened.decoder;
    };
    const choice = await calibrateThreads(openAt, cores);
    const stepMs = Object.fromEntries(Object.entries(choice.stepMs).map(([threads, ms]) => [threads, Math.round(ms * 1000) / 1000]));
    choice.decoder.logLoaded(options.logger, { threadsCalibrated: true, calibrationStepMs: stepMs, calibrationMs: Math.round(performance.now() - started) });
    return choice.decoder;
  }

  /** Another session of an opened model at another thread count, from the bytes the first open loaded. */
  private static async reopen(prepared: PreparedModel, threads: number): Promise<OnnxDecoder> {
    const options = { ...sessionOptions(prepared.provider, threads, prepared.deviceOutputs), ...prepared.extraOptions };
    const session =
      typeof prepared.model === 'string' ? await ort.InferenceSession.create(prepared.model, options) : await ort.InferenceSession.create(prepared.model, options);
    return new OnnxDecoder(session, prepared.io, prepared.provider, threads);
  }

  private logLoaded(logger: Logger, extra: Record<string, unknown>): void {
    const { kv } = this.io;
    logger.info(
      { provider: this.executionProvider, threads: this.intraOpThreads, kvPath: this.io.newRows ? 'inplace' : 'concat', layers: kv.numLayers, kvHeads: kv.numKvHeads, headDim: kv.headDim, kvDtype: kv.dtype, ...extra },
      'decoder loaded',
    );
  }

  private static async open(
    source: string | Uint8Array,
    hints: ConfigHints,
    options: DecoderOptions,
    threads: number,
  ): Promise<{ decoder: OnnxDecoder; prepared: PreparedModel }> {
    const requested = options.executionProvider;
    let session: ort.InferenceSession;
    let provider = requested;
    // The present.* names are only known from the metadata; by convention they match past_key_values.*.
    const deviceOutputs = (p: ExecutionProvider, layers: number) =>
      p === 'webgpu' && (options.keepKvOnDevice ?? true)
        ? Array.from({ length: layers }, (_, i) => [`present.${i}.key`, `present.${i}.value`]).flat()
        : [];
    const create = (p: ExecutionProvider, layers = 0) =>
      typeof source === 'string'
        ? ort.InferenceSession.create(source, sessionOptions(p, threads, deviceOutputs(p, layers)))
        : ort.InferenceSession.create(source, sessionOptions(p, threads, deviceOutputs(p, layers)));
    try {
      session = await create(requested);
    } catch (error) {
      if (requested === 'cpu' || !options.fallbackToCpu) {
        throw new ExecutionProviderError(
          `execution provider "${requested}" could not start: ${(error as Error).message}` +
            (requested === 'cpu' ? '' : ' (set EXECUTION_PROVIDER_FALLBACK=true to fall back to the CPU)'),
        );
      }
      options.logger.warn({ requested, reason: (error as Error).message.split('\n')[0] }, 'execution provider unavailable, falling back to cpu');
      provider = 'cpu';
      session = await create('cpu');
    }
    let io = detectDecoderIo(session.inputMetadata as readonly ValueInfo[], session.outputMetadata as readonly ValueInfo[], hints);
    if (provider === 'webgpu' && (options.keepKvOnDevice ?? true) && io.names.kvPacking === 'separate') {
      // Recreate the session now that the layer count is known, with the KV outputs left on the GPU.
      await session.release();
      session = await create('webgpu', io.kv.numLayers);
      io = detectDecoderIo(session.inputMetadata as readonly ValueInfo[], session.outputMetadata as readonly ValueInfo[], hints);
    }
    if (options.newRowOutputs) {
      const rewritten = newRowOutputsModel(source, io, hints, provider, options.logger);
      if (rewritten) {
        // The plain session only told the graph's inputs and outputs: it goes before the rewritten one
        // loads, so the weights are never held by two sessions at once.
        await session.release();
        // From bytes, onnxruntime finds external weight files (model.onnx_data) only when told their folder.
        const external = typeof source === 'string' ? { extra: { session: { model_external_initializers_file_folder_path: dirname(source) } } } : {};
        try {
          session = await ort.InferenceSession.create(rewritten.bytes, { ...sessionOptions(provider, threads, []), ...external });
          io = { ...io, newRows: rewritten.newRows, groupedAttention: rewritten.groupedMatmuls, logitsToKeep: rewritten.logitsToKeep ?? undefined };
          if (rewritten.groupedMatmuls > 0) options.logger.info({ matmuls: rewritten.groupedMatmuls }, 'grouped attention reads the KV heads without repeating them');
          if (rewritten.logitsToKeep) options.logger.info({}, "prefill chunks compute only their last position's logits");
          else options.logger.info({ reason: rewritten.logitsReason }, "the LM head was left as exported: prefill chunks compute every position's logits");
          const prepared = { model: rewritten.bytes, extraOptions: external, deviceOutputs: [], provider, io };
          return { decoder: new OnnxDecoder(session, io, provider, threads), prepared };
        } catch (error) {
          options.logger.info({ kvPath: 'concat', reason: `the rewritten graph does not load: ${(error as Error).message.split('\n')[0]}` }, 'in-place KV unavailable, the decoder runs the concat path');
          session = await create(provider);
        }
      }
    }
    const prepared = { model: source, extraOptions: {}, deviceOutputs: deviceOutputs(provider, io.names.kvPacking === 'separate' ? io.kv.numLayers : 0), provider, io };
    return { decoder: new OnnxDecoder(session, io, provider, threads), prepared };
  }

  async run(step: DecoderStep, options: RunOptions = {}): Promise<DecoderOutput> {
    const { names, kv } = this.io;
    const batch = step.batchSize;
    const pastLength = step.past.length;
    const total = pastLength + step.seqLength;
    const types = this.io.inputTypes;
    const feeds: Record<string, ort.Tensor> = {
      [names.inputIds]: integerTensor(types.inputIds, step.inputIds, [batch, step.seqLength]),
      [names.attentionMask]: integerTensor(types.attentionMask, step.attentionMask, [batch, total]),
    };
    if (names.positionIds) feeds[names.positionIds] = integerTensor(types.positionIds, step.positionIds, [batch, step.seqLength]);
    if (names.useCacheBranch) feeds[names.useCacheBranch] = new ort.Tensor('bool', Uint8Array.of(pastLength > 0 ? 1 : 0), [1]);
    const logitPositions = Math.min(step.logitsToKeep ?? step.seqLength, step.seqLength);
    if (this.io.logitsToKeep) feeds[this.io.logitsToKeep] = new ort.Tensor('int64', BigInt64Array.of(BigInt(logitPositions)), [1]);
    const pastDims = [batch, kv.numKvHeads, pastLength, kv.headDim];
    const onDevice = step.past.device instanceof GpuKv ? step.past.device : null;
    const stacked = names.kvPacking === 'stacked';
    for (let layer = 0; layer < kv.numLayers; layer++) {
      if (stacked) {
        const { key, value } = step.past.layers[layer];
        feeds[names.pastKeys[layer]] = new ort.Tensor(kv.dtype, stack(key, value), [2, ...pastDims]);
      } else if (onDevice) {
        feeds[names.pastKeys[layer]] = onDevice.tensors[2 * layer];
        feeds[names.pastValues[layer]] = onDevice.tensors[2 * layer + 1];
      } else {
        feeds[names.pastKeys[layer]] = new ort.Tensor(kv.dtype, step.past.layers[layer].key, pastDims);
        feeds[names.pastValues[layer]] = new ort.Tensor(kv.dtype, step.past.layers[layer].value, pastDims);
      }
    }
    // Severity 4 (fatal only): an expected probe failure would otherwise print an ERROR line.
    if (step.fetch === 'new-rows') return this.runNewRows(feeds, step, options);
    const results = options.quiet ? await this.session.run(feeds, { logSeverityLevel: 4 }) : await this.session.run(feeds);
    // The past is consumed: its GPU buffers can go (after a failure they stay, and so does the past).
    onDevice?.release();
    const logits = results[names.logits] as ort.Tensor;
    if (stacked) {
      const present: KvTensors = { batchSize: batch, length: total, layers: [] };
      for (let layer = 0; layer < kv.numLayers; layer++) {
        // present_N [2, ...]: keys then values; views of the one buffer, so the next step stacks them for free.
        const data = (results[names.presentKeys[layer]] as ort.Tensor).data as KvData;
        const half = data.length / 2;
        present.layers.push({ key: data.subarray(0, half), value: data.subarray(half) });
      }
      return { logits: logits.data as KvData, vocabSize: logits.dims[2], logitPositions: logits.dims[1], present };
    }
    const outputs: ort.Tensor[] = [];
    for (let layer = 0; layer < kv.numLayers; layer++) {
      outputs.push(results[names.presentKeys[layer]] as ort.Tensor, results[names.presentValues[layer]] as ort.Tensor);
    }
    if (outputs[0].location === 'gpu-buffer') {
      return { logits: logits.data as KvData, vocabSize: logits.dims[2], logitPositions: logits.dims[1], present: { batchSize: batch, length: total, layers: [], device: new GpuKv(outputs) } };
    }
    const present: KvTensors = { batchSize: batch, length: total, layers: [] };
    for (let layer = 0; layer < kv.numLayers; layer++) {
      present.layers.push({ key: outputs[2 * layer].data as KvData, value: outputs[2 * layer + 1].data as KvData });
    }
    return { logits: logits.data as KvData, vocabSize: logits.dims[2], logitPositions: logits.dims[1], present };
  }

  async dispose(): Promise<void> {
    await this.session.release();
  }

  /** Fetches logits and the new rows only; present then holds just the step's `seqLength` slots. */
  private async runNewRows(feeds: Record<string, ort.Tensor>, step: DecoderStep, options: RunOptions): Promise<DecoderOutput> {
    const { names, newRows } = this.io;
    if (!newRows) throw new Error('this decoder has no new-row outputs (load it with newRowOutputs on a graph with the Concat shape)');
    const fetches = [names.logits, ...newRows.keys, ...newRows.values];
    const results = options.quiet ? await this.session.run(feeds, fetches, { logSeverityLevel: 4 }) : await this.session.run(feeds, fetches);
    const logits = results[names.logits] as ort.Tensor;
    const present: KvTensors = { batchSize: step.batchSize, length: step.seqLength, layers: [] };
    for (let layer = 0; layer < this.io.kv.numLayers; layer++) {
      present.layers.push({ key: results[newRows.keys[layer]].data as KvData, value: results[newRows.values[layer]].data as KvData });
    }
    return { logits: logits.data as KvData, vocabSize: logits.dims[2], logitPositions: logits.dims[1], present };
  }
}

/** Room read after a model file for the rewrite's patch (a few hundred bytes a layer), so it needs no second copy of the file. */
const PATCH_ROOM = 1 << 20;

/**
 * The model's bytes with new-row outputs (kv-rewrite.ts) and their names, or null (with the reason
 * logged) when the KV is stacked or on the device, or the graph has no Concat shape. A file is read into
 * a buffer with room after it, where the patch goes: the weights are read once, never copied. Grouped
 * attention over the unrepeated KV heads changes existing nodes, so that model is encoded whole (for
 * exports with external weights, only the graph).
 */
function newRowOutputsModel(
  source: string | Uint8Array,
  io: DecoderIo,
  hints: ConfigHints,
  provider: ExecutionProvider,
  logger: Logger,
): { bytes: Uint8Array; newRows: NonNullable<DecoderIo['newRows']>; groupedMatmuls: number; logitsToKeep: string | null; logitsReason: string | null } | null {
  const keep = (reason: string) => {
    logger.info({ kvPath: 'concat', reason }, 'in-place KV unavailable, the decoder runs the concat path');
    return null;
  };
  if (io.names.kvPacking !== 'separate') return keep('the KV is stacked per layer (past_N), not past_key_values.N.key/value');
  if (provider === 'webgpu') return keep('the WebGPU provider keeps the KV on the device already');
  const { buffer, size } = typeof source === 'string' ? readWithRoom(source, PATCH_ROOM) : { buffer: source, size: source.length };
  const rewrite = rewriteDecoder(buffer.subarray(0, size), io.names, hints.numHeads, io.kv.numKvHeads);
  if (!rewrite.ok) return keep(rewrite.reason);
  const newRows = { keys: rewrite.newKeys, values: rewrite.newValues };
  // Grouped attention changed existing nodes: the model was encoded whole.
  const logits = { logitsToKeep: rewrite.logitsToKeep, logitsReason: rewrite.logitsReason };
  if (rewrite.model) return { bytes: rewrite.model, newRows, groupedMatmuls: rewrite.groupedMatmuls, ...logits };
  let bytes: Uint8Array;
  if (buffer.length - size >= rewrite.patch.length) {
    buffer.set(rewrite.patch, size);
    bytes = buffer.subarray(0, size + rewrite.patch.length);
  } else {
    bytes = withPatch(buffer.subarray(0, size), rewrite.patch);
  }
  return { bytes, newRows, groupedMatmuls: 0, ...logits };
}

/** A file's bytes in a buffer `room` bytes longer than the file. */
function readWithRoom(path: string, room: number): { buffer: Uint8Array; size: number } {
  const handle = openSync(path, 'r');
  try {
    const size = fstatSync(handle).size;
    const buffer = Buffer.allocUnsafe(size + room);
    for (let read = 0; read < size; ) {
      const n = readSync(handle, buffer, read, size - read, read);
      if (n === 0) throw new Error(`${path} ended after ${read} of ${size} bytes`);
      read += n;
    }
    return { buffer, size };
  } finally {
    closeSync(handle);
  }
}

/** The engine's int64 inputs in the element type the model declares (older exports take int32 or a float mask). */
function integerTensor(type: 'int64' | 'int32' | 'float32', data: BigInt64Array, dims: number[]): ort.Tensor {
  if (type === 'int64') return new ort.Tensor('int64', data, dims);
  if (type === 'int32') return new ort.Tensor('int32', Int32Array.from(data, Number), dims);
  return new ort.Tensor('float32', Float32Array.from(data, Number), dims);
}

/**
 * Keys then values in one `// [2, batch, kv_heads, seq, head_dim]` array. When they are the two halves of
 * one buffer (the previous step's present_N, fed straight back) that buffer is used as it is; otherwise copied.
 */
function stack(key: KvData, value: KvData): KvData {
  if (key.buffer === value.buffer && key.byteOffset + key.byteLength === value.byteOffset && key.length === value.length) {
    return key instanceof Float32Array ? new Float32Array(key.buffer, key.byteOffset, 2 * key.length) : new Uint16Array(key.buffer, key.byteOffset, 2 * key.length);
  }
  const both = key instanceof Float32Array ? new Float32Array(2 * key.length) : new Uint16Array(2 * key.length);
  both.set(key, 0);
  both.set(value, key.length);
  return both;
}

/** Present tensors left in GPU buffers by the WebGPU provider, in layer order (key, value, key, ...). */
class GpuKv implements DeviceKv {
  private released = false;

  constructor(readonly tensors: ort.Tensor[]) {}

  async download(): Promise<Array<{ key: KvData; value: KvData }>> {
    const layers: Array<{ key: KvData; value: KvData }> = [];
    for (let i = 0; i < this.tensors.length; i += 2) {
      // getData(true) copies to the host and releases the GPU buffer.
      layers.push({ key: (await this.tensors[i].getData(true)) as KvData, value: (await this.tensors[i + 1].getData(true)) as KvData });
    }
    this.released = true;
    return layers;
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    for (const tensor of this.tensors) tensor.dispose();
  }
}
