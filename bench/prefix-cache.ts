/**
 * The stateless prefix cache: a chat conversation resent in full every turn without a session id (as
 * the official openai client does), through the HTTP app, with the prefix cache on against
 * PREFIX_CACHE=off. Time to first token (TTFT) per turn, streamed; the replies must be the same both ways.
 *
 *   npm run bench -- prefix-cache [--model DIR] [--threads N] [--turns 10] [--repeats 5] [--words 24] [--max-tokens 32]
 *
 * Without --model it runs the server's default model (models/warmkv-chat).
 */
import { loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import { DEFAULT_MODEL_DIR } from '../src/config.ts';
import { loadModel } from '../src/model/index.ts';
import { silentLogger } from '../src/lib/logger.ts';
import { MODEL_OPTIONS, parseBenchArgs, repeatsOption } from './cli.ts';
import { benchApp, benchConfig, median, postAs, serving, table, writeResult, type BenchApp } from './common.ts';

const values = parseBenchArgs('prefix-cache', 'The stateless prefix cache: TTFT of each turn of a chat conversation resent whole without a session id, with the prefix cache on against PREFIX_CACHE=off (the replies must match).', {
  model: { type: 'string', default: DEFAULT_MODEL_DIR, value: 'DIR', help: 'model folder' },
  threads: MODEL_OPTIONS.threads,
  turns: { type: 'string', default: '10', value: 'N', help: 'turns of the conversation' },
  repeats: repeatsOption('5'),
  words: { type: 'string', default: '24', value: 'N', help: "words of each user message" },
  'max-tokens': { type: 'string', default: '32', value: 'N', help: 'max_tokens of each reply (greedy)' },
});

const KEY = 'bench-prefix-key-000';
const settings = (mode: 'on' | 'off') => ({ KV_CACHE_BYTES: '1GiB', STREAM_RESUME_SECONDS: '0', API_KEYS: KEY, PREFIX_CACHE: mode });

interface Usage {
  prompt_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

interface Turn {
  ttftMs: number;
  promptTokens: number;
  cachedTokens: number;
  text: string;
}

/** One streamed chat completion: TTFT is the time to the first content delta (or the end). */
async function turn(app: BenchApp, messages: Array<{ role: string; content: string }>, maxTokens: number): Promise<Turn> {
  const started = performance.now();
  const res = await postAs(app, '/v1/chat/completions', { messages, stream: true, stream_options: { include_usage: true }, temperature: 0, max_tokens: maxTokens }, KEY);
  if (res.status !== 200) throw new Error(`${res.status}: ${await res.text()}`);
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let body = '';
  let ttftMs = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    body += decoder.decode(value, { stream: true });
    if (ttftMs === 0 && /"content":"[^"]/.test(body)) ttftMs = performance.now() - started;
  }
  ttftMs ||= performance.now() - started;
  let text = '';
  let usage: Usage | null = null;
  for (const line of body.split('\n')) {
    if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
    const chunk = JSON.parse(line.slice(6)) as { choices: Array<{ delta: { content?: string } }>; usage?: Usage | null };
    for (const choice of chunk.choices) text += choice.delta.content ?? '';
    if (chunk.usage) usage = chunk.usage;
  }
  if (!usage) throw new Error('no usage chunk');
  return { ttftMs, promptTokens: usage.prompt_tokens, cachedTokens: usage.prompt_tokens_details.cached_tokens, text };
}

/** The user's words on turn `t`: fixed pseudo-random words, the same on every run. */
function userText(t: number, words: number): string {
  const vocabulary = ['the', 'king', 'castle', 'river', 'walked', 'slowly', 'towards', 'a', 'bright', 'morning', 'and', 'then', 'said', 'nothing', 'more', 'about', 'it'];
  return Array.from({ length: words }, (_, i) => vocabulary[(t * 131 + i * 17 + ((i * i) % 7)) % vocabulary.length]).join(' ');
}

/** One conversation of `turns` turns, each resending the whole history. */
async function conversation(app: BenchApp, run: number, turns: number, words: number, maxTokens: number): Promise<Turn[]> {
  const messages = [{ role: 'system', content: `Conversation ${run}. You are a storyteller; continue the tale of the king by the river.` }];
  const out: Turn[] = [];
  for (let t = 0; t < turns; t++) {
    messages.push({ role: 'user', content: userText(t, words) });
    const answer = await turn(app, messages, maxTokens);
    out.push(answer);
    messages.push({ role: 'assistant', content: answer.text });
  }
  return out;
}

async function main(): Promise<void> {
  const threads = Number(values.threads);
  const turns = Number(values.turns);
  const repeats = Number(values.repeats);
  const words = Number(values.words);
  const maxTokens = Number(values['max-tokens']);
  const source = values.model;
  const loadAtStart = loadavg();
  const model = await loadModel(source, { logger: silentLogger, intraOpThreads: threads });
  const parts = { on: serving(benchConfig(settings('on')), model), off: serving(benchConfig(settings('off')), model) };
  const apps = { on: benchApp(benchConfig(settings('on')), parts.on), off: benchApp(benchConfig(settings('off')), parts.off) };
  // Warm-up: the first model calls of a process are slower (allocations, thread pool).
  for (const app of Object.values(apps)) await conversation(app, -1, 2, words, maxTokens);

  const ttft = { on: Array.from({ length: turns }, () => [] as number[]), off: Array.from({ length: turns }, () => [] as number[]) };
  let last: Record<'on' | 'off', Turn[]> = { on: [], off: [] };
  for (let r = 0; r < repeats; r++) {
    // Alternating which goes first, so neither mode always runs on a warmer machine.
    const order = r % 2 === 0 ? (['on', 'off'] as const) : (['off', 'on'] as const);
    const runs = {} as Record<'on' | 'off', Turn[]>;
    for (const mode of order) runs[mode] = await conversation(apps[mode], r, turns, words, maxTokens);
    for (let t = 0; t < turns; t++) {
      if (runs.on[t].text !== runs.off[t].text) throw new Error(`run ${r + 1}, turn ${t + 1}: the reply differs with the prefix cache`);
      if (runs.off[t].cachedTokens !== 0) throw new Error('PREFIX_CACHE=off reused tokens');
      if (t > 0 && runs.on[t].cachedTokens < runs.on[t - 1].promptTokens) throw new Error(`run ${r + 1}, turn ${t + 1}: reused only ${runs.on[t].cachedTokens} tokens`);
      ttft.on[t].push(runs.on[t].ttftMs);
      ttft.off[t].push(runs.off[t].ttftMs);
    }
    console.error(`run ${r + 1}: turn ${turns} ${runs.on[turns - 1].ttftMs.toFixed(1)} ms on, ${runs.off[turns - 1].ttftMs.toFixed(1)} ms off (${runs.on[turns - 1].promptTokens} prompt tokens, ${runs.on[turns - 1].cachedTokens} cached)`);
    last = runs;
  }

  const on = ttft.on.map(median);
  const off = ttft.off.map(median);
  const markdown = table(
    ['turn', ...on.map((_, t) => String(t + 1))],
    [
      ['prompt tokens', ...last.on.map((t) => t.promptTokens)],
      ['cached tokens (on)', ...last.on.map((t) => t.cachedTokens)],
      ['TTFT on (ms)', ...on.map((v) => v.toFixed(1))],
      ['TTFT off (ms)', ...off.map((v) => v.toFixed(1))],
      ['on / off', ...on.map((v, t) => (v / off[t]).toFixed(2))],
    ],
  );
  console.log(markdown);
  const file = writeResult('prefix-cache', {
    model: source,
    threads,
    turns,
    repeats,
    wordsPerTurn: words,
    maxTokens,
    promptTokensByTurn: last.on.map((t) => t.promptTokens),
    cachedTokensByTurn: last.on.map((t) => t.cachedTokens),
    ttftOnByTurnMs: on,
    ttftOffByTurnMs: off,
    ttftOnRunsMs: ttft.on,
    ttftOffRunsMs: ttft.off,
    loadAverage: { start: loadAtStart, end: loadavg() },
    prefixCache: parts.on.prefixCache?.counters(),
    lastTurnOnOverOff: on[turns - 1] / off[turns - 1],
    markdown,
  });
  console.error(`wrote ${file}`);
  await Promise.all([parts.on.engine.drain(1000), parts.off.engine.drain(1000)]);
}

await main();
