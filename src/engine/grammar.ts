import { performance } from 'node:perf_hooks';
import { canonicalJson, checkSchema, SchemaError } from './grammar-schema.ts';
import { loadXgrammar, type XgCompiledGrammar, type XgGrammarCompiler, type XgGrammarMatcher } from './grammar-load.ts';
import type { EngineError } from './types.ts';

/** What a request's output must match. */
export type GrammarSpec =
  | { kind: 'json_object' }
  | { kind: 'json_schema'; schema: Record<string, unknown> }
  /**
   * Tool calls: one of `tags` (`begin`, JSON matching `schema`, `end`), or with a separator one or more.
   * With `triggers` (tool_choice auto): free text, where any trigger (a prefix of the tags' `begin`)
   * starts a call that must then be one of the tags; calls are optional.
   */
  | { kind: 'tagged_json'; tags: TaggedJson[]; separator: string | null; triggers?: string[] };

export interface TaggedJson {
  begin: string;
  schema: Record<string, unknown>;
  end: string;
  /** The request field the schema came from, for errors. */
  param: string;
}

/** The tokenizer's vocabulary as xgrammar reads it (see TextTokenizer.grammarVocabulary). */
export interface GrammarVocabulary {
  /** Each id's token as written in tokenizer.json (byte-level: GPT-2's byte-to-char alphabet; byte fallback: "<0x0A>", "▁"). */
  encodedTokens: string[];
  vocabType: 'byte_level' | 'byte_fallback' | 'raw';
  /** Sentencepiece-style tokenizers that add "▁" before the first word. */
  prependSpace: boolean;
}

export interface GrammarCounters {
  compiles: number;
  compileMs: number;
  cacheHits: number;
  cacheMisses: number;
  /** Time to load xgrammar and build its tokenizer info (once). */
  setupMs: number;
  /** The last compiles' durations, oldest first (at most RECENT_COMPILES; `compiles` counts them all). */
  recentCompileMs: number[];
}

/** Enough for a scraper to observe each compile as a histogram sample between two scrapes. */
const RECENT_COMPILES = 256;

/** The JSON object mode grammar: any object, compact separators (no unbounded runs of whitespace). */
const ANY_OBJECT = { type: 'object' };

/**
 * Compiles grammars for one model's vocabulary and hands out per-request constraints. Compiled
 * grammars are kept in an LRU keyed by the schema's canonical JSON.
 */
export class GrammarService {
  private compiler: Promise<XgGrammarCompiler> | null = null;
  private readonly cache = new Map<string, Promise<XgCompiledGrammar>>();
  private forbidden: Int32Array | null = null;
  private everything: Int32Array | null = null;
  private readonly values: GrammarCounters = { compiles: 0, compileMs: 0, cacheHits: 0, cacheMisses: 0, setupMs: 0, recentCompileMs: [] };

  constructor(
    private readonly vocabulary: GrammarVocabulary,
    /** Rows of the logits (may exceed the tokenizer's ids; the extra ids are never allowed). */
    private readonly vocabSize: number,
    private readonly stopTokenIds: readonly number[],
    private readonly cacheSize = 64,
  ) {}

  counters(): GrammarCounters {
    return { ...this.values, recentCompileMs: [...this.values.recentCompileMs] };
  }

  private recordCompile(start: number): void {
    const ms = performance.now() - start;
    this.values.compiles++;
    this.values.compileMs += ms;
    this.values.recentCompileMs.push(ms);
    if (this.values.recentCompileMs.length > RECENT_COMPILES) this.values.recentCompileMs.shift();
  }

  /** A fresh constraint for one request, or the reason the spec cannot be enforced. */
  async constraint(spec: GrammarSpec): Promise<{ ok: true; constraint: Constraint } | { ok: false; error: EngineError }> {
    let key: string;
    let strict = true;
    if (spec.kind === 'tagged_json') {
      for (const tag of spec.tags) {
        const error = schemaError(tag.schema, tag.param);
        if (error) return { ok: false, error };
      }
      key = `t:${canonicalJson(spec)}`;
    } else if (spec.kind === 'json_object') {
      key = canonicalJson(ANY_OBJECT);
      strict = false;
    } else {
      const error = schemaError(spec.schema, 'response_format');
      if (error) return { ok: false, error };
      key = canonicalJson(spec.schema);
    }
    let matcher: XgGrammarMatcher;
    try {
      const compiled = spec.kind === 'tagged_json' ? await this.compiledTags(key, spec) : await this.compiled(key, strict);
      // Without a stop token the matcher ends where the grammar does.
      matcher = await loadXgrammar().GrammarMatcher.createGrammarMatcher(compiled, [...this.stopTokenIds], this.stopTokenIds.length === 0);
    } catch (error) {
      const param = spec.kind === 'tagged_json' ? 'tools' : 'response_format';
      return { ok: false, error: { kind: 'invalid_request', param, message: `The JSON schema could not be compiled: ${(error as Error).message}.` } };
    }
    // Tool-call tags hold newlines; their EBNF strings already exclude raw control characters.
    if (spec.kind === 'tagged_json') {
      this.everything ??= new Int32Array(Math.ceil(this.vocabSize / 32)).fill(-1);
      return { ok: true, constraint: new Constraint(matcher, this.vocabSize, this.everything) };
    }
    this.forbidden ??= controlCharacterMask(this.vocabulary, this.vocabSize, this.stopTokenIds);
    return { ok: true, constraint: new Constraint(matcher, this.vocabSize, this.forbidden) };
  }

  private compiledTags(key: string, spec: Extract<GrammarSpec, { kind: 'tagged_json' }>): Promise<XgCompiledGrammar> {
    return this.cached(key, () => this.compileTags(spec));
  }

  private compiled(key: string, strict: boolean): Promise<XgCompiledGrammar> {
    return this.cached(`${strict ? 's' : 'l'}:${key}`, () => this.compile(key, strict));
  }

  private cached(cacheKey: string, compile: () => Promise<XgCompiledGrammar>): Promise<XgCompiledGrammar> {
    const hit = this.cache.get(cacheKey);
    if (hit) {
      this.values.cacheHits++;
      this.cache.delete(cacheKey);
      this.cache.set(cacheKey, hit);
      return hit;
    }
    this.values.cacheMisses++;
    const compiling = compile();
    this.cache.set(cacheKey, compiling);
    compiling.catch(() => this.cache.delete(cacheKey));
    while (this.cache.size > this.cacheSize) {
      const [oldest, grammar] = this.cache.entries().next().value!;
      this.cache.delete(oldest);
      // Matchers made from it hold their own reference inside the WebAssembly heap.
      void grammar.then((g) => g.dispose(), () => {});
    }
    return compiling;
  }

  private async compile(schemaJson: string, strict: boolean): Promise<XgCompiledGrammar> {
    const compiler = await this.grammarCompiler();
    const start = performance.now();
    // No free whitespace: a model that never closes a run of spaces cannot stall the output.
    const grammar = await compiler.compileJSONSchema(schemaJson, false, -1, [',', ':'], strict);
    this.recordCompile(start);
    return grammar;
  }

  /**
   * Each schema as its own EBNF (xgrammar's JSON-schema elements inside a structural tag allow unbounded
   * whitespace; these use the chat templates' `tojson` separators and none else), inside its tag.
   */
  private async compileTags(spec: Extract<GrammarSpec, { kind: 'tagged_json' }>): Promise<XgCompiledGrammar> {
    const compiler = await this.grammarCompiler();
    const start = performance.now();
    const xg = loadXgrammar();
    const tags = await Promise.all(
      spec.tags.map(async (tag) => ({
        type: 'tag',
        begin: tag.begin,
        content: { type: 'grammar', grammar: await xg.Testings._jsonSchemaToEBNF(canonicalJson(tag.schema), false, -1, [', ', ': '], true) },
        end: tag.end,
      })),
    );
    const format = spec.triggers
      ? { type: 'triggered_tags', triggers: spec.triggers, tags, at_least_one: false, stop_after_first: spec.separator === null }
      : spec.separator === null
        ? { type: 'or', elements: tags }
        : { type: 'tags_with_separator', tags, separator: spec.separator, at_least_one: true };
    const grammar = await compiler.compileStructuralTag(JSON.stringify({ type: 'structural_tag', format }));
    this.recordCompile(start);
    return grammar;
  }

  private grammarCompiler(): Promise<XgGrammarCompiler> {
    this.compiler ??= (async () => {
      const start = performance.now();
      const xg = loadXgrammar();
      const { encodedTokens, vocabType, prependSpace } = this.vocabulary;
      const info = await xg.TokenizerInfo.createTokenizerInfo(encodedTokens, vocabType, prependSpace, this.vocabSize, [...this.stopTokenIds]);
      const compiler = await xg.GrammarCompiler.createGrammarCompiler(info, false);
      this.values.setupMs = performance.now() - start;
      return compiler;
    })();
    return this.compiler;
  }
}

function schemaError(schema: unknown, param: string): EngineError | null {
  try {
    checkSchema(schema);
    return null;
  } catch (error) {
    if (!(error instanceof SchemaError)) throw error;
    const where = error.pointer ? ` (at ${error.pointer})` : '';
    return { kind: 'invalid_request', param, message: `Invalid JSON schema: ${error.message}${where}.` };
  }
}

/** One request's grammar state: masks each row of logits before sampling and advances on each token. */
export class Constraint {
  private bitmask: Int32Array | null = null;
  private accepted = 0;

  constructor(
    private readonly matcher: XgGrammarMatcher,
    private readonly vocabSize: number,
    /** Set bits: ids allowed whatever the grammar says (see controlCharacterMask). */
    private readonly allowed: Int32Array,
  ) {}

  /** Computes the allowed set for the next token (async in xgrammar's API; the work is synchronous WebAssembly). */
  async prepare(): Promise<void> {
    this.bitmask = await this.matcher.getNextTokenBitmask();
  }

  /** `logits` copied into `out` with every disallowed id at -Infinity; returns `out`. `// [vocabSize] each` */
  mask(logits: Float32Array, out: Float32Array): Float32Array {
    const bits = this.bitmask;
    if (!bits) throw new Error('Constraint.mask before prepare');
    out.set(logits.subarray(0, this.vocabSize));
    for (let word = 0; word < bits.length; word++) {
      const value = bits[word] & this.allowed[word];
      if (value === -1) continue;
      const base = word * 32;
      const end = Math.min(base + 32, this.vocabSize);
      // Most words of a large vocabulary allow nothing at a given step.
      if (value === 0) out.fill(-Infinity, base, end);
      else for (let id = base; id < end; id++) if ((value & (1 << (id - base))) === 0) out[id] = -Infinity;
    }
    if (bits.length * 32 < this.vocabSize) out.fill(-Infinity, bits.length * 32, this.vocabSize);
    this.bitmask = null;
    return out;
  }

  /** Advances the matcher; false if the grammar rejects the token (never after mask). */
  accept(tokenId: number): boolean {
    const ok = this.matcher.acceptToken(tokenId);
    if (ok) this.accepted++;
    return ok;
  }

  /** Undoes the last `count` accepted tokens (a step whose tokens were taken back). */
  rollBack(count: number): void {
    this.matcher.rollBack(count);
    this.accepted -= count;
  }

  get isTerminated(): boolean {
    return this.matcher.isTerminated();
  }

  dispose(): void {
    this.matcher.dispose();
  }
}

/**
 * Ids whose text holds no raw control character (U+0000-U+001F), plus the stop tokens. xgrammar's JSON
 * string rule admits raw control characters, which JSON forbids inside strings; the grammars here
 * allow no whitespace outside strings, so no valid output contains one, and masking them is exact.
 * `// [ceil(vocabSize / 32)]`, bit i of word w: id 32w + i.
 */
function controlCharacterMask(vocabulary: GrammarVocabulary, vocabSize: number, stopTokenIds: readonly number[]): Int32Array {
  const words = new Int32Array(Math.ceil(vocabSize / 32)).fill(-1);
  const forbid = (id: number) => (words[id >> 5] &= ~(1 << (id & 31)));
  vocabulary.encodedTokens.forEach((token, id) => {
    if (id >= vocabSize) return;
    for (const char of token) {
      const code = char.codePointAt(0)!;
      // Byte-level BPE writes bytes 0x00-0x1F as U+0100-U+011F.
      const control = vocabulary.vocabType === 'byte_level' ? code >= 0x100 && code <= 0x11f : code < 0x20;
      if (control) return forbid(id);
    }
    if (vocabulary.vocabType === 'byte_fallback' && /^<0x[01][0-9A-F]>$/.test(token)) forbid(id);
  });
  for (const id of stopTokenIds) if (id < vocabSize) words[id >> 5] |= 1 << (id & 31);
  return words;
}
