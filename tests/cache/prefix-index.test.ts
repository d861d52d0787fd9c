/** The stateless-reuse index: prefix hashes at block boundaries to the session of the same owner holding them. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { PREFIX_BLOCK, PrefixIndex, hashBlocks } from '../../src/cache/prefix-index.ts';

const tokens = (n: number, offset = 0) => Array.from({ length: n }, (_, i) => (i * 7 + offset) % 1000);

describe('PrefixIndex', () => {
  test('finds the sessions whose whole blocks a prompt starts with, longest prefix first, one owner only', () => {
    const index = new PrefixIndex(1000);
    const long = tokens(3 * PREFIX_BLOCK + 10);
    index.add('a', 'long', long);
    index.add('a', 'short', long.slice(0, PREFIX_BLOCK + 5));
    const prompt = [...long.slice(0, 3 * PREFIX_BLOCK), 1, 2, 3];
    assert.deepEqual(index.candidates('a', prompt), ['long', 'short']);
    assert.deepEqual(index.candidates('a', long.slice(0, PREFIX_BLOCK)), ['short'], 'the newest session with a prefix wins it');
    assert.deepEqual(index.candidates('b', prompt), [], 'another owner finds nothing');
    assert.deepEqual(index.candidates('a', tokens(3 * PREFIX_BLOCK, 1)), [], 'another prompt finds nothing');
    assert.deepEqual(index.candidates('a', long.slice(0, PREFIX_BLOCK - 1)), [], 'less than a block is not indexed');
  });

  test('a growing transcript hashes only its new blocks; a rewritten one is indexed afresh; forget drops it', () => {
    const index = new PrefixIndex(1000);
    const first = tokens(2 * PREFIX_BLOCK);
    index.add('a', 's', first);
    assert.equal(index.size, 2);
    index.add('a', 's', [...first, ...tokens(PREFIX_BLOCK, 3)]);
    assert.equal(index.size, 3);
    const rewritten = [9, ...first.slice(1)];
    index.add('a', 's', rewritten);
    assert.equal(index.size, 2, 'the old prefixes went with the old transcript');
    assert.deepEqual(index.candidates('a', first), []);
    assert.deepEqual(index.candidates('a', rewritten), ['s']);
    index.forget('a', 's');
    assert.equal(index.size, 0);
    assert.deepEqual(index.candidates('a', rewritten), []);
  });

  test('block hashes computed once serve candidates and add alike, on a fresh and on a growing transcript', () => {
    const withHashes = new PrefixIndex(1000);
    const plain = new PrefixIndex(1000);
    const first = tokens(2 * PREFIX_BLOCK + 3);
    const grown = [...first.slice(0, 2 * PREFIX_BLOCK), ...tokens(2 * PREFIX_BLOCK, 5)];
    for (const transcript of [first, grown]) {
      const hashes = hashBlocks(transcript);
      assert.equal(hashes.length, Math.floor(transcript.length / PREFIX_BLOCK));
      assert.deepEqual(withHashes.candidatesOf('a', hashes), withHashes.candidates('a', transcript));
      withHashes.add('a', 's', transcript, hashes);
      plain.add('a', 's', transcript);
    }
    assert.equal(withHashes.size, plain.size);
    for (let blocks = 1; blocks <= 4; blocks++) {
      const prompt = [...grown.slice(0, blocks * PREFIX_BLOCK), 1];
      assert.deepEqual(withHashes.candidates('a', prompt), plain.candidates('a', prompt));
      assert.deepEqual(withHashes.candidates('a', prompt), ['s']);
    }
    assert.notDeepEqual(hashBlocks(tokens(PREFIX_BLOCK, 1)), hashBlocks(tokens(PREFIX_BLOCK, 2)));
  });

  test('is bounded: the oldest entries go first, and a later block still finds its session', () => {
    const index = new PrefixIndex(3);
    const long = tokens(4 * PREFIX_BLOCK);
    index.add('a', 's', long);
    assert.equal(index.size, 3);
    assert.deepEqual(index.candidates('a', long.slice(0, PREFIX_BLOCK)), [], 'the first block was dropped');
    assert.deepEqual(index.candidates('a', long), ['s']);
  });
});
