/**
 * From bytes on the main thread to an acknowledged chunk, for every transport (HTTP PUT and both WebSocket
 * protocols):
 *
 *   claim the chunk (one writer at a time, upload.ts) -> copy each piece once into a slab of the in-flight budget
 *   -> hand full slabs to the pool one after another (a chunk's pieces are written in order, so the task that sets
 *   its bit runs only after every other piece of it is on the file: invariant 1) -> after the last piece: commit
 *   (chunk durability) -> if that task saw the last bit, finalize -> release the claim.
 *
 * Pieces of different chunks (other requests) are written in parallel by different workers.
 */
import { UploadError } from '../protocol/errors.js';
import { checkChunkInRange } from '../protocol/validate.js';
import { chunkLength, isChunkSet } from '../workers/shared-layout.js';
import type { ChunkChecksum, WriteResult, WriteTask } from '../workers/task-types.js';
import type { ResolvedOptions } from './options.js';
import { copyIntoSlab } from './slab-pool.js';
import type { SlabPool, Slab, YieldReason } from './slab-pool.js';
import type { Upload, CompletionInfo } from './upload.js';
import type { UploadRegistry } from './upload-registry.js';
import type { WritePool } from './write-pool.js';
import type { Metrics } from './metrics.js';

export interface IngestContext {
  readonly options: ResolvedOptions;
  readonly pool: WritePool;
  readonly slabs: SlabPool;
  readonly registry: UploadRegistry;
  readonly metrics?: Metrics | null;
}

export interface ChunkAck {
  chunk: number;
  duplicate: boolean;
  receivedChunks: number;
  totalChunks: number;
  receivedBytes: number;
  /** Present on the reply to the chunk that completed the upload (and on duplicates of a completed upload). */
  completion?: CompletionInfo;
}

/** The O_DIRECT grid: pieces handed over mid-chunk keep chunk offsets on it (write-task.ts DIRECT_ALIGN). */
const DIRECT_BLOCK = 4096;

let lastWriterId = 0;
/** Writer ids are > 0 (0 means "free" in a lock word) and unique among live writers. */
export function nextWriterId(): number {
  lastWriterId = lastWriterId >= 0x7fff_fff0 ? 1 : lastWriterId + 1;
  return lastWriterId;
}

function ack(u: Upload, chunk: number, duplicate: boolean, completion?: CompletionInfo): ChunkAck {
  const a: ChunkAck = {
    chunk,
    duplicate,
    receivedChunks: u.receivedChunks,
    totalChunks: u.totalChunks,
    receivedBytes: u.receivedBytes,
  };
  if (completion) a.completion = completion;
  return a;
}

/** The completion record of a completed upload, for retried chunks and status calls. */
export function completionOf(u: Upload): CompletionInfo {
  return { guid: u.guid, fileName: u.finalName ?? u.fileName, size: u.fileSize, targetPath: u.targetPath.join('/') };
}

/**
 * Checks a chunk number against the upload and, if the chunk still needs bytes, claims it for `writerId`.
 * Returns an ack (duplicate) when there is nothing to write, null when the caller now owns the chunk.
 */
export async function claimChunk(
  ctx: IngestContext,
  u: Upload,
  chunk: number,
  writerId: number,
  signal?: AbortSignal,
): Promise<ChunkAck | null> {
  checkChunkInRange(chunk, u.totalChunks);
  // A cancel or an expiry being recorded decides first: a chunk that came meanwhile is answered by its outcome
  // (410 once it is durable) rather than acknowledged into an upload that is about to go away. An expiry is decided
  // on an upload nobody was writing; without this wait, a chunk arriving while the record is written was stored,
  // acknowledged, and then removed with the upload.
  if (u.ending) await u.ending.catch(() => {});
  if (u.status === 'completed') return ack(u, chunk, true, completionOf(u));
  // While finalizing, every bit is set: a chunk sent now is a duplicate whose reply waits for the completion's
  // outcome (a retry that did nothing wrong is not refused).
  if (u.status !== 'finalizing') u.assertWritable();
  u.touch();
  // A set bit is not yet an acknowledgement: its writer sets it right after the write and only then commits
  // (chunk durability: fdatasync + journal). While that writer still holds the claim, a crash can take the chunk
  // away, so a duplicate that answered "already received" now would acknowledge bytes that are not durable
  // (durability.md invariant 4). Writers keep the claim until their commit has ended (ChunkReceiver.abort
  // included), so "bit set and nobody holds the claim" means durable, or the upload has failed (checked above).
  // Otherwise the duplicate waits for the claim like any second writer and looks again.
  if (u.shared && isChunkSet(u.shared, chunk) && !u.isClaimed(chunk)) return ack(u, chunk, true, await pendingCompletion(u));
  if (!(await u.claim(chunk, writerId, ctx.options.chunkBusyTimeout, signal))) {
    if (signal?.aborted) throw new UploadError('ERR_CHUNK_INCOMPLETE');
    throw new UploadError('ERR_CHUNK_BUSY');
  }
  // The previous owner may have finished the chunk, or the upload may have ended, while we waited. An upload that
  // failed meanwhile (e.g. the previous owner's commit failed) is reported as failed, never as "already received".
  if ((u.status as string) === 'completed') {
    u.releaseClaim(chunk, writerId);
    return ack(u, chunk, true, completionOf(u));
  }
  if (u.shared && isChunkSet(u.shared, chunk) && ((u.status as string) === 'active' || (u.status as string) === 'finalizing')) {
    u.releaseClaim(chunk, writerId);
    return ack(u, chunk, true, await pendingCompletion(u));
  }
  try {
    u.assertWritable();
  } catch (e) {
    u.releaseClaim(chunk, writerId);
    throw e;
  }
  return null;
}

/** A duplicate of a chunk of an upload that is completing waits for the completion (so its reply is truthful). */
async function pendingCompletion(u: Upload): Promise<CompletionInfo | undefined> {
  return u.completion ? await u.completion : undefined;
}

/** After a chunk's last task: make it durable as the durability mode says, finalize if it was the last bit. */
async function settle(ctx: IngestContext, u: Upload, chunk: number, r: WriteResult, startedAt: number): Promise<ChunkAck> {
  if (r.directRefused) u.directRefused = true;
  if (r.failure) {
    const err = new UploadError(r.failure.code, r.failure.message);
    if (r.failure.code === 'ERR_STORAGE_FAILED') await ctx.registry.fail(u, err);
    throw err;
  }
  if (r.duplicate) return ack(u, chunk, true, await pendingCompletion(u));
  if (r.flipped) {
    ctx.registry.emit('chunk', {
      guid: u.guid,
      user: u.user,
      chunk,
      size: chunkLength(u.fileSize, u.chunkSize, chunk),
      receivedChunks: r.receivedChunks,
      totalChunks: u.totalChunks,
      writeSeconds: (performance.now() - startedAt) / 1000,
    });
    if (ctx.options.durability === 'chunk') {
      let journaled: boolean;
      try {
        journaled = await u.commit([chunk]);
      } catch (e) {
        const err = e instanceof UploadError ? e : new UploadError('ERR_STORAGE_FAILED');
        // A stop refused the commit: the chunk is not acknowledged, and the upload resumes after the restart.
        if (err.code !== 'ERR_SHUTTING_DOWN') await ctx.registry.fail(u, err);
        throw err;
      }
      // The completion (started by another chunk's writer) synced and closed the file before this chunk's commit
      // ran: the chunk is on disk but not in the journal, so a crash before the completion is durable would ask
      // for it again. Acknowledge it only with the completion's outcome (found by the stress harness's journal
      // oracle).
      if (!journaled && !r.finalize) return ack(u, chunk, false, await pendingCompletion(u));
    } else {
      u.markWritten(chunk);
    }
  }
  if (r.finalize) return ack(u, chunk, false, await ctx.registry.finalize(u));
  return ack(u, chunk, false);
}

function baseTask(ctx: IngestContext, u: Upload, chunk: number, writerId: number): Omit<WriteTask, 'data' | 'dataOffset' | 'length' | 'chunkOffset' | 'first' | 'last'> {
  // A stop waits for the tasks in flight, then closes the files: no new task may start after it began.
  if (u.stop !== 'none') throw new UploadError('ERR_SHUTTING_DOWN');
  if (!u.shared || u.fd === null) {
    u.assertWritable(); // ended meanwhile (a cancel or an expiry while the body arrived): its own code, e.g. 410
    throw new UploadError('ERR_UPLOAD_FAILED');
  }
  return {
    sab: u.shared.sab,
    fd: u.fd,
    ...(u.directFd !== null && !u.directRefused ? { directFd: u.directFd } : {}),
    fileSize: u.fileSize,
    chunkSize: u.chunkSize,
    chunk,
    ownerId: writerId,
    lockTimeoutMs: 10_000,
  };
}

/**
 * Writes a chunk that is whole in memory (a WebSocket frame). `bytes` is copied before the first await, so the
 * caller's buffer (valid only during a uWS callback) may be reused at once. Claims and releases the chunk itself.
 */
export async function writeWholeChunk(
  ctx: IngestContext,
  u: Upload,
  chunk: number,
  bytes: Uint8Array,
  checksum?: ChunkChecksum,
): Promise<ChunkAck> {
  const expected = chunk >= 0 && chunk < u.totalChunks ? chunkLength(u.fileSize, u.chunkSize, chunk) : -1;
  if (expected >= 0 && bytes.length > expected) throw new UploadError('ERR_CHUNK_TOO_LARGE', `Chunk ${chunk} is ${expected} bytes, got ${bytes.length}`);
  if (expected >= 0 && bytes.length < expected) throw new UploadError('ERR_CHUNK_TOO_SMALL', `Chunk ${chunk} is ${expected} bytes, got ${bytes.length}`);
  // Copy now, before any await (the frame is only valid during the uWS callback). Without a checksum the bytes go
  // into slabs of the in-flight budget (page-aligned, so the workers write them with O_DIRECT); what the budget
  // cannot hold, and a checksummed chunk (the worker hashes the whole chunk in one task), go into one ArrayBuffer.
  const pieces: Array<{ data: SharedArrayBuffer | ArrayBuffer; dataOffset: number; length: number; slab: Slab | null }> = [];
  let off = 0;
  while (off < bytes.length) {
    const slab = checksum ? null : ctx.slabs.tryAcquireFilled();
    if (!slab) {
      const rest = bytes.subarray(off);
      const copy = overflowCopy(rest);
      pieces.push({ data: copy, dataOffset: 0, length: rest.length, slab: null });
      break;
    }
    const n = Math.min(slab.size, bytes.length - off);
    copyIntoSlab(slab, bytes.subarray(off, off + n), 0);
    pieces.push({ data: slab.sab, dataOffset: slab.offset, length: n, slab });
    off += n;
  }
  ctx.metrics?.bytesReceived.inc(bytes.length);
  const writerId = nextWriterId();
  try {
    const dup = await claimChunk(ctx, u, chunk, writerId);
    if (dup) return dup;
    try {
      const startedAt = performance.now();
      let chunkOffset = 0;
      let r: WriteResult | null = null;
      // One piece after another: the last (which sets the bit) runs only after every other piece is written.
      for (let i = 0; i < pieces.length; i++) {
        const p = pieces[i]!;
        const task: WriteTask = {
          ...baseTask(ctx, u, chunk, writerId),
          chunkOffset,
          data: p.data,
          dataOffset: p.dataOffset,
          length: p.length,
          first: i === 0,
          last: i === pieces.length - 1,
        };
        if (checksum) task.checksum = checksum;
        r = await ctx.pool.write(task);
        chunkOffset += p.length;
        if (r.directRefused) u.directRefused = true;
        if (r.failure || r.duplicate) break;
      }
      return await settle(ctx, u, chunk, r!, startedAt);
    } finally {
      u.releaseClaim(chunk, writerId);
    }
  } finally {
    for (const p of pieces) if (p.slab) ctx.slabs.release(p.slab);
  }
}

export interface ReceiverOptions {
  /**
   * true (default): the receiver holds a reading place (SlabPool `maxFilling`) while it fills a slab, for a
   * transport that can pause (a PUT body). false: slabs come from the byte budget alone (`tryAcquireFilled`), for a
   * transport that cannot pause (a WebSocket, whose bytes arrive whether or not we read): a place would only make
   * others wait.
   */
  readingPlace?: boolean;
  /**
   * The claim of the chunk, still being made (`claimChunk`) when the first bytes arrive. Pieces are copied into slabs
   * meanwhile and written once the claim is ours; a duplicate ack or an error ends the chunk, which finish() then
   * reports. Without it the caller already holds the claim.
   */
  claim?: Promise<ChunkAck | null>;
}

/**
 * Receives one chunk streamed in pieces (a PUT body, or `updraft.v1` parts). The owner of the request calls `push`
 * for each piece (copied at once), `finish` at the end of the body, or `abort`. When the in-flight budget is used
 * up, `onPause` asks the transport to stop reading and `onResume` to go on; `onPause(true)` says the body lost its
 * reading place for sending nothing, so the time it then waits is still the client's idle time.
 */
export class ChunkReceiver {
  readonly expected: number;
  received = 0;
  #slab: Slab | null = null;
  #fill = 0;
  /** Bytes of the chunk already handed to tasks (the next piece starts here). */
  #dispatched = 0;
  #chain: Promise<void> = Promise.resolve();
  #first = true;
  #error: unknown = null;
  #duplicate = false;
  /** The reply when the claim found the chunk already stored (see ReceiverOptions.claim). */
  #dupAck: ChunkAck | null = null;
  #aborted = false;
  /** finish() has started: it releases the claim itself, after the chunk's commit. */
  #finishing = false;
  #paused = false;
  /** Bytes received that wait for a slab (see #place), in order. */
  #pending: Uint8Array[] = [];
  #cancelWait: (() => void) | null = null;
  readonly #readingPlace: boolean;
  readonly #startedAt = performance.now();

  constructor(
    private readonly ctx: IngestContext,
    private readonly u: Upload,
    readonly chunk: number,
    private readonly writerId: number,
    private readonly onPause: (silent: boolean) => void,
    private readonly onResume: () => void,
    options: ReceiverOptions = {},
  ) {
    this.expected = chunkLength(u.fileSize, u.chunkSize, chunk);
    this.#readingPlace = options.readingPlace ?? true;
    if (options.claim) {
      this.#chain = options.claim.then(
        (dup) => {
          if (dup === null) return;
          this.#duplicate = true;
          this.#dupAck = dup;
          // No more of it is copied (see push): give back the slab and the bytes held for it.
          this.#cancelWait?.();
          this.#cancelWait = null;
          this.#dropPending();
          if (this.#slab !== null) {
            this.ctx.slabs.release(this.#slab);
            this.#slab = null;
          }
        },
        (e: unknown) => {
          this.#error ??= e;
        },
      );
    }
    // Take the first slab now, before the transport reads any of the body: without one, the request pauses here
    // and its first piece never has to be copied outside the budget.
    const first = this.#acquire();
    if (first) this.#useSlab(first);
    else this.#pause();
  }

  /**
   * Copies `piece` (valid only during the caller's callback). Throws ERR_CHUNK_TOO_LARGE past the chunk's end.
   * `owned`: the caller made `piece` for this call and gives it up (it must not touch it afterwards), so it is kept
   * as it is rather than copied when it has to wait for a slab.
   */
  push(piece: Uint8Array, owned = false): void {
    if (this.#aborted) return;
    if (this.received + piece.length > this.expected) {
      throw new UploadError('ERR_CHUNK_TOO_LARGE', `Chunk ${this.chunk} is ${this.expected} bytes; the body is longer`);
    }
    this.received += piece.length;
    // The chunk is stored already (the claim found it so, e.g. a client resending it as parts): copy no more of it.
    if (this.#duplicate) return;
    this.#place(piece, owned);
    if (this.#slab !== null) this.ctx.slabs.touch(this.#slab);
    // Take the next slab now, while no byte is waiting for it: if the budget is spent, the request pauses before
    // its next piece arrives instead of after (when that piece would have to wait outside the budget).
    if (this.#slab === null && this.#pending.length === 0 && this.received < this.expected && !this.#paused) {
      const next = this.#acquire();
      if (next) this.#useSlab(next);
      else this.#pause();
    }
  }

  /**
   * Puts bytes into slabs, in order. Every piece handed to the writers before the chunk's end is a whole slab at a
   * slab-aligned offset, so all of them can go through O_DIRECT (a piece of another length would shift every later
   * piece of the chunk off the 4 KiB grid, into the page cache). Bytes that find no slab wait in #pending (copied
   * unless `owned`; at most about one network read per paused request) and the request pauses.
   */
  #place(piece: Uint8Array, owned: boolean): void {
    if (this.#pending.length > 0) {
      this.#pending.push(owned ? piece : this.ctx.slabs.spill(piece));
      return;
    }
    let off = 0;
    while (off < piece.length) {
      if (!this.#slab) {
        const slab = this.#acquire();
        if (!slab) {
          this.#pending.push(owned ? piece.subarray(off) : this.ctx.slabs.spill(piece.subarray(off)));
          this.#pause();
          return;
        }
        this.#useSlab(slab);
      }
      const slab = this.#slab!;
      const n = Math.min(slab.size - this.#fill, piece.length - off);
      copyIntoSlab(slab, piece.subarray(off, off + n), this.#fill);
      this.#fill += n;
      off += n;
      // A full slab goes to the pool, unless it ends the chunk: the last piece waits for finish(). This body keeps
      // its reading place and goes on in a new slab.
      if (this.#fill === slab.size && this.#dispatched + this.#fill < this.expected) this.#flushSlab(true);
    }
  }

  /** A slab came back after a pause: the bytes that waited go into it first (and maybe into more). */
  #drain(): void {
    const waiting = this.#pending;
    this.#pending = [];
    for (const piece of waiting) this.#place(piece, true);
    // The spill slots copied on in full are free again; one whose rest still waits (the slab ran out) is not. What
    // waits of a piece is that piece or its end (#place keeps an owned piece as it is), inside its bytes.
    for (const piece of waiting) {
      const end = piece.byteOffset + piece.length;
      if (!this.#pending.some((p) => p.buffer === piece.buffer && p.byteOffset >= piece.byteOffset && p.byteOffset < end)) {
        this.ctx.slabs.returnSpill(piece);
      }
    }
  }

  /** Forgets the bytes waiting for a slab (nothing else reads them: finish() takes them out before its writes). */
  #dropPending(): void {
    for (const piece of this.#pending) this.ctx.slabs.returnSpill(piece);
    this.#pending = [];
  }

  /**
   * The pool's idle sweep: this body sent nothing for a while (`idle`), or held its slab too long (`slow`), and others
   * wait to read. Hand the slab's whole 4 KiB blocks to the writers, keep the rest (under 4 KiB) waiting, give the
   * reading place up, and wait in line again, paused, like a request that found no slab.
   */
  readonly #onIdle = (reason: YieldReason): void => {
    const slab = this.#slab;
    if (slab === null || this.#aborted || this.#finishing || this.#paused) return;
    // Every byte is in: finish() is about to seal this slab as the chunk's last piece.
    if (this.received === this.expected) return;
    const whole = this.#fill - (this.#fill % DIRECT_BLOCK);
    const tail = new Uint8Array(slab.bytes.subarray(whole, this.#fill)); // a copy: the slab goes back to the pool
    if (whole > 0) {
      this.#fill = whole;
      this.#flushSlab();
    } else {
      this.#slab = null;
      this.#fill = 0;
      this.ctx.slabs.release(slab);
    }
    if (tail.length > 0) this.#pending.push(tail);
    this.#pause(reason === 'idle');
  };

  /** A slab now (with a reading place unless ReceiverOptions.readingPlace is false), or null. */
  #acquire(): Slab | null {
    return this.#readingPlace ? this.ctx.slabs.tryAcquire(this.#onIdle) : this.ctx.slabs.tryAcquireFilled();
  }

  #useSlab(slab: Slab): void {
    this.#slab = slab;
    this.#fill = 0;
  }

  /** Hands the current slab to the writers; with `goOn`, takes the next one in its place (see sealAndTake). */
  #flushSlab(goOn = false): void {
    const slab = this.#slab!;
    const fill = this.#fill;
    this.#slab = null;
    this.#fill = 0;
    if (goOn && this.#readingPlace) {
      const next = this.ctx.slabs.sealAndTake(slab, this.#onIdle);
      if (next) this.#useSlab(next);
    }
    this.#enqueue(slab.sab, slab.offset, fill, slab);
    if (goOn && !this.#readingPlace) {
      const next = this.ctx.slabs.tryAcquireFilled();
      if (next) this.#useSlab(next);
    }
  }

  #enqueue(data: SharedArrayBuffer | ArrayBuffer, dataOffset: number, length: number, slab: Slab | null, last = false): Promise<WriteResult | null> {
    const chunkOffset = this.#dispatched;
    this.#dispatched += length;
    const first = this.#first;
    this.#first = false;
    if (slab) this.ctx.slabs.seal(slab);
    const run = this.#chain.then(async (): Promise<WriteResult | null> => {
      try {
        if (this.#error !== null || this.#duplicate || this.#aborted) return null;
        const r = await this.ctx.pool.write({
          ...baseTask(this.ctx, this.u, this.chunk, this.writerId),
          chunkOffset,
          data,
          dataOffset,
          length,
          first,
          last,
        });
        if (r.directRefused) this.u.directRefused = true;
        if (r.failure) this.#error ??= r;
        else if (r.duplicate) this.#duplicate = true;
        return r;
      } catch (e) {
        this.#error ??= e;
        return null;
      } finally {
        if (slab) this.ctx.slabs.release(slab);
      }
    });
    this.#chain = run.then(() => undefined);
    return run;
  }

  /** `silent`: the body lost its reading place for sending nothing (the transport's idle clock keeps running). */
  #pause(silent = false): void {
    if (this.#paused) return;
    this.#paused = true;
    this.onPause(silent);
    // The pool hands the waiter a slab it already owns: keep it for the next piece (or give it back if aborted).
    this.#cancelWait = this.ctx.slabs.onAvailable((slab) => {
      this.#cancelWait = null;
      this.#paused = false;
      if (this.#aborted || this.#duplicate || this.#slab !== null) {
        this.ctx.slabs.release(slab);
        return;
      }
      this.#useSlab(slab);
      if (this.#readingPlace) this.ctx.slabs.watchIdle(slab, this.#onIdle);
      // Outside the pool's hand-out loop: placing the waiting bytes may seal slabs and take new ones.
      queueMicrotask(() => {
        if (this.#aborted) return;
        this.#drain();
        if (!this.#paused && !this.#finishing) this.onResume();
      });
    }, this.#readingPlace);
  }

  /** End of body: checks the length, writes the last piece, settles the chunk. Releases the claim. */
  async finish(): Promise<ChunkAck> {
    this.#finishing = true;
    try {
      if (this.received < this.expected) {
        throw new UploadError('ERR_CHUNK_TOO_SMALL', `Chunk ${this.chunk} is ${this.expected} bytes, got ${this.received}`);
      }
      // Bytes still waiting for a slab: into the slab if one came, else they go as they are (they end the chunk, so
      // no later piece is pushed off the O_DIRECT grid by them).
      if (this.#slab !== null) this.#drain();
      const waiting = this.#pending;
      this.#pending = [];
      this.#cancelWait?.();
      this.#cancelWait = null;
      const slab = this.#slab;
      this.#slab = null;
      let last: Promise<WriteResult | null>;
      if (slab) {
        last = this.#enqueue(slab.sab, slab.offset, this.#fill, slab, waiting.length === 0);
      } else if (waiting.length === 0) {
        last = this.#enqueue(new ArrayBuffer(0), 0, 0, null, true);
      }
      waiting.forEach((piece, i) => {
        last = this.#enqueue(piece.buffer as ArrayBuffer, piece.byteOffset, piece.length, null, i === waiting.length - 1);
      });
      const r = await last!;
      // Every task of the chunk has settled (they run one after another): the spill slots they read are free again.
      for (const piece of waiting) this.ctx.slabs.returnSpill(piece);
      if (this.#error !== null) {
        const err = toUploadError(this.#error);
        if (err.code === 'ERR_STORAGE_FAILED') await this.ctx.registry.fail(this.u, err);
        throw err;
      }
      if (this.#dupAck !== null) return this.#dupAck;
      if (this.#duplicate || r === null) return ack(this.u, this.chunk, true, await pendingCompletion(this.u));
      return await settle(this.ctx, this.u, this.chunk, r, this.#startedAt);
    } finally {
      this.#release();
    }
  }

  /** The request went away or was refused: write nothing more, leave the chunk's bit unset, free everything. */
  abort(): void {
    if (this.#aborted) return;
    this.#aborted = true;
    // Once finish() runs, the last piece may already have set the chunk's bit, and its commit is still to come:
    // releasing the claim now would let a duplicate answer "already received" before the chunk is durable (see
    // claimChunk). finish() goes on without the client and releases the claim when the commit has ended.
    if (this.#finishing) return;
    this.#release();
  }

  #release(): void {
    this.#cancelWait?.();
    this.#cancelWait = null;
    this.#dropPending();
    if (this.#slab) {
      this.ctx.slabs.release(this.#slab);
      this.#slab = null;
    }
    // The claim is released once queued tasks are done, so a new writer never overlaps an old one's pieces.
    void this.#chain.then(() => this.u.releaseClaim(this.chunk, this.writerId));
  }
}

/**
 * A copy outside the slab budget, for the bytes the budget cannot hold right now. Not zero-filled (every byte is
 * overwritten at once), and its own ArrayBuffer at offset 0, so the pool can transfer it to a worker without a copy.
 */
function overflowCopy(bytes: Uint8Array): ArrayBuffer {
  const b = Buffer.allocUnsafeSlow(bytes.length);
  b.set(bytes);
  return b.buffer as ArrayBuffer;
}

function toUploadError(e: unknown): UploadError {
  if (e instanceof UploadError) return e;
  const f = (e as WriteResult)?.failure;
  if (f) return new UploadError(f.code, f.message);
  return new UploadError('ERR_INTERNAL');
}
