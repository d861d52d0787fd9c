/**
 * A deterministic byte-level BPE tokenizer (GPT-2 style) learned from the built-in corpus, written in the
 * Hugging Face tokenizers `tokenizer.json` format.
 */
import { CORPUS } from './corpus.ts';

export const SPECIAL_TOKENS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>'] as const;
export const DEFAULT_MERGES = 400;

/** The GPT-2 byte -> printable unicode symbol table, in GPT-2's vocabulary order. */
export function bytesToUnicodeOrdered(): { byte: number; symbol: string }[] {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n);
      n++;
    }
  }
  return bs.map((b, i) => ({ byte: b, symbol: String.fromCharCode(cs[i]) }));
}

const BYTE_TABLE = bytesToUnicodeOrdered();
const BYTE_TO_SYMBOL: string[] = new Array(256);
for (const { byte, symbol } of BYTE_TABLE) BYTE_TO_SYMBOL[byte] = symbol;

/** GPT-2's pre-tokenization pattern (the one the ByteLevel pre-tokenizer uses with use_regex: true). */
const PRETOKENIZE = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

function byteLevel(word: string): string {
  let out = '';
  for (const b of new TextEncoder().encode(word)) out += BYTE_TO_SYMBOL[b];
  return out;
}

export interface TrainedBpe {
  /** token string -> id, ids 0..n-1 without gaps (specials excluded) */
  vocab: Map<string, number>;
  /** merges in rank order, "left right" */
  merges: string[];
}

const trainCache = new Map<number, TrainedBpe>();

/**
 * Learns up to `numMerges` merges from the built-in corpus. Deterministic: the most frequent pair wins,
 * ties go to the pair whose "left right" string sorts first. Stops early if every word is a single token.
 */
export function trainBpe(numMerges: number = DEFAULT_MERGES): TrainedBpe {
  const cached = trainCache.get(numMerges);
  if (cached) return cached;
  const counts = new Map<string, number>();
  for (const m of CORPUS.matchAll(PRETOKENIZE)) {
    const w = byteLevel(m[0]);
    counts.set(w, (counts.get(w) ?? 0) + 1);
  }
  const words: { syms: string[]; freq: number }[] = [...counts.entries()].map(([w, freq]) => ({
    syms: Array.from(w),
    freq,
  }));
  const vocab = new Map<string, number>();
  for (const { symbol } of BYTE_TABLE) vocab.set(symbol, vocab.size);
  const merges: string[] = [];
  for (let step = 0; step < numMerges; step++) {
    const pairs = new Map<string, number>();
    for (const { syms, freq } of words) {
      for (let i = 0; i + 1 < syms.length; i++) {
        const k = `${syms[i]} ${syms[i + 1]}`;
        pairs.set(k, (pairs.get(k) ?? 0) + freq);
      }
    }
    let best: string | null = null;
    let bestCount = 0;
    for (const [k, c] of pairs) {
      if (c > bestCount || (c === bestCount && best !== null && k < best)) {
        best = k;
        bestCount = c;
      }
    }
    if (best === null) break;
    const [a, b] = best.split(' ');
    const merged = a + b;
    merges.push(best);
    if (!vocab.has(merged)) vocab.set(merged, vocab.size);
    for (const w of words) {
      const s = w.syms;
      if (s.length < 2) continue;
      const out: string[] = [];
      for (let i = 0; i < s.length; i++) {
        if (i + 1 < s.length && s[i] === a && s[i + 1] === b) {
          out.push(merged);
          i++;
        } else out.push(s[i]);
      }
      w.syms = out;
    }
  }
  const result = { vocab, merges };
  trainCache.set(numMerges, result);
  return result;
}

export interface TokenizerFiles {
  tokenizerJson: Record<string, unknown>;
  tokenizerConfig: Record<string, unknown>;
  specialTokensMap: Record<string, unknown>;
  /** number of ids the tokenizer knows (base + merges + specials) */
  size: number;
  specialIds: { endoftext: number; imStart: number; imEnd: number };
}

export const DEFAULT_CHAT_TEMPLATE =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

export function buildTokenizerFiles(opts: {
  numMerges?: number;
  chatTemplate: string | null;
  modelMaxLength: number;
  tokenizerClass: string;
}): TokenizerFiles {
  const { vocab, merges } = trainBpe(opts.numMerges ?? DEFAULT_MERGES);
  const fullVocab: Record<string, number> = {};
  for (const [t, id] of vocab) fullVocab[t] = id;
  let next = vocab.size;
  const addedTokens = SPECIAL_TOKENS.map((content) => {
    const id = next++;
    fullVocab[content] = id;
    return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true };
  });
  const byteLevelCfg = { add_prefix_space: false, trim_offsets: true, use_regex: true };
  const tokenizerJson = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', ...byteLevelCfg },
    post_processor: { type: 'ByteLevel', ...byteLevelCfg },
    decoder: { type: 'ByteLevel', ...byteLevelCfg },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: fullVocab,
      merges,
    },
  };
  const eot = SPECIAL_TOKENS[0];
  const addedTokensDecoder: Record<string, unknown> = {};
  for (const t of addedTokens) {
    const { id, ...rest } = t;
    addedTokensDecoder[String(id)] = rest;
  }
  const tokenizerConfig: Record<string, unknown> = {
    add_bos_token: false,
    add_eos_token: false,
    add_prefix_space: false,
    added_tokens_decoder: addedTokensDecoder,
    additional_special_tokens: ['<|im_start|>', '<|im_end|>'],
    bos_token: eot,
    eos_token: eot,
    pad_token: eot,
    unk_token: eot,
    clean_up_tokenization_spaces: false,
    errors: 'replace',
    model_max_length: opts.modelMaxLength,
    tokenizer_class: opts.tokenizerClass,
  };
  if (opts.chatTemplate !== null) tokenizerConfig.chat_template = opts.chatTemplate;
  const specialTokensMap = {
    additional_special_tokens: ['<|im_start|>', '<|im_end|>'],
    bos_token: eot,
    eos_token: eot,
    pad_token: eot,
    unk_token: eot,
  };
  return {
    tokenizerJson,
    tokenizerConfig,
    specialTokensMap,
    size: next,
    specialIds: { endoftext: addedTokens[0].id, imStart: addedTokens[1].id, imEnd: addedTokens[2].id },
  };
}
