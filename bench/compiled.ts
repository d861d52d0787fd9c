/**
 * A benchmark's child processes compiled to JavaScript, as the Docker images run the server
 * (`node dist/main.js`), instead of under tsx: tsx's loader thread, its transforms and their source maps
 * are memory (about 20 MiB in the server, 30 in the bare floor) that a deployment does not have, and a
 * memory comparison should not count them.
 *
 * The entries and what they import compile with the build's config (tsconfig.build.json) into
 * bench/results/tmp/compiled/ (inside the repository so packages resolve from node_modules/), keeping
 * the repository's layout: src/main.ts becomes bench/results/tmp/compiled/src/main.js. playground/ is
 * linked beside src/ as it sits beside dist/ in the images.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';

const OUT_DIR = 'bench/results/tmp/compiled';

/** How a child runs a repository .ts file: the file node starts and the node arguments it needs before it. */
export type ChildScript = (entry: string) => { file: string; preload: string[] };

/**
 * For `runtime` 'compiled', compiles `entries` (repository-relative .ts paths) once and runs their
 * JavaScript; for 'tsx', runs the files as they are under tsx (as `npm start` does).
 */
export function childScripts(runtime: string, entries: string[]): ChildScript {
  if (runtime === 'tsx') return (entry) => ({ file: entry, preload: ['--import', 'tsx'] });
  if (runtime !== 'compiled') throw new Error(`the runtime must be compiled or tsx, not ${runtime}`);
  compile(entries);
  return (entry) => {
    const file = join(OUT_DIR, entry.replace(/\.ts$/, '.js'));
    if (!existsSync(file)) throw new Error(`compiled: ${entry} did not compile to ${file}`);
    return { file, preload: [] };
  };
}

function compile(entries: string[]): void {
  mkdirSync(OUT_DIR, { recursive: true });
  const tsconfig = join(OUT_DIR, 'tsconfig.json');
  // The build's settings; only what is compiled, and where to, differ.
  writeFileSync(
    tsconfig,
    JSON.stringify({
      extends: resolve('tsconfig.build.json'),
      compilerOptions: { rootDir: resolve('.'), outDir: resolve(OUT_DIR), sourceMap: false },
      files: entries.map((entry) => resolve(entry)),
      include: [],
    }),
  );
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  execFileSync(process.execPath, [tsc, '-p', tsconfig], { stdio: 'inherit' });
  const playground = join(OUT_DIR, 'playground');
  if (!existsSync(playground)) symlinkSync(resolve('playground'), playground, 'dir');
}
