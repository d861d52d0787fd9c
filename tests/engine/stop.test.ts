import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { StopStringMatcher } from '../../src/engine/stop.ts';

interface Run {
  /** Text emitted by push() calls (and flush() when not stopped). */
  text: string;
  stopped: boolean;
  /** Index of the delta that stopped generation. */
  stoppedAt: number;
  /** What each push returned. */
  pieces: string[];
}

function run(stops: string[], deltas: string[]): Run {
  const matcher = new StopStringMatcher(stops);
  const pieces: string[] = [];
  for (let i = 0; i < deltas.length; i++) {
    const { text, stopped } = matcher.push(deltas[i]);
    pieces.push(text);
    if (stopped) return { text: pieces.join(''), stopped: true, stoppedAt: i, pieces };
  }
  const rest = matcher.flush();
  return { text: pieces.join('') + rest, stopped: false, stoppedAt: -1, pieces };
}

/** Splits `text` into pieces of the given sizes (cycled), in UTF-16 code units of whole code points. */
function split(text: string, sizes: number[]): string[] {
  const points = Array.from(text);
  const out: string[] = [];
  let i = 0;
  let k = 0;
  while (i < points.length) {
    const size = sizes[k++ % sizes.length];
    out.push(points.slice(i, i + size).join(''));
    i += size;
  }
  return out;
}

/** The expected result: text up to the earliest occurrence of any stop, or all of it. */
function reference(stops: string[], text: string): { text: string; stopped: boolean } {
  let at = -1;
  for (const stop of stops) {
    const i = text.indexOf(stop);
    if (i !== -1 && (at === -1 || i < at)) at = i;
  }
  return at === -1 ? { text, stopped: false } : { text: text.slice(0, at), stopped: true };
}

describe('StopStringMatcher', () => {
  test('no stop strings: every delta passes through at once', () => {
    const matcher = new StopStringMatcher([]);
    assert.deepEqual(matcher.push('Hello'), { text: 'Hello', stopped: false });
    assert.deepEqual(matcher.push(' wor'), { text: ' wor', stopped: false });
    assert.equal(matcher.flush(), '');
  });

  test('text that cannot start a stop string is emitted immediately', () => {
    const matcher = new StopStringMatcher(['STOP']);
    assert.deepEqual(matcher.push('hello '), { text: 'hello ', stopped: false });
    assert.deepEqual(matcher.push('world'), { text: 'world', stopped: false });
  });

  test('a stop equal to a whole delta', () => {
    const r = run(['\n\n'], ['Hi', '\n\n', 'more']);
    assert.equal(r.text, 'Hi');
    assert.equal(r.stopped, true);
    assert.equal(r.stoppedAt, 1);
  });

  test('a stop split across many one-character deltas is held back and never emitted', () => {
    const r = run(['END'], ['a', 'b', 'E', 'N', 'D', 'x']);
    assert.deepEqual(r.pieces, ['a', 'b', '', '', '']);
    assert.equal(r.text, 'ab');
    assert.equal(r.stoppedAt, 4);
  });

  test('a partial prefix is held, then released when the next delta rules the stop out', () => {
    const matcher = new StopStringMatcher(['</answer>']);
    assert.deepEqual(matcher.push('x </ans'), { text: 'x ', stopped: false });
    assert.deepEqual(matcher.push('wer'), { text: '', stopped: false });
    assert.deepEqual(matcher.push('!'), { text: '</answer!', stopped: false });
  });

  test('flush releases a held partial prefix at the end of generation', () => {
    const matcher = new StopStringMatcher(['###']);
    assert.deepEqual(matcher.push('done ##'), { text: 'done ', stopped: false });
    assert.equal(matcher.flush(), '##');
    assert.equal(matcher.flush(), '', 'flush empties the buffer');
  });

  test('the held suffix is the longest one that can still start a stop', () => {
    // "aab" ends with "ab" (a prefix of "abc") and "b" (not a prefix): hold "ab".
    const matcher = new StopStringMatcher(['abc']);
    assert.deepEqual(matcher.push('aab'), { text: 'a', stopped: false });
    assert.deepEqual(matcher.push('c'), { text: '', stopped: true });
    // Self-overlapping stop: "aaab" ... "aaaa" needs the last three held.
    const overlap = new StopStringMatcher(['aaab']);
    assert.deepEqual(overlap.push('aaaa'), { text: 'a', stopped: false });
    assert.deepEqual(overlap.push('b'), { text: '', stopped: true });
  });

  test('the earliest match wins among several stops in one delta', () => {
    assert.deepEqual(run(['world', 'lo'], ['hello world']), { text: 'hel', stopped: true, stoppedAt: 0, pieces: ['hel'] });
    assert.deepEqual(run(['lo', 'world'], ['hello world']).text, 'hel', 'list order does not matter');
    // Overlapping stops starting at the same place: the text before it is the same either way.
    assert.equal(run(['abcd', 'abc'], ['xxabcdyy']).text, 'xx');
  });

  test('overlapping stops across deltas: a stop completed inside a held prefix of a longer one', () => {
    // "abcd" is still possible after "xab", but "bc" completes first, in the second delta.
    const r = run(['abcd', 'bc'], ['xab', 'c', 'd']);
    assert.equal(r.text, 'xa');
    assert.equal(r.stoppedAt, 1);
  });

  test('nothing after a stop is emitted, even in the same delta', () => {
    const r = run(['<|end|>'], ['Answer: 42<|end|>and more text']);
    assert.equal(r.text, 'Answer: 42');
    assert.equal(r.stopped, true);
  });

  test('unicode stops and text: CJK, accents and emoji split by code point', () => {
    const text = 'Voilà 東京タワー 🎉🎉 fin. café au lait ☕ 終わり';
    for (const stops of [['終わり'], ['🎉🎉'], ['café'], ['タワー 🎉'], ['ø']]) {
      for (const sizes of [[1], [2, 1], [3], [5, 1, 2]]) {
        const r = run(stops, split(text, sizes));
        const want = reference(stops, text);
        assert.equal(r.text, want.text, `stops ${JSON.stringify(stops)}, sizes ${sizes}`);
        assert.equal(r.stopped, want.stopped);
      }
    }
  });

  test('an emoji stop split between its two UTF-16 halves across deltas', () => {
    const r = run(['😀'], ['ok \ud83d', '\ude00 never']);
    assert.equal(r.text, 'ok ');
    assert.equal(r.stopped, true);
  });

  test('property: any split of any text gives the same result as matching the whole text', () => {
    let state = 99;
    const rand = (n: number) => {
      state = (Math.imul(state, 1103515245) + 12345) >>> 0;
      return (state >>> 8) % n;
    };
    const alphabet = ['a', 'b', 'c', ' ', '\n', 'é', '語', '🙂'];
    for (let trial = 0; trial < 400; trial++) {
      const length = 5 + rand(40);
      let text = '';
      for (let i = 0; i < length; i++) text += alphabet[rand(alphabet.length)];
      const stopCount = rand(4);
      const stops: string[] = [];
      for (let s = 0; s < stopCount; s++) {
        let stop = '';
        const n = 1 + rand(4);
        for (let i = 0; i < n; i++) stop += alphabet[rand(4)];
        stops.push(stop);
      }
      const sizes = Array.from({ length: 3 }, () => 1 + rand(4));
      const deltas = split(text, sizes);
      const r = run(stops, deltas);
      // Where the earliest stop starts before the delta that completes some other stop, the stream
      // stops at that other one: compare with the reference on the text seen so far.
      const seen = r.stopped ? deltas.slice(0, r.stoppedAt + 1).join('') : text;
      const want = reference(stops, seen);
      assert.equal(r.text, want.text, `trial ${trial}: ${JSON.stringify({ stops, deltas })}`);
      assert.equal(r.stopped, want.stopped, `trial ${trial}`);
      if (r.stopped) {
        // It stopped at the first delta where a stop was complete.
        const before = deltas.slice(0, r.stoppedAt).join('');
        assert.equal(reference(stops, before).stopped, false, `trial ${trial}: a stop was complete earlier`);
      }
    }
  });
});
