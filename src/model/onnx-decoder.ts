import { availableParallelism } from 'node:os';
import * as ort from 'onnxruntime-node';
import type { Logger } from '../lib/logger.ts';
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

/** onnxruntime-node session for an Optimum-style decoder; the only place the runtime is touched. */
export class OnnxDecoder implements Decoder {
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
    const cores = availableParallelism();
    if (options.intraOpThreads !== undefined || options.executionProvider !== 'cpu' || cores < 2) {
      const decoder = await OnnxDecoder.open(source, hints, options, options.intraOpThreads ?? cores);
      decoder.logLoaded(options.logger, {});
      return decoder;
    }
    const started = performance.now();
    const choice = await calibrateThreads((threads) => OnnxDecoder.open(source, hints, options, threads), cores);
    const stepMs = Object.fromEntries(Object.entries(choice.stepMs).map(([threads, ms]) => [threads, Math.round(ms * 1000) / 1000]));
    choice.decoder.logLoaded(options.logger, { threadsCalibrated: true, calibrationStepMs: stepMs, calibrationMs: Math.round(performance.now() - started) });
    return choice.decoder;
  }

  private logLoaded(logger: Logger, extra: Record<string, unknown>): void {
    const { kv } = this.io;
    logger.info(
      { provider: this.executionProvider, threads: this.intraOpThreads, layers: kv.numLayers, kvHeads: kv.numKvHeads, headDim: kv.headDim, kvDtype: kv.dtype, ...extra },
      'decoder loaded',
    );
  }

  private static async open(source: string | Uint8Array, hints: ConfigHints, options: DecoderOptions, threads: number): Promise<OnnxDecoder> {
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
    return new OnnxDecoder(session, io, provider, threads);
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
      return { logits: logits.data as KvData, vocabSize: logits.dims[2], present };
    }
    const outputs: ort.Tensor[] = [];
    for (let layer = 0; layer < kv.numLayers; layer++) {
      outputs.push(results[names.presentKeys[layer]] as ort.Tensor, results[names.presentValues[layer]] as ort.Tensor);
    }
    if (outputs[0].location === 'gpu-buffer') {
      return { logits: logits.data as KvData, vocabSize: logits.dims[2], present: { batchSize: batch, length: total, layers: [], device: new GpuKv(outputs) } };
    }
    const present: KvTensors = { batchSize: batch, length: total, layers: [] };
    for (let layer = 0; layer < kv.numLayers; layer++) {
      present.layers.push({ key: outputs[2 * layer].data as KvData, value: outputs[2 * layer + 1].data as KvData });
    }
    return { logits: logits.data as KvData, vocabSize: logits.dims[2], present };
  }

  async dispose(): Promise<void> {
    await this.session.release();
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
