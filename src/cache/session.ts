import type { KvTensors } from '../model/types.ts';
import type { Int8Kv } from './int8.ts';

/** Where a session's KV lives: ready to run, quantized in memory, in a snapshot file, or nowhere. */
export type Tier = 'hot' | 'int8' | 'disk' | 'evicted';

/**
 * How the cache maps onto the transcript once the sliding window has dropped tokens: the cache holds
 * transcript[0, sinkTokens) followed by transcript[sinkTokens + droppedTokens, droppedTokens + cachedLength).
 */
export interface WindowState {
  droppedTokens: number;
  /** Transcript index of the token processed right after the latest drop (0 if none). */
  lastDropAt: number;
  dropEvents: number;
}

export const NO_WINDOW: WindowState = Object.freeze({ droppedTokens: 0, lastDropAt: 0, dropEvents: 0 });

/**
 * A hot cache kept as the engine's one-row in-place buffer between turns (engine/inplace-kv.ts): the
 * next turn steps on it with no copy in, and finishing a turn needs no copy out (at 400 cached tokens
 * the two copies were a fifth of a warm turn's server time, and they grow with the session). Code that
 * needs the tight tensors reads `Session.kv`, which makes them once (one copy) and lets the buffer go.
 */
export interface HeldKv {
  /** Valid slots, from the start of the buffer. */
  readonly heldLength: number;
  /** Slots the buffer has room for, valid or not: what it takes of memory. */
  readonly capacity: number;
  /** The valid slots as tight tensors `// [1, numKvHeads, heldLength, headDim]` (a copy), or null when the buffers were lost; the buffer is spent. */
  toTight(): KvTensors | null;
  /** A copy of the first `length` valid slots `// [1, numKvHeads, length, headDim]`; the buffer stays as it is. */
  prefixCopy(length: number): KvTensors;
}

/** A conversation: the token transcript plus the KV of (a windowed prefix of) it. */
export class Session {
  /** Every token of the conversation so far: inputs and generated tokens. */
  tokens: number[] = [];
  /** Hot-tier KV as tight tensors (`kv`), or as a held buffer (`held`); at most one of them set. */
  private tight: KvTensors | null = null;
  private heldKv: HeldKv | null = null;
  /** Int8-tier KV; null in other tiers. */
  int8: Int8Kv | null = null;
  /** Tokens the cache holds, whatever its tier. */
  cachedLength = 0;
  tier: Tier = 'evicted';
  window: WindowState = { ...NO_WINDOW };
  /** Bytes this session holds in the KV budget. */
  reservedBytes = 0;
  /** A request is attached (queued or running): a second request gets "busy". */
  busy = false;
  /** The engine is computing with this session's cache: it cannot be demoted or evicted. */
  pinned = false;
  lastUsedAt: number;
  /** Requests served, for the session API. */
  requests = 0;
  /**
   * Turns committed so far: every request that changes the transcript (a finished or cancelled
   * generation, a prefill) adds one when it commits. Stored in every snapshot, so a file can be
   * compared with the state clients were answered from.
   */
  version = 0;
  /** The version of this session's snapshot file, or null when it has none. */
  snapshotVersion: number | null = null;
  /**
   * A demotion to disk is under way: the background writer is writing this session's snapshot. Until it
   * lands the session keeps its tier, its KV and its bytes in the budget (session-files.ts).
   */
  snapshotPending = false;
  /**
   * Its transcript was adopted from the shared store (another replica's turns) with no KV here: before
   * its next turn, admission looks for the longest shared prefix snapshot (prefix-snapshots.ts).
   */
  prefixLookup = false;

  constructor(
    readonly id: string,
    readonly owner: string,
    readonly createdAt: number,
    /** Not kept after its request: requests that name no session. */
    readonly ephemeral = false,
  ) {
    this.lastUsedAt = createdAt;
  }

  /**
   * Hot-tier KV, `// [1, numKvHeads, cachedLength, headDim]` per layer; null in other tiers. A held
   * buffer is turned into these tensors here, on first read.
   */
  get kv(): KvTensors | null {
    this.makeTight();
    return this.tight;
  }

  /** Turns a held buffer into tight tensors (one copy); a buffer that lost its bytes leaves the session evicted. */
  makeTight(): void {
    const held = this.heldKv;
    if (!held) return;
    this.heldKv = null;
    this.tight = held.toTight();
    if (!this.tight) this.toEvicted();
  }

  set kv(kv: KvTensors | null) {
    this.tight = kv;
    this.heldKv = null;
  }

  /** Whether a hot cache is here, tight or held, without making the tight tensors. */
  get hasKv(): boolean {
    return this.tight !== null || this.heldKv !== null;
  }

  /** The held buffer, if the hot cache is one (read only: `takeHeld` moves it). */
  get held(): HeldKv | null {
    return this.heldKv;
  }

  /** Moves the held buffer out (to the turn that steps on it); the session then holds no KV until it commits. */
  takeHeld(): HeldKv | null {
    const held = this.heldKv;
    this.heldKv = null;
    return held;
  }

  /*
   * Tier moves: each sets kv, int8, cachedLength and tier together, so a session never holds KV of two
   * tiers or a tier that disagrees with its tensors. Budget accounting stays with the caller (KvBudget).
   */

  /** Ready to run: `kv` holds `cachedLength` tokens. */
  toHot(kv: KvTensors, cachedLength: number): void {
    this.kv = kv;
    this.int8 = null;
    this.cachedLength = cachedLength;
    this.tier = 'hot';
  }

  /** Ready to run, the cache kept as the engine's buffer (`buffer.heldLength` valid slots). */
  toHotHeld(buffer: HeldKv): void {
    this.tight = null;
    this.heldKv = buffer;
    this.int8 = null;
    this.cachedLength = buffer.heldLength;
    this.tier = 'hot';
  }

  /** Quantized in memory; the length stays. */
  toInt8(int8: Int8Kv): void {
    this.kv = null;
    this.int8 = int8;
    this.tier = 'int8';
  }

  /** In a snapshot file holding `cachedLength` tokens; nothing in memory. */
  toDisk(cachedLength = this.cachedLength): void {
    this.kv = null;
    this.int8 = null;
    this.cachedLength = cachedLength;
    this.tier = 'disk';
  }

  /** No KV anywhere: the transcript is recomputed on demand. The window state stays (the caller decides). */
  toEvicted(): void {
    this.kv = null;
    this.int8 = null;
    this.cachedLength = 0;
    this.tier = 'evicted';
  }
}
