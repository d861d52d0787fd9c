/**
 * Tool calls streamed as they are written (src/server/tool-stream.ts): through the HTTP app on the
 * default chat model, a named tool's call streamed as chat chunks with logprobs, whose counts say how
 * many tokens had come by each chunk. Per seed: the argument deltas of the call, the token at which its
 * start and its first argument piece arrive, and the reply's length (held back to the end, the call
 * would arrive in one delta after the last token). Then the reader's own cost per token: a
 * 2,000-token reply fed token by token and char by char, against the stream's time per token.
 *
 *   npm run bench -- tool-stream [--model DIR] [--threads N] [--seeds 10] [--repeats 20]
 */
import { performance } from 'node:perf_hooks';
import { DEFAULT_MODEL_DIR } from '../src/config.ts';
import { loadModel } from '../src/model/index.ts';
import { silentLogger } from '../src/lib/logger.ts';
import { ToolCallReader } from '../src/server/tool-stream.ts';
import { MODEL_OPTIONS, parseBenchArgs, repeatsOption } from './cli.ts';
import { benchApp, benchConfig, median, postAs, serving, table, writeResult, type BenchApp } from './common.ts';

const values = parseBenchArgs('tool-stream', "Tool calls streamed as they are written: argument deltas per call and the token at which the first arrives (named tool, default chat model), and the reader's cost per token.", {
  model: { type: 'string', default: DEFAULT_MODEL_DIR, value: 'DIR', help: 'model folder' },
  threads: MODEL_OPTIONS.threads,
  seeds: { type: 'string', default: '10', value: 'N', help: 'requests, one per seed' },
  repeats: repeatsOption('20'),
});

const KEY = 'bench-tool-key-00000';
const WEATHER = {
  type: 'object',
  properties: { city: { type: 'string', enum: ['Paris', 'Oslo', 'Rome'] }, unit: { type: 'string', enum: ['celsius', 'fahrenheit'] }, days: { type: 'integer', minimum: 1, maximum: 7 } },
  required: ['city', 'unit', 'days'],
  additionalProperties: false,
};
const TOOLS = [{ type: 'function', function: { name: 'get_weather', description: 'Weather for a city', parameters: WEATHER } }];

interface Streamed {
  completionTokens: number;
  /** Tokens that had come when the call's first delta (its name) arrived. */
  startToken: number;
  /** Tokens that had come when each non-empty arguments delta arrived. */
  argumentTokens: number[];
  arguments: string;
  msPerToken: number;
}

async function streamCall(app: BenchApp, seed: number): Promise<Streamed> {
  const started = performance.now();
  const body = { messages: [{ role: 'user', content: 'What is the weather in Paris?' }], tools: TOOLS, tool_choice: { type: 'function', function: { name: 'get_weather' } }, max_tokens: 200, temperature: 1, seed, logprobs: true, stream: true, stream_options: { include_usage: true } };
  const res = await postAs(app, '/v1/chat/completions', body, KEY);
  if (res.status !== 200) throw new Error(`${res.status}: ${await res.text()}`);
  const text = await res.text();
  const elapsed = performance.now() - started;
  const out: Streamed = { completionTokens: 0, startToken: -1, argumentTokens: [], arguments: '', msPerToken: 0 };
  let tokens = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith('data: {')) continue;
    const chunk = JSON.parse(line.slice(6));
    if (chunk.usage) out.completionTokens = chunk.usage.completion_tokens;
    for (const choice of chunk.choices) {
      tokens += choice.logprobs?.content?.length ?? 0;
      for (const delta of choice.delta.tool_calls ?? []) {
        if (delta.id) out.startToken = tokens;
        else if (delta.function.arguments) {
          out.argumentTokens.push(tokens);
          out.arguments += delta.function.arguments;
        }
      }
    }
  }
  if (out.startToken < 0 || tokens !== out.completionTokens) throw new Error(`no call, or logprobs for ${tokens} of ${out.completionTokens} tokens`);
  JSON.parse(out.arguments);
  out.msPerToken = elapsed / out.completionTokens;
  return out;
}

/** Microseconds per token to read `pieces` (a reply's tokens, or its characters) for calls. */
function readCost(pieces: readonly string[], tokens: number, repeats: number): number {
  const runs: number[] = [];
  for (let r = 0; r < repeats; r++) {
    const started = performance.now();
    const reader = new ToolCallReader('hermes');
    for (const piece of pieces) reader.push(piece);
    if (reader.finish().calls.length !== 1) throw new Error('the reply holds one call');
    runs.push(((performance.now() - started) * 1000) / tokens);
  }
  return median(runs);
}

async function main(): Promise<void> {
  const threads = Number(values.threads);
  const model = await loadModel(values.model, { logger: silentLogger, intraOpThreads: threads });
  const config = benchConfig({ KV_CACHE_BYTES: '256MiB', STREAM_RESUME_SECONDS: '0', API_KEYS: KEY });
  const app = benchApp(config, serving(config, model));

  await streamCall(app, 1000);
  const runs: Streamed[] = [];
  for (let seed = 0; seed < Number(values.seeds); seed++) runs.push(await streamCall(app, seed));

  // A long call (a list in its arguments) cut to 2,000 tokens of the model's own tokenizer, then closed.
  const tokenizer = model.tokenizer;
  const items = Array.from({ length: 400 }, (_, i) => `{"id": ${i}, "note": "item ${i}"}`).join(', ');
  const long = `Let me store these.\n<tool_call>\n{"name": "store", "arguments": {"items": [${items}]}}\n</tool_call>`;
  const ids = tokenizer.encode(long, false).slice(0, 2000);
  const pieces = ids.map((id) => tokenizer.decode([id]));
  pieces.push(']}}\n</tool_call>');
  const text = pieces.join('');
  const repeats = Number(values.repeats);
  // Warmed up both ways first, so neither pays for the JIT.
  readCost(pieces, ids.length, repeats);
  readCost([...text], ids.length, repeats);
  const perToken = readCost(pieces, ids.length, repeats);
  const perTokenCharByChar = readCost([...text], ids.length, repeats);
  const msPerToken = median(runs.map((r) => r.msPerToken));

  const rows = runs.map((r, seed) => [seed, r.completionTokens, r.startToken, r.argumentTokens.length, r.argumentTokens[0], r.argumentTokens.at(-1)!, r.arguments]);
  const markdown = [
    table(['seed', 'reply tokens', 'call start at token', 'argument deltas', 'first delta at token', 'last delta at token', 'arguments'], rows),
    '',
    table(
      ['reader, 2,000-token reply', 'per token (µs)', "share of the stream's time per token"],
      [
        ['fed token by token', perToken.toFixed(2), `${((perToken / 1000 / msPerToken) * 100).toFixed(3)}%`],
        ['fed char by char', perTokenCharByChar.toFixed(2), `${((perTokenCharByChar / 1000 / msPerToken) * 100).toFixed(3)}%`],
      ],
    ),
  ].join('\n');
  console.log(markdown);
  console.error(`stream: ${msPerToken.toFixed(2)} ms per token (median over seeds); long reply ${ids.length} tokens, ${text.length} chars`);
  const file = writeResult('tool-stream', { model: values.model, threads, runs, msPerToken, longReply: { tokens: ids.length, chars: text.length, repeats, perTokenUs: perToken, perTokenCharByCharUs: perTokenCharByChar }, markdown });
  console.error(`wrote ${file}`);
}

await main();
