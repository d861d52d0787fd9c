/**
 * A Decoder whose onnxruntime session lives on its own thread (`DECODER_THREAD=worker`).
 * onnxruntime-node's `run()` is synchronous on the calling thread behind a `setImmediate`, so on the
 * main thread every HTTP read, token write, health check and metrics scrape waits for the whole step;
 * on a GPU that is 10-30 ms a step. Here the main thread only posts the step's inputs and awaits its
 * outputs (one message each way), and is free to serve while the model runs.
 */
import { Worker } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import type { Logger } from '../lib/logger.ts';
import type { ConfigHints } from './layout.ts';
import { ExecutionProviderError, type DecoderOptions } from './onnx-decoder.ts';
import { lentTransfers, stepForPosting, type FromWorker, type LentLayers, type ToWorker, type WorkerLoad } from './worker-protocol.ts';
import type { Decoder, DecoderIo, DecoderOutput, DecoderStep, RunOptions } from './types.ts';

const RUNNING_TYPESCRIPT = import.meta.url.endsWith('.ts');
/** The worker's entry, next to this file under either extension (src/ under tsx, dist/ once built). */
const WORKER_URL = new URL(`./decoder-worker${RUNNING_TYPESCRIPT ? '.ts' : '.js'}`, import.meta.url);

/**
 * A worker thread does not inherit the main thread's `--import tsx` module hooks (Node 20), so from
 * src/ it starts with a bootstrap that registers tsx's loader before importing the entry.
 */
function startWorker(workerData: WorkerLoad): Worker {
  if (!RUNNING_TYPESCRIPT) return new Worker(WORKER_URL, { workerData });
  const bootstrap = `import('tsx/esm/api').then((tsx) => tsx.register()).then(() => import(${JSON.stringify(WORKER_URL.href)}))`;
  return new Worker(bootstrap, { eval: true, workerData });
}

interface Pending {
  resolve: (output: DecoderOutput) => void;
  reject: (error: Error) => void;
  /** The engine's layer objects of a lent past: they get the moved-back views. */
  lent: LentLayers | null;
}

export class WorkerDecoder implements Decoder {
  readonly thread = 'worker' as const;
  private nextId = 0;
  private readonly pendingById = new Map<number, Pending>();
  /** Set once the worker has exited (crashed or disposed): every later run fails with it. */
  private exited: Error | null = null;
  private disposing: Promise<void> | null = null;

  private constructor(
    private readonly worker: Worker,
    readonly io: DecoderIo,
    readonly executionProvider: string,
    readonly intraOpThreads: number,
    private readonly logger: Logger,
  ) {
    worker.on('message', (message: FromWorker) => this.receive(message));
    worker.on('error', (error) => this.fail(new Error(`the decoder thread failed: ${error.message}`)));
    worker.on('exit', (code) => this.fail(new Error(`the decoder thread exited (code ${code})`)));
  }

  /** Starts the thread and loads the model there; resolves once it is ready (or rejects with the load's error). */
  static async load(source: string, hints: ConfigHints, options: DecoderOptions): Promise<WorkerDecoder> {
    const { logger, ...portable } = options;
    if (portable.executionProvider === 'webgpu') {
      // WebGPU keeps the KV on the device between steps, and device buffers cannot cross threads.
      portable.keepKvOnDevice = false;
    }
    const workerData: WorkerLoad = { source, hints, options: portable, runtimeLogLevel: ort.env.logLevel ?? 'warning' };
    const worker = startWorker(workerData);
    return new Promise<WorkerDecoder>((resolve, reject) => {
      const onMessage = (message: FromWorker) => {
        if (message.kind === 'log') return forward(logger, message);
        worker.off('message', onMessage);
        worker.off('error', onError);
        if (message.kind === 'loaded') {
          resolve(new WorkerDecoder(worker, message.io, message.executionProvider, message.intraOpThreads, logger));
        } else if (message.kind === 'load-failed') {
          reject(message.name === 'ExecutionProviderError' ? new ExecutionProviderError(message.message) : new Error(message.message));
        } else {
          reject(new Error(`the decoder thread sent "${message.kind}" before it loaded`));
        }
      };
      const onError = (error: Error) => {
        worker.off('message', onMessage);
        reject(new Error(`the decoder thread failed to start: ${error.message}`));
      };
      worker.on('message', onMessage);
      worker.once('error', onError);
    });
  }

  run(step: DecoderStep, options: RunOptions = {}): Promise<DecoderOutput> {
    if (this.exited) return Promise.reject(this.exited);
    // A lent past moves to the thread and back (no copy either way); the engine does not touch it meanwhile.
    const transfers = step.lendPast ? lentTransfers(step.past.layers) : null;
    let posted: DecoderStep;
    try {
      posted = stepForPosting(step, transfers !== null);
    } catch (error) {
      return Promise.reject(error);
    }
    const id = this.nextId++;
    return new Promise<DecoderOutput>((resolve, reject) => {
      this.pendingById.set(id, { resolve, reject, lent: transfers ? step.past.layers : null });
      this.worker.postMessage({ kind: 'run', id, step: posted, quiet: options.quiet === true, lent: transfers !== null } satisfies ToWorker, transfers ?? []);
    });
  }

  dispose(): Promise<void> {
    this.disposing ??= (async () => {
      if (!this.exited) {
        const disposed = new Promise<void>((resolve) => {
          const onMessage = (message: FromWorker) => {
            if (message.kind !== 'disposed') return;
            this.worker.off('message', onMessage);
            resolve();
          };
          this.worker.on('message', onMessage);
          this.worker.once('exit', () => resolve());
        });
        this.worker.postMessage({ kind: 'dispose' } satisfies ToWorker);
        await disposed;
      }
      this.exited ??= new Error('the decoder was disposed');
      await this.worker.terminate();
    })();
    return this.disposing;
  }

  private receive(message: FromWorker): void {
    if (message.kind === 'log') return forward(this.logger, message);
    if (message.kind !== 'result' && message.kind !== 'failed') return;
    const pending = this.pendingById.get(message.id);
    if (!pending) return;
    this.pendingById.delete(message.id);
    if (pending.lent && message.past) {
      message.past.forEach(({ key, value }, layer) => {
        pending.lent![layer].key = key;
        pending.lent![layer].value = value;
      });
    }
    if (message.kind === 'result') pending.resolve(message.output);
    else pending.reject(Object.assign(new Error(message.message), { name: message.name }));
  }

  private fail(error: Error): void {
    if (!this.exited && !this.disposing) this.logger.error({ pending: this.pendingById.size }, error.message);
    this.exited ??= error;
    for (const pending of this.pendingById.values()) pending.reject(error);
    this.pendingById.clear();
  }
}

function forward(logger: Logger, message: Extract<FromWorker, { kind: 'log' }>): void {
  logger[message.level](message.fields, message.message);
}
