import { Tokenizer } from '@huggingface/tokenizers';

function tokenContent(value: unknown): string | null {
  if (typeof value === 'string') return value;
  if (value && typeof value === 'object' && typeof (value as { content?: unknown }).content === 'string') {
    return (value as { content: string }).content;
  }
  return null;
}

/** The model's tokenizer (`tokenizer.json` + `tokenizer_config.json`) with the few facts the engine needs. */
/** The vocabulary as a grammar engine reads it: each id's token as tokenizer.json writes it, and how to read that. */
export interface EncodedVocabulary {
  encodedTokens: string[];
  vocabType: 'byte_level' | 'byte_fallback' | 'raw';
  prependSpace: boolean;
}

function hasStep(component: unknown, type: string): boolean {
  if (!component || typeof component !== 'object') return false;
  const c = component as { type?: unknown; decoders?: unknown[]; normalizers?: unknown[]; pretokenizers?: unknown[] };
  if (c.type === type) return true;
  return [c.decoders, c.normalizers, c.pretokenizers].some((list) => Array.isArray(list) && list.some((d) => hasStep(d, type)));
}

export class TextTokenizer {
  private readonly tokenizer: Tokenizer;
  private readonly tokenizerJson: Record<string, unknown>;
  /** One past the largest id the tokenizer can produce. */
  readonly size: number;
  readonly specialTokenIds: ReadonlySet<number>;
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  readonly chatTemplate: string | null;

  constructor(tokenizerJson: Record<string, unknown>, tokenizerConfig: Record<string, unknown>) {
    this.tokenizer = new Tokenizer(tokenizerJson, tokenizerConfig);
    this.tokenizerJson = tokenizerJson;
    const special = new Set<number>();
    let maxId = -1;
    for (const [id, token] of this.tokenizer.get_added_tokens_decoder()) {
      if (token.special) special.add(id);
      maxId = Math.max(maxId, id);
    }
    for (const id of this.tokenizer.get_vocab(true).values()) maxId = Math.max(maxId, id);
    this.size = maxId + 1;
    this.specialTokenIds = special;
    this.bosToken = tokenContent(tokenizerConfig.bos_token);
    this.eosToken = tokenContent(tokenizerConfig.eos_token);
    const template = tokenizerConfig.chat_template;
    if (typeof template === 'string') this.chatTemplate = template;
    else if (Array.isArray(template)) {
      // Some tokenizers ship named templates; "default" is the one apply_chat_template uses.
      const named = template.find((t: { name?: string }) => t.name === 'default') as { template?: string } | undefined;
      this.chatTemplate = named?.template ?? null;
    } else this.chatTemplate = null;
  }

  encode(text: string, addSpecialTokens = true): number[] {
    return this.tokenizer.encode(text, { add_special_tokens: addSpecialTokens }).ids;
  }

  decode(ids: readonly number[], skipSpecialTokens = true): string {
    if (ids.length === 0) return '';
    return this.tokenizer.decode(ids as number[], { skip_special_tokens: skipSpecialTokens, clean_up_tokenization_spaces: false });
  }

  /** The vocabulary entry itself (e.g. "Ġthe" in byte-level BPE), not its decoded text. */
  idToToken(id: number): string | undefined {
    return this.tokenizer.id_to_token(id);
  }

  tokenToId(token: string): number | undefined {
    return this.tokenizer.token_to_id(token);
  }

  /**
   * Every id's token string (empty for ids the tokenizer never produces) and the vocabulary type, read
   * from the decoder: ByteLevel (GPT-2 byte alphabet), ByteFallback ("<0x0A>" byte tokens, "▁" spaces),
   * or raw text.
   */
  encodedVocabulary(): EncodedVocabulary {
    const encodedTokens: string[] = new Array(this.size).fill('');
    for (const [token, id] of this.tokenizer.get_vocab(true)) encodedTokens[id] = token;
    for (const [id, token] of this.tokenizer.get_added_tokens_decoder()) encodedTokens[id] = token.content;
    const decoder = this.tokenizerJson.decoder;
    const normalizer = this.tokenizerJson.normalizer;
    const preTokenizer = this.tokenizerJson.pre_tokenizer;
    if (hasStep(decoder, 'ByteLevel')) return { encodedTokens, vocabType: 'byte_level', prependSpace: false };
    if (hasStep(decoder, 'ByteFallback')) {
      const prependSpace = hasStep(normalizer, 'Prepend') || hasStep(preTokenizer, 'Metaspace');
      return { encodedTokens, vocabType: 'byte_fallback', prependSpace };
    }
    return { encodedTokens, vocabType: 'raw', prependSpace: false };
  }
}
