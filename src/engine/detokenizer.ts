/** Only `decode` is needed, so tests and other tokenizers can stand in. */
export interface TokenDecoder {
  decode(ids: readonly number[], skipSpecialTokens?: boolean): string;
}

/** Prompt tokens decoded with the first output tokens, so tokenizers that strip a leading space stay right. */
const CONTEXT_TOKENS = 5;
const REPLACEMENT_CHARACTER = '\uFFFD';

/**
 * Turns a growing token list into text deltas the way vLLM and TGI do: decode a short window of recent
 * tokens twice (with and without the newest ones) and emit the difference, holding back while the
 * window ends inside a multi-byte UTF-8 sequence (the decoder then yields U+FFFD).
 */
export class IncrementalDetokenizer {
  private readonly tokens: number[];
  private prefixOffset: number;
  private readOffset: number;

  constructor(
    private readonly tokenizer: TokenDecoder,
    context: readonly number[] = [],
  ) {
    this.tokens = context.slice(-CONTEXT_TOKENS);
    this.prefixOffset = 0;
    this.readOffset = this.tokens.length;
  }

  push(tokenId: number): string {
    this.tokens.push(tokenId);
    const prefixText = this.tokenizer.decode(this.tokens.slice(this.prefixOffset, this.readOffset));
    const fullText = this.tokenizer.decode(this.tokens.slice(this.prefixOffset));
    if (fullText.length > prefixText.length && !fullText.endsWith(REPLACEMENT_CHARACTER)) {
      this.prefixOffset = this.readOffset;
      this.readOffset = this.tokens.length;
      return fullText.slice(prefixText.length);
    }
    return '';
  }

  /** Text still held back when generation ends (an incomplete character decodes as U+FFFD then). */
  flush(): string {
    if (this.readOffset === this.tokens.length) return '';
    const prefixText = this.tokenizer.decode(this.tokens.slice(this.prefixOffset, this.readOffset));
    const fullText = this.tokenizer.decode(this.tokens.slice(this.prefixOffset));
    this.prefixOffset = this.readOffset = this.tokens.length;
    return fullText.length > prefixText.length ? fullText.slice(prefixText.length) : '';
  }
}
