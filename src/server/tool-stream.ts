/**
 * A reply read for tool calls as its tokens arrive, in the template's format (chat-template.ts): the
 * text outside calls, each call's start once its name has closed, its arguments as the model writes
 * them, its end. The events and `finish()`'s reply are one reading of the text, char by char, so for any
 * split of the text into pieces the streamed deltas add up to exactly the final reply; the
 * non-streaming path feeds the whole text to the same reader.
 *
 * Hermes replies are text with `<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>` blocks in
 * it; a Llama 3.x reply is either calls (`{"name": ..., "parameters": ...}`, optionally after
 * `<|python_tag|>`, separated by `; `) or text, which its first non-whitespace character decides.
 * A call streams from its name on; one whose object does not start with its name is held back until
 * its object closes, then sent whole. A started call is never taken back: when its JSON turns out
 * broken or cut, the call keeps its arguments as written (clients validate non-strict arguments).
 */
import { randomBytes } from 'node:crypto';
import type { ToolCallFormat } from '../model/chat-template.ts';
import { CallObject, nameOf } from './call-object.ts';

export interface ToolCall {
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
}

export type ToolStreamEvent =
  | { type: 'content'; text: string }
  | { type: 'call'; index: number; id: string; name: string }
  | { type: 'arguments'; index: number; text: string }
  /** `closed`: the call's JSON object closed; false when the reply (or its block) ended inside it. */
  | { type: 'call_end'; index: number; call: ToolCall; closed: boolean };

/** The reply as the response object carries it: the text around the calls (trimmed; null when empty) and the calls. */
export interface ToolReply {
  content: string | null;
  calls: ToolCall[];
}

/**
 * Events per generated token a stream with tools may send, at most: a token can carry text, a call's
 * start and its first arguments at once. Stream logs keep this many per token (streams/registry.ts).
 */
export const TOOL_EVENTS_PER_TOKEN = 4;

const OPEN = '<tool_call>';
const CLOSE = '</tool_call>';
const PYTHON_TAG = '<|python_tag|>';
const SPACE = /\s/;

/**
 * Where the reader is: `text` (Hermes, outside blocks), `block` (after `<tool_call>`, before its `{`),
 * `lead` (Llama, before the first non-whitespace character), `tagged` (Llama, after `<|python_tag|>`),
 * `object` (in a call's JSON), `after` (a call's object closed: Hermes waits for `</tool_call>`, Llama for
 * the next call) and `content` (Llama: the rest of the reply is text).
 */
type Mode = 'text' | 'block' | 'lead' | 'tagged' | 'object' | 'after' | 'content';

export class ToolCallReader {
  private mode: Mode;
  /** Characters that may be the start of a tag this mode watches for. */
  private look = '';
  private events: ToolStreamEvent[] = [];
  private content = '';
  /** Whitespace after the content so far: sent only once more content follows it. */
  private space = '';
  private readonly calls: ToolCall[] = [];
  private object: CallObject | null = null;
  /** The call streaming now (its name has closed and its object has not ended). */
  private call: ToolCall | null = null;
  /** What opened the current block or object (`<tool_call>` and whitespace): content again if it is no call. */
  private opening = '';
  /** After a call, the text before `</tool_call>` (Hermes; content unless the block closes) or the `;` (Llama). */
  private held = '';
  private ending = false;

  constructor(private readonly format: ToolCallFormat) {
    this.mode = format === 'hermes' ? 'text' : 'lead';
  }

  /** The next piece of the reply; returns what it makes known. */
  push(text: string): ToolStreamEvent[] {
    for (const c of text) this.take(c);
    return this.drain();
  }

  /** The reply has ended: the events of what was held back, and the whole reply. */
  finish(): ToolReply & { events: ToolStreamEvent[] } {
    this.ending = true;
    const rest = this.look;
    this.look = '';
    for (const c of rest) this.take(c);
    if (this.mode === 'block' || this.mode === 'tagged') this.addContent(this.opening);
    else if (this.mode === 'object') this.objectEnded(false);
    else if (this.mode === 'after' && this.format === 'hermes') this.addContent(this.held);
    return { events: this.drain(), content: this.content === '' ? null : this.content, calls: this.calls };
  }

  private drain(): ToolStreamEvent[] {
    const out = this.events;
    this.events = [];
    return out;
  }

  private watched(): readonly string[] {
    if (this.ending) return [];
    if (this.mode === 'lead') return [PYTHON_TAG];
    if (this.format !== 'hermes') return [];
    if (this.mode === 'text') return [OPEN];
    if (this.mode === 'object') return [CLOSE];
    if (this.mode === 'after') return [CLOSE, OPEN];
    return [];
  }

  /** One character: held while it may begin a watched tag, otherwise read in the current mode. */
  private take(c: string): void {
    this.look += c;
    while (this.look !== '') {
      const tag = this.watched().find((t) => t.startsWith(this.look));
      if (tag !== undefined) {
        if (tag.length === this.look.length) {
          this.look = '';
          this.onTag(tag);
        }
        return;
      }
      const first = String.fromCodePoint(this.look.codePointAt(0)!);
      this.look = this.look.slice(first.length);
      this.onChar(first);
    }
  }

  private onTag(tag: string): void {
    if (tag === PYTHON_TAG) {
      this.opening = tag;
      this.mode = 'tagged';
    } else if (tag === OPEN) {
      // A call's block that never closed ends where the next one opens.
      if (this.mode === 'after') this.addContent(this.held);
      this.held = '';
      this.opening = tag;
      this.mode = 'block';
    } else if (this.mode === 'object') {
      this.objectEnded(false, tag);
      this.mode = 'text';
    } else {
      // What a call's block holds after its object (an extra brace) is no content.
      this.held = '';
      this.mode = 'text';
    }
  }

  private onChar(c: string): void {
    switch (this.mode) {
      case 'text':
      case 'content':
        this.addContent(c);
        return;
      case 'lead':
        if (c === '{') this.openObject('');
        else if (!SPACE.test(c)) {
          this.mode = 'content';
          this.addContent(c);
        }
        return;
      case 'block':
      case 'tagged':
        if (SPACE.test(c)) this.opening += c;
        else if (c === '{') this.openObject(this.opening);
        else if (this.mode === 'tagged') {
          this.mode = 'content';
          this.addContent(this.opening + c);
        } else {
          this.addContent(this.opening);
          this.mode = 'text';
          this.look = c + this.look;
        }
        return;
      case 'object':
        if (this.object!.take(c)) this.objectEnded(true);
        return;
      case 'after':
        if (this.format === 'hermes') this.held += c;
        else if (SPACE.test(c) || (c === ';' && !this.held.includes(';'))) this.held += c;
        else if (c === '{') this.openObject('');
        else {
          this.mode = 'content';
          this.addContent(this.held + c);
        }
    }
  }

  private openObject(opening: string): void {
    this.opening = opening;
    this.held = '';
    this.mode = 'object';
    this.object = new CallObject(
      (name) => this.startCall(name),
      (text) => {
        if (this.call) this.addArguments(text);
      },
    );
  }

  /**
   * The current object is over: it closed (`closed`), its block closed (`after` is the tag), or the reply
   * ended. A call that started ends; an object that closed without starting one is a call if it parses
   * as one (its name not first); anything else is content, as written.
   */
  private objectEnded(closed: boolean, after = ''): void {
    const object = this.object!;
    this.object = null;
    if (this.call) {
      // A complete call without arguments takes no arguments.
      if (closed && object.args === null) this.addArguments('{}');
    } else {
      const name = closed ? nameOf(object.raw) : null;
      if (name === null) {
        this.addContent(this.opening + object.raw + after);
        this.mode = this.format === 'hermes' ? 'text' : 'content';
        return;
      }
      this.startCall(name);
      this.addArguments(object.args ?? '{}');
    }
    const call = this.call!;
    this.events.push({ type: 'call_end', index: this.calls.indexOf(call), call, closed });
    this.call = null;
    this.mode = 'after';
  }

  private startCall(name: string): void {
    const call: ToolCall = { id: `call_${randomBytes(12).toString('hex')}`, type: 'function', function: { name, arguments: '' } };
    this.calls.push(call);
    this.call = call;
    this.events.push({ type: 'call', index: this.calls.length - 1, id: call.id, name });
  }

  private addArguments(text: string): void {
    const call = this.call!;
    call.function.arguments += text;
    const index = this.calls.length - 1;
    const last = this.events.at(-1);
    if (last?.type === 'arguments' && last.index === index) last.text += text;
    else this.events.push({ type: 'arguments', index, text });
  }

  /** Content as `trim()` would leave the whole of it: no leading whitespace, trailing whitespace only once more follows. */
  private addContent(text: string): void {
    let pending = this.space + text;
    if (this.content === '') pending = pending.trimStart();
    const out = pending.trimEnd();
    this.space = pending.slice(out.length);
    if (out === '') return;
    this.content += out;
    const last = this.events.at(-1);
    if (last?.type === 'content') last.text += out;
    else this.events.push({ type: 'content', text: out });
  }
}
