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
};

const name = process.argv[2];
if (!name || !(name in BENCHMARKS)) {
  console.error(`usage: npm run bench -- <${Object.keys(BENCHMARKS).join('|')}> [options]`);
  process.exit(name ? 2 : 0);
}
// `npm run bench -- window -- --context 512` passes the second `--` through; the benchmarks parse
// process.argv.slice(3) with node:util parseArgs, which would take everything after it as positionals.
if (process.argv[3] === '--') process.argv.splice(3, 1);
await import(BENCHMARKS[name]);
