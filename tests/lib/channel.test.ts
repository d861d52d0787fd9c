import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Channel } from '../../src/lib/channel.ts';

async function drain<T>(channel: Channel<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of channel) out.push(item);
  return out;
}

/** Whether a promise has settled after the microtask queue ran. */
async function settled(promise: Promise<unknown>): Promise<boolean> {
  let done = false;
  void promise.then(() => (done = true));
  await new Promise((resolve) => setImmediate(resolve));
  return done;
}

describe('Channel', () => {
  test('items pushed before reading come out in order', async () => {
    const channel = new Channel<number>();
    for (let i = 0; i < 100; i++) channel.push(i);
    channel.close();
    assert.deepEqual(await drain(channel), Array.from({ length: 100 }, (_, i) => i));
  });

  test('a waiting reader gets items pushed later, in order, and ends on close', async () => {
    const channel = new Channel<string>();
    const reading = drain(channel);
    channel.push('a');
    await Promise.resolve();
    channel.push('b');
    channel.push('c');
    await new Promise((resolve) => setImmediate(resolve));
    channel.push('d');
    channel.close();
    assert.deepEqual(await reading, ['a', 'b', 'c', 'd']);
  });

  test('next() blocks while empty and open, and is released by push', async () => {
    const channel = new Channel<number>();
    const pending = channel.next();
    assert.equal(await settled(pending), false);
    channel.push(7);
    assert.deepEqual(await pending, { value: 7, done: false });
  });

  test('close() releases a waiting reader with done', async () => {
    const channel = new Channel<number>();
    const pending = channel.next();
    assert.equal(await settled(pending), false);
    channel.close();
    assert.deepEqual(await pending, { value: undefined, done: true });
  });

  test('close() keeps queued items: they are read before done', async () => {
    const channel = new Channel<number>();
    channel.push(1);
    channel.push(2);
    channel.close();
    assert.deepEqual(await channel.next(), { value: 1, done: false });
    assert.deepEqual(await channel.next(), { value: 2, done: false });
    assert.deepEqual(await channel.next(), { value: undefined, done: true });
    // Done stays done.
    assert.deepEqual(await channel.next(), { value: undefined, done: true });
  });

  test('push after close is ignored, including for a reader that is already waiting', async () => {
    const channel = new Channel<number>();
    channel.push(1);
    channel.close();
    channel.push(2);
    assert.deepEqual(await drain(channel), [1]);
    channel.push(3);
    assert.deepEqual(await channel.next(), { value: undefined, done: true });

    const other = new Channel<number>();
    const pending = other.next();
    other.close();
    other.push(4);
    assert.deepEqual(await pending, { value: undefined, done: true });
  });

  test('iterating a closed channel twice: the second pass is empty', async () => {
    const channel = new Channel<number>();
    channel.push(1);
    channel.close();
    assert.deepEqual(await drain(channel), [1]);
    assert.deepEqual(await drain(channel), []);
  });

  test('closing twice is harmless', async () => {
    const channel = new Channel<number>();
    channel.push(5);
    channel.close();
    channel.close();
    assert.deepEqual(await drain(channel), [5]);
  });

  test('falsy values (0, empty string, null, undefined) are delivered as items, not as the end', async () => {
    const channel = new Channel<unknown>();
    const reading = drain(channel);
    for (const v of [0, '', null, undefined, false]) channel.push(v);
    channel.close();
    assert.deepEqual(await reading, [0, '', null, undefined, false]);
  });
});
