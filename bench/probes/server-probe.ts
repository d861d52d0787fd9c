/**
 * Preloaded into a server child by `npm run bench -- overhead` (node --import): answers the parent's
 * IPC messages with this process's event-loop delay since the last reset and its peak RSS, so the
 * server is measured from the inside without anything of the bench in src/.
 *
 *   {type: 'reset'} -> {type: 'reset'}
 *   {type: 'sample'} -> {type: 'sample', loopDelayP99Ms, loopDelayMaxMs, loopDelayMeanMs, maxRssMiB, rssMiB, heapUsedMiB, heapTotalMiB, arrayBuffersMiB, externalMiB, cpuMs}
 *
 * cpuMs is this process's user + system CPU time so far: the difference over a request is what serving it
 * cost, which the load of other processes on shared cores barely changes (unlike wall time).
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';

const histogram = monitorEventLoopDelay({ resolution: 1 });
histogram.enable();

const cpuMs = () => {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
};
const mib = (bytes: number) => Math.round((bytes / 1024 ** 2) * 10) / 10;

/** Where the resident memory is: V8's heap (used, committed), ArrayBuffers (KV, logits) and other external memory V8 knows of; the rest is native (onnxruntime, code). */
function memory() {
  const usage = process.memoryUsage();
  return { rssMiB: mib(usage.rss), heapUsedMiB: mib(usage.heapUsed), heapTotalMiB: mib(usage.heapTotal), arrayBuffersMiB: mib(usage.arrayBuffers), externalMiB: mib(usage.external) };
}

process.on('message', (message: { type?: string }) => {
  if (message.type === 'reset') {
    histogram.reset();
    process.send?.({ type: 'reset' });
  } else if (message.type === 'sample') {
    process.send?.({
      type: 'sample',
      loopDelayP99Ms: histogram.percentile(99) / 1e6,
      loopDelayMaxMs: histogram.max / 1e6,
      loopDelayMeanMs: histogram.mean / 1e6,
      maxRssMiB: mib(process.resourceUsage().maxRSS * 1024),
      ...memory(),
      cpuMs: cpuMs(),
    });
  }
});
// The IPC channel must not keep a server that was told to stop alive.
process.channel?.unref();
