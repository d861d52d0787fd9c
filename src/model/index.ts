import type { Logger } from '../lib/logger.ts';
import { readModelFolder, type ModelFolder } from './model-folder.ts';
import { OnnxDecoder, type ExecutionProvider } from './onnx-decoder.ts';
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
}

export interface LoadModelOptions {
  id?: string;
  executionProvider?: ExecutionProvider;
  fallbackToCpu?: boolean;
  intraOpThreads?: number;
  /** Load the graph with new-row outputs for in-place KV (see OnnxDecoder's `newRowOutputs`). */
  newRowOutputs?: boolean;
  /** Where onnxruntime runs: on the calling thread (`main`), or on a thread of its own (`worker`, see worker-decoder.ts). */
  decoderThread?: 'main' | 'worker';
  logger: Logger;
}

export async function loadModel(dir: string, options: LoadModelOptions): Promise<LoadedModel> {
  const folder = readModelFolder(dir, options.id);
  const tokenizer = new TextTokenizer(folder.tokenizerJson, folder.tokenizerConfig);
  const open = options.decoderThread === 'worker' ? WorkerDecoder.load : OnnxDecoder.load;
  const decoder = await open(
    folder.onnxPath,
    { numKvHeads: folder.numKvHeadsHint, headDim: folder.headDimHint },
    {
      executionProvider: options.executionProvider ?? 'cpu',
      fallbackToCpu: options.fallbackToCpu ?? false,
      intraOpThreads: options.intraOpThreads,
      newRowOutputs: options.newRowOutputs,
      logger: options.logger,
    },
  );
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
  return { folder, decoder, tokenizer, vocabSize, capabilities: probe.capabilities };
}
