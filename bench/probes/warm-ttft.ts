/**
 * Where a warm follow-up's time to first token goes, end to end, in one process: a server as main.ts
 * builds it (pino at info into /dev/null), a session of `--cached` tokens, then `--requests` streamed
 * follow-ups of `--new` tokens (max_tokens 1, as `npm run bench -- overhead` times them) from a raw
 * keep-alive HTTP client. Each follow-up is stamped at: the client's write, the server socket's first
 * read, app.fetch, engine.submit, the decoder call's start and end, the first socket write after the
 * call (the token's frame) and the client's first token frame. Prints the median of each gap.
 *
 *   node --import tsx bench/probes/warm-ttft.ts [--model DIR] [--cached 400] [--new 16] [--requests 200]
 *   node --import tsx bench/probes/warm-ttft.ts --requests 400 --profile /tmp/warm.cpuprofile   # the timed part only
 *   node --import tsx bench/probes/warm-ttft.ts --requests 40 --tokens 128 [--stream false]        # per-token costs
 *   node --import tsx bench/probes/warm-ttft.ts --fresh [--pause-ms 20]   # each follow-up on a new session, right after its first turn (as the overhead bench times it) or after a pause
 */
import { request as httpRequest, Agent } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { writeFileSync } from 'node:fs';
import { Session as InspectorSession } from 'node:inspector/promises';
import OpenAI from 'openai';
import pino from 'pino';
import { loadConfig } from '../../src/config.ts';
import type { Logger } from '../../src/lib/logger.ts';
import { Runtime } from '../../src/runtime.ts';
import { createApp } from '../../src/server/app.ts';
import { listenWith } from '../../src/server/listen.ts';
import { buildModelFolder } from '../../tools/model-builder/index.ts';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: '/tmp/warmkv-bench-stories260k' },
    cached: { type: 'string', default: '400' },
    new: { type: 'string', default: '16' },
    requests: { type: 'string', default: '200' },
    threads: { type: 'string', default: '1' },
    stream: { type: 'string', default: 'true' },
    profile: { type: 'string', default: '' },
    tokens: { type: 'string', default: '1' },
    client: { type: 'string', default: 'http' },
    fresh: { type: 'boolean', default: false },
    'pause-ms': { type: 'string', default: '0' },
  },
});
const dir = values.model!;
if (dir === '/tmp/warmkv-bench-stories260k' && !existsSync(join(dir, 'config.json'))) {
  await buildModelFolder(dir, { family: 'llama', hiddenSize: 64, numLayers: 5, numHeads: 8, numKvHeads: 4, vocabSize: 512, tokenizerMerges: 253, maxPositions: 1024 });
}

function fromPino(logger: pino.Logger): Logger {
  return {
    debug: (fields, message) => logger.debug(fields, message),
    info: (fields, message) => logger.info(fields, message),
    warn: (fields, message) => logger.warn(fields, message),
    error: (fields, message) => logger.error(fields, message),
    child: (fields) => fromPino(logger.child(fields)),
  };
}
const logger = fromPino(pino({ level: 'info', base: { service: 'warmkv' } }, pino.destination({ dest: '/dev/null', sync: true })));

type Stamp = 'clientWrite' | 'socketRead' | 'appFetch' | 'submit' | 'runStart' | 'runEnd' | 'headersWrite' | 'tokenWrite' | 'clientFirst';
let current: Partial<Record<Stamp, number>> | null = null;
const stamp = (name: Stamp) => {
  if (current && current[name] === undefined) current[name] = performance.now();
};

const config = loadConfig({ MODEL_DIR: dir, INTRA_OP_THREADS: values.threads!, LOG_LEVEL: 'info' }, []);
const runtime = new Runtime(config, {
  logger,
  // A proxy keeps the decoder's other methods (dispose) and class getters.
  wrapDecoder: (decoder) =>
    new Proxy(decoder, {
      get(target, key, receiver) {
        if (key !== 'run') return Reflect.get(target, key, receiver);
        return async (inputs: Parameters<typeof decoder.run>[0]) => {
          stamp('runStart');
          const out = await target.run(inputs);
          stamp('runEnd');
          return out;
        };
      },
    }),
});
const serving = await runtime.ready;
const submit = serving.engine.submit.bind(serving.engine);
serving.engine.submit = (request) => {
  stamp('submit');
  return submit(request);
};
const app = createApp(runtime, { logger });
const fetch = app.fetch;
app.fetch = ((req: Request, ...rest: unknown[]) => {
  stamp('appFetch');
  return (fetch as (...args: unknown[]) => unknown)(req, ...rest);
}) as typeof app.fetch;
const { server, listening } = listenWith(app, config, { port: 0, hostname: '127.0.0.1', logger });
server.on('connection', (socket: Socket) => {
  socket.prependListener('data', () => stamp('socketRead'));
  const write = socket.write.bind(socket) as (...args: unknown[]) => boolean;
  (socket as unknown as { write: (...args: unknown[]) => boolean }).write = (...args) => {
    if (current?.runEnd !== undefined) stamp('tokenWrite');
    else stamp('headersWrite');
    return write(...args);
  };
  const writev = (socket as unknown as { _writev?: (...args: unknown[]) => void })._writev;
  if (writev) {
    (socket as unknown as { _writev: (...args: unknown[]) => void })._writev = function (this: Socket, ...args: unknown[]) {
      if (current?.runEnd !== undefined) stamp('tokenWrite');
      else stamp('headersWrite');
      return writev.apply(this, args);
    };
  }
});
const { port } = (await listening) as AddressInfo;
const agent = new Agent({ keepAlive: true, maxSockets: 1 });
// --client openai: the openai client (as bench/overhead.ts streams), else a raw keep-alive http client.
const openai = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: 'unused', maxRetries: 0 });

function post(body: unknown, onFirst?: () => void): Promise<string> {
  return new Promise((resolve, reject) => {
    const payload = JSON.stringify(body);
    const req = httpRequest({ host: '127.0.0.1', port, path: '/v1/completions', method: 'POST', agent, headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(payload) } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        if (onFirst && text === '' && chunk.includes('"text"')) onFirst();
        text += chunk;
      });
      res.on('end', () => resolve(text));
    });
    req.on('error', reject);
    req.end(payload);
  });
}

const cpuMs = () => {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
};
const ids = (count: number, salt: number) => Array.from({ length: count }, (_, i) => (i * 7 + salt * 13) % 400 + 10);
const base = ids(Number(values.cached), 1);
// Two follow-ups taken in turns on one session: each finds `--cached` tokens and prefills `--new`.
const follows = [ids(Number(values.new), 2), ids(Number(values.new), 3)];
await post({ prompt: base, max_tokens: 1, temperature: 0, session_id: 'probe' });
const stream = values.stream === 'true';
const timelines: Array<Partial<Record<Stamp, number>>> = [];
const total = Number(values.requests);
let cpuStart = 0;
// --profile FILE: a CPU profile of the timed requests only (not the model load).
const inspector = values.profile ? new InspectorSession() : null;
if (inspector) {
  inspector.connect();
  await inspector.post('Profiler.enable');
  await inspector.post('Profiler.setSamplingInterval', { interval: 100 });
}
for (let r = 0; r < total + 20; r++) {
  if (r === 20) {
    cpuStart = cpuMs();
    if (inspector) await inspector.post('Profiler.start');
  }
  const sessionId = values.fresh ? `probe-${r}` : 'probe';
  if (values.fresh) await post({ prompt: base, max_tokens: 1, temperature: 0, session_id: sessionId });
  if (Number(values['pause-ms']) > 0) await new Promise((resolve) => setTimeout(resolve, Number(values['pause-ms'])));
  const line: Partial<Record<Stamp, number>> = {};
  current = line;
  line.clientWrite = performance.now();
  const body = { prompt: [...base, ...follows[r % 2]], max_tokens: Number(values.tokens), temperature: 0, ignore_eos: true, session_id: sessionId, stream, stream_options: { include_usage: true } };
  if (values.client === 'openai') {
    const events = await openai.completions.create({ ...body, model: serving.model.id, stream: true } as unknown as OpenAI.CompletionCreateParamsStreaming);
    for await (const chunk of events) if (chunk.choices[0]?.text || chunk.choices[0]?.finish_reason) stamp('clientFirst');
  } else await post(body, () => stamp('clientFirst'));
  if (!stream) stamp('clientFirst');
  current = null;
  if (r >= 20) timelines.push(line);
  // As the overhead bench does: a fresh session goes once timed, so the sessions never fill the KV budget.
  if (values.fresh) await (await globalThis.fetch(`http://127.0.0.1:${port}/v1/sessions/${sessionId}`, { method: 'DELETE' })).arrayBuffer();
}
const cpuPerPair = (cpuMs() - cpuStart) / total;
if (inspector) writeFileSync(values.profile!, JSON.stringify((await inspector.post('Profiler.stop')).profile));
const order: Stamp[] = ['clientWrite', 'socketRead', 'appFetch', 'submit', 'runStart', 'runEnd', 'headersWrite', 'tokenWrite', 'clientFirst'];
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const rows: string[] = [];
// Each stamp as the median time since the client's write, in the order they happen.
const offsets = order
  .filter((name) => timelines.some((t) => t[name] !== undefined))
  .map((name) => ({ name, ms: median(timelines.filter((t) => t[name] !== undefined).map((t) => t[name]! - t.clientWrite!)) }));
offsets.sort((a, b) => a.ms - b.ms);
let previous = 0;
for (const { name, ms } of offsets) {
  rows.push(`${name.padEnd(13)} ${ms.toFixed(3).padStart(8)} ms  (+${(ms - previous).toFixed(3)})`);
  previous = ms;
}
const ttft = timelines.map((t) => t.clientFirst! - t.clientWrite!);
rows.push(`total clientWrite -> clientFirst: ${median(ttft).toFixed(3)} ms; run: ${median(timelines.map((t) => t.runEnd! - t.runStart!)).toFixed(3)} ms`);
rows.push(`CPU per follow-up (server and client): ${cpuPerPair.toFixed(3)} ms`);
const memory = process.memoryUsage();
const mib = (bytes: number) => (bytes / 1024 ** 2).toFixed(1);
rows.push(`peak RSS ${mib(process.resourceUsage().maxRSS * 1024)} MiB; now RSS ${mib(memory.rss)}, heap used ${mib(memory.heapUsed)} of ${mib(memory.heapTotal)}, external ${mib(memory.external)}, array buffers ${mib(memory.arrayBuffers)}`);
console.log(rows.join('\n'));
agent.destroy();
server.closeAllConnections();
server.close();
await runtime.close();
