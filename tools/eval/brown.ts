/**
 * The Brown corpus as natural text, exactly as tools/train/brown.py makes it (tags stripped,
 * punctuation joined, paragraphs on their own lines), so evaluation sees the training distribution.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const FILE_PATTERN = /^c[a-r]\d\d$/;
const NO_SPACE_BEFORE = new Set([',', '.', ';', ':', '!', '?', ')', ']', '}', '%']);
const NO_SPACE_AFTER = new Set(['(', '[', '{', '$']);
const DOUBLED = new Set([';', '?', '!', ':']);
const INSIDE_QUOTE = new Set(['.', ',', '?', '!']);

export function listBrownFiles(corpusDir: string): string[] {
  return readdirSync(corpusDir).filter((f) => FILE_PATTERN.test(f)).sort();
}

function stripTag(token: string): string {
  const i = token.lastIndexOf('/');
  return i > 0 ? token.slice(0, i) : token;
}

function normalizeTokens(words: string[]): string[] {
  const ws: string[] = [];
  for (const w of words) {
    if (DOUBLED.has(w) && ws.length > 0 && ws[ws.length - 1] === w) continue;
    ws.push(w);
  }
  for (let i = 0; i < ws.length - 1; i++) {
    if (ws[i] === "''" && INSIDE_QUOTE.has(ws[i + 1])) [ws[i], ws[i + 1]] = [ws[i + 1], ws[i]];
  }
  return ws;
}

function detokenize(input: string[]): string {
  const words = normalizeTokens(input);
  const out: string[] = [];
  let glueNext = true;
  let singleOpen = false;
  for (const w of words) {
    let space = !glueNext;
    glueNext = false;
    let text: string;
    if (w === '``') {
      text = '"';
      glueNext = true;
    } else if (w === "''") {
      text = '"';
      space = false;
    } else if (w === "'") {
      text = "'";
      if (singleOpen) {
        space = false;
        singleOpen = false;
      } else {
        glueNext = true;
        singleOpen = true;
      }
    } else {
      text = w.replaceAll('``', '"').replaceAll("''", '"');
      if (NO_SPACE_BEFORE.has(w)) space = false;
      if (NO_SPACE_AFTER.has(w)) glueNext = true;
    }
    if (space && out.length > 0) out.push(' ');
    out.push(text);
  }
  return out.join('');
}

/** One document as natural text, paragraphs separated by a newline. */
export function readBrownDocument(path: string): string {
  const raw = readFileSync(path, 'latin1');
  const paragraphs: string[][] = [];
  let current: string[] = [];
  for (const line of raw.split('\n')) {
    if (line.trim() === '') {
      if (current.length > 0) {
        paragraphs.push(current);
        current = [];
      }
      continue;
    }
    const tokens = line.split(/\s+/).filter(Boolean);
    const headline = tokens.some((t) => t.slice(t.lastIndexOf('/') + 1).endsWith('-hl'));
    if ((line.startsWith('\t') || headline) && current.length > 0) {
      paragraphs.push(current);
      current = [];
    }
    current.push(...tokens.map(stripTag));
    if (headline) {
      paragraphs.push(current);
      current = [];
    }
  }
  if (current.length > 0) paragraphs.push(current);
  return paragraphs.map(detokenize).join('\n');
}

export function readBrownDocuments(corpusDir: string, ids: readonly string[]): string[] {
  return ids.map((id) => readBrownDocument(join(corpusDir, id)));
}
