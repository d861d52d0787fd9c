/**
 * A benchmark's child processes compiled to JavaScript, as the Docker images run the server
 * (`node dist/main.js`), instead of under tsx: tsx's loader thread, its transforms and their source maps
 * are memory (about 20 MiB in the server, 30 in the bare floor) that a deployment does not have, and a
 * memory comparison should not count them.
 *
 * The entries and what they import compile with the build's settings into bench/results/tmp/compiled/
 * (inside the repository so packages resolve from node_modules/), with the repository's own layout, so
 * `compiled('src/main.ts')` is the path of its JavaScript. playground/ is linked beside src/ as it is
 * beside dist/ in the images.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';

const OUT_DIR = 'bench/results/tmp/compiled';

/** Compiles `entries` (repository-relative .ts paths); returns a function mapping each to its .js path. */
export function compileEntries(entries: string[]): (entry: string) => string {
  mkdirSync(OUT_DIR, { recursive: true });
  const tsconfig = join(OUT_DIR, 'tsconfig.json');
  writeFileSync(
    tsconfig,
    JSON.stringify({
      extends: resolve('tsconfig.json'),
      compilerOptions: { noEmit: false, rewriteRelativeImportExtensions: true, rootDir: resolve('.'), outDir: resolve(OUT_DIR), sourceMap: false, declaration: false, incremental: false },
      files: entries.map((entry) => resolve(entry)),
      include: [],
    }),
  );
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  execFileSync(process.execPath, [tsc, '-p', tsconfig], { stdio: 'inherit' });
  const playground = join(OUT_DIR, 'playground');
  if (!existsSync(playground)) symlinkSync(resolve('playground'), playground, 'dir');
  return (entry) => {
    const file = join(OUT_DIR, entry.replace(/\.ts$/, '.js'));
    if (!existsSync(file)) throw new Error(`compiled: ${entry} did not compile to ${file}`);
    return file;
  };
}
