/**
 * Benchmark entry point: `npm run bench -- <name> [options]`. Each benchmark writes
 * bench/results/<name>.json and prints a markdown table (summarised in docs/benchmarks.md).
 */
const BENCHMARKS: Record<string, string> = {
  core: './core.ts',
  load: './load.ts',
  soak: './soak.ts',
  tracing: './tracing.ts',
  window: './window.ts',
  tiers: './tiers.ts',
  responses: './responses.ts',
  'prefix-cache': './prefix-cache.ts',
  logprobs: './logprobs.ts',
  fairness: './fairness.ts',
  constrained: './constrained.ts',
  overhead: './overhead.ts',
  fleet: './fleet.ts',
  'tool-stream': './tool-stream.ts',
};

/** One line per benchmark for the top-level help; each benchmark's own --help lists its options. */
const SUMMARIES: Record<keyof typeof BENCHMARKS, string> = {
  core: 'cached decoding against recomputation, step overhead, resume cost (--quick: a short run)',
  load: 'the HTTP server under concurrent streaming openai clients: tokens/s, TTFT, ITL, queue time',
  soak: 'mixed load for M minutes, every session checked against a one-shot recomputation',
  tracing: 'decode throughput with every step traced, against tracing off',
  window: 'sliding-window truncation (shift, recompute) against no truncation',
  tiers: 'bytes per token per cache tier, and time to first token resuming from each',
  'prefix-cache': 'TTFT per turn of a chat conversation resent without a session id, prefix cache on against PREFIX_CACHE=off',
  logprobs: 'decode throughput with logprobs and 20 alternatives per token, against without',
  fairness: 'TTFT of a short request and ITL p99 of a stream while a long prompt prefills, against idle',
  constrained: 'decode tok/s with a JSON-schema grammar against without, grammar compile time and cache hits',
  fleet: 'follow-up TTFT on a replica that never saw the session / the warm owner / cold, and Redis\'s share, on one redis-server',
  overhead: 'warmkv (engine, HTTP, SSE) against a bare onnxruntime loop: tok/s, warm TTFT, event-loop delay, RSS (--tag NAME)',
  'tool-stream': "a named tool's call streamed: argument deltas and the token the first arrives at; the reader's cost per token",
};

function usage(): string {
  const width = Math.max(...Object.keys(BENCHMARKS).map((key) => key.length)) + 2;
  return [
    'usage: npm run bench -- <name> [options]       npm run bench -- <name> --help   (its options)',
    '',
    'Each writes bench/results/<name>.json and prints a markdown table (docs/benchmarks.md).',
    '',
    ...Object.keys(BENCHMARKS).map((key) => `  ${key.padEnd(width)}${SUMMARIES[key]}`),
    '',
    'Quick variants (results in bench/results/*-quick.json, which git ignores):',
    '  core --quick',
    '  load --concurrency 1,4 --requests-per-client 2 --level-seconds 30 --tag load-quick',
    '  soak --minutes 0.5 --clients 2 --tag soak-quick',
    'constrained, fairness, fleet, logprobs, prefix-cache, tiers, tool-stream, tracing and window have no quick variant: they rewrite their committed result files.',
  ].join('\n');
}

const name = process.argv[2];
if (name === undefined || name === '--help' || name === '-h') {
  console.log(usage());
  process.exit(0);
}
if (!(name in BENCHMARKS)) {
  console.error(`bench: unknown benchmark "${name}"\n\n${usage()}`);
  process.exit(2);
}
// `npm run bench -- window -- --context 512` passes the second `--` through; the benchmarks parse
// process.argv.slice(3) with node:util parseArgs, which would take everything after it as positionals.
if (process.argv[3] === '--') process.argv.splice(3, 1);
await import(BENCHMARKS[name]);
