/**
 * A response's output items as its reply streams (src/server/responses-output.ts): the message opens at
 * its first text, each call when its name is known, and the response object lists the items in the
 * order their output_index says, with the text and arguments the events carried.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { StoredResponse } from '../../src/responses/store.ts';
import type { EventLog } from '../../src/streams/registry.ts';
import { outputItems } from '../../src/server/responses-items.ts';
import { ResponseEvents, ResponseOutput } from '../../src/server/responses-output.ts';

type Event = Record<string, any> & { type: string };

function recordOf(): StoredResponse {
  return { id: 'resp_1', outputItemId: 'msg_1', outputText: '', status: 'in_progress' } as StoredResponse;
}

/** Streams `pieces` as a reply in the Hermes format and closes it as a completed response. */
function streamed(pieces: readonly string[]): { record: StoredResponse; events: Event[] } {
  const events: Event[] = [];
  const log = {
    get nextSeq() {
      return events.length;
    },
    sendNamed: (_name: string, data: Event) => events.push(data),
  } as unknown as EventLog;
  const record = recordOf();
  const output = new ResponseOutput(record, new ResponseEvents(log), 'hermes');
  for (const piece of pieces) output.add(piece);
  output.finish();
  record.status = 'completed';
  output.close();
  return { record, events };
}

const CALL = '<tool_call>\n{"name": "search", "arguments": {"query": "cats"}}\n</tool_call>';

/** What a client assembles per output_index from the events: item type, and its text or name and arguments. */
function assembled(events: readonly Event[]) {
  const items: Array<{ type: string; text: string; name?: string; done: boolean }> = [];
  for (const e of events) {
    if (e.type === 'response.output_item.added') {
      assert.equal(e.output_index, items.length, 'items open in output_index order');
      items.push({ type: e.item.type, text: '', ...(e.item.type === 'function_call' ? { name: e.item.name } : {}), done: false });
    } else if (e.type === 'response.output_text.delta' || e.type === 'response.function_call_arguments.delta') {
      assert.equal(items[e.output_index].done, false);
      items[e.output_index].text += e.delta;
    } else if (e.type === 'response.output_item.done') {
      const item = items[e.output_index];
      item.done = true;
      assert.equal(e.item.type === 'message' ? e.item.content[0].text : e.item.arguments, item.text);
    } else if (e.type === 'response.function_call_arguments.done') assert.equal(e.arguments, items[e.output_index].text);
  }
  assert.ok(items.every((item) => item.done));
  return items.map(({ done: _done, ...item }) => item);
}

/** The response object's output in the same terms. */
const listed = (record: StoredResponse) =>
  outputItems(record).map((item) => ({ type: item.type as string, text: item.type === 'message' ? (item.content as Array<{ text: string }>)[0].text : (item.arguments as string), ...(item.type === 'function_call' ? { name: item.name } : {}) }));

test('text, then a call, then more text: the message first, the call second, in the events and the response alike', () => {
  const { record, events } = streamed(['Let me ', 'look.\n', CALL.slice(0, 30), CALL.slice(30), '\nDone.']);
  const items = assembled(events);
  assert.deepEqual(items, [
    { type: 'message', text: 'Let me look.\n\nDone.' },
    { type: 'function_call', name: 'search', text: '{"query": "cats"}' },
  ]);
  assert.deepEqual(listed(record), items);
  // The call finishes while the message is still open: its done events come at the end.
  const done = events.filter((e) => e.type === 'response.output_item.done').map((e) => e.output_index);
  assert.deepEqual(done, [1, 0]);
});

test('a call before any text: the call is item 0 and the message, opened at the first text after it, item 1', () => {
  const { record, events } = streamed([...CALL, ...'\nFound some.']);
  const items = assembled(events);
  assert.deepEqual(items, [
    { type: 'function_call', name: 'search', text: '{"query": "cats"}' },
    { type: 'message', text: 'Found some.' },
  ]);
  assert.equal(record.messageIndex, 1);
  assert.deepEqual(listed(record), items);
  const deltas = events.filter((e) => e.type === 'response.function_call_arguments.delta');
  assert.equal(deltas.length, '{"query": "cats"}'.length, 'a delta per character fed');
});

test('calls only: no message item; no text and no calls: one empty message', () => {
  const calls = streamed([CALL, CALL]);
  assert.deepEqual(assembled(calls.events).map((item) => item.type), ['function_call', 'function_call']);
  assert.deepEqual(listed(calls.record), assembled(calls.events));
  const empty = streamed([' \n']);
  assert.deepEqual(assembled(empty.events), [{ type: 'message', text: '' }]);
  assert.deepEqual(listed(empty.record), [{ type: 'message', text: '' }]);
});
