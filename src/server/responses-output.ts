/**
 * A response's output items as its reply streams, in OpenAI's events: the message, and with tools a
 * function_call item per call the reader (tool-stream.ts) finds. Each item's `output_index` is the order
 * it opened in; the record keeps where the message sits among the calls, so the response object lists
 * the items in that same order (responses-items.ts outputItems).
 */
import { newResponseId, type StoredResponse, type StoredToolCall } from '../responses/store.ts';
import type { ToolCallFormat } from '../model/chat-template.ts';
import type { EventLog } from '../streams/registry.ts';
import { functionCallItem, messageItem, outputText } from './responses-items.ts';
import { ToolCallReader, type ToolStreamEvent } from './tool-stream.ts';

/** Writes a response's events into a stream log with OpenAI's `sequence_number` (= the log's event id). */
export class ResponseEvents {
  constructor(private readonly log: EventLog | null) {}

  emit(type: string, fields: Record<string, unknown>): void {
    if (!this.log) return;
    this.log.sendNamed(type, { type, sequence_number: this.log.nextSeq, ...fields });
  }
}

export class ResponseOutput {
  private readonly reader: ToolCallReader | null;
  /** The output_index of the next item to open. */
  private next = 0;
  private messageIndex: number | null = null;
  private readonly calls: Array<StoredToolCall & { outputIndex: number }> = [];
  /** After the reply's end: what it released, sent only if the response completes (`close`). */
  private held: Array<[string, Record<string, unknown>]> | null = null;

  constructor(
    private readonly record: StoredResponse,
    private readonly out: ResponseEvents,
    format: ToolCallFormat | undefined,
  ) {
    this.reader = format ? new ToolCallReader(format) : null;
    // Without tools the reply is the message: it opens at once. With them it opens at its first text.
    if (!this.reader) this.openMessage();
  }

  /** A piece of the reply. */
  add(text: string): void {
    if (text === '') return;
    if (this.reader) for (const event of this.reader.push(text)) this.read(event);
    else this.read({ type: 'content', text });
  }

  /** The reply has ended: the record takes its text and calls (the events of what was held back wait for `close`). */
  finish(): void {
    this.held = [];
    if (this.reader) for (const event of this.reader.finish().events) this.read(event);
    if (this.calls.length === 0) return;
    this.record.toolCalls = this.calls.map(({ outputIndex: _index, ...call }) => call);
    if (this.messageIndex !== null) this.record.messageIndex = this.messageIndex;
  }

  /** The response completed (or stopped at its token limit): the last events, then the message's done events. */
  close(): void {
    for (const [type, fields] of this.held ?? []) this.out.emit(type, fields);
    this.held = null;
    // A reply with neither text nor calls is an empty message.
    if (this.messageIndex === null && this.calls.length === 0) this.openMessage();
    if (this.messageIndex === null) return;
    const at = this.messageAt();
    const text = this.record.outputText;
    this.out.emit('response.output_text.done', { ...at, text, logprobs: [] });
    this.out.emit('response.content_part.done', { ...at, part: outputText(text) });
    this.out.emit('response.output_item.done', { output_index: this.messageIndex, item: messageItem(this.record) });
  }

  private emit(type: string, fields: Record<string, unknown>): void {
    if (this.held) this.held.push([type, fields]);
    else this.out.emit(type, fields);
  }

  private messageAt() {
    return { item_id: this.record.outputItemId, output_index: this.messageIndex!, content_index: 0 };
  }

  private openMessage(): void {
    this.messageIndex = this.next++;
    this.emit('response.output_item.added', { output_index: this.messageIndex, item: { id: this.record.outputItemId, type: 'message', status: 'in_progress', content: [], role: 'assistant' } });
    this.emit('response.content_part.added', { ...this.messageAt(), part: outputText('') });
  }

  private read(event: ToolStreamEvent): void {
    if (event.type === 'content') {
      if (this.messageIndex === null) this.openMessage();
      this.record.outputText += event.text;
      this.emit('response.output_text.delta', { ...this.messageAt(), delta: event.text, logprobs: [] });
      return;
    }
    if (event.type === 'call') {
      const call = { id: newResponseId('fc'), callId: event.id, name: event.name, arguments: '', outputIndex: this.next++ };
      this.calls.push(call);
      this.emit('response.output_item.added', { output_index: call.outputIndex, item: functionCallItem(call, 'in_progress') });
      return;
    }
    const call = this.calls[event.index];
    const at = { item_id: call.id, output_index: call.outputIndex };
    if (event.type === 'arguments') {
      call.arguments += event.text;
      this.emit('response.function_call_arguments.delta', { ...at, delta: event.text });
      return;
    }
    if (!event.closed) call.incomplete = true;
    this.emit('response.function_call_arguments.done', { ...at, name: call.name, arguments: call.arguments });
    this.emit('response.output_item.done', { output_index: call.outputIndex, item: functionCallItem(call, 'ended') });
  }
}
