/**
 * Where a streaming client's worst inter-token gaps go under load: the server as main.ts builds it, in
 * this process, with N raw keep-alive clients running 4-turn chat sessions (100 words, then 20 a turn,
 * 64-token replies) for 20 s. Prints tokens/s, ITL p50/p99, event-loop delay p99, V8's GC pauses by kind
 * (PerformanceObserver 'gc': 1 scavenge, 4 mark-compact, 8 incremental marking) and, for the worst gaps,
 * the model calls and GC pauses inside them. Run it under the node flags being compared, e.g.
 *
 *   node --max-semi-space-size=64 [--initial-old-space-size=128] [--trace-gc] --import tsx bench/probes/gaps-under-load.ts [CLIENTS] ['--flag value ...']
 *
 * (the second argument: server settings as CLI flags, e.g. '--prefill-lane worker').
 */
import { Agent, request } from 'node:http';
import { performance, monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';
import type { AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';
import { loadConfig } from '../../src/config.ts';
import { Runtime } from '../../src/runtime.ts';
import { createApp } from '../../src/server/app.ts';
import { silentLogger } from '../../src/lib/logger.ts';

const clients = Number(process.argv[2] ?? 8);
const runtime = new Runtime(loadConfig({}, ['--model', 'models/warmkv-brown', '--port', '0', ...(process.argv[3] ? process.argv[3].split(' ') : [])]), { logger: silentLogger, processMetrics: false });
const serving = await runtime.ready;
const app = createApp(runtime, { logger: silentLogger });
const server = await new Promise<ReturnType<typeof serve>>((r) => { const s = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' }, () => r(s)); });
const { port } = server.address() as AddressInfo;
const events: Array<{ t: number; d: number; k: string; n?: number }> = [];
serving.engine.addObserver({
  decodeStep: (i) => void events.push({ t: i.startMs, d: i.durationMs, k: 'decode', n: i.sequences.length }),
  prefillChunk: (_s, i) => void events.push({ t: i.startMs, d: i.durationMs, k: i.lane ? 'lane' : 'prefill', n: i.tokens }),
});
const gcs: Array<{ t: number; d: number; kind: number }> = [];
new PerformanceObserver((list) => { for (const e of list.getEntries()) gcs.push({ t: e.startTime, d: e.duration, kind: (e as unknown as { detail: { kind: number } }).detail.kind }); }).observe({ entryTypes: ['gc'] });
const agent = new Agent({ keepAlive: true });
const words = 'the of and to a in that is was he for it with as his on be at by had not are but from or have an they which one you were her all she there would their we him been has when who will more no if out so said what up its about into than them can only other new some could time these two may then do first any my now such like our over man me even most made after also did many before must through back years where much your way well down should because each just those people how too little state good very make world still own see men work long get here between both life being under never day same another know while last might us great old year off come since against go came right used take three'.split(' ');
let seed = 1;
const text = (n: number) => Array.from({ length: n }, () => words[(seed = (seed * 1103515245 + 12345) % 2147483648) % words.length]).join(' ');
const arrivals: number[][] = [];
function chat(messages: object[], sessionId: string): Promise<string> {
  const body = JSON.stringify({ model: 'warmkv-brown', messages, stream: true, max_completion_tokens: 64, temperature: 0, ignore_eos: true, session_id: sessionId });
  const times: number[] = [];
  arrivals.push(times);
  return new Promise((resolve) => {
    const req = request(`http://127.0.0.1:${port}/v1/chat/completions`, { method: 'POST', agent, headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) } }, (res) => {
      let buf = ''; let reply = ''; res.setEncoding('utf8');
      res.on('data', (c: string) => { buf += c; for (let e = buf.indexOf('\n\n'); e >= 0; e = buf.indexOf('\n\n')) { const f = buf.slice(0, e); buf = buf.slice(e + 2); const i = f.indexOf('data: '); if (i < 0) continue; const d = f.slice(i + 6); if (d === '[DONE]') continue; const content = JSON.parse(d).choices?.[0]?.delta?.content; if (content) { times.push(performance.now()); reply += content; } } });
      res.on('end', () => resolve(reply));
    });
    req.end(body);
  });
}
const h = monitorEventLoopDelay({ resolution: 1 }); h.enable();
const deadline = performance.now() + 20000;
const from = performance.now();
await Promise.all(Array.from({ length: clients }, async (_, c) => {
  for (let s = 0; performance.now() < deadline; s++) {
    const messages: object[] = [];
    for (let t = 0; t < 4 && performance.now() < deadline; t++) {
      messages.push({ role: 'user', content: text(t === 0 ? 100 : 20) });
      const reply = await chat(messages, `g-${c}-${s}`);
      messages.push({ role: 'assistant', content: reply });
    }
  }
}));
h.disable();
const gaps = arrivals.flatMap((a) => a.slice(1).map((t, i) => ({ at: a[i], g: t - a[i] })));
const sorted = gaps.map((x) => x.g).sort((a, b) => a - b);
const tokens = arrivals.reduce((n, a) => n + a.length, 0);
console.log(`${clients} clients: ${(tokens / ((performance.now() - from) / 1000)).toFixed(0)} tok/s, ITL p50 ${sorted[sorted.length >> 1].toFixed(2)} p99 ${sorted[Math.floor(sorted.length * 0.99)].toFixed(2)}, loop p99 ${(h.percentile(99) / 1e6).toFixed(1)}`);
const p99 = sorted[Math.floor(sorted.length * 0.99)];
const worst = gaps.filter((x) => x.g >= p99).sort((a, b) => b.g - a.g).slice(0, 12);
for (const w of worst) {
  const inside = events.filter((e) => e.t + e.d >= w.at && e.t <= w.at + w.g);
  const busy = inside.reduce((s, e) => s + Math.min(e.t + e.d, w.at + w.g) - Math.max(e.t, w.at), 0);
  const gc = gcs.filter((e) => e.t + e.d >= w.at && e.t <= w.at + w.g).reduce((s, e) => s + e.d, 0);
  console.log(`gap ${w.g.toFixed(1)} ms: model calls ${busy.toFixed(1)} ms (${inside.map((e) => `${e.k}${e.n}:${e.d.toFixed(1)}`).join(' ')}), gc ${gc.toFixed(1)} ms, other ${(w.g - busy - gc).toFixed(1)} ms`);
}
const byKind = new Map<number, number[]>();
for (const g of gcs) { if (g.t < from) continue; const l = byKind.get(g.kind) ?? []; l.push(g.d); byKind.set(g.kind, l); }
for (const [k, l] of byKind) { l.sort((a, b) => a - b); console.log(`gc kind ${k}: ${l.length} pauses, total ${l.reduce((a, b) => a + b, 0).toFixed(0)} ms, p50 ${l[l.length >> 1].toFixed(2)}, max ${l.at(-1)!.toFixed(1)}`); }
console.log('heap MiB', (process.memoryUsage().heapUsed / 2 ** 20).toFixed(0), 'rss', (process.memoryUsage().rss / 2 ** 20).toFixed(0));
await runtime.close(); server.close();
process.exit(0);
