/**
 * The thread that owns the onnxruntime session when `DECODER_THREAD=worker` (worker-decoder.ts is the
 * other end). onnxruntime-node's `run()` computes on the thread that calls it, so a step run here
 * leaves the main thread free to read requests and write tokens while the model works.
 */
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import type { Logger } from '../lib/logger.ts';
import { OnnxDecoder } from './onnx-decoder.ts';
import { outputTransfers, type FromWorker, type ToWorker, type WorkerLoad } from './worker-protocol.ts';

if (!parentPort) throw new Error('decoder-worker.ts runs as a worker thread (see worker-decoder.ts)');
const port: MessagePort = parentPort;

/** Log records cross to the main thread's logger, which adds its own fields (component, pid). */
function forwardingLogger(fields: Record<string, unknown>): Logger {
  const send = (level: 'debug' | 'info' | 'warn' | 'error') => (extra: Record<string, unknown>, message: string) =>
    port.postMessage({ kind: 'log', level, fields: { ...fields, ...extra }, message } satisfies FromWorker);
  return { debug: send('debug'), info: send('info'), warn: send('warn'), error: send('error'), child: (more) => forwardingLogger({ ...fields, ...more }) };
}

const load = workerData as WorkerLoad;
ort.env.logLevel = load.runtimeLogLevel as typeof ort.env.logLevel;
let decoder: OnnxDecoder;
try {
  decoder = await OnnxDecoder.load(load.source, load.hints, { ...load.options, logger: forwardingLogger({ thread: 'worker' }) });
} catch (error) {
  port.postMessage({ kind: 'load-failed', name: (error as Error).name, message: (error as Error).message } satisfies FromWorker);
  process.exit(1);
}
port.postMessage({ kind: 'loaded', io: decoder.io, executionProvider: decoder.executionProvider, intraOpThreads: decoder.intraOpThreads } satisfies FromWorker);

port.on('message', async (message: ToWorker) => {
  if (message.kind === 'dispose') {
    await decoder.dispose();
    port.postMessage({ kind: 'disposed' } satisfies FromWorker);
    return;
  }
  // A lent past goes back with the result or the failure, moved as it came.
  const past = message.lent ? message.step.past.layers : undefined;
  const back = past ? past.flatMap(({ key, value }) => [key.buffer as ArrayBuffer, value.buffer as ArrayBuffer]) : [];
  try {
    const output = await decoder.run(message.step, { quiet: message.quiet });
    // The outputs are this thread's own copies: moved, not copied, to the main thread.
    port.postMessage({ kind: 'result', id: message.id, output, past } satisfies FromWorker, [...outputTransfers(output), ...back]);
  } catch (error) {
    port.postMessage({ kind: 'failed', id: message.id, name: (error as Error).name, message: (error as Error).message, past } satisfies FromWorker, back);
  }
});
