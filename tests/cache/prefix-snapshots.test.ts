/**
 * Content-addressed prefix snapshots (prefix-snapshots.ts), on a real folder: the longest whole-block
 * prefix is found by name and verified token by token, files are never rewritten, a file gone or
 * colliding only costs speed, and garbage collection keeps the folder under its size cap.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readdirSync, statSync, unlinkSync, utimesSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { PREFIX_BLOCK_TOKENS, PrefixSnapshots } from '../../src/cache/prefix-snapshots.ts';
import { silentLogger } from '../../src/lib/logger.ts';
import { collect, makeEngine, randomTokens, request } from '../support/fixtures.ts';

async function setup(options: { maxBytes?: number; ttlMs?: number } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'warmkv-prefix-'));
  const fixture = await makeEngine({});
  const { folder } = fixture.model;
  const prefixes = new PrefixSnapshots({
    dir,
    layout: fixture.model.decoder.io.kv,
    modelFingerprint: folder.modelFingerprint,
    tokenizerFingerprint: folder.tokenizerFingerprint,
    logger: silentLogger,
    ttlMs: options.ttlMs ?? 0,
    maxBytes: options.maxBytes ?? 0,
  });
  await prefixes.init();
  /** A session's transcript and cache after one turn of `length` prompt tokens. */
  const cacheOf = async (id: string, length: number, seed: number) => {
    await collect(fixture.engine.submit(request(randomTokens(length, seed), { sessionId: id, maxTokens: 1 })));
    const session = fixture.store.get('', id)!;
    return { tokens: session.tokens.slice(), kv: session.kv! };
  };
  return { dir, prefixes, cacheOf, ...fixture };
}

describe('prefix snapshots', () => {
  test('the longest whole-block prefix is written once and loaded by any transcript that starts with it', async () => {
    const { dir, prefixes, cacheOf } = await setup();
    const { tokens, kv } = await cacheOf('a', 150, 1);
    await prefixes.save({ tokens, kv });
    await prefixes.writer.flush();
    const names = readdirSync(dir);
    assert.equal(names.length, 1);
    const mtime = statSync(join(dir, names[0])).mtimeMs;
    await prefixes.save({ tokens, kv });
    await prefixes.writer.flush();
    assert.deepEqual(readdirSync(dir), names, 'the same prefix is not written again');
    assert.equal(prefixes.writer.counters.written, 1);
    assert.ok(statSync(join(dir, names[0])).mtimeMs >= mtime);

    const longer = [...tokens, ...randomTokens(90, 2)];
    const loaded = await prefixes.loadLongest(longer);
    assert.equal(loaded?.length, 2 * PREFIX_BLOCK_TOKENS);
    for (let l = 0; l < kv.layers.length; l++) {
      const rows = kv.layers[l].key.length / kv.length;
      assert.equal(loaded!.layers[l].key.length, rows * loaded!.length);
    }
    assert.equal(await prefixes.loadLongest(tokens.slice(0, 100)), null, 'a transcript shorter than the prefix finds nothing');
    const other = [...tokens];
    other[3] = (other[3] + 1) % 500;
    assert.equal(await prefixes.loadLongest(other), null, 'another transcript finds nothing');
  });

  test('a file whose tokens differ (a collision) or that is gone sends the lookup to a shorter prefix or to recompute', async () => {
    const { dir, prefixes, cacheOf } = await setup();
    const a = await cacheOf('a', 140, 3);
    await prefixes.save({ tokens: a.tokens.slice(0, PREFIX_BLOCK_TOKENS), kv: a.kv });
    await prefixes.save({ tokens: a.tokens, kv: a.kv });
    const b = await cacheOf('b', 140, 4);
    await prefixes.save({ tokens: b.tokens, kv: b.kv });
    await prefixes.writer.flush();
    // b's two-block file put under the name of a's two-block prefix: same name, other tokens.
    const [aHashes, bHashes] = [prefixes.blockHashes(a.tokens, 2), prefixes.blockHashes(b.tokens, 2)];
    copyFileSync(prefixes.pathOf(bHashes[1]), prefixes.pathOf(aHashes[1]));
    assert.equal((await prefixes.loadLongest(a.tokens))?.length, PREFIX_BLOCK_TOKENS, 'verified tokens: the colliding file is skipped');
    unlinkSync(prefixes.pathOf(aHashes[0]));
    assert.equal(await prefixes.loadLongest(a.tokens), null);
    assert.ok(readdirSync(dir).length >= 1);
  });

  test('garbage collection keeps the folder under its size cap, least recently used first, and expires unused files', async () => {
    const probe = await setup();
    const one = await probe.cacheOf('p', 70, 9);
    await probe.prefixes.save({ tokens: one.tokens, kv: one.kv });
    await probe.prefixes.writer.flush();
    const fileBytes = statSync(join(probe.dir, readdirSync(probe.dir)[0])).size;

    const { dir, prefixes, cacheOf } = await setup({ maxBytes: Math.floor(2.5 * fileBytes) });
    const paths: string[] = [];
    for (let i = 0; i < 4; i++) {
      const { tokens, kv } = await cacheOf(`s${i}`, 70, 20 + i);
      await prefixes.save({ tokens, kv });
      await prefixes.writer.flush();
      const path = prefixes.pathOf(prefixes.blockHashes(tokens, 1)[0]);
      // Distinct last uses, oldest first (the file's mtime is its last use).
      utimesSync(path, 1000 + i, 1000 + i);
      paths.push(path);
    }
    await prefixes.collect();
    assert.deepEqual(readdirSync(dir).sort(), paths.slice(2).map((p) => p.split('/').at(-1)!).sort());
    const total = readdirSync(dir).reduce((sum, name) => sum + statSync(join(dir, name)).size, 0);
    assert.ok(total <= 2.5 * fileBytes);

    const expiring = await setup({ ttlMs: 60_000 });
    const { tokens, kv } = await expiring.cacheOf('old', 70, 30);
    await expiring.prefixes.save({ tokens, kv });
    await expiring.prefixes.writer.flush();
    const [name] = readdirSync(expiring.dir);
    utimesSync(join(expiring.dir, name), 1, 1);
    assert.equal(await expiring.prefixes.collect(), 1);
    assert.deepEqual(readdirSync(expiring.dir), []);
  });
});
