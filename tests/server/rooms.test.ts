/** Import direction for the server, streams and runtime rooms (docs/architecture.md, "Rooms"). */
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const src = resolve(dirname(fileURLToPath(import.meta.url)), '../../src');

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? filesUnder(join(dir, entry.name)) : entry.name.endsWith('.ts') ? [join(dir, entry.name)] : [],
  );
}

/** Every `from '…'` of a file: relative imports as paths under src/, packages by name. */
function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  return [...text.matchAll(/\bfrom\s+'([^']+)'/g)].map(([, spec]) => (spec!.startsWith('.') ? relative(src, resolve(dirname(file), spec!)) : spec!));
}

function offending(room: string, forbidden: (target: string) => boolean): string[] {
  const root = join(src, room);
  const files = room.endsWith('.ts') ? [root] : filesUnder(root);
  return files.flatMap((file) => importsOf(file).filter(forbidden).map((target) => `${relative(src, file)} -> ${target}`));
}

test('server/ reaches the runtime only through serving.ts', () => {
  assert.deepEqual(offending('server', (t) => t === 'runtime.ts' || t === 'main.ts'), []);
});

test('streams/ has no HTTP: no Hono, no server/', () => {
  assert.deepEqual(offending('streams', (t) => t.startsWith('hono') || t.startsWith('@hono/') || t.startsWith('server/') || t === 'runtime.ts'), []);
});

test('runtime.ts and serving.ts import nothing from server/ and no Hono', () => {
  for (const room of ['runtime.ts', 'serving.ts']) {
    assert.deepEqual(offending(room, (t) => t.startsWith('server/') || t.startsWith('hono') || t.startsWith('@hono/')), [], room);
  }
});

test('only server/ and main.ts import Hono', () => {
  const outside = filesUnder(src).filter((file) => !relative(src, file).startsWith('server/') && relative(src, file) !== 'main.ts');
  const found = outside.flatMap((file) => importsOf(file).filter((t) => t === 'hono' || t.startsWith('hono/') || t.startsWith('@hono/')).map((t) => `${relative(src, file)} -> ${t}`));
  assert.deepEqual(found, []);
});

test('responses/ (the stored response tree) has no HTTP and no engine: only lib/ and node', () => {
  assert.deepEqual(offending('responses', (t) => !t.startsWith('node:') && !t.startsWith('lib/') && !t.startsWith('responses/')), []);
});
