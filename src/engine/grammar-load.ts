import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { compileFunction, constants as vmConstants } from 'node:vm';

/** The part of `@mlc-ai/web-xgrammar`'s API this server uses (see its lib/xgrammar.d.ts). */
export interface XgTokenizerInfo {
  dispose(): void;
}
export interface XgCompiledGrammar {
  dispose(): void;
}
export interface XgGrammarMatcher {
  dispose(): void;
  acceptToken(tokenId: number): boolean;
  getNextTokenBitmask(): Promise<Int32Array>;
  isTerminated(): boolean;
  rollBack(numTokens: number): void;
}
export interface XgGrammarCompiler {
  dispose(): void;
  compileJSONSchema(schema: string, anyWhitespace?: boolean, indent?: number, separators?: [string, string], strictMode?: boolean): Promise<XgCompiledGrammar>;
  compileStructuralTag(structuralTag: string): Promise<XgCompiledGrammar>;
}
export interface Xgrammar {
  Testings: { _jsonSchemaToEBNF(schema: string, anyWhitespace?: boolean, indent?: number, separators?: [string, string], strictMode?: boolean): Promise<string> };
  TokenizerInfo: {
    createTokenizerInfo(encodedVocab: string[], vocabType: string, prependSpaceInTokenization: boolean, vocabSize: number, stopTokenIds: number[]): Promise<XgTokenizerInfo>;
  };
  GrammarCompiler: { createGrammarCompiler(info: XgTokenizerInfo, cacheEnabled?: boolean): Promise<XgGrammarCompiler> };
  GrammarMatcher: { createGrammarMatcher(grammar: XgCompiledGrammar, overrideStopTokens?: number[], terminateWithoutStopToken?: boolean, maxRollbackTokens?: number): Promise<XgGrammarMatcher> };
}

let loaded: Xgrammar | null = null;

/**
 * Loads xgrammar's WebAssembly build once, on the first request that asks for a grammar. Its
 * lib/index.js is a UMD bundle inside a `"type": "module"` package, so neither `import` nor `require`
 * takes it; it is run as the CommonJS module it is written as (its own exports, require, __filename),
 * with the main context's loader for the `import('module')` its Emscripten glue makes.
 */
export function loadXgrammar(): Xgrammar {
  if (loaded) return loaded;
  const file = createRequire(import.meta.url).resolve('@mlc-ai/web-xgrammar');
  const run = compileFunction(readFileSync(file, 'utf8'), ['exports', 'require', 'module', '__filename', '__dirname'], {
    filename: file,
    importModuleDynamically: vmConstants.USE_MAIN_CONTEXT_DEFAULT_LOADER,
  });
  const module = { exports: {} as Record<string, unknown> };
  run(module.exports, createRequire(file), module, file, dirname(file));
  loaded = module.exports as unknown as Xgrammar;
  return loaded;
}
