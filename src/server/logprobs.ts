/**
 * The engine's per-token logprobs in OpenAI's shapes. Chat: `{content: [{token, logprob, bytes,
 * top_logprobs: [{token, logprob, bytes}]}], refusal: null}`. Completions: `{tokens, token_logprobs,
 * top_logprobs: [{token: logprob}], text_offset}`. Token strings are each id decoded alone (a piece of a
 * multi-byte character shows as U+FFFD, as in vLLM), and `bytes` are that string's UTF-8 bytes.
 * Entries wait in `pending` until the chunk that carries their text (or the last one) takes them.
 */
import type { TokenLogprob } from '../engine/logprobs.ts';
import type { ResponseFormat } from './generation.ts';
import type { PromptLogprob } from './prompt-logprobs.ts';

interface TokenText {
  decode(ids: readonly number[], skipSpecialTokens?: boolean): string;
}

interface ChatTop {
  token: string;
  logprob: number;
  bytes: number[];
}
interface ChatEntry extends ChatTop {
  top_logprobs: ChatTop[];
}
export interface ChatLogprobs {
  content: ChatEntry[];
  refusal: null;
}
export interface CompletionLogprobs {
  tokens: string[];
  /** null for the first token of an echoed prompt (nothing predicts it), as OpenAI. */
  token_logprobs: Array<number | null>;
  top_logprobs: Array<Record<string, number> | null>;
  text_offset: number[];
}

export class LogprobFormatter {
  private pending: Array<{ tokenId: number; logprob: TokenLogprob | null }> = [];
  /** Where the next token's text starts in the choice's text (completions' text_offset). */
  private offset: number;
  private readonly strings = new Map<number, string>();

  constructor(
    private readonly format: ResponseFormat,
    private readonly tokenizer: TokenText,
    textBefore: number,
    /** An echoed prompt's tokens (completions): they come first, from text offset 0, instead of `textBefore`. */
    prompt?: readonly PromptLogprob[],
  ) {
    this.offset = prompt ? 0 : textBefore;
    if (prompt) this.pending.push(...prompt);
  }

  add(tokenId: number, logprob: TokenLogprob): void {
    this.pending.push({ tokenId, logprob });
  }

  /** Everything pending, in the endpoint's shape; null when nothing is pending. */
  take(): ChatLogprobs | CompletionLogprobs | null {
    if (this.pending.length === 0) return null;
    const entries = this.pending;
    this.pending = [];
    if (this.format === 'chat') {
      return {
        content: entries.map(({ tokenId, logprob }) => ({
          ...this.chatTop(tokenId, logprob!.logprob),
          top_logprobs: logprob!.top.map((t) => this.chatTop(t.tokenId, t.logprob)),
        })),
        refusal: null,
      };
    }
    const out: CompletionLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
    for (const { tokenId, logprob } of entries) {
      const token = this.text(tokenId);
      out.tokens.push(token);
      out.text_offset.push(this.offset);
      this.offset += token.length;
      if (logprob === null) {
        out.token_logprobs.push(null);
        out.top_logprobs.push(null);
        continue;
      }
      out.token_logprobs.push(logprob.logprob);
      // The N most likely, and the sampled token too when it is not among them (as vLLM and OpenAI).
      const top: Record<string, number> = {};
      for (const t of logprob.top) top[this.text(t.tokenId)] ??= t.logprob;
      if (logprob.top.length > 0) top[token] ??= logprob.logprob;
      out.top_logprobs.push(top);
    }
    return out;
  }

  private chatTop(tokenId: number, logprob: number): ChatTop {
    const token = this.text(tokenId);
    return { token, logprob, bytes: [...Buffer.from(token, 'utf8')] };
  }

  private text(tokenId: number): string {
    let text = this.strings.get(tokenId);
    if (text === undefined) {
      text = this.tokenizer.decode([tokenId], false);
      this.strings.set(tokenId, text);
    }
    return text;
  }
}
