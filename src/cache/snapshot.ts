/**
 * The session snapshot file format. One file per session:
 *
 *   magic "WARMKVSN" | u32 format version | u32 header bytes | header (JSON, utf-8)
 *   | transcript (int32 per token) | sha256 of everything so far (32 bytes)
 *   | payload (KV, `payloadBytes`) | sha256 of the payload (32 bytes)
 *
 * The header and transcript carry their own checksum, so a damaged or truncated payload still leaves
 * the transcript usable (the session is then recomputed). All numbers are little-endian.
 */
import { createHash } from 'node:crypto';
import type { KvData, KvDtype, KvLayout, KvTensors } from '../model/types.ts';
import type { Int8Kv, KeyScaleMode } from './int8.ts';
import type { Session, WindowState } from './session.ts';

export const SNAPSHOT_MAGIC = Buffer.from('WARMKVSN', 'ascii');
export const SNAPSHOT_VERSION = 1;
const PREAMBLE_BYTES = 16;
const DIGEST_BYTES = 32;

export interface SnapshotHeader {
  modelFingerprint: string;
  tokenizerFingerprint: string;
  layout: { numLayers: number; numKvHeads: number; headDim: number; dtype: KvDtype };
  /** What the payload holds: native KV, int8 KV, or nothing (transcript only). */
  payloadKind: 'native' | 'int8' | 'none';
  keyMode?: KeyScaleMode;
  owner: string;
  sessionId: string;
  createdAt: number;
  lastUsedAt: number;
  requests: number;
  /** The session's version (committed turns) when the file was written; absent in older files (0). */
  sessionVersion?: number;
  cachedLength: number;
  window: WindowState;
  tokenCount: number;
  payloadBytes: number;
}

export class SnapshotFormatError extends Error {
  override name = 'SnapshotFormatError';
}

function digest(...parts: Uint8Array[]): Buffer {
  const hash = createHash('sha256');
  for (const part of parts) hash.update(part);
  return hash.digest();
}

function bytesOf(array: ArrayBufferView): Uint8Array {
  return new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
}

/** Payload arrays in file order. */
function payloadArrays(kv: KvTensors | null, int8: Int8Kv | null): ArrayBufferView[] {
  if (int8) return int8.layers.flatMap((l) => [l.key, l.keyScales, l.value, l.valueScales]);
  if (kv) return kv.layers.flatMap((l) => [l.key, l.value]);
  return [];
}

/** A snapshot file in two parts: the head (preamble, header, transcript and their digest), and the payload arrays, whose digest follows them. */
export interface SnapshotParts {
  head: Buffer[];
  payload: Uint8Array[];
}

/** The parts of a snapshot without copying the KV: the payload arrays view the tensors themselves. */
export function snapshotParts(header: Omit<SnapshotHeader, 'payloadBytes' | 'tokenCount'>, tokens: readonly number[], kv: KvTensors | null, int8: Int8Kv | null): SnapshotParts {
  const payload = payloadArrays(kv, int8).map(bytesOf);
  const payloadBytes = payload.reduce((sum, a) => sum + a.byteLength, 0);
  const full: SnapshotHeader = { ...header, tokenCount: tokens.length, payloadBytes };
  const headerBytes = Buffer.from(JSON.stringify(full), 'utf8');
  const preamble = Buffer.alloc(PREAMBLE_BYTES);
  SNAPSHOT_MAGIC.copy(preamble, 0);
  preamble.writeUInt32LE(SNAPSHOT_VERSION, 8);
  preamble.writeUInt32LE(headerBytes.length, 12);
  const transcript = Buffer.from(Int32Array.from(tokens).buffer);
  return { head: [preamble, headerBytes, transcript, digest(preamble, headerBytes, transcript)], payload };
}

export function encodeSnapshot(header: Omit<SnapshotHeader, 'payloadBytes' | 'tokenCount'>, tokens: readonly number[], kv: KvTensors | null, int8: Int8Kv | null): Buffer[] {
  const { head, payload } = snapshotParts(header, tokens, kv, int8);
  return [...head, ...payload.map((a) => Buffer.from(a.buffer, a.byteOffset, a.byteLength)), digest(...payload)];
}

export interface DecodedHead {
  header: SnapshotHeader;
  tokens: number[];
  /** Offset of the payload in the file. */
  payloadOffset: number;
}

/** Parses and verifies the header and transcript; `data` may be just the start of the file. */
export function decodeSnapshotHead(data: Buffer): DecodedHead {
  if (data.length < PREAMBLE_BYTES || !data.subarray(0, 8).equals(SNAPSHOT_MAGIC)) throw new SnapshotFormatError('not a warmkv snapshot');
  const version = data.readUInt32LE(8);
  if (version !== SNAPSHOT_VERSION) throw new SnapshotFormatError(`snapshot format version ${version}, this server reads ${SNAPSHOT_VERSION}`);
  const headerLength = data.readUInt32LE(12);
  const headerEnd = PREAMBLE_BYTES + headerLength;
  if (data.length < headerEnd) throw new SnapshotFormatError('truncated header');
  let header: SnapshotHeader;
  try {
    header = JSON.parse(data.subarray(PREAMBLE_BYTES, headerEnd).toString('utf8')) as SnapshotHeader;
  } catch {
    throw new SnapshotFormatError('unreadable header');
  }
  if (!Number.isInteger(header.tokenCount) || header.tokenCount < 0 || !Number.isInteger(header.payloadBytes) || header.payloadBytes < 0) {
    throw new SnapshotFormatError('bad header fields');
  }
  const tokensEnd = headerEnd + 4 * header.tokenCount;
  if (data.length < tokensEnd + DIGEST_BYTES) throw new SnapshotFormatError('truncated transcript');
  const expected = digest(data.subarray(0, tokensEnd));
  if (!expected.equals(data.subarray(tokensEnd, tokensEnd + DIGEST_BYTES))) throw new SnapshotFormatError('header checksum mismatch');
  const transcript = data.subarray(headerEnd, tokensEnd);
  const tokens = Array.from(new Int32Array(transcript.buffer.slice(transcript.byteOffset, transcript.byteOffset + transcript.byteLength)));
  return { header, tokens, payloadOffset: tokensEnd + DIGEST_BYTES };
}

/** Bytes needed from the file start to decode the head, given its first 16 bytes; null if not a snapshot. */
export function headLengthHint(preamble: Buffer): number | null {
  if (preamble.length < PREAMBLE_BYTES || !preamble.subarray(0, 8).equals(SNAPSHOT_MAGIC)) return null;
  return PREAMBLE_BYTES + preamble.readUInt32LE(12);
}

/** Reads the KV payload of a whole snapshot file, verifying its checksum and layout. */
export function decodeSnapshotPayload(data: Buffer, head: DecodedHead, layout: KvLayout): { kv: KvTensors | null; int8: Int8Kv | null } {
  const { header } = head;
  const end = head.payloadOffset + header.payloadBytes;
  if (data.length < end + DIGEST_BYTES) throw new SnapshotFormatError('truncated payload');
  const payload = data.subarray(head.payloadOffset, end);
  if (!digest(payload).equals(data.subarray(end, end + DIGEST_BYTES))) throw new SnapshotFormatError('payload checksum mismatch');
  const l = header.layout;
  if (l.numLayers !== layout.numLayers || l.numKvHeads !== layout.numKvHeads || l.headDim !== layout.headDim || l.dtype !== layout.dtype) {
    throw new SnapshotFormatError(`KV layout ${JSON.stringify(l)} differs from the model's`);
  }
  if (header.payloadKind === 'none') return { kv: null, int8: null };
  // Copy into a fresh, aligned buffer so typed arrays can view it.
  const copy = new Uint8Array(payload.byteLength);
  copy.set(payload);
  let offset = 0;
  const take = <T>(make: (buffer: ArrayBuffer, offset: number, length: number) => T, elements: number, bytesPerElement: number): T => {
    const bytes = elements * bytesPerElement;
    if (offset + bytes > copy.byteLength) throw new SnapshotFormatError('payload shorter than its layout');
    // Typed arrays need aligned offsets; an odd layout (odd head size) gets its own copy.
    const view = offset % bytesPerElement === 0 ? make(copy.buffer, offset, elements) : make(copy.slice(offset, offset + bytes).buffer, 0, elements);
    offset += bytes;
    return view;
  };
  const length = header.cachedLength;
  const elements = l.numKvHeads * length * l.headDim;
  if (header.payloadKind === 'native') {
    const bytesPerElement = l.dtype === 'float16' ? 2 : 4;
    const make = (b: ArrayBuffer, o: number, n: number): KvData => (l.dtype === 'float16' ? new Uint16Array(b, o, n) : new Float32Array(b, o, n));
    const layers = [];
    for (let i = 0; i < l.numLayers; i++) layers.push({ key: take(make, elements, bytesPerElement), value: take(make, elements, bytesPerElement) });
    if (offset !== copy.byteLength) throw new SnapshotFormatError('payload longer than its layout');
    return { kv: { batchSize: 1, length, layers }, int8: null };
  }
  const keyMode = header.keyMode ?? 'channel';
  const keyScaleCount = keyMode === 'channel' ? l.numKvHeads * l.headDim : l.numKvHeads * length;
  const int8Layers = [];
  for (let i = 0; i < l.numLayers; i++) {
    int8Layers.push({
      key: take((b, o, n) => new Int8Array(b, o, n), elements, 1),
      keyScales: take((b, o, n) => new Uint16Array(b, o, n), keyScaleCount, 2),
      value: take((b, o, n) => new Int8Array(b, o, n), elements, 1),
      valueScales: take((b, o, n) => new Uint16Array(b, o, n), l.numKvHeads * length, 2),
    });
  }
  if (offset !== copy.byteLength) throw new SnapshotFormatError('payload longer than its layout');
  return { kv: null, int8: { length, keyMode, layers: int8Layers } };
}

/** A session's snapshot file as bytes: its KV in the tier it is in (native, int8) or only its transcript. */
export function encodeSession(session: Session, identity: SnapshotIdentity): Buffer {
  const { head, payload } = sessionSnapshotParts(session, identity);
  return Buffer.concat([...head, ...payload, digest(...payload)]);
}

export interface SnapshotIdentity {
  layout: KvLayout;
  modelFingerprint: string;
  tokenizerFingerprint: string;
}

/** The parts of a session's snapshot (see `snapshotParts`), for the background writer. */
export function sessionSnapshotParts(session: Session, identity: SnapshotIdentity): SnapshotParts {
  const { layout } = identity;
  // Read first: a held buffer becomes tight tensors here (and a lost one leaves the session evicted).
  const kv = session.tier === 'hot' ? session.kv : null;
  const kind = session.tier === 'hot' && kv ? 'native' : session.tier === 'int8' && session.int8 ? 'int8' : 'none';
  return snapshotParts(
    {
      modelFingerprint: identity.modelFingerprint,
      tokenizerFingerprint: identity.tokenizerFingerprint,
      layout: { numLayers: layout.numLayers, numKvHeads: layout.numKvHeads, headDim: layout.headDim, dtype: layout.dtype },
      payloadKind: kind,
      keyMode: session.int8?.keyMode,
      owner: session.owner,
      sessionId: session.id,
      createdAt: session.createdAt,
      lastUsedAt: session.lastUsedAt,
      requests: session.requests,
      sessionVersion: session.version,
      cachedLength: kind === 'none' ? 0 : session.cachedLength,
      window: session.window,
    },
    session.tokens,
    kind === 'native' ? kv : null,
    kind === 'int8' ? session.int8 : null,
  );
}
