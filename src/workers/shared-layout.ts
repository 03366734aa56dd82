/**
 * The SharedArrayBuffer layout of one upload, as named indices (STYLE.md "Bytes, threads and uWS").
 *
 * One SAB per upload, created on the main thread at init (or on reload after a restart) and passed to every write
 * task for that upload (a SAB crosses postMessage as the same memory). Layout, all little-endian, 8-byte aligned:
 *
 *   bytes 0..63      Int32 header words   H_*  (see below)
 *   bytes 64..79     BigInt64 counters    B_*  (receivedBytes)
 *   bytes 80..       Int32 lock table      lockCount words; 0 = free, otherwise the owner's id (>0)
 *   then             Int32 chunk bitmap    ceil(totalChunks / 32) words; bit (c & 31) of word (c >>> 5) = chunk c
 *
 * Who writes what:
 *   - lock words: workers only (compareExchange / wait / notify). The main thread never waits on them.
 *   - bitmap bits, H_RECEIVED_CHUNKS, B_RECEIVED_BYTES: set by the worker that finished writing a chunk (or by the
 *     main thread when it reloads persisted state before any task runs). A bit is set with Atomics.or and only the
 *     call that flipped it counts the chunk (durability.md invariants 1 and 2).
 *   - H_FINALIZER: 0 -> 1 by compareExchange, by whoever first sees every bit set; exactly one party wins.
 *   - H_STATE: main thread (Atomics.store); workers read it to refuse writes into a cancelled/failed upload.
 *   - H_TASKS_IN_FLIGHT: main thread adds 1 before dispatching a task and subtracts 1 when it settles; the reaper
 *     and cancel look at it before removing a staging file (invariant 9).
 */

/** Header word indices (Int32Array over bytes 0..63). */
export const H_STATE = 0;
export const H_TOTAL_CHUNKS = 1;
export const H_RECEIVED_CHUNKS = 2;
export const H_FINALIZER = 3;
export const H_TASKS_IN_FLIGHT = 4;
export const H_LOCK_COUNT = 5;
export const H_CHUNK_SIZE = 6; // chunk size in bytes (≤ 2^31-1; max chunk size is far below)
export const HEADER_WORDS = 16;

/** BigInt64 indices (BigInt64Array over the whole SAB; index 8 = byte 64). */
export const B_RECEIVED_BYTES = 8;

export const LOCKS_BYTE_OFFSET = 80;

/** Values of H_STATE. */
export const STATE_ACTIVE = 0;
export const STATE_FINALIZING = 1;
export const STATE_COMPLETED = 2;
export const STATE_CANCELLED = 3;
export const STATE_FAILED = 4;
export const STATE_EXPIRED = 5;

export type LockMode = 'chunk' | 'upload';

export interface SharedState {
  readonly sab: SharedArrayBuffer;
  readonly header: Int32Array;
  readonly counters: BigInt64Array;
  readonly locks: Int32Array;
  readonly bitmap: Int32Array;
  readonly totalChunks: number;
  readonly lockMode: LockMode;
}

export function bitmapWords(totalChunks: number): number {
  return Math.ceil(totalChunks / 32);
}

export function lockCountFor(totalChunks: number, lockMode: LockMode): number {
  return lockMode === 'upload' ? 1 : Math.max(1, totalChunks);
}

/** Creates the SAB for an upload with every lock free and no chunk received. */
export function createSharedState(totalChunks: number, chunkSize: number, lockMode: LockMode): SharedState {
  const lockCount = lockCountFor(totalChunks, lockMode);
  const bytes = LOCKS_BYTE_OFFSET + 4 * lockCount + 4 * bitmapWords(totalChunks);
  const sab = new SharedArrayBuffer(Math.ceil(bytes / 8) * 8);
  const header = new Int32Array(sab, 0, HEADER_WORDS);
  header[H_TOTAL_CHUNKS] = totalChunks;
  header[H_LOCK_COUNT] = lockCount;
  header[H_CHUNK_SIZE] = chunkSize;
  header[H_STATE] = STATE_ACTIVE;
  return viewSharedState(sab);
}

/** Views over an existing SAB (used in workers, which receive only the SAB). */
export function viewSharedState(sab: SharedArrayBuffer): SharedState {
  const header = new Int32Array(sab, 0, HEADER_WORDS);
  const totalChunks = header[H_TOTAL_CHUNKS]!;
  const lockCount = header[H_LOCK_COUNT]!;
  const locks = new Int32Array(sab, LOCKS_BYTE_OFFSET, lockCount);
  const bitmap = new Int32Array(sab, LOCKS_BYTE_OFFSET + 4 * lockCount, bitmapWords(totalChunks));
  const counters = new BigInt64Array(sab, 0, sab.byteLength >>> 3);
  const lockMode: LockMode = lockCount === 1 && totalChunks !== 1 ? 'upload' : 'chunk';
  return { sab, header, counters, locks, bitmap, totalChunks, lockMode };
}

/** The lock slot a write of `chunk` takes: the chunk itself, or slot 0 when one lock covers the whole upload. */
export function lockSlot(state: SharedState, chunk: number): number {
  return state.locks.length === 1 ? 0 : chunk;
}

export function isChunkSet(state: SharedState, chunk: number): boolean {
  // Atomics.load: sequentially consistent read, so a bit set by a worker is seen with the counters it updated first.
  return (Atomics.load(state.bitmap, chunk >>> 5) & (1 << (chunk & 31))) !== 0;
}

/**
 * Sets the bit of `chunk`; true only for the one call that flipped it (Atomics.or returns the previous word, so two
 * racing callers cannot both see the bit clear).
 */
export function setChunkBit(state: SharedState, chunk: number): boolean {
  const mask = 1 << (chunk & 31);
  return (Atomics.or(state.bitmap, chunk >>> 5, mask) & mask) === 0;
}

/** True when every chunk's bit is set; completion is decided by this, never by the counter alone. */
export function allChunksSet(state: SharedState): boolean {
  const { bitmap, totalChunks } = state;
  const fullWords = totalChunks >>> 5;
  for (let w = 0; w < fullWords; w++) if (Atomics.load(bitmap, w) !== -1) return false;
  const rest = totalChunks & 31;
  if (rest === 0) return true;
  // `| 0` brings the mask back into Int32 range: for rest = 31, (1 << 31) - 1 is -2147483649 as a double, which
  // never equals the Int32 result of `&`, so uploads of 31, 63, 95... chunks could never complete.
  const mask = ((1 << rest) - 1) | 0;
  return (Atomics.load(bitmap, fullWords) & mask) === mask;
}

/** The chunk numbers whose bit is clear, in order. */
export function missingChunks(state: SharedState): number[] {
  const out: number[] = [];
  for (let c = 0; c < state.totalChunks; c++) if (!isChunkSet(state, c)) out.push(c);
  return out;
}

/** A copy of the bitmap words, for persisting. */
export function snapshotBitmap(state: SharedState): Int32Array {
  const out = new Int32Array(state.bitmap.length);
  for (let w = 0; w < out.length; w++) out[w] = Atomics.load(state.bitmap, w);
  return out;
}

/** The size in bytes of chunk `c` of a file of `fileSize` bytes cut into `chunkSize` pieces. */
export function chunkLength(fileSize: number, chunkSize: number, c: number): number {
  return Math.min(chunkSize, fileSize - c * chunkSize);
}
