import { availableParallelism } from 'node:os';
import * as ort from 'onnxruntime-node';
import type { Logger } from '../lib/logger.ts';
import { detectDecoderIo, type ConfigHints, type ValueInfo } from './layout.ts';
import type { Decoder, DecoderIo, DecoderOutput, DecoderStep, KvData, KvTensors } from './types.ts';

export type ExecutionProvider = 'cpu' | 'cuda' | 'webgpu';

export interface DecoderOptions {
  executionProvider: ExecutionProvider;
  /** Use the CPU when the requested provider cannot start, with a warning, instead of failing. */
  fallbackToCpu: boolean;
  intraOpThreads?: number;
  logger: Logger;
}

export class ExecutionProviderError extends Error {
  override name = 'ExecutionProviderError';
}

function sessionOptions(provider: ExecutionProvider, threads: number): ort.InferenceSession.SessionOptions {
  return {
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
  ) {}

  static async load(source: string | Uint8Array, hints: ConfigHints, options: DecoderOptions): Promise<OnnxDecoder> {
    const threads = options.intraOpThreads ?? availableParallelism();
    const requested = options.executionProvider;
    let session: ort.InferenceSession;
    let provider = requested;
    const create = (p: ExecutionProvider) =>
      typeof source === 'string' ? ort.InferenceSession.create(source, sessionOptions(p, threads)) : ort.InferenceSession.create(source, sessionOptions(p, threads));
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
    const io = detectDecoderIo(session.inputMetadata as readonly ValueInfo[], session.outputMetadata as readonly ValueInfo[], hints);
    options.logger.info(
      { provider, threads, layers: io.kv.numLayers, kvHeads: io.kv.numKvHeads, headDim: io.kv.headDim, kvDtype: io.kv.dtype },
      'decoder loaded',
    );
    return new OnnxDecoder(session, io, provider);
  }

  async run(step: DecoderStep): Promise<DecoderOutput> {
    const { names, kv } = this.io;
    const batch = step.batchSize;
    const pastLength = step.past.length;
    const total = pastLength + step.seqLength;
    const feeds: Record<string, ort.Tensor> = {
      [names.inputIds]: new ort.Tensor('int64', step.inputIds, [batch, step.seqLength]),
      [names.attentionMask]: new ort.Tensor('int64', step.attentionMask, [batch, total]),
    };
    if (names.positionIds) feeds[names.positionIds] = new ort.Tensor('int64', step.positionIds, [batch, step.seqLength]);
    if (names.useCacheBranch) feeds[names.useCacheBranch] = new ort.Tensor('bool', Uint8Array.of(pastLength > 0 ? 1 : 0), [1]);
    const pastDims = [batch, kv.numKvHeads, pastLength, kv.headDim];
    for (let layer = 0; layer < kv.numLayers; layer++) {
      feeds[names.pastKeys[layer]] = new ort.Tensor(kv.dtype, step.past.layers[layer].key, pastDims);
      feeds[names.pastValues[layer]] = new ort.Tensor(kv.dtype, step.past.layers[layer].value, pastDims);
    }
    const results = await this.session.run(feeds);
    const logits = results[names.logits] as ort.Tensor;
    const present: KvTensors = { batchSize: batch, length: total, layers: [] };
    for (let layer = 0; layer < kv.numLayers; layer++) {
      present.layers.push({
        key: (results[names.presentKeys[layer]] as ort.Tensor).data as KvData,
        value: (results[names.presentValues[layer]] as ort.Tensor).data as KvData,
      });
    }
    return { logits: logits.data as KvData, vocabSize: logits.dims[2], present };
  }

  async dispose(): Promise<void> {
    await this.session.release();
  }
}
