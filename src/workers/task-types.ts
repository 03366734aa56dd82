/**
 * The contract between the main thread (src/main/write-pool.ts) and the piscina workers (write-task.ts).
 * Types only: both sides import it, and it must stay free of uWS and piscina.
 */

export type ChecksumAlgorithm = 'sha256' | 'crc32';

export interface ChunkChecksum {
  algorithm: ChecksumAlgorithm;
  /** Lower-case hex: 64 digits for sha256, 8 for crc32 (IEEE, as zlib.crc32). */
  expected: string;
}

/**
 * One contiguous piece of one chunk, written at `chunk * chunkSize + chunkOffset` into the staging file.
 * A chunk arrives as one task (WebSocket frames, small PUTs) or as several (a PUT body streamed in batches); the
 * task with `last: true` is the one that sets the chunk's bit.
 */
export interface WriteTask {
  /** The upload's shared state (see shared-layout.ts). */
  sab: SharedArrayBuffer;
  /** The staging file, opened once by the main thread (never in append mode); workers never close it. */
  fd: number;
  /**
   * The same file opened with O_DIRECT, when the filesystem allows it. Used for pieces whose buffer address, file
   * offset and length are 4 KiB-aligned (slab pieces); everything else goes through `fd` and the page cache.
   */
  directFd?: number;
  fileSize: number;
  chunkSize: number;
  chunk: number;
  /** Where this piece starts inside its chunk. */
  chunkOffset: number;
  /** The bytes: `length` bytes of `data` starting at `dataOffset`. A SAB slab or a moved ArrayBuffer. */
  data: SharedArrayBuffer | ArrayBuffer;
  dataOffset: number;
  length: number;
  /**
   * First piece of the chunk (must start at chunkOffset 0). Any piece, first or not, that finds the chunk's bit
   * already set writes nothing (`duplicate`): a completed chunk's bytes are never overwritten.
   */
  first: boolean;
  /**
   * Last piece of the chunk (must end at the chunk's end): after writing, set the bit (once) and count the chunk.
   * The earlier pieces of the chunk must have settled before it is dispatched: the worker cannot see them.
   */
  last: boolean;
  /** The writer's id (> 0), stored in the lock word while this task holds the lock. */
  ownerId: number;
  /** How long to wait for the lock before giving up with ERR_CHUNK_BUSY. */
  lockTimeoutMs: number;
  /** Only when the piece is the whole chunk (first && last): verify before writing. */
  checksum?: ChunkChecksum;
}

/**
 * Touch every page of some slab arenas (SharedArrayBuffers the main thread copies request bytes into), so that the
 * memory is resident before the main thread's first copy into it (WritePool.prefault). The bytes are left as they are.
 */
export interface PrefaultTask {
  arenas: SharedArrayBuffer[];
}

/** Failures a worker reports as data (expected outcomes), not as thrown errors. */
export type WriteFailureCode =
  | 'ERR_CHECKSUM_MISMATCH'
  | 'ERR_CHUNK_BUSY'
  | 'ERR_UPLOAD_CANCELLED'
  | 'ERR_UPLOAD_EXPIRED'
  | 'ERR_UPLOAD_FAILED'
  | 'ERR_UPLOAD_FINALIZING'
  | 'ERR_STORAGE_FAILED'
  | 'ERR_INVALID_CHUNK_NUMBER';

export interface WriteResult {
  /** Bytes written by this task (0 for a duplicate or a failure). */
  written: number;
  /** The chunk's bit was already set when this piece arrived: nothing written. */
  duplicate: boolean;
  /** This task flipped the chunk's bit (exactly one task per chunk ever does). */
  flipped: boolean;
  /** This task saw every bit set and won the finalizer word: the caller must finalize the upload. */
  finalize: boolean;
  /** Counters after this task (read with Atomics.load). */
  receivedChunks: number;
  receivedBytes: number;
  /** The O_DIRECT fd refused the write (EINVAL) and the piece went through `fd`: stop sending `directFd`. */
  directRefused?: boolean;
  /** Set when the write did not happen or did not complete; nothing was counted. */
  failure?: { code: WriteFailureCode; message: string; errno?: string };
}
