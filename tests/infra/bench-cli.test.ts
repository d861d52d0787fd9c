/**
 * The benchmark CLI: `npm run bench -- --help` lists every benchmark, `<name> --help` lists that
 * benchmark's options and exits before measuring anything, and a wrong option is a usage error
 * (exit 2, with the usage) rather than a stack trace. Runs bench/run.ts as npm does.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ROOT } from './helpers.ts';

const BENCHMARKS = ['core', 'load', 'soak', 'tracing', 'window', 'tiers', 'logprobs', 'prefix-cache', 'tool-stream'];

function bench(...args: string[]) {
  return spawnSync(process.execPath, ['--import', 'tsx', 'bench/run.ts', ...args], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
}

/** The option names a benchmark declares: the keys of its parseBenchArgs call. */
function declaredOptions(name: string): string[] {
  const source = readFileSync(join(ROOT, 'bench', `${name}.ts`), 'utf8');
  const call = /parseBenchArgs\([^{]*\{\n([\s\S]*?)\n\}\);/.exec(source);
  assert.ok(call, `bench/${name}.ts parses its options with parseBenchArgs`);
  return [...call[1].matchAll(/^ {2}'?([\w-]+)'?: \{/gm)].map((m) => m[1]);
}

describe('bench CLI', () => {
  it('--help names every benchmark and the quick variants', () => {
    const result = bench('--help');
    assert.equal(result.status, 0, result.stderr);
    for (const name of BENCHMARKS) assert.match(result.stdout, new RegExp(`^  ${name} `, 'm'));
    assert.match(result.stdout, /core --quick/);
  });

  for (const name of BENCHMARKS) {
    it(`${name} --help lists each of its options and exits 0`, () => {
      const result = bench(name, '--help');
      assert.equal(result.status, 0, result.stderr);
      assert.match(result.stdout, new RegExp(`^usage: npm run bench -- ${name} \\[options\\]`));
      const options = declaredOptions(name);
      assert.ok(options.length > 0);
      for (const option of options) assert.match(result.stdout, new RegExp(`^  --${option}\\b`, 'm'), `--${option}`);
    });
  }

  it('an unknown option or benchmark is a usage error, not a crash', () => {
    const option = bench('core', '--no-such-option');
    assert.equal(option.status, 2);
    assert.match(option.stderr, /Unknown option '--no-such-option'/);
    assert.match(option.stderr, /usage: npm run bench -- core/);
    assert.doesNotMatch(option.stderr, /ERR_PARSE_ARGS|at parseArgs/);
    const unknown = bench('nope');
    assert.equal(unknown.status, 2);
    assert.match(unknown.stderr, /unknown benchmark "nope"/);
  });
});
