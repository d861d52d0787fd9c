/**
 * The Responses API on warm KV, through the HTTP app: a 20-turn chain with previous_response_id, the
 * time to first token (TTFT) of turn 20 against turn 2 (flat in history length?) and against one
 * stateless call of the same transcript, and a branch (a second child of turn 19 with an input of its
 * own, which copies the shared KV prefix) against a cold prefill of the branch's prompt.
 *
 *   npm run bench -- responses [--model DIR] [--threads N] [--turns 20] [--repeats 5] [--words 40] [--kv-mode inplace|concat]
 *
 * Without --model it builds a long-context builder llama (hidden 256, 6 layers, 4096 positions).
 */
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { silentLogger, type Logger } from '../src/lib/logger.ts';
import { benchApp, benchConfig, longContextModel, median, postAs, serving, table, writeResult, type BenchApp } from './common.ts';
import { kvModeOf } from './cli.ts';

const { values } = parseArgs({
  args: process.argv.slice(3),
  options: {
    model: { type: 'string' },
    threads: { type: 'string', default: '2' },
    turns: { type: 'string', default: '20' },
    repeats: { type: 'string', default: '5' },
    words: { type: 'string', default: '40' },
    'kv-mode': { type: 'string', default: 'inplace' },
  },
});
const kvMode = kvModeOf(values['kv-mode']);

const BUILDER_DIR = '/tmp/warmkv-bench-responses-llama';
const MAX_OUTPUT = 16;
/** The chain's key, and the key of the cold runs: another key never reuses the chain's cache. */
const CHAIN_KEY = 'bench-chain-key-0000';
const COLD_KEY = 'bench-cold-key-00000';

interface Turn {
  id: string;
  ttftMs: number;
  inputTokens: number;
  cachedTokens: number;
  outputTokens: number;
  text: string;
  /** From the server's 'response finished' log: time queued, and from the engine's start to the first token. */
  queueMs: number;
  engineTtftMs: number;
}

/** The server's 'response finished' log lines by response id: where a turn's TTFT goes. */
const finished = new Map<string, { queueMs: number; ttftMs: number }>();
const capturingLogger: Logger = {
  ...silentLogger,
  info(fields, message) {
    if (message === 'response finished') finished.set(String(fields.responseId), { queueMs: Number(fields.queueMs), ttftMs: Number(fields.ttftMs) });
  },
  child(bound) {
    return { ...capturingLogger, info: (fields, message) => capturingLogger.info({ ...bound, ...fields }, message) };
  },
};

/** One streamed POST /v1/responses: TTFT is the time to the first output_text.delta (or the end). */
async function respond(app: BenchApp, body: Record<string, unknown>, key = CHAIN_KEY): Promise<Turn> {
  const started = performance.now();
  const res = await postAs(app, '/v1/responses', { ...body, stream: true, temperature: 0, max_output_tokens: MAX_OUTPUT }, key);
  if (res.status !== 200) throw new Error(`${res.status}: ${await res.text()}`);
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let text = '';
  let ttftMs = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    text += decoder.decode(value, { stream: true });
    if (ttftMs === 0 && text.includes('event: response.output_text.delta')) ttftMs = performance.now() - started;
  }
  ttftMs ||= performance.now() - started;
  const last = text.trim().split('\n\n').at(-1)!;
  const data = JSON.parse(last.slice(last.indexOf('data: ') + 6)) as { type: string; response: { id: string; usage: { input_tokens: number; output_tokens: number; input_tokens_details: { cached_tokens: number } }; output: Array<{ content: Array<{ text: string }> }> } };
  if (data.type !== 'response.completed' && data.type !== 'response.incomplete') throw new Error(`ended with ${data.type}`);
  const r = data.response;
  const server = finished.get(r.id);
  return { id: r.id, ttftMs, queueMs: server?.queueMs ?? NaN, engineTtftMs: server?.ttftMs ?? NaN, inputTokens: r.usage.input_tokens, cachedTokens: r.usage.input_tokens_details.cached_tokens, outputTokens: r.usage.output_tokens, text: r.output[0]?.content[0]?.text ?? '' };
}

/** The user's words on turn `t`: fixed pseudo-random words, the same on every run. */
function userText(t: number, words: number): string {
  const vocabulary = ['the', 'king', 'castle', 'river', 'walked', 'slowly', 'towards', 'a', 'bright', 'morning', 'and', 'then', 'said', 'nothing', 'more', 'about', 'it'];
  return Array.from({ length: words }, (_, i) => vocabulary[(t * 131 + i * 17 + ((i * i) % 7)) % vocabulary.length]).join(' ');
}

async function main(): Promise<void> {
  const threads = Number(values.threads);
  const turns = Number(values.turns);
  const repeats = Number(values.repeats);
  const words = Number(values.words);
  const { model, source } = await longContextModel(values.model, BUILDER_DIR, threads, kvMode === 'inplace');
  const config = benchConfig({ KV_CACHE_BYTES: '2GiB', STREAM_RESUME_SECONDS: '0', API_KEYS: `${CHAIN_KEY},${COLD_KEY}`, KV_MODE: kvMode });
  const parts = serving(config, model);
  await parts.tiers.init();
  const app = benchApp(config, parts, capturingLogger);

  const perTurn: number[][] = Array.from({ length: turns }, () => []);
  /** Per turn: the engine's part of the TTFT (start to first token), and the rest (queue, route, SSE). */
  const enginePerTurn: number[][] = Array.from({ length: turns }, () => []);
  const restPerTurn: number[][] = Array.from({ length: turns }, () => []);
  const stateless: number[] = [];
  const branch: number[] = [];
  const cold: number[] = [];
  const statelessReused: number[] = [];
  let reusedTokens = 0;
  let lastChain: Turn[] = [];
  for (let r = 0; r < repeats; r++) {
    const chain: Turn[] = [];
    for (let t = 0; t < turns; t++) {
      const turn = await respond(app, { input: userText(t, words), ...(t > 0 ? { previous_response_id: chain[t - 1].id } : {}) });
      if (t > 0 && turn.cachedTokens < chain[t - 1].inputTokens) throw new Error(`turn ${t + 1} reused only ${turn.cachedTokens} tokens`);
      chain.push(turn);
      perTurn[t].push(turn.ttftMs);
      enginePerTurn[t].push(turn.engineTtftMs);
      restPerTurn[t].push(turn.ttftMs - turn.engineTtftMs);
    }
    // Turn 20's transcript in one stateless call (the conversation resent as items) under another key: nothing cached.
    const items: Array<{ role: string; content: string }> = chain.slice(0, -1).flatMap((turn, t) => [{ role: 'user', content: userText(t, words) }, { role: 'assistant', content: turn.text }]);
    const oneShot = await respond(app, { input: [...items, { role: 'user', content: userText(turns - 1, words) }], store: false }, COLD_KEY);
    if (oneShot.cachedTokens !== 0) throw new Error('the stateless call found a cache');
    stateless.push(oneShot.ttftMs);
    // The same stateless call under the chain's key: it finds the chain's kept transcript (prefix reuse),
    // as far as its re-tokenized text matches the chain's tokens (the model's own tokens for its replies).
    const reused = await respond(app, { input: [...items, { role: 'user', content: userText(turns - 1, words) }], store: false });
    if (reused.cachedTokens === 0) throw new Error("the stateless call under the chain's key reused nothing");
    reusedTokens = reused.cachedTokens;
    if (reused.text !== oneShot.text) throw new Error('the reused stateless call answered differently from the cold one');
    statelessReused.push(reused.ttftMs);
    // A branch: a second child of turn 19, with an input of its own (so it prefills as much new text as turn 20).
    const second = await respond(app, { input: userText(turns + 7, words), previous_response_id: chain[turns - 2].id });
    if (second.cachedTokens < chain[turns - 2].inputTokens) throw new Error(`the branch reused only ${second.cachedTokens} tokens`);
    branch.push(second.ttftMs);
    // The branch's prompt cold: the parent's transcript and the branch input, resent as items.
    const branchCold = await respond(app, { input: [...items, { role: 'user', content: userText(turns + 7, words) }], store: false }, COLD_KEY);
    cold.push(branchCold.ttftMs);
    console.error(`run ${r + 1}: turn 2 ${chain[1].ttftMs.toFixed(1)} ms, turn ${turns} ${chain[turns - 1].ttftMs.toFixed(1)} ms (${chain[turns - 1].inputTokens} tokens, ${chain[turns - 1].cachedTokens} cached), stateless ${oneShot.ttftMs.toFixed(1)} ms, branch ${second.ttftMs.toFixed(1)} ms`);
    lastChain = chain;
  }

  const ttft = perTurn.map(median);
  const last = lastChain[turns - 1];
  const ratios = {
    lastOverSecond: ttft[turns - 1] / ttft[1],
    lastOverStateless: ttft[turns - 1] / median(stateless),
    branchOverCold: median(branch) / median(cold),
    statelessReusedOverCold: median(statelessReused) / median(stateless),
  };
  const markdown = [
    table(
      ['measure', `median of ${repeats} (ms)`, 'ratio', 'goal'],
      [
        ['TTFT turn 2', ttft[1].toFixed(1), '', ''],
        [`TTFT turn ${turns} (${last.inputTokens} prompt tokens, ${last.cachedTokens} cached)`, ttft[turns - 1].toFixed(1), `${ratios.lastOverSecond.toFixed(2)} of turn 2`, 'at most 1.5'],
        [`stateless call of turn ${turns}'s transcript`, median(stateless).toFixed(1), `turn ${turns}: ${ratios.lastOverStateless.toFixed(3)} of it`, 'at most 0.1'],
        [`the same stateless call under the chain's key (prefix reuse: ${reusedTokens} cached)`, median(statelessReused).toFixed(1), `${ratios.statelessReusedOverCold.toFixed(3)} of the cold one`, ''],
        [`branch (second child of turn ${turns - 1})`, median(branch).toFixed(1), `${ratios.branchOverCold.toFixed(3)} of a cold prefill`, 'at most 0.15'],
      ],
    ),
    '',
    table(['turn', ...ttft.map((_, t) => String(t + 1))], [['TTFT (ms)', ...ttft.map((v) => v.toFixed(1))], ['engine: start to first token (ms)', ...enginePerTurn.map((v) => median(v).toFixed(1))], ['the rest: queue, route, SSE (ms)', ...restPerTurn.map((v) => median(v).toFixed(1))], ['prompt tokens', ...lastChain.map((t) => t.inputTokens)]]),
  ].join('\n');
  console.log(markdown);
  const file = writeResult(`responses-${kvMode}`, { model: source, kvMode, threads, turns, repeats, wordsPerTurn: words, maxOutputTokens: MAX_OUTPUT, ttftByTurnMs: ttft, engineTtftByTurnMs: enginePerTurn.map(median), restByTurnMs: restPerTurn.map(median), statelessMs: stateless, statelessReusedMs: statelessReused, statelessReusedTokens: reusedTokens, branchMs: branch, ratios, markdown });
  console.error(`wrote ${file}`);
  await parts.engine.drain(1000);
}

await main();
