/**
 * Resident memory of loading one model, in a fresh process per mode: onnxruntime alone from the path
 * (`bare`), warmkv's loader without the in-place rewrite (`plain`), and with it (`rewrite`). Prints RSS
 * after load, its peak while loading (sampled every 5 ms, and the process's max RSS) and after a GC.
 *
 *   node --expose-gc --import tsx bench/probes/load-rss.ts DIR bare|plain|rewrite
 */
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { silentLogger } from '../../src/lib/logger.ts';
import { loadModel } from '../../src/model/index.ts';

const [dir, mode] = process.argv.slice(2);
if (!dir || !['bare', 'plain', 'rewrite'].includes(mode)) throw new Error('usage: load-rss.ts MODEL_DIR bare|plain|rewrite');
const mib = (bytes: number) => Math.round(bytes / 1048576);
let peak = 0;
const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 5);
if (mode === 'bare') await ort.InferenceSession.create(join(dir, 'onnx', 'model.onnx'), { intraOpNumThreads: 1 });
else await loadModel(dir, { logger: silentLogger, intraOpThreads: 1, newRowOutputs: mode === 'rewrite' });
const afterLoad = process.memoryUsage().rss;
(globalThis as { gc?: () => void }).gc?.();
await new Promise((resolve) => setTimeout(resolve, 200));
clearInterval(sampler);
peak = Math.max(peak, afterLoad, process.resourceUsage().maxRSS * 1024);
console.log(JSON.stringify({ mode, afterLoadMiB: mib(afterLoad), peakMiB: mib(peak), afterGcMiB: mib(process.memoryUsage().rss) }));
