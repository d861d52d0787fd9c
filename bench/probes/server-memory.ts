/**
 * Where a server's memory goes, phase by phase: a server child as `npm run bench -- overhead` starts it
 * (src/main.ts, the bench's heap flags, bench/probes/server-probe.ts answering over IPC), sampled after
 * loading, one 32 + 128-token request, a 400-token session's two turns (deleted after), and three rounds
 * of 8 concurrent 32 + 128-token requests. Prints peak and current RSS, V8's heap (used, committed),
 * ArrayBuffers and external memory at each phase; the rest of the RSS is native (onnxruntime, code).
 *
 * The server runs compiled, as the images run it (bench/compiled.ts); `--tsx` runs it under tsx as
 * `npm start` does (tsx's loader and source maps add about 20 MiB).
 *
 *   node --import tsx bench/probes/server-memory.ts [MODEL_DIR] ['{"INT8_TIER":"false"}'] [--tsx]   # extra server env as JSON
 */
import { fork } from 'node:child_process';
import { childScripts } from '../compiled.ts';
import { SERVER_NODE_FLAGS } from '../common.ts';

const positional = process.argv.slice(2).filter((arg) => arg !== '--tsx');
const underTsx = process.argv.includes('--tsx');
const dir = positional[0] ?? 'models/warmkv-brown';
const extraEnv = positional[1] ? (JSON.parse(positional[1]) as Record<string, string>) : {};
const childScript = childScripts(underTsx ? 'tsx' : 'compiled', ['src/main.ts', 'bench/probes/server-probe.ts']);
const main = childScript('src/main.ts');
const env = { ...process.env, MODEL_DIR: dir, PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', DRAIN_SECONDS: '1', INTRA_OP_THREADS: '1', ...extraEnv };
const child = fork(main.file, [], {
  env,
  execArgv: [...SERVER_NODE_FLAGS, ...main.preload, '--import', `./${childScript('bench/probes/server-probe.ts').file}`],
  stdio: ['ignore', 'pipe', 'inherit', 'ipc'],
});
const port = await new Promise<number>((resolve) => {
  let output = '';
  child.stdout!.on('data', (data: Buffer) => {
    output += data.toString();
    const match = /"port":(\d+)/.exec(output);
    if (match) resolve(Number(match[1]));
  });
});
const url = `http://127.0.0.1:${port}`;
for (let ready = false; !ready; await new Promise((r) => setTimeout(r, 100))) ready = (await fetch(`${url}/readyz`).catch(() => null))?.status === 200;

const sample = () =>
  new Promise<Record<string, number>>((resolve) => {
    child.once('message', (message) => resolve(message as Record<string, number>));
    child.send({ type: 'sample' });
  });
const FIELDS = ['maxRssMiB', 'rssMiB', 'heapUsedMiB', 'heapTotalMiB', 'arrayBuffersMiB', 'externalMiB'];
async function show(phase: string): Promise<void> {
  const values = await sample();
  console.log(phase.padEnd(24), FIELDS.map((field) => `${field.replace('MiB', '')} ${values[field]}`).join('  '), '(MiB)');
}
async function complete(body: Record<string, unknown>): Promise<void> {
  const response = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
  const text = await response.text();
  if (response.status !== 200) throw new Error(`HTTP ${response.status}: ${text}`);
}
/** Token ids of no meaning, below the smallest vocabulary the bench uses. */
const ids = (count: number, salt: number) => Array.from({ length: count }, (_, i) => 10 + ((i * 7 + salt) % 500));

await show('loaded');
await complete({ prompt: ids(32, 1), max_tokens: 128, temperature: 0, ignore_eos: true });
await show('one 32+128 request');
await complete({ prompt: ids(400, 2), max_tokens: 1, temperature: 0, session_id: 'warm' });
await complete({ prompt: ids(416, 2), max_tokens: 1, temperature: 0, session_id: 'warm' });
await fetch(`${url}/v1/sessions/warm`, { method: 'DELETE' });
await show('400-token session');
for (let round = 1; round <= 3; round++) {
  await Promise.all(Array.from({ length: 8 }, (_, c) => complete({ prompt: ids(32, 10 + c), max_tokens: 128, temperature: 0, ignore_eos: true })));
  await show(`8 clients, round ${round}`);
}
child.kill('SIGTERM');
