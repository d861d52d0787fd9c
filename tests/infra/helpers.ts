/**
 * Readers for the deployment files, just enough for the invariant tests: a Dockerfile parser, a
 * small HCL block reader (terraform is not run by the tests), duration and size parsers, and the
 * set of environment variables the server understands (from src/config.ts).
 */
import { readFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { configSchema, envName } from '../../src/config.ts';

export const ROOT = join(import.meta.dirname, '..', '..');

/** A port nobody listens on right now (other checkouts may run their tests on this machine at the same time). */
export async function freePort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const { port } = probe.address() as AddressInfo;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  return port;
}

export function readRepoFile(path: string): string {
  return readFileSync(join(ROOT, path), 'utf8');
}

/** Every environment variable the server reads: the UPPER_SNAKE of each setting, and MODEL_DIR. */
export const SERVER_ENV = new Set([...Object.keys(configSchema.shape).map(envName), 'MODEL_DIR']);

// ---------------------------------------------------------------------------------------------
// Dockerfile

export interface Instruction {
  keyword: string;
  args: string;
  line: number;
}

export interface Stage {
  name: string | undefined;
  /** Image as written (may contain ${ARG}). */
  from: string;
  /** Image with global ARG defaults substituted. */
  image: string;
  instructions: Instruction[];
}

export interface Dockerfile {
  /** ARGs declared before the first FROM, with their defaults. */
  globalArgs: Map<string, string>;
  stages: Stage[];
  /** The `# syntax=` directive, if any. */
  syntax: string | undefined;
}

/** Joins continuation lines, drops comments, splits into instructions grouped by stage. */
export function parseDockerfile(text: string): Dockerfile {
  const rawLines = text.split('\n');
  const syntax = /^#\s*syntax\s*=\s*(\S+)/.exec(rawLines[0] ?? '')?.[1];
  const logical: { text: string; line: number }[] = [];
  let current: { text: string; line: number } | undefined;
  rawLines.forEach((raw, index) => {
    const trimmed = raw.trim();
    if (current === undefined && (trimmed === '' || trimmed.startsWith('#'))) return;
    if (current !== undefined && trimmed.startsWith('#')) return; // comment inside a continuation
    const continued = /\\\s*$/.test(raw);
    const body = continued ? raw.replace(/\\\s*$/, '') : raw;
    if (current === undefined) current = { text: body.trim(), line: index + 1 };
    else current.text += ` ${body.trim()}`;
    if (!continued) {
      logical.push(current);
      current = undefined;
    }
  });
  if (current !== undefined) logical.push(current);

  const globalArgs = new Map<string, string>();
  const stages: Stage[] = [];
  for (const { text: instructionText, line } of logical) {
    const match = /^(\S+)\s*(.*)$/s.exec(instructionText);
    if (!match) continue;
    const keyword = match[1].toUpperCase();
    const args = match[2].trim();
    if (keyword === 'FROM') {
      const parts = args.split(/\s+/).filter((part) => !part.startsWith('--'));
      const from = parts[0];
      const asIndex = parts.findIndex((part) => part.toUpperCase() === 'AS');
      const name = asIndex >= 0 ? parts[asIndex + 1] : undefined;
      const image = from.replace(/\$\{?(\w+)\}?/g, (_, arg: string) => globalArgs.get(arg) ?? `\${${arg}}`);
      stages.push({ name, from, image, instructions: [] });
    } else if (stages.length === 0) {
      if (keyword === 'ARG') {
        const [key, ...value] = args.split('=');
        globalArgs.set(key.trim(), value.join('=').trim());
      }
    } else {
      stages[stages.length - 1].instructions.push({ keyword, args, line });
    }
  }
  return { globalArgs, stages, syntax };
}

/** KEY=VALUE pairs of every ENV instruction of a stage (later ones win). */
export function stageEnv(stage: Stage): Map<string, string> {
  const env = new Map<string, string>();
  for (const instruction of stage.instructions.filter((i) => i.keyword === 'ENV')) {
    const pair = /([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|'[^']*'|\S*)/g;
    for (const match of instruction.args.matchAll(pair)) {
      env.set(match[1], match[2].replace(/^(["'])(.*)\1$/s, '$2'));
    }
  }
  return env;
}

export function stageNamed(dockerfile: Dockerfile, name: string): Stage {
  const stage = dockerfile.stages.find((s) => s.name === name);
  if (!stage) throw new Error(`Dockerfile has no stage named ${name}`);
  return stage;
}

export function instructionsOf(stage: Stage, keyword: string): Instruction[] {
  return stage.instructions.filter((i) => i.keyword === keyword);
}

// ---------------------------------------------------------------------------------------------
// Kubernetes YAML

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; labels?: Record<string, string>; namespace?: string; annotations?: Record<string, string> };
  spec?: any;
  [key: string]: any;
}

export function parseYamlDocuments(path: string): K8sObject[] {
  const documents = parseAllDocuments(readRepoFile(path));
  return documents.map((document) => {
    if (document.errors.length > 0) throw new Error(`${path}: ${document.errors[0].message}`);
    return document.toJS() as K8sObject;
  }).filter((object) => object !== null);
}

// ---------------------------------------------------------------------------------------------
// HCL (terraform): blocks and top-level attributes, enough to read this repo's files.

/** Blanks out comments (keeping offsets) and marks which characters are inside strings. */
function scanHcl(text: string): { code: string; inString: boolean[] } {
  const out = text.split('');
  const inString: boolean[] = new Array(text.length).fill(false);
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === '"') {
      inString[i] = true;
      i++;
      while (i < text.length && text[i] !== '"') {
        inString[i] = true;
        if (text[i] === '\\') {
          inString[i + 1] = true;
          i++;
        }
        i++;
      }
      inString[i] = true;
      i++;
    } else if (c === '#' || (c === '/' && text[i + 1] === '/')) {
      while (i < text.length && text[i] !== '\n') out[i++] = ' ';
    } else if (c === '/' && text[i + 1] === '*') {
      while (i < text.length && !(text[i] === '*' && text[i + 1] === '/')) {
        if (text[i] !== '\n') out[i] = ' ';
        i++;
      }
      out[i] = ' ';
      out[i + 1] = ' ';
      i += 2;
    } else i++;
  }
  return { code: out.join(''), inString };
}

export interface HclBlock {
  type: string;
  labels: string[];
  body: string;
}

/** Blocks directly inside `text` (depth 0), e.g. blocks(file) or blocks(resource.body, 'template'). */
export function hclBlocks(text: string, type?: string): HclBlock[] {
  const { code, inString } = scanHcl(text);
  const result: HclBlock[] = [];
  let depth = 0;
  let lineStart = 0;
  for (let i = 0; i < code.length; i++) {
    if (inString[i]) continue;
    const c = code[i];
    if (c === '\n') lineStart = i + 1;
    if (c === '{' || c === '[' || c === '(') {
      if (c === '{' && depth === 0) {
        const header = code.slice(lineStart, i).trim();
        const match = /^([A-Za-z_][\w-]*)((?:\s+"[^"]*")*)$/.exec(header);
        if (match) {
          const end = matchingBrace(code, inString, i);
          const labels = [...match[2].matchAll(/"([^"]*)"/g)].map((m) => m[1]);
          if (type === undefined || match[1] === type) result.push({ type: match[1], labels, body: text.slice(i + 1, end) });
          i = end;
          continue;
        }
      }
      depth++;
    } else if (c === '}' || c === ']' || c === ')') depth--;
  }
  return result;
}

function matchingBrace(code: string, inString: boolean[], open: number): number {
  let depth = 0;
  for (let i = open; i < code.length; i++) {
    if (inString[i]) continue;
    if (code[i] === '{' || code[i] === '[' || code[i] === '(') depth++;
    else if (code[i] === '}' || code[i] === ']' || code[i] === ')') {
      depth--;
      if (depth === 0) return i;
    }
  }
  throw new Error('unbalanced braces in HCL');
}

export function hclBlock(text: string, ...path: string[]): HclBlock {
  let body = text;
  let found: HclBlock | undefined;
  for (const type of path) {
    found = hclBlocks(body, type)[0];
    if (!found) throw new Error(`no ${path.join(' > ')} block`);
    body = found.body;
  }
  return found!;
}

/** Raw expression of a depth-0 attribute `name = expr` (up to the end of the line, or of a bracketed value). */
export function hclAttribute(body: string, name: string): string | undefined {
  const { code, inString } = scanHcl(body);
  let depth = 0;
  let lineStart = 0;
  for (let i = 0; i < code.length; i++) {
    if (inString[i]) continue;
    const c = code[i];
    if (c === '\n') lineStart = i + 1;
    else if (c === '{' || c === '[' || c === '(') depth++;
    else if (c === '}' || c === ']' || c === ')') depth--;
    else if (c === '=' && depth === 0 && code[i + 1] !== '=' && !'!<>='.includes(code[i - 1])) {
      const key = code.slice(lineStart, i).trim().replace(/^"(.*)"$/, '$1');
      if (key !== name) continue;
      let end = code.indexOf('\n', i);
      if (end < 0) end = code.length;
      const first = code.slice(i + 1).trimStart()[0];
      if (first === '{' || first === '[') end = matchingBrace(code, inString, code.indexOf(first, i)) + 1;
      return body.slice(i + 1, end).replace(/\s+$/, '').trim();
    }
  }
  return undefined;
}

/** Attributes of an HCL map literal `{ a = "x", "b.c" = 1 }`. */
export function hclMap(expression: string): Map<string, string> {
  const inner = expression.trim().replace(/^\{/, '').replace(/\}$/, '');
  const map = new Map<string, string>();
  for (const line of inner.split(/\n|,/)) {
    const match = /^\s*"?([^"=]+?)"?\s*=\s*(.+?)\s*$/.exec(line);
    if (match) map.set(match[1], match[2]);
  }
  return map;
}

/** Default values of `variable "x" { default = ... }` blocks. */
export function hclVariableDefaults(text: string): Map<string, string> {
  const defaults = new Map<string, string>();
  for (const block of hclBlocks(text, 'variable')) {
    const value = hclAttribute(block.body, 'default');
    if (value !== undefined) defaults.set(block.labels[0], value);
  }
  return defaults;
}

/** A literal, or `var.x` / `tostring(var.x)` resolved through variable defaults; quotes removed. */
export function hclValue(expression: string | undefined, variables: Map<string, string>): string | undefined {
  if (expression === undefined) return undefined;
  let value = expression.trim();
  const wrapped = /^tostring\((.*)\)$/.exec(value);
  if (wrapped) value = wrapped[1].trim();
  const variable = /^var\.(\w+)$/.exec(value);
  if (variable) {
    const resolved = variables.get(variable[1]);
    if (resolved === undefined) return undefined;
    value = resolved;
  }
  return value.replace(/^"(.*)"$/s, '$1');
}

// ---------------------------------------------------------------------------------------------
// Units

/** "3600s", "1h", "90s", "5m" -> seconds. */
export function durationSeconds(text: string | number): number {
  if (typeof text === 'number') return text;
  let total = 0;
  const pattern = /(\d+(?:\.\d+)?)(ms|h|m|s)/g;
  let matched = '';
  for (const match of text.matchAll(pattern)) {
    matched += match[0];
    const value = Number(match[1]);
    total += match[2] === 'h' ? value * 3600 : match[2] === 'm' ? value * 60 : match[2] === 's' ? value : value / 1000;
  }
  if (matched !== text.trim()) throw new Error(`not a duration: ${text}`);
  return total;
}

/** Kubernetes quantity ("16Gi", "512Mi", "8G") -> bytes. */
export function quantityBytes(text: string | number): number {
  if (typeof text === 'number') return text;
  const match = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|K|M|G|T)?$/.exec(text.trim());
  if (!match) throw new Error(`not a quantity: ${text}`);
  const factors: Record<string, number> = { Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, Ti: 1024 ** 4, k: 1e3, K: 1e3, M: 1e6, G: 1e9, T: 1e12 };
  return Number(match[1]) * (match[2] ? factors[match[2]] : 1);
}
