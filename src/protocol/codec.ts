/**
 * Bytes <-> messages for the three wire formats (docs/PROTOCOL.md specifies each byte for byte):
 *   1. the 10-byte header in front of a PSWebHost chunk PUT body (`PsHeaderReader` reads it from any split);
 *   2. the native WebSocket protocol `updraft.v1`: one binary frame = uint16 LE header length H, H bytes of msgpack
 *      header, then the payload (`encodeFrame`, `decodeClientFrame`, `decodeServerFrame`);
 *   3. the PSWebHost WebSocket JSON control messages (`parsePsControl`, `encodePsControl`).
 *
 * Decoders take bytes from a peer and are strict: anything malformed throws `UploadError` (ERR_CHUNK_HEADER_INVALID,
 * or ERR_INVALID_JSON for unparsable JSON), and a decoded message is a fresh object holding only the known fields,
 * never the peer's object. Encoders take values from our own code; a value that cannot be encoded is a bug in the
 * caller and throws RangeError.
 *
 * Byte ownership: decoders return payloads as views into the input (no copy). A uWS message or onData buffer is
 * valid only during its callback, so the caller copies what it keeps before the callback returns (STYLE.md).
 *
 * Pure: msgpackr and our protocol modules only, no `node:*` (the browser client uses this file).
 */

import { Packr } from 'msgpackr';

import { UploadError } from './errors.js';
import type {
  AckMessage,
  ChecksumAlgorithm,
  ClientMessage,
  CompleteMessage,
  ErrorMessage,
  HelloMessage,
  ProgressMessage,
  PsClientControl,
  PsServerControl,
  ServerMessage,
  WindowMessage,
  WireChecksum,
} from './messages.js';
import { totalChunksFor } from './validate.js';

// --- PSWebHost PUT body header ------------------------------------------------------------------------------------

/** bytes 0-1 uint16 LE (ignored), 2-5 uint32 LE chunk number, 6-9 uint32 LE bytes remaining (informational). */
export const PS_HEADER_SIZE = 10;

const UINT32_MAX = 0xffffffff;

export interface PsHeader {
  chunkNumber: number;
  /** Bytes of the file after this chunk, as the client computed it; informational, never trusted. */
  bytesRemaining: number;
}

/**
 * The 10-byte header for a PUT body. Bytes 0-1 are 0: PSWebHost's client writes a random value there that no server
 * reads. `bytesRemaining` saturates at 2^32-1 because the field is 32 bits wide and files can be larger; it is only
 * informational, so a saturated value is better than a wrapped one.
 */
export function encodePsHeader(header: PsHeader): Uint8Array {
  const { chunkNumber, bytesRemaining } = header;
  if (!Number.isInteger(chunkNumber) || chunkNumber < 0 || chunkNumber > UINT32_MAX) {
    throw new RangeError(`chunkNumber ${chunkNumber} does not fit the header's uint32`);
  }
  if (!Number.isSafeInteger(bytesRemaining) || bytesRemaining < 0) {
    throw new RangeError(`bytesRemaining ${bytesRemaining} is not a non-negative safe integer`);
  }
  const out = new Uint8Array(PS_HEADER_SIZE);
  const view = new DataView(out.buffer);
  view.setUint32(2, chunkNumber, true);
  view.setUint32(6, Math.min(bytesRemaining, UINT32_MAX), true);
  return out;
}

/** Reads the header from the first 10 bytes of `bytes` (caller guarantees length >= 10). */
function readPsHeader(b: Uint8Array): PsHeader {
  // `>>> 0` keeps the top byte from making the result negative (`<< 24` is a signed 32-bit shift).
  return {
    chunkNumber: (b[2]! | (b[3]! << 8) | (b[4]! << 16) | (b[5]! << 24)) >>> 0,
    bytesRemaining: (b[6]! | (b[7]! << 8) | (b[8]! << 16) | (b[9]! << 24)) >>> 0,
  };
}

/** The header of a whole body that is already in memory; ERR_CHUNK_HEADER_INVALID when it is under 10 bytes. */
export function decodePsHeader(bytes: Uint8Array): PsHeader {
  if (bytes.length < PS_HEADER_SIZE) {
    throw new UploadError('ERR_CHUNK_HEADER_INVALID', `Body is ${bytes.length} bytes, shorter than the 10-byte chunk header`);
  }
  return readPsHeader(bytes);
}

export interface PsHeaderResult {
  header: PsHeader;
  /** The bytes after the header in the piece that completed it: a view of that piece, possibly empty. */
  rest: Uint8Array;
}

/**
 * Reads the 10-byte header from a body that arrives in pieces of any size (uWS onData pieces, 1 byte each in the
 * worst case). Pieces before the header completes are copied into 10 bytes of its own, because the caller's buffers
 * die with the callback; the piece that completes it is not copied and `rest` is a view into it. When the first
 * piece holds the whole header (the usual case) nothing is copied at all.
 */
export class PsHeaderReader {
  readonly #buf = new Uint8Array(PS_HEADER_SIZE);
  #have = 0;
  #done = false;

  /** True once `push` has returned the header. */
  get done(): boolean {
    return this.#done;
  }

  /** Header bytes received so far (0..10). */
  get received(): number {
    return this.#have;
  }

  /** Feeds the next piece; returns the header and the rest of that piece once 10 bytes have arrived, else null. */
  push(piece: Uint8Array): PsHeaderResult | null {
    if (this.#done) throw new Error('PsHeaderReader: the header is complete; later bytes belong to the chunk');
    const need = PS_HEADER_SIZE - this.#have;
    if (this.#have === 0 && piece.length >= PS_HEADER_SIZE) {
      this.#have = PS_HEADER_SIZE;
      this.#done = true;
      return { header: readPsHeader(piece), rest: piece.subarray(PS_HEADER_SIZE) };
    }
    if (piece.length < need) {
      this.#buf.set(piece, this.#have);
      this.#have += piece.length;
      return null;
    }
    this.#buf.set(piece.subarray(0, need), this.#have);
    this.#have = PS_HEADER_SIZE;
    this.#done = true;
    return { header: readPsHeader(this.#buf), rest: piece.subarray(need) };
  }

  /** Call when the body has ended: throws ERR_CHUNK_HEADER_INVALID if it ended inside the header. */
  end(): void {
    if (!this.#done) {
      throw new UploadError(
        'ERR_CHUNK_HEADER_INVALID',
        `Body ended after ${this.#have} bytes, inside the 10-byte chunk header`,
      );
    }
  }
}

// --- updraft.v1 framing -------------------------------------------------------------------------------------------

/** Bytes of the little-endian uint16 that opens every frame and gives the header length H. */
export const FRAME_LENGTH_SIZE = 2;
/** H is 1..MAX_FRAME_HEADER: small enough that a server can bound its per-frame parsing work. */
export const MAX_FRAME_HEADER = 4096;

/**
 * One instance for the whole process (msgpackr keeps its output buffer between calls).
 *   - useRecords false: plain msgpack maps that any msgpack library reads, not msgpackr's record extension;
 *   - variableMapSize: fixmap for small maps (msgpack's "preferred" form) instead of always map16;
 *   - int64AsType 'bigint': a 64-bit integer decodes exactly (a number would silently round past 2^53); the field
 *     readers below accept a bigint only when it is a safe integer.
 * Peer headers reach it only after `checkPlainMsgpack`, which refuses msgpackr's record extension; decoding is not
 * `trusted` as well, so a record definition would be dropped after its message and never reach the next one.
 */
const packr = new Packr({ useRecords: false, variableMapSize: true, int64AsType: 'bigint' });

const EMPTY = new Uint8Array(0);

function invalid(message: string): never {
  throw new UploadError('ERR_CHUNK_HEADER_INVALID', `Invalid updraft.v1 frame: ${message}`);
}

// Encoders -----------------------------------------------------------------------------------------------------

function assertCount(value: number, name: string, min = 0): void {
  if (!Number.isSafeInteger(value) || value < min) {
    throw new RangeError(`${name} must be a safe integer >= ${min}, got ${value}`);
  }
}

/**
 * Integers above 2^32-1 go out as msgpack int64 (via BigInt). msgpackr would write them as float64, which decoders
 * in typed languages (Rust, Go, Java) refuse for an integer field.
 */
function wireInt(n: number): number | bigint {
  return n > UINT32_MAX ? BigInt(n) : n;
}

/** The msgpack header object of a message, keys in a fixed order, optional keys only when set. */
function wireHeader(m: ClientMessage | ServerMessage): Record<string, unknown> {
  switch (m.t) {
    case 'chunk': {
      assertCount(m.c, 'c');
      if (m.k === undefined) return { t: 'chunk', c: wireInt(m.c) };
      if (checksumValue(m.k.a, m.k.v) === undefined) throw new RangeError(`Invalid ${m.k.a} checksum "${m.k.v}"`);
      return { t: 'chunk', c: wireInt(m.c), k: { a: m.k.a, v: m.k.v.toLowerCase() } };
    }
    case 'part':
      assertCount(m.c, 'c');
      assertCount(m.o, 'o');
      return { t: 'part', c: wireInt(m.c), o: wireInt(m.o) };
    case 'status':
    case 'cancel':
      return { t: m.t };
    case 'hello':
      assertCount(m.chunkSize, 'chunkSize', 1);
      assertCount(m.fileSize, 'fileSize');
      assertCount(m.maxFrame, 'maxFrame', 1);
      assertCount(m.window, 'window');
      if (m.totalChunks !== totalChunksFor(m.fileSize, m.chunkSize)) {
        throw new RangeError(`totalChunks ${m.totalChunks} is not ceil(fileSize / chunkSize)`);
      }
      return {
        t: 'hello',
        v: m.v,
        guid: m.guid,
        chunkSize: wireInt(m.chunkSize),
        fileSize: wireInt(m.fileSize),
        totalChunks: wireInt(m.totalChunks),
        maxFrame: wireInt(m.maxFrame),
        window: wireInt(m.window),
      };
    case 'ack': {
      assertCount(m.c, 'c');
      assertCount(m.rc, 'rc');
      assertCount(m.rb, 'rb');
      const h: Record<string, unknown> = { t: 'ack', c: wireInt(m.c) };
      if (m.dup === true) h.dup = true;
      h.rc = wireInt(m.rc);
      h.rb = wireInt(m.rb);
      return h;
    }
    case 'window':
      assertCount(m.window, 'window');
      return { t: 'window', window: wireInt(m.window) };
    case 'progress':
      assertCount(m.rc, 'rc');
      assertCount(m.tc, 'tc');
      assertCount(m.rb, 'rb');
      return { t: 'progress', rc: wireInt(m.rc), tc: wireInt(m.tc), rb: wireInt(m.rb), complete: m.complete };
    case 'complete':
      assertCount(m.size, 'size');
      return { t: 'complete', fileName: m.fileName, size: wireInt(m.size) };
    case 'error': {
      const h: Record<string, unknown> = { t: 'error', code: m.code, message: m.message };
      if (m.c !== undefined) {
        assertCount(m.c, 'c');
        h.c = wireInt(m.c);
      }
      h.retry = m.retry;
      return h;
    }
  }
}

/** msgpack bytes of the header, length-checked. */
function packHeader(m: ClientMessage | ServerMessage): Uint8Array {
  // pack() returns a view into msgpackr's shared output buffer; callers copy it into the frame at once.
  const bytes = packr.pack(wireHeader(m));
  if (bytes.length > MAX_FRAME_HEADER) {
    throw new RangeError(`updraft.v1 ${m.t} header is ${bytes.length} bytes; the limit is ${MAX_FRAME_HEADER}`);
  }
  return bytes;
}

/**
 * The first 2 + H bytes of a frame: the length prefix and the header. A client that reads a chunk from disk
 * straight into its frame buffer writes this at offset 0 and the chunk at offset `prefix.length`, so the chunk
 * bytes are never copied a second time.
 */
export function encodeFramePrefix(message: ClientMessage): Uint8Array {
  const header = packHeader(message);
  const out = new Uint8Array(FRAME_LENGTH_SIZE + header.length);
  out[0] = header.length & 0xff;
  out[1] = header.length >>> 8;
  out.set(header, FRAME_LENGTH_SIZE);
  return out;
}

/**
 * Encodes one frame. Only `chunk` and `part` take a payload; `hello` carries its `missing` list as a bitmap payload
 * that this function builds. Without `target` the frame is a new buffer. With `target` the frame is written into it
 * and the returned view is `target.subarray(0, frameLength)`; when `payload` already sits in `target` right after
 * the prefix (the caller read the chunk there), it is not copied. RangeError when the frame does not fit `target`.
 */
export function encodeFrame(message: ClientMessage | ServerMessage, payload?: Uint8Array, target?: Uint8Array): Uint8Array {
  let body: Uint8Array;
  if (message.t === 'chunk' || message.t === 'part') body = payload ?? EMPTY;
  else if (payload !== undefined && payload.length > 0) throw new RangeError(`updraft.v1 ${message.t} has no payload`);
  else body = message.t === 'hello' ? encodeReceivedBitmap(message.totalChunks, message.missing) : EMPTY;

  const header = packHeader(message);
  const start = FRAME_LENGTH_SIZE + header.length;
  const length = start + body.length;
  let out: Uint8Array;
  if (target === undefined) out = new Uint8Array(length);
  else if (target.length < length) throw new RangeError(`Frame of ${length} bytes does not fit a ${target.length}-byte buffer`);
  else out = target.subarray(0, length);
  // The payload goes first: if it lives in `target` (anywhere), writing the prefix first could overwrite its start.
  // TypedArray.set copies correctly when source and destination overlap in one buffer; skip only the exact no-op.
  const inPlace = body.buffer === out.buffer && body.byteOffset === out.byteOffset + start;
  if (body.length > 0 && !inPlace) out.set(body, start);
  out[0] = header.length & 0xff;
  out[1] = header.length >>> 8;
  out.set(header, FRAME_LENGTH_SIZE);
  return out;
}

/**
 * hello's payload: bit (c & 7) of byte (c >> 3) is set when chunk c has been received; bits past totalChunks are 0.
 * This is byte for byte the little-endian Int32 bitmap of shared-layout.ts, truncated to ceil(totalChunks / 8).
 */
function encodeReceivedBitmap(totalChunks: number, missing: readonly number[]): Uint8Array {
  const bitmap = new Uint8Array(Math.ceil(totalChunks / 8)).fill(0xff);
  if ((totalChunks & 7) !== 0) bitmap[bitmap.length - 1] = (1 << (totalChunks & 7)) - 1;
  for (const c of missing) {
    if (!Number.isSafeInteger(c) || c < 0 || c >= totalChunks) throw new RangeError(`missing chunk ${c} is out of range`);
    bitmap[c >>> 3] &= ~(1 << (c & 7));
  }
  return bitmap;
}

function decodeReceivedBitmap(bitmap: Uint8Array, totalChunks: number): number[] {
  if (bitmap.length !== Math.ceil(totalChunks / 8)) {
    invalid(`hello payload is ${bitmap.length} bytes; ${totalChunks} chunks need ${Math.ceil(totalChunks / 8)}`);
  }
  const tail = totalChunks & 7;
  if (tail !== 0 && bitmap[bitmap.length - 1]! >>> tail !== 0) invalid('hello bitmap has bits set past the last chunk');
  const missing: number[] = [];
  for (let i = 0; i < bitmap.length; i++) {
    const byte = bitmap[i]!;
    if (byte === 0xff) continue;
    const base = i * 8;
    const bits = Math.min(8, totalChunks - base);
    for (let bit = 0; bit < bits; bit++) if ((byte & (1 << bit)) === 0) missing.push(base + bit);
  }
  return missing;
}

// Decoders -----------------------------------------------------------------------------------------------------

type Header = Record<string, unknown>;

function asBytes(frame: Uint8Array | ArrayBuffer): Uint8Array {
  return ArrayBuffer.isView(frame) ? new Uint8Array(frame.buffer, frame.byteOffset, frame.byteLength) : new Uint8Array(frame);
}

/**
 * Containers open while `checkPlainMsgpack` walks a header: the values each still holds, and 1 for a map. Each one
 * opened takes a byte of the header, so MAX_FRAME_HEADER entries are enough; shared, as the walk never re-enters.
 */
const openLeft = new Uint32Array(MAX_FRAME_HEADER);
const openIsMap = new Uint8Array(MAX_FRAME_HEADER);

/** The big-endian unsigned integer of `width` bytes at `p` (the length or count field after a type byte). */
function uintAt(b: Uint8Array, p: number, width: number): number {
  if (p + width > b.length) invalid('header is not one complete msgpack value');
  let n = 0;
  for (let i = 0; i < width; i++) n = n * 256 + b[p + i]!;
  return n;
}

/**
 * Checks that `b` is one plain msgpack value whose maps all have string keys, with no reserved byte 0xc1 and no
 * extension type but the timestamp (-1), at any depth (docs/PROTOCOL.md, Framing). msgpackr's decoding hides all
 * three: a nested 0xc1 becomes a marker object, an integer (nil, boolean, float) key becomes a string ("1"), and
 * its own extension types (records, bundled strings, structured-clone references, Set, Error, RegExp) read bytes
 * past their payload, so msgpackr would not even read the structure checked here. One pass over the header's bytes
 * (at most 4096) that allocates nothing; it runs on every frame.
 */
function checkPlainMsgpack(b: Uint8Array): void {
  const end = b.length;
  let p = 0;
  let depth = 0;
  let left = 1; // values still to read in the innermost open container; at depth 0, the one header value
  let inMap = false; // that container is a map: its values alternate key, value (a key first)
  for (;;) {
    while (left === 0) {
      if (depth === 0) {
        if (p !== end) invalid('header is not one complete msgpack value');
        return;
      }
      depth--;
      left = openLeft[depth]!;
      inMap = openIsMap[depth] === 1;
    }
    if (p >= end) invalid('header is not one complete msgpack value');
    const key = inMap && (left & 1) === 0;
    left--;
    const t = b[p++]!;
    if (key && (t < 0xa0 || t > 0xbf) && (t < 0xd9 || t > 0xdb)) invalid('a map key is not a string');
    let skip = 0; // bytes of the value after its type byte (and length field)
    let count = 0; // entries of a map or array
    let map = false;
    if (t <= 0x7f || t >= 0xe0) {
      // positive or negative fixint
    } else if (t <= 0x8f) {
      count = t & 0x0f;
      map = true;
    } else if (t <= 0x9f) {
      count = t & 0x0f;
    } else if (t <= 0xbf) {
      skip = t & 0x1f;
    } else {
      switch (t) {
        case 0xc0: // nil, false, true
        case 0xc2:
        case 0xc3:
          break;
        case 0xc4: // bin, str
        case 0xd9:
          skip = uintAt(b, p, 1);
          p += 1;
          break;
        case 0xc5:
        case 0xda:
          skip = uintAt(b, p, 2);
          p += 2;
          break;
        case 0xc6:
        case 0xdb:
          skip = uintAt(b, p, 4);
          p += 4;
          break;
        case 0xc7: // ext 8/16/32: length, type, data
        case 0xc8:
        case 0xc9: {
          const width = 1 << (t - 0xc7);
          skip = uintAt(b, p, width) + 1;
          p += width;
          if (p < end && b[p] !== 0xff) invalid('header uses a msgpack extension other than the timestamp');
          break;
        }
        case 0xd4: // fixext 1/2/4/8/16: type, data
        case 0xd5:
        case 0xd6:
        case 0xd7:
        case 0xd8:
          skip = 1 + (1 << (t - 0xd4));
          // The timestamp (-1), and msgpackr's `undefined` (fixext 1, type 0, data 0: a JS encoder's absent field).
          if (p < end && b[p] !== 0xff && !(t === 0xd4 && b[p] === 0 && p + 1 < end && b[p + 1] === 0)) {
            invalid('header uses a msgpack extension other than the timestamp');
          }
          break;
        case 0xca: // float 32/64, uint 8-64, int 8-64
          skip = 4;
          break;
        case 0xcb:
          skip = 8;
          break;
        case 0xcc:
        case 0xcd:
        case 0xce:
        case 0xcf:
          skip = 1 << (t - 0xcc);
          break;
        case 0xd0:
        case 0xd1:
        case 0xd2:
        case 0xd3:
          skip = 1 << (t - 0xd0);
          break;
        case 0xdc: // array 16/32
        case 0xdd: {
          const width = t === 0xdc ? 2 : 4;
          count = uintAt(b, p, width);
          p += width;
          break;
        }
        case 0xde: // map 16/32
        case 0xdf: {
          const width = t === 0xde ? 2 : 4;
          count = uintAt(b, p, width);
          p += width;
          map = true;
          break;
        }
        default: // 0xc1, never used
          invalid('header uses the reserved byte 0xc1');
      }
    }
    p += skip;
    if (p > end) invalid('header is not one complete msgpack value');
    if (count > 0) {
      const values = map ? 2 * count : count;
      // Every value takes at least a byte: a larger count is truncated (and cannot outgrow the stack).
      if (values > end - p) invalid('header is not one complete msgpack value');
      openLeft[depth] = left;
      openIsMap[depth] = inMap ? 1 : 0;
      depth++;
      left = values;
      inMap = map;
    }
  }
}

/** Splits a frame into its decoded header map and a view of its payload. */
function splitFrame(frame: Uint8Array | ArrayBuffer): { header: Header; payload: Uint8Array } {
  const bytes = asBytes(frame);
  if (bytes.length < FRAME_LENGTH_SIZE) invalid(`${bytes.length} bytes is shorter than the 2-byte length prefix`);
  const h = bytes[0]! | (bytes[1]! << 8);
  if (h === 0 || h > MAX_FRAME_HEADER) invalid(`header length ${h} is outside 1..${MAX_FRAME_HEADER}`);
  if (FRAME_LENGTH_SIZE + h > bytes.length) {
    invalid(`header length ${h} runs past the end of a ${bytes.length}-byte frame`);
  }
  // A fresh subarray: msgpackr caches a DataView on the object it reads, which must not be the caller's array.
  const header = bytes.subarray(FRAME_LENGTH_SIZE, FRAME_LENGTH_SIZE + h);
  checkPlainMsgpack(header);
  let value: unknown;
  try {
    value = packr.unpack(header);
  } catch {
    invalid('header is not one complete msgpack value');
  }
  // mapsAsObjects yields plain objects for maps; anything else (array, string, Date from the timestamp extension)
  // is not a header.
  if (typeof value !== 'object' || value === null || Object.getPrototypeOf(value) !== Object.prototype) {
    invalid('header is not a msgpack map');
  }
  return { header: value as Header, payload: bytes.subarray(FRAME_LENGTH_SIZE + h) };
}

function field(h: Header, key: string): unknown {
  return Object.hasOwn(h, key) ? h[key] : undefined;
}

/** A non-negative safe integer, as a msgpack int of any width (int64 arrives as bigint) or an integral float. */
function readCount(h: Header, key: string, min = 0): number {
  const v = field(h, key);
  let n: number;
  if (typeof v === 'number') n = v;
  // Number() of a bigint past 2^53 rounds, but never back below 2^53, so the safe-integer check still refuses it.
  else if (typeof v === 'bigint') n = Number(v);
  else return invalid(`"${key}" must be an integer >= ${min}`);
  if (!Number.isSafeInteger(n) || n < min) invalid(`"${key}" must be an integer >= ${min}`);
  return n === 0 ? 0 : n;
}

/** An optional count: absent or nil (encoders in other languages write nil for an unset optional) is undefined. */
function readOptionalCount(h: Header, key: string): number | undefined {
  const v = field(h, key);
  return v === undefined || v === null ? undefined : readCount(h, key);
}

function readString(h: Header, key: string, maxLength: number): string {
  const v = field(h, key);
  if (typeof v !== 'string' || v.length === 0 || v.length > maxLength) {
    invalid(`"${key}" must be a string of 1..${maxLength} characters`);
  }
  return v;
}

function readBoolean(h: Header, key: string): boolean {
  const v = field(h, key);
  if (typeof v !== 'boolean') invalid(`"${key}" must be a boolean`);
  return v;
}

const HEX_LENGTH: Record<ChecksumAlgorithm, number> = { sha256: 64, crc32: 8 };
const HEX = /^[0-9a-fA-F]+$/;

/** The lower-case hex value when `v` is a valid digest for `a`, else undefined. Upper case is accepted (.NET). */
function checksumValue(a: unknown, v: unknown): string | undefined {
  if ((a !== 'sha256' && a !== 'crc32') || typeof v !== 'string') return undefined;
  if (v.length !== HEX_LENGTH[a] || !HEX.test(v)) return undefined;
  return v.toLowerCase();
}

function readChecksum(h: Header): WireChecksum | undefined {
  const k = field(h, 'k');
  if (k === undefined || k === null) return undefined;
  if (typeof k !== 'object' || Object.getPrototypeOf(k) !== Object.prototype) invalid('"k" must be a map {a, v}');
  const a = field(k as Header, 'a');
  const v = checksumValue(a, field(k as Header, 'v'));
  if (v === undefined) invalid('"k" must be {a: "sha256", v: 64 hex digits} or {a: "crc32", v: 8 hex digits}');
  return { a: a as ChecksumAlgorithm, v };
}

function noPayload(t: string, payload: Uint8Array): void {
  if (payload.length !== 0) invalid(`${t} carries no payload, got ${payload.length} bytes`);
}

export interface ClientFrame {
  message: ClientMessage;
  /** The bytes of a `chunk` or `part` (a view into the input: copy before the input's owner reuses it); else empty. */
  payload: Uint8Array;
}

/** Decodes a frame a client sent. Server-to-client types are refused here, as a server never expects them. */
export function decodeClientFrame(frame: Uint8Array | ArrayBuffer): ClientFrame {
  const { header, payload } = splitFrame(frame);
  const t = field(header, 't');
  switch (t) {
    case 'chunk': {
      const c = readCount(header, 'c');
      const k = readChecksum(header);
      return { message: k === undefined ? { t, c } : { t, c, k }, payload };
    }
    case 'part': {
      const c = readCount(header, 'c');
      const o = readCount(header, 'o');
      if (payload.length === 0) invalid('a part carries at least one byte');
      return { message: { t, c, o }, payload };
    }
    case 'status':
    case 'cancel':
      noPayload(t, payload);
      return { message: { t }, payload };
    default:
      return invalid(typeof t === 'string' ? 'unknown client message type' : '"t" must be a string');
  }
}

/** Decodes a frame a server sent. For `hello`, `missing` is rebuilt from the payload bitmap. */
export function decodeServerFrame(frame: Uint8Array | ArrayBuffer): ServerMessage {
  const { header, payload } = splitFrame(frame);
  const t = field(header, 't');
  switch (t) {
    case 'hello': {
      if (readCount(header, 'v') !== 1) invalid('"v" must be 1 (this client speaks updraft.v1)');
      const guid = readString(header, 'guid', 256);
      const chunkSize = readCount(header, 'chunkSize', 1);
      const fileSize = readCount(header, 'fileSize');
      const totalChunks = readCount(header, 'totalChunks');
      if (totalChunks !== totalChunksFor(fileSize, chunkSize)) invalid('"totalChunks" is not ceil(fileSize / chunkSize)');
      const maxFrame = readCount(header, 'maxFrame', 1);
      const window = readCount(header, 'window');
      const missing = decodeReceivedBitmap(payload, totalChunks);
      const m: HelloMessage = { t, v: 1, guid, chunkSize, fileSize, totalChunks, maxFrame, window, missing };
      return m;
    }
    case 'ack': {
      noPayload(t, payload);
      const c = readCount(header, 'c');
      const dup = field(header, 'dup');
      if (dup !== undefined && dup !== null && typeof dup !== 'boolean') invalid('"dup" must be a boolean');
      const rc = readCount(header, 'rc');
      const rb = readCount(header, 'rb');
      const m: AckMessage = dup === true ? { t, c, dup: true, rc, rb } : { t, c, rc, rb };
      return m;
    }
    case 'window': {
      noPayload(t, payload);
      const m: WindowMessage = { t, window: readCount(header, 'window') };
      return m;
    }
    case 'progress': {
      noPayload(t, payload);
      const m: ProgressMessage = {
        t,
        rc: readCount(header, 'rc'),
        tc: readCount(header, 'tc'),
        rb: readCount(header, 'rb'),
        complete: readBoolean(header, 'complete'),
      };
      return m;
    }
    case 'complete': {
      noPayload(t, payload);
      const m: CompleteMessage = { t, fileName: readString(header, 'fileName', 1024), size: readCount(header, 'size') };
      return m;
    }
    case 'error': {
      noPayload(t, payload);
      const code = readString(header, 'code', 64);
      if (!/^ERR_[A-Z0-9_]+$/.test(code)) invalid('"code" must look like ERR_SOMETHING');
      const message = readString(header, 'message', MAX_FRAME_HEADER);
      const c = readOptionalCount(header, 'c');
      const retry = readBoolean(header, 'retry');
      const m: ErrorMessage = c === undefined ? { t, code, message, retry } : { t, code, message, c, retry };
      return m;
    }
    default:
      return invalid(typeof t === 'string' ? 'unknown server message type' : '"t" must be a string');
  }
}

// --- PSWebHost WebSocket JSON control messages --------------------------------------------------------------------

/** A control message is a few dozen bytes; refusing long text bounds what JSON.parse is made to do. */
export const MAX_PS_CONTROL_LENGTH = 4096;

function invalidControl(message: string): never {
  throw new UploadError('ERR_CHUNK_HEADER_INVALID', `Invalid control message: ${message}`);
}

function controlCount(o: Header, key: string): number {
  const v = field(o, key);
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) invalidControl(`"${key}" must be a non-negative integer`);
  return v === 0 ? 0 : v;
}

/**
 * Parses a text frame a PSWebHost client sent: {"type":"chunk","chunkNumber":N,"bytesRemaining":R} announces that
 * the next binary frame is chunk N; {"type":"getProgress"} asks for a progress message. ERR_INVALID_JSON when the
 * text is not JSON, ERR_CHUNK_HEADER_INVALID when it is not one of these (numbers must be JSON numbers here, as
 * PSWebHost's client sends them). Unknown extra fields are ignored.
 */
export function parsePsControl(text: string): PsClientControl {
  if (text.length > MAX_PS_CONTROL_LENGTH) invalidControl(`longer than ${MAX_PS_CONTROL_LENGTH} characters`);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new UploadError('ERR_INVALID_JSON', 'Control message is not valid JSON');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) invalidControl('not a JSON object');
  const o = value as Header;
  const type = field(o, 'type');
  switch (type) {
    case 'chunk': {
      const chunkNumber = controlCount(o, 'chunkNumber');
      const remaining = field(o, 'bytesRemaining');
      if (remaining === undefined || remaining === null) return { type, chunkNumber };
      return { type, chunkNumber, bytesRemaining: controlCount(o, 'bytesRemaining') };
    }
    case 'getProgress':
      return { type };
    default:
      return invalidControl(typeof type === 'string' ? 'unknown "type"' : '"type" must be a string');
  }
}

/** The JSON text of a control message, keys in the documented order, optional keys only when set. */
export function encodePsControl(message: PsClientControl | PsServerControl): string {
  switch (message.type) {
    case 'chunk':
      return JSON.stringify(
        message.bytesRemaining === undefined
          ? { type: 'chunk', chunkNumber: message.chunkNumber }
          : { type: 'chunk', chunkNumber: message.chunkNumber, bytesRemaining: message.bytesRemaining },
      );
    case 'getProgress':
      return JSON.stringify({ type: 'getProgress' });
    case 'progress':
      return JSON.stringify({
        type: 'progress',
        chunkNumber: message.chunkNumber,
        receivedChunks: message.receivedChunks,
        totalChunks: message.totalChunks,
        receivedBytes: message.receivedBytes,
        complete: message.complete,
      });
    case 'complete':
      return JSON.stringify({ type: 'complete', fileName: message.fileName, size: message.size });
    case 'error':
      return JSON.stringify(
        message.chunkNumber === undefined
          ? { type: 'error', code: message.code, message: message.message }
          : { type: 'error', code: message.code, message: message.message, chunkNumber: message.chunkNumber },
      );
  }
}
