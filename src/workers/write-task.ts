/**
 * The piscina entry of the write path: writes one piece of one chunk into the upload's staging file, in place.
 *
 * Runs inside a worker thread (STYLE.md layout: node:fs + protocol, never uWS). The main thread opened the staging
 * file once and owns its fd; it also owns the task's bytes (a SAB slab it does not touch until this task settles, or
 * an ArrayBuffer moved to us). What this module promises (durability.md):
 *   - bad input writes nothing (invariant 10): every number is checked with Number.isSafeInteger and a range before
 *     it can reach fs.writeSync, which would otherwise write at the fd's current position for NaN/negative/unsafe
 *     positions;
 *   - a chunk's bit is set only after every byte of the chunk was written (invariant 1): only the `last` piece sets
 *     it, after its own bytes were written in full, and a short or failed write returns before the bit;
 *   - each bit flips once and only the flipping task counts the chunk (invariant 2);
 *   - two writers of one chunk never write at the same time (invariant 3): the piece is written under the chunk's
 *     lock (or the upload's, in `upload` lock mode);
 *   - exactly one task across the whole upload reports `finalize` (H_FINALIZER compareExchange).
 *
 * Expected outcomes (bad numbers, cancelled upload, busy lock, checksum mismatch, I/O errors) come back as
 * `failure` data: an Error thrown out of a worker loses its own properties (errno, code) in structured clone. The
 * function throws only for a broken contract between main and worker (a bug), which the pool turns into
 * ERR_INTERNAL.
 */
import { createHash } from 'node:crypto';
import { writeSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import { acquire, release } from './lock-table.js';
import {
  B_RECEIVED_BYTES,
  H_CHUNK_SIZE,
  H_FINALIZER,
  H_RECEIVED_CHUNKS,
  H_STATE,
  STATE_ACTIVE,
  allChunksSet,
  chunkLength,
  isChunkSet,
  lockSlot,
  setChunkBit,
  viewSharedState,
  type SharedState,
} from './shared-layout.js';
import type { ChunkChecksum, PrefaultTask, WriteFailureCode, WriteResult, WriteTask } from './task-types.js';

const STATE_NAMES = ['active', 'finalizing', 'completed', 'cancelled', 'failed', 'expired'];

/** Piscina entry (`pool.run(task, { name: 'write' })`). */
export async function write(task: WriteTask): Promise<WriteResult> {
  return writePiece(task);
}

export default write;

/** Linux's page size on x86-64 and most arm64 kernels; a larger page is only touched more than once. */
const PAGE_BYTES = 4096;

/**
 * Piscina entry `prefault` (`pool.run(task, { name: 'prefault' })`): makes every page of the arenas resident by
 * writing to it, and returns the number of pages touched.
 *
 * A fresh WebAssembly.Memory is mapped but not backed: the first write to each page faults, and on a VM that fault
 * is slow (fresh guest memory, 0.4-2.5 GB/s measured here against 20 GB/s for a copy into a resident page). Without
 * this, the main thread paid it inside its copies of request bytes, in the first uploads after a start.
 *
 * The write is `Atomics.add(word, 0)`: an atomic read-modify-write that stores the value it read. The main thread
 * may already be copying request bytes into these arenas (the prefault runs beside the first uploads), and a plain
 * store of zero could overwrite them; an atomic RMW cannot lose a store made before or after it, so the bytes are
 * unchanged whatever the interleaving.
 */
export function prefault(task: PrefaultTask): number {
  if (!Array.isArray(task.arenas) || !task.arenas.every((a) => a instanceof SharedArrayBuffer)) {
    throw new TypeError('prefault task: arenas must be SharedArrayBuffers');
  }
  let pages = 0;
  for (const arena of task.arenas) {
    const words = new Int32Array(arena, 0, Math.floor(arena.byteLength / 4));
    for (let i = 0; i < words.length; i += PAGE_BYTES / 4) {
      Atomics.add(words, i, 0);
      pages++;
    }
  }
  return pages;
}

/**
 * The synchronous body of `write`, exported for benchmarks and in-thread tests. It may block in Atomics.wait on a
 * busy lock, so production code calls it only inside a worker.
 */
export function writePiece(task: WriteTask): WriteResult {
  const state = checkContract(task);

  const invalid = checkPosition(task, state);
  if (invalid !== null) return failed(state, 'ERR_INVALID_CHUNK_NUMBER', invalid);

  const { chunk, first, last } = task;
  const notActive = checkActive(state);
  if (notActive !== null) return notActive;

  // Cheap pre-checks outside the lock. Neither decides anything on its own: the bit is checked again under the lock.
  // A piece of a chunk that is already complete would only overwrite acknowledged bytes (with identical bytes at
  // best, and with a client's different bytes at worst), so any piece, not only the first, stops here.
  if (isChunkSet(state, chunk)) return result(state, 0, true, false, false);
  // The checksum is verified before taking the lock so that hashing a large chunk never holds the lock (in `upload`
  // lock mode that lock serializes every writer of the upload). This is safe because the bytes are this task's own:
  // a moved ArrayBuffer, or a SAB slab the main thread leaves alone until the task settles.
  if (task.checksum !== undefined) {
    const mismatch = checkChecksum(task, task.checksum);
    if (mismatch !== null) return failed(state, 'ERR_CHECKSUM_MISMATCH', mismatch);
  }

  const slot = lockSlot(state, chunk);
  // Blocks this worker thread (never the main thread) for at most lockTimeoutMs.
  if (!acquire(state.locks, slot, task.ownerId, task.lockTimeoutMs)) {
    return failed(state, 'ERR_CHUNK_BUSY', `chunk ${chunk} is locked by another writer`);
  }
  try {
    // The upload may have been cancelled while we waited: re-check so that no byte lands after the main thread
    // decided to stop (it still keeps the file until H_TASKS_IN_FLIGHT drops, invariant 9).
    const cancelled = checkActive(state);
    if (cancelled !== null) return cancelled;
    // Authoritative duplicate check: the lock orders us after any writer of this chunk, so a bit set by the last
    // holder is visible here (its setChunkBit happened before its release's compareExchange).
    if (isChunkSet(state, chunk)) return result(state, 0, true, false, false);

    const ioError = writeFully(task);
    if (ioError !== null && ioError.directRefused !== true) return failed(state, 'ERR_STORAGE_FAILED', ioError.message, ioError.errno);

    let flipped = false;
    let finalize = false;
    if (last) {
      // The bit is set only now, after every byte of this last piece was written; the earlier pieces of the chunk
      // were written by earlier tasks that the main thread awaited before dispatching this one.
      flipped = setChunkBit(state, chunk);
      if (flipped) {
        // Atomics.add (seq-cst RMW): other workers add for other chunks at the same time. The adds come after the
        // bit (only the flip may count), so a reader can briefly see a set bit not yet counted; nothing decides on
        // the counters (completion reads the bitmap), and they are exact once every task has returned.
        Atomics.add(state.header, H_RECEIVED_CHUNKS, 1);
        Atomics.add(state.counters, B_RECEIVED_BYTES, BigInt(chunkLength(task.fileSize, task.chunkSize, chunk)));
      }
      // Completion is decided by the bitmap, never by the counter. When the last two chunks flip in two workers at
      // once, the seq-cst order of their Atomics.or calls guarantees that at least one of them sees every bit set;
      // the compareExchange on H_FINALIZER (0 -> 1) lets exactly one task ever report finalize.
      if (allChunksSet(state) && Atomics.compareExchange(state.header, H_FINALIZER, 0, 1) === 0) finalize = true;
    }
    const r = result(state, task.length, false, flipped, finalize);
    if (ioError?.directRefused) r.directRefused = true;
    return r;
  } finally {
    // Always, even if something above threw: a lock left held would stall every later writer of the chunk until
    // their timeouts, and the main thread could only free it with forceRelease.
    release(state.locks, slot, task.ownerId);
  }
}

/**
 * Fields the main thread derives itself (handles, the upload's geometry, the writer's id). A bad value here is a bug
 * in the caller, not client input, so it throws (and the pool reports ERR_INTERNAL); nothing has been written yet.
 */
function checkContract(task: WriteTask): SharedState {
  if (!(task.sab instanceof SharedArrayBuffer)) throw new TypeError('write task: sab must be a SharedArrayBuffer');
  if (!Number.isSafeInteger(task.fd) || task.fd < 0) throw new TypeError(`write task: invalid fd ${task.fd}`);
  if (task.directFd !== undefined && (!Number.isSafeInteger(task.directFd) || task.directFd < 0)) {
    throw new TypeError(`write task: invalid directFd ${task.directFd}`);
  }
  if (!(task.data instanceof SharedArrayBuffer) && !(task.data instanceof ArrayBuffer)) {
    throw new TypeError('write task: data must be a SharedArrayBuffer or an ArrayBuffer');
  }
  if (!Number.isSafeInteger(task.ownerId) || task.ownerId <= 0 || task.ownerId > 0x7fff_ffff) {
    throw new RangeError(`write task: invalid ownerId ${task.ownerId}`);
  }
  if (!Number.isFinite(task.lockTimeoutMs) || task.lockTimeoutMs < 0) {
    throw new RangeError(`write task: invalid lockTimeoutMs ${task.lockTimeoutMs}`);
  }
  if (typeof task.first !== 'boolean' || typeof task.last !== 'boolean') {
    throw new TypeError('write task: first and last must be booleans');
  }
  const state = viewSharedState(task.sab);
  const { fileSize, chunkSize } = task;
  if (!Number.isSafeInteger(fileSize) || fileSize < 0) throw new RangeError(`write task: invalid fileSize ${fileSize}`);
  // The geometry must match the one the shared state was created with, or chunk numbers would map to the wrong
  // bytes and bits.
  if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0 || chunkSize !== state.header[H_CHUNK_SIZE]) {
    throw new RangeError(`write task: chunkSize ${chunkSize} does not match the upload's ${state.header[H_CHUNK_SIZE]}`);
  }
  if (Math.ceil(fileSize / chunkSize) !== state.totalChunks) {
    throw new RangeError(`write task: fileSize ${fileSize} does not give the upload's ${state.totalChunks} chunks`);
  }
  if (task.checksum !== undefined) {
    const { algorithm, expected } = task.checksum;
    if ((algorithm !== 'sha256' && algorithm !== 'crc32') || typeof expected !== 'string') {
      throw new TypeError('write task: malformed checksum');
    }
    // Verifying part of a chunk against the whole chunk's checksum would always fail (or, worse, pass wrongly).
    if (!task.first || !task.last) throw new TypeError('write task: a checksum needs the whole chunk in one task');
  }
  return state;
}

/**
 * Every number that decides where bytes go, checked before any of them reaches fs.writeSync (invariant 10). Returns
 * a message for the failure, or null when the piece is well-formed.
 */
function checkPosition(task: WriteTask, state: SharedState): string | null {
  const { chunk, chunkOffset, length, dataOffset, fileSize, chunkSize } = task;
  if (!Number.isSafeInteger(chunk) || chunk < 0) return 'chunk must be a non-negative integer';
  if (chunk >= state.totalChunks) return `chunk ${chunk} is past the last chunk (${state.totalChunks - 1})`;
  if (!Number.isSafeInteger(chunkOffset) || chunkOffset < 0) return 'chunkOffset must be a non-negative integer';
  if (!Number.isSafeInteger(length) || length < 0) return 'length must be a non-negative integer';
  if (!Number.isSafeInteger(dataOffset) || dataOffset < 0) return 'dataOffset must be a non-negative integer';
  const len = chunkLength(fileSize, chunkSize, chunk);
  if (chunkOffset + length > len) return `piece [${chunkOffset}, +${length}) is past the end of chunk ${chunk} (${len})`;
  // A first piece starts the chunk and a last one ends it; otherwise `last` would set the bit over bytes nobody wrote.
  if (task.first && chunkOffset !== 0) return 'the first piece of a chunk must start at chunkOffset 0';
  if (task.last && chunkOffset + length !== len) return `the last piece of chunk ${chunk} must end at ${len}`;
  const position = chunk * chunkSize + chunkOffset;
  // Implied by the checks above for a consistent geometry; kept as the literal rule fs.writeSync needs.
  if (!Number.isSafeInteger(position) || position + length > fileSize) return 'position is outside the file';
  // A detached (already transferred) ArrayBuffer has byteLength 0 and fails here too.
  if (dataOffset + length > task.data.byteLength) return 'data range is outside the buffer';
  return null;
}

function checkActive(state: SharedState): WriteResult | null {
  // Atomics.load (seq-cst): the main thread stores H_STATE with Atomics.store, so we see a cancel as soon as it is
  // made; a cancel that lands right after this read is caught by the re-check under the lock, or (if it lands during
  // the write) the main thread waits for H_TASKS_IN_FLIGHT before removing the file.
  const s = Atomics.load(state.header, H_STATE);
  if (s === STATE_ACTIVE) return null;
  const name = STATE_NAMES[s];
  return failed(state, ENDED_CODE[name ?? ''] ?? 'ERR_UPLOAD_CANCELLED', `upload is ${name ?? `in state ${s}`}`);
}

/** The error a piece of an upload that is no longer active gets, by the upload's state. */
const ENDED_CODE: Readonly<Record<string, WriteFailureCode>> = {
  finalizing: 'ERR_UPLOAD_FINALIZING',
  completed: 'ERR_UPLOAD_FINALIZING',
  cancelled: 'ERR_UPLOAD_CANCELLED',
  failed: 'ERR_UPLOAD_FAILED',
  expired: 'ERR_UPLOAD_EXPIRED',
};

function checkChecksum(task: WriteTask, checksum: ChunkChecksum): string | null {
  const bytes = new Uint8Array(task.data, task.dataOffset, task.length);
  const actual =
    checksum.algorithm === 'sha256'
      ? createHash('sha256').update(bytes).digest('hex')
      : // zlib.crc32 (Node >= 20.15) returns the IEEE CRC-32 as an unsigned number.
        crc32(bytes).toString(16).padStart(8, '0');
  if (actual === checksum.expected.toLowerCase()) return null;
  return `${checksum.algorithm} of chunk ${task.chunk} does not match`;
}

/**
 * Writes the whole piece at its validated position, looping over short writes (a positioned write may return less
 * than asked, e.g. near a quota or on a signal). Returns the error instead of throwing it.
 */
function writeFully(task: WriteTask): { message: string; errno?: string; directRefused?: boolean } | null {
  const bytes = new Uint8Array(task.data, task.dataOffset, task.length);
  const base = task.chunk * task.chunkSize + task.chunkOffset;
  // O_DIRECT (bypassing the page cache) needs the buffer address, the file offset and the length aligned. Slabs come
  // from page-aligned WebAssembly memory and slab-sized pieces sit at aligned offsets; anything else (a chunk's
  // unaligned tail, an overflow piece, a chunk size that is not a multiple of 4 KiB) goes through the page cache.
  // Both fds name the same inode, so one fdatasync covers bytes written through either.
  const direct =
    task.directFd !== undefined &&
    task.data instanceof SharedArrayBuffer &&
    bytes.length > 0 &&
    (base | task.dataOffset | bytes.length) % DIRECT_ALIGN === 0;
  let directRefused = false;
  let fd = direct ? task.directFd! : task.fd;
  let done = 0;
  try {
    while (done < bytes.length) {
      let n: number;
      try {
        n = writeSync(fd, bytes, done, bytes.length - done, base + done);
      } catch (e) {
        // EINVAL: this filesystem or buffer refuses O_DIRECT. Rewrite the piece through the page cache (the same
        // bytes at the same place, so a partial direct write is simply overwritten) and tell the main thread.
        if (fd !== task.fd && (e as NodeJS.ErrnoException).code === 'EINVAL') {
          fd = task.fd;
          directRefused = true;
          done = 0;
          continue;
        }
        throw e;
      }
      // A zero-byte write would loop forever; the kernel returns it only when it cannot make progress.
      if (n <= 0) return { message: `write made no progress after ${done} of ${bytes.length} bytes` };
      done += n;
    }
  } catch (e) {
    const errno = (e as NodeJS.ErrnoException).code;
    // The message of an fd write names no path (there is none), so it is safe to pass on.
    const message = `write failed after ${done} of ${bytes.length} bytes: ${(e as Error).message}`;
    return errno === undefined ? { message } : { message, errno };
  }
  return directRefused ? { message: '', directRefused } : null;
}

/** Alignment O_DIRECT needs here (logical block size is 512 B on this disk; 4 KiB is safe everywhere). */
const DIRECT_ALIGN = 4096;

function result(state: SharedState, written: number, duplicate: boolean, flipped: boolean, finalize: boolean): WriteResult {
  return {
    written,
    duplicate,
    flipped,
    finalize,
    // Atomics.load (seq-cst): values at least as new as our own adds.
    receivedChunks: Atomics.load(state.header, H_RECEIVED_CHUNKS),
    receivedBytes: Number(Atomics.load(state.counters, B_RECEIVED_BYTES)),
  };
}

function failed(state: SharedState, code: WriteFailureCode, message: string, errno?: string): WriteResult {
  const out = result(state, 0, false, false, false);
  out.failure = errno === undefined ? { code, message } : { code, message, errno };
  return out;
}
