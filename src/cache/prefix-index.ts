/**
 * Which kept session a stateless prompt may continue: a bounded index from the hash of a token prefix
 * (whole blocks of BLOCK tokens, each block's hash chained to the one before) to the session of the
 * same owner whose transcript starts with it. A hit is only a hint: the caller copies the prefix with
 * forkPrefix, which compares the tokens themselves, so a stale entry or a hash collision costs a
 * shorter copy (or none), never a wrong cache.
 */

/** Tokens per block: prefixes are found at block boundaries (a partial last block is not indexed). */
export const PREFIX_BLOCK = 64;

interface Indexed {
  /** Whole blocks hashed so far, the chained hash after the last of them, and the tokens they hashed. */
  blocks: number;
  hash: Hash;
  tokens: readonly number[];
  /** Keys pointing at this session (to forget them with it). */
  keys: string[];
}

export class PrefixIndex {
  /** owner \0 blocks \0 chained hash -> session ids, newest last; in insertion order, oldest first (dropped first). */
  private readonly sessionsByPrefix = new Map<string, string[]>();
  private readonly indexed = new Map<string, Indexed>();

  /**
   * `holdersPerPrefix`: how many sessions one prefix remembers (the newest). One suffices where the
   * newest holder is the one to continue; more let branches that share a prefix not hide their source.
   */
  constructor(
    private readonly maxEntries: number,
    private readonly holdersPerPrefix = 1,
  ) {}

  get size(): number {
    return this.sessionsByPrefix.size;
  }

  /**
   * Indexes `tokens`, the transcript the session now holds. A session's later, longer transcript
   * continues from where the last one stopped (a chain grows), so each turn hashes only its new blocks;
   * when the hashed tokens changed (a turn rendered afresh), the session is indexed from the start.
   * `hashes`: the chained block hashes of `tokens` where the caller has them already (`hashBlocks`).
   */
  add(owner: string, sessionId: string, tokens: readonly number[], hashes: readonly Hash[] = []): void {
    const at = sessionKey(owner, sessionId);
    let entry = this.indexed.get(at);
    if (!entry || !startsWith(tokens, entry.tokens, entry.blocks * PREFIX_BLOCK)) {
      this.forget(owner, sessionId);
      entry = { blocks: 0, hash: [0, 0], keys: [], tokens };
      this.indexed.set(at, entry);
    }
    entry.tokens = tokens;
    for (let block = entry.blocks; (block + 1) * PREFIX_BLOCK <= tokens.length; block++) {
      entry.hash = hashes[block] ?? blockHash(entry.hash, tokens, block * PREFIX_BLOCK);
      entry.blocks = block + 1;
      const key = prefixKey(owner, entry.blocks, entry.hash);
      // The newest sessions with this prefix are kept: the likeliest to be hot.
      const holders = (this.sessionsByPrefix.get(key) ?? []).filter((id) => id !== sessionId);
      holders.push(sessionId);
      if (holders.length > this.holdersPerPrefix) holders.shift();
      this.sessionsByPrefix.delete(key);
      this.sessionsByPrefix.set(key, holders);
      entry.keys.push(key);
    }
    while (this.sessionsByPrefix.size > this.maxEntries) {
      const oldest = this.sessionsByPrefix.keys().next().value!;
      this.sessionsByPrefix.delete(oldest);
    }
  }

  /** Session ids of `owner` whose transcript may start with a prefix of `input`, the longest prefix (then the newest) first. */
  candidates(owner: string, input: readonly number[]): string[] {
    return this.candidatesOf(owner, hashBlocks(input));
  }

  /** `candidates` for a prompt whose block hashes (`hashBlocks`) are known: they can go on to `add`. */
  candidatesOf(owner: string, hashes: readonly Hash[]): string[] {
    const found: string[] = [];
    // No stop at the first unknown block: the bound may have dropped a session's early blocks only.
    for (const [block, hash] of hashes.entries()) found.push(...(this.sessionsByPrefix.get(prefixKey(owner, block + 1, hash)) ?? []));
    return [...new Set(found.reverse())];
  }

  /** Drops a session's entries (it was deleted). */
  forget(owner: string, sessionId: string): void {
    const at = sessionKey(owner, sessionId);
    const entry = this.indexed.get(at);
    if (!entry) return;
    this.indexed.delete(at);
    for (const key of entry.keys) {
      const holders = this.sessionsByPrefix.get(key)?.filter((id) => id !== sessionId);
      if (holders === undefined) continue;
      if (holders.length === 0) this.sessionsByPrefix.delete(key);
      else this.sessionsByPrefix.set(key, holders);
    }
  }
}

/** Two independent 32-bit hashes: 64 bits against collisions, without BigInt's cost per token. */
export type Hash = [number, number];

/** The chained hash after each whole block of `tokens`, first block first. */
export function hashBlocks(tokens: readonly number[]): Hash[] {
  const hashes: Hash[] = [];
  let hash: Hash = [0, 0];
  for (let block = 0; (block + 1) * PREFIX_BLOCK <= tokens.length; block++) hashes.push((hash = blockHash(hash, tokens, block * PREFIX_BLOCK)));
  return hashes;
}

/** FNV-1a and a multiply-rotate hash of one block of token ids, each seeded with the previous block's. */
function blockHash(previous: Hash, tokens: readonly number[], start: number): Hash {
  let a = previous[0] ^ 0x811c9dc5;
  let b = previous[1] ^ 0x9e3779b9;
  for (let i = start; i < start + PREFIX_BLOCK; i++) {
    const token = tokens[i];
    a = Math.imul(a ^ token, 0x01000193);
    b = Math.imul((b ^ token) + 0x7f4a7c15, 0x85ebca6b);
    b = (b << 13) | (b >>> 19);
  }
  return [a >>> 0, b >>> 0];
}

function startsWith(tokens: readonly number[], prefix: readonly number[], length: number): boolean {
  if (tokens.length < length || prefix.length < length) return false;
  for (let i = 0; i < length; i++) if (tokens[i] !== prefix[i]) return false;
  return true;
}

function prefixKey(owner: string, blocks: number, hash: Hash): string {
  return `${owner}\u0000${blocks}\u0000${hash[0].toString(36)}.${hash[1].toString(36)}`;
}

function sessionKey(owner: string, sessionId: string): string {
  return `${owner}\u0000${sessionId}`;
}
