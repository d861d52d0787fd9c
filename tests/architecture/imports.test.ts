/**
 * The import direction of src/ (server -> engine -> {cache, model}; telemetry and lib are leaves), which
 * package each room may import, who reads process.env, and how long a file may grow. Every import form
 * is read from the TypeScript syntax tree: `import ... from`, `export ... from`, `import()` and
 * `import('x').T` type references, so a comment or a string that looks like an import does not count.
 */
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

/**
 * What today's code breaks, as `file | import | rule` (`file | - | rule` for rules about a file itself).
 * The redesign of issue 14 empties this list. The test fails on a violation not listed here AND on a
 * listed one that no longer occurs, so the list always says exactly what is still wrong.
 */
const KNOWN_VIOLATIONS: readonly string[] = [];

const MAX_LINES = 420;

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const srcDir = join(root, 'src');

interface ImportEdge {
  /** The specifier as written, e.g. `../engine/types.ts` or `hono`. */
  specifier: string;
  /** The src-relative target (`src/engine/types.ts`) for a relative specifier, undefined for a package. */
  target: string | undefined;
  typeOnly: boolean;
}

interface SourceFacts {
  file: string;
  imports: ImportEdge[];
  readsProcessEnv: boolean;
  lines: number;
}

function listSourceFiles(dir: string): string[] {
  const files: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) files.push(...listSourceFiles(path));
    else if (/\.(ts|mts|cts)$/.test(entry.name) && !entry.name.endsWith('.d.ts')) files.push(path);
  }
  return files;
}

function toRepoPath(absolute: string): string {
  return relative(root, absolute).split(sep).join('/');
}

/** True when every name an import brings in is a type: `import type {..}` or `import { type A, type B }`. */
function importIsTypeOnly(clause: ts.ImportClause | undefined): boolean {
  if (clause === undefined) return false; // `import 'x'` runs the module
  if (clause.isTypeOnly) return true;
  if (clause.name !== undefined) return false;
  const bindings = clause.namedBindings;
  if (bindings === undefined || ts.isNamespaceImport(bindings)) return false;
  return bindings.elements.length > 0 && bindings.elements.every((element) => element.isTypeOnly);
}

function exportIsTypeOnly(declaration: ts.ExportDeclaration): boolean {
  if (declaration.isTypeOnly) return true;
  const clause = declaration.exportClause;
  return clause !== undefined && ts.isNamedExports(clause) && clause.elements.length > 0 && clause.elements.every((element) => element.isTypeOnly);
}

function readSource(absolute: string): SourceFacts {
  return parseSource(absolute, readFileSync(absolute, 'utf8'));
}

function parseSource(absolute: string, text: string): SourceFacts {
  const source = ts.createSourceFile(absolute, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const imports: ImportEdge[] = [];
  let readsProcessEnv = false;
  const add = (specifierNode: ts.Node | undefined, typeOnly: boolean): void => {
    if (specifierNode === undefined || !ts.isStringLiteralLike(specifierNode)) return;
    const specifier = specifierNode.text;
    const target = specifier.startsWith('.') ? toRepoPath(resolve(dirname(absolute), specifier)) : undefined;
    imports.push({ specifier, target, typeOnly });
  };
  const visit = (node: ts.Node): void => {
    if (ts.isImportDeclaration(node)) add(node.moduleSpecifier, importIsTypeOnly(node.importClause));
    else if (ts.isExportDeclaration(node)) add(node.moduleSpecifier, exportIsTypeOnly(node));
    else if (ts.isImportEqualsDeclaration(node) && ts.isExternalModuleReference(node.moduleReference)) {
      add(node.moduleReference.expression, node.isTypeOnly);
    } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) {
      add(node.arguments[0], false);
    } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument)) {
      add(node.argument.literal, true);
    } else if (
      ts.isPropertyAccessExpression(node) && node.name.text === 'env' &&
      ts.isIdentifier(node.expression) && node.expression.text === 'process'
    ) {
      readsProcessEnv = true;
    } else if (
      ts.isElementAccessExpression(node) && ts.isIdentifier(node.expression) && node.expression.text === 'process' &&
      ts.isStringLiteralLike(node.argumentExpression) && node.argumentExpression.text === 'env'
    ) {
      readsProcessEnv = true;
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return { file: toRepoPath(absolute), imports, readsProcessEnv, lines: text.split('\n').length - (text.endsWith('\n') ? 1 : 0) };
}

const inRoom = (path: string | undefined, room: string): boolean => path !== undefined && path.startsWith(`src/${room}/`);
const isPackage = (specifier: string, name: string): boolean => specifier === name || specifier.startsWith(`${name}/`);

interface Violation {
  file: string;
  specifier: string;
  rule: string;
  why: string;
}

/** Each rule names itself; `why` says what the rule asks, so a failure reads without opening this file. */
function importViolations(facts: SourceFacts): Violation[] {
  const found: Violation[] = [];
  const { file } = facts;
  for (const edge of facts.imports) {
    const hit = (rule: string, why: string): void => {
      found.push({ file, specifier: edge.specifier, rule, why });
    };
    const { target, specifier } = edge;
    if (['engine', 'cache', 'model'].some((room) => inRoom(file, room)) && inRoom(target, 'server')) {
      hit('core-does-not-import-server', 'engine/, cache/ and model/ never import server/');
    }
    if (inRoom(target, 'server') && !inRoom(file, 'server') && file !== 'src/main.ts') {
      hit('only-server-imports-server', 'server/ is the top: only server/ itself and src/main.ts import it');
    }
    if ((inRoom(file, 'cache') || inRoom(file, 'model')) && inRoom(target, 'engine')) {
      hit('cache-and-model-do-not-import-engine', 'cache/ and model/ sit below engine/ and never import it');
    }
    if (inRoom(file, 'telemetry') && target !== undefined && !inRoom(target, 'telemetry')) {
      const allowed = inRoom(target, 'lib') || (inRoom(target, 'engine') && edge.typeOnly);
      if (!allowed) hit('telemetry-is-a-leaf', 'telemetry/ imports from src/ only lib/ and `import type` from engine/');
    }
    if (inRoom(file, 'lib') && target !== undefined && !inRoom(target, 'lib')) {
      hit('lib-is-a-leaf', 'lib/ imports nothing in src/ outside lib/');
    }
    if (target === undefined) {
      if ((isPackage(specifier, 'hono') || specifier.startsWith('@hono/')) && !inRoom(file, 'server') && file !== 'src/main.ts') {
        hit('hono-only-in-server', 'only server/ (and main.ts, which listens) imports hono and @hono/*');
      }
      if (isPackage(specifier, 'onnxruntime-node') && !inRoom(file, 'model')) {
        hit('onnxruntime-only-in-model', 'only model/ imports onnxruntime-node');
      }
      if (specifier.startsWith('@opentelemetry/') && !inRoom(file, 'telemetry')) {
        hit('opentelemetry-only-in-telemetry', 'only telemetry/ imports @opentelemetry/*');
      }
    }
  }
  if (facts.readsProcessEnv && file !== 'src/main.ts') {
    found.push({ file, specifier: '-', rule: 'only-main-reads-env', why: 'only src/main.ts reads process.env' });
  }
  if (facts.lines > MAX_LINES) {
    found.push({ file, specifier: '-', rule: 'file-length', why: `${facts.lines} lines, more than ${MAX_LINES}` });
  }
  return found;
}

const key = (violation: Violation): string => `${violation.file} | ${violation.specifier} | ${violation.rule}`;

function allViolations(): Violation[] {
  return listSourceFiles(srcDir).sort().map(readSource).flatMap(importViolations);
}

describe('architecture: import direction and rooms', () => {
  test('every import in src/ follows the rules, apart from the listed known violations', () => {
    const violations = allViolations();
    const known = new Set(KNOWN_VIOLATIONS);
    const unexpected = violations.filter((violation) => !known.has(key(violation)));
    assert.deepEqual(
      unexpected.map((violation) => violation.specifier === '-'
        ? `${violation.file}: ${violation.rule} (${violation.why})`
        : `${violation.file} imports '${violation.specifier}': ${violation.rule} (${violation.why})`),
      [],
      'new rule violations in src/',
    );
  });

  test('every listed known violation still occurs (fixed ones leave the list)', () => {
    const occurring = new Set(allViolations().map(key));
    const stale = KNOWN_VIOLATIONS.filter((entry) => !occurring.has(entry));
    assert.deepEqual(stale, [], 'these KNOWN_VIOLATIONS no longer occur: remove them from the list');
  });

  test('the parser sees every import form, type-only imports and process.env reads', () => {
    const sample = [
      "import type { A } from '../engine/types.ts';",
      "import { type B, type C } from '../engine/engine.ts';",
      "import { D, type E } from '../cache/session.ts';",
      "export { F } from '../server/app.ts';",
      "export type { G } from '../model/types.ts';",
      "const h = await import('onnxruntime-node');",
      "let i: import('@opentelemetry/api').Span;",
      "// import { J } from 'hono';",
      "const port = process.env.PORT;",
    ].join('\n');
    const facts = parseSource(join(root, 'src/telemetry/sample.ts'), sample);
    assert.deepEqual(
      facts.imports.map((edge) => [edge.specifier, edge.target, edge.typeOnly]),
      [
        ['../engine/types.ts', 'src/engine/types.ts', true],
        ['../engine/engine.ts', 'src/engine/engine.ts', true],
        ['../cache/session.ts', 'src/cache/session.ts', false],
        ['../server/app.ts', 'src/server/app.ts', false],
        ['../model/types.ts', 'src/model/types.ts', true],
        ['onnxruntime-node', undefined, false],
        ['@opentelemetry/api', undefined, true],
      ],
    );
    assert.equal(facts.readsProcessEnv, true);
    assert.deepEqual(
      importViolations(facts).map((violation) => violation.rule),
      ['telemetry-is-a-leaf', 'only-server-imports-server', 'telemetry-is-a-leaf', 'telemetry-is-a-leaf', 'onnxruntime-only-in-model', 'only-main-reads-env'],
    );
  });
});
