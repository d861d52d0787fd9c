import { availableParallelism } from 'node:os';
import type { Logger } from '../lib/logger.ts';
import { readModelFolder, type ModelFolder } from './model-folder.ts';
import type { ConfigHints } from './layout.ts';
import { OnnxDecoder, type DecoderOptions, type ExecutionProvider } from './onnx-decoder.ts';
import { probeStepMs } from './thread-calibration.ts';
import { TextTokenizer } from './tokenizer.ts';
import { WorkerDecoder } from './worker-decoder.ts';
import { probeCapabilities } from './probe.ts';
import type { Decoder, ModelCapabilities } from './types.ts';

export * from './types.ts';
export { readModelFolder, ModelFolderError, type ModelFolder, type GenerationDefaults } from './model-folder.ts';
export { detectDecoderIo, UnsupportedModelError } from './layout.ts';
export { addNewRowOutputs, newRowsName, withPatch, type KvNames, type NewRowsRewrite } from './kv-rewrite.ts';
export { OnnxDecoder, ExecutionProviderError, type ExecutionProvider } from './onnx-decoder.ts';
export { TextTokenizer } from './tokenizer.ts';
export { WorkerDecoder } from './worker-decoder.ts';
export { probeCapabilities, type ProbeReport } from './probe.ts';

export interface LoadedModel {
  folder: ModelFolder;
  decoder: Decoder;
  tokenizer: TextTokenizer;
  /** Rows of the logits: at least the tokenizer's ids, more when the export pads the embedding. */
  vocabSize: number;
  /** What the export can do, probed at load; the engine adapts (one token per step, no batching). */
  capabilities: ModelCapabilities;
  /** `prefillLane`: the same graph on a thread of its own, for long prompts' chunks beside the decode steps. */
  prefillDecoder?: Decoder;
}

export interface LoadModelOptions {
  id?: string;
  executionProvider?: ExecutionProvider;
  fallbackToCpu?: boolean;
  intraOpThreads?: number;
  /** Load the graph with new-row outputs for in-place KV (see OnnxDecoder's `newRowOutputs`). */
  newRowOutputs?: boolean;
  /**
   * Where onnxruntime runs: on the calling thread (`main`), on a thread of its own (`worker`, see
   * worker-decoder.ts), or `auto` (default `main` when omitted): the worker when a probe decode step
   * takes at least `workerMinStepMs`.
   */
  decoderThread?: 'main' | 'worker' | 'auto';
  /** `auto` only: the probe step length, in ms, from which the decoder runs on a worker (default 10). */
  workerMinStepMs?: number;
  /** `auto` only: weights of at least this many bytes are probed on a worker, smaller ones on the main thread (default WORKER_PROBE_MIN_WEIGHT_BYTES). */
  workerProbeMinWeightBytes?: number;
  /**
   * `PREFILL_LANE=worker`: also open the graph on a thread of its own with this many intra-op threads,
   * for the engine's prefill lane (src/engine/prefill-lane.ts); the main decoder's thread calibration
   * then leaves those cores out. Refused on WebGPU (its KV lives on the device of one session).
   */
  prefillLaneThreads?: number;
  logger: Logger;
}

/**
 * Below this a step on the main thread blocks the event loop less than the worker's message each way
 * per step costs (measured: a 4.8 ms step streamed at 0.97x of a bare loop on the main thread and
 * 0.87x on the worker; a 13-15 ms step at 0.83x and 0.95x; docs/benchmarks.md, "Fourth pass").
 */
export const WORKER_MIN_STEP_MS = 10;

export async function loadModel(dir: string, options: LoadModelOptions): Promise<LoadedModel> {
  const folder = readModelFolder(dir, options.id);
  const tokenizer = new TextTokenizer(folder.tokenizerJson, folder.tokenizerConfig);
  const hints = { numKvHeads: folder.numKvHeadsHint, headDim: folder.headDimHint, numHeads: folder.numHeadsHint };
  const laneThreads = options.prefillLaneThreads;
  if (laneThreads !== undefined && options.executionProvider === 'webgpu') throw new Error('PREFILL_LANE=worker is not supported with EXECUTION_PROVIDER=webgpu');
  const decoderOptions = {
    executionProvider: options.executionProvider ?? 'cpu',
    fallbackToCpu: options.fallbackToCpu ?? false,
    intraOpThreads: options.intraOpThreads,
    maxIntraOpThreads: laneThreads === undefined ? undefined : availableParallelism() - laneThreads,
    newRowOutputs: options.newRowOutputs,
    logger: options.logger,
  } as const;
  const decoder =
    options.decoderThread === 'auto' && decoderOptions.executionProvider !== 'webgpu'
      ? await placeDecoder(folder.onnxPath, folder.weightBytes >= (options.workerProbeMinWeightBytes ?? WORKER_PROBE_MIN_WEIGHT_BYTES), hints, decoderOptions, options.workerMinStepMs ?? WORKER_MIN_STEP_MS)
      : await (options.decoderThread === 'worker' ? WorkerDecoder.load : OnnxDecoder.load)(folder.onnxPath, hints, decoderOptions);
  const vocabSize = folder.vocabSize ?? tokenizer.size;
  let probe;
  try {
    probe = await probeCapabilities(decoder);
  } catch (error) {
    await decoder.dispose();
    throw error;
  }
  const reasons = Object.keys(probe.reasons).length > 0 ? { reasons: probe.reasons } : {};
  options.logger.info({ ...probe.capabilities, probeMs: Math.round(probe.durationMs * 10) / 10, ...reasons }, 'model capabilities probed');
  if (laneThreads === undefined) return { folder, decoder, tokenizer, vocabSize, capabilities: probe.capabilities };
  let prefillDecoder: Decoder;
  try {
    prefillDecoder = await WorkerDecoder.load(folder.onnxPath, hints, { ...decoderOptions, executionProvider: decoder.executionProvider as DecoderOptions['executionProvider'], intraOpThreads: laneThreads });
  } catch (error) {
    await decoder.dispose();
    throw error;
  }
  options.logger.info({ prefillLaneThreads: laneThreads, decoderThreads: decoder.intraOpThreads }, 'prefill lane opened (PREFILL_LANE=worker)');
  return { folder, decoder, tokenizer, vocabSize, capabilities: probe.capabilities, prefillDecoder };
}

/**
 * DECODER_THREAD=auto for weights under this many bytes: opened on the main thread, and moved to a worker
 * only if its probe step is long after all. A decode step reads every weight at least once, and 64 MiB
 * (16M float32 or 32M float16 parameters) steps in well under 10 ms on the CPUs this serves (the 10 MB
 * default model: 0.7 ms); a worker opened first only to be disposed left 26 MiB more resident (43 MiB
 * more at peak) on the default model, since freed native memory is not all given back.
 */
export const WORKER_PROBE_MIN_WEIGHT_BYTES = 64 * 1024 * 1024;

/**
 * DECODER_THREAD=auto: opens the model where it will likely run (small weights on the main thread, large
 * ones on a worker), times a probe decode step there, and keeps it when the guess was right: the worker
 * when the step is long enough for the event loop to lose more waiting for it than the worker's messages
 * cost, else the main thread. A wrong guess opens the model again on the other side (same thread count).
 * WebGPU is not placed (its KV stays on the device only on the main thread): the caller opens it on the main thread.
 */
async function placeDecoder(source: string, probeOnWorker: boolean, hints: ConfigHints, options: DecoderOptions, minStepMs: number): Promise<Decoder> {
  const first: Decoder = probeOnWorker ? await WorkerDecoder.load(source, hints, options) : await OnnxDecoder.load(source, hints, options);
  const stepMs = await probeStepMs(first).catch(() => null);
  const onWorker = stepMs !== null && stepMs >= minStepMs;
  options.logger.info(
    { decoderThread: onWorker ? 'worker' : 'main', probeStepMs: stepMs === null ? null : Math.round(stepMs * 100) / 100, minStepMs, probedOn: first.thread },
    'decoder thread chosen (DECODER_THREAD=auto)',
  );
  if (onWorker === (first.thread === 'worker')) return first;
  const { executionProvider, intraOpThreads } = first;
  await first.dispose();
  const placed = { ...options, executionProvider: executionProvider as DecoderOptions['executionProvider'], intraOpThreads };
  return onWorker ? WorkerDecoder.load(source, hints, placed) : OnnxDecoder.load(source, hints, placed);
}
