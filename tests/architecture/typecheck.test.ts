/**
 * What `npm run typecheck` checks (issue 14: `tsc --noUnusedLocals --noUnusedParameters` clean): the
 * flags live in tsconfig.json, so a config that drops them, or a folder left out of `include`, would
 * let unused code back in without any check failing. The build config must inherit them.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const readJson = (file: string) => JSON.parse(readFileSync(join(root, file), 'utf8')) as { extends?: string; include?: string[]; compilerOptions?: Record<string, unknown> };

test('tsconfig.json type-checks every TypeScript folder strictly, unused locals and parameters included', () => {
  const config = readJson('tsconfig.json');
  for (const flag of ['strict', 'noUnusedLocals', 'noUnusedParameters']) assert.equal(config.compilerOptions?.[flag], true, flag);
  assert.deepEqual([...(config.include ?? [])].sort(), ['bench', 'src', 'tests', 'tools']);
  const scripts = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts;
  assert.match(scripts.typecheck, /^tsc -p tsconfig\.json --noEmit\b/);
});

test('the build config extends tsconfig.json and turns none of its checks off', () => {
  const build = readJson('tsconfig.build.json');
  assert.equal(build.extends, './tsconfig.json');
  for (const flag of ['strict', 'noUnusedLocals', 'noUnusedParameters']) assert.equal(build.compilerOptions?.[flag], undefined, flag);
});
