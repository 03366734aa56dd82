/**
 * One upload as the main thread sees it: its metadata, the SharedArrayBuffer the workers update, the staging fd,
 * which writer currently owns which chunk, and the group commit that makes written chunks durable.
 *
 * Chunk ownership ("claims") lives here, on the main thread, because every request and frame enters through it:
 * a chunk has at most one writer at a time, so pieces of two writers can never interleave (invariant 3). A second
 * writer of the same chunk waits (asynchronously) for the first; if the first completes, the second is answered as
 * a duplicate, and if the first is aborted, the second takes over.
 */
import fs from 'node:fs';
import { promisify } from 'node:util';
import { UploadError } from '../protocol/errors.js';
import type { ErrorCode } from '../protocol/errors.js';
import type { StatusData } from '../protocol/messages.js';
import {
  B_RECEIVED_BYTES,
  H_RECEIVED_CHUNKS,
  H_STATE,
  H_TASKS_IN_FLIGHT,
  STATE_ACTIVE,
  STATE_CANCELLED,
  STATE_COMPLETED,
  STATE_EXPIRED,
  STATE_FAILED,
  STATE_FINALIZING,
  missingChunks,
} from '../workers/shared-layout.js';
import type { SharedState } from '../workers/shared-layout.js';
import type { Journal, UploadMeta, UploadStatus } from './state-store.js';

const fdatasync = promisify(fs.fdatasync);

const STATE_WORD: Record<UploadStatus, number> = {
  active: STATE_ACTIVE,
  finalizing: STATE_FINALIZING,
  completed: STATE_COMPLETED,
  cancelled: STATE_CANCELLED,
  failed: STATE_FAILED,
  expired: STATE_EXPIRED,
};

export interface CompletionInfo {
  guid: string;
  /** The name the file got in its target folder (may differ from the requested one under `onConflict: rename`). */
  fileName: string;
  size: number;
  /** The target folder relative to the upload root, '/'-separated ('' = the root). */
  targetPath: string;
}

export type { StatusData };

interface Waiter {
  /** true: the chunks are in the journal; false: covered by completion's sync only (see commit). */
  resolve: (journaled: boolean) => void;
  reject: (e: unknown) => void;
}

export class Upload {
  readonly guid: string;
  readonly user: string;
  readonly fileName: string;
  readonly fileSize: number;
  readonly chunkSize: number;
  readonly totalChunks: number;
  readonly targetPath: string[];
  readonly uploadMethod: string | undefined;
  /** The client's identity of its source, from init (UploadMeta.fingerprint); echoed in status. */
  readonly fingerprint: string | undefined;
  /** The init's Idempotency-Key and request digest (UploadMeta.idempotency). */
  readonly idempotency: { key: string; digest: string } | undefined;
  /** An ended upload's counts from its record (UploadMeta.received), for when it has no shared state (a reload). */
  readonly #received: { chunks: number; bytes: number } | undefined;
  readonly startTime: number;
  lastActivityTime: number;
  #status: UploadStatus;
  finalName: string | undefined;
  /** The staging file's "ino:birthtime", taken when finalizing begins (UploadMeta.fileId). */
  fileId: string | undefined;
  endTime: number | undefined;
  failure: { code: ErrorCode; message: string } | undefined;

  /** Present while the upload can receive bytes (active/finalizing); null for an ended record. */
  shared: SharedState | null;
  fd: number | null = null;
  /** The staging file opened with O_DIRECT (aligned slab pieces bypass the page cache), or null. */
  directFd: number | null = null;
  /** A worker saw the O_DIRECT fd refuse a write: stop using it (it is closed with the others). */
  directRefused = false;
  journal: Journal | null = null;
  /** Told the duration of every group-commit fdatasync (metrics). */
  observeSync: ((seconds: number) => void) | undefined;
  /** Set once completion starts; every caller that sees the last chunk awaits the same promise. */
  completion: Promise<CompletionInfo> | null = null;
  /**
   * Set while a cancel or an expiry is being recorded (registry.cancel, registry.reap): the upload is still active
   * and takes chunks, but completion, another end and shutdown wait for it, and it wins once its record is durable.
   */
  ending: Promise<void> | null = null;
  /**
   * A graceful stop (registry.close) in two steps. `stopping`: no new write task, no new acknowledgement in `upload`
   * durability, no completion (ERR_SHUTTING_DOWN), while commits still run so the stop can record what was written.
   * `closing`: commits are refused too (ERR_SHUTTING_DOWN, the upload does not fail), so once the rounds already
   * running have ended nothing touches the files the stop then closes.
   */
  stop: 'none' | 'stopping' | 'closing' = 'none';

  readonly #claims = new Map<number, number>();
  readonly #claimWaiters = new Map<number, Set<() => void>>();

  // Group commit: chunks written since the last commit began, and who waits for them to be durable.
  #pending: number[] = [];
  #waiters: Waiter[] = [];
  #committing: Promise<void> | null = null;

  constructor(meta: UploadMeta, shared: SharedState | null) {
    this.guid = meta.guid;
    this.user = meta.user;
    this.fileName = meta.fileName;
    this.fileSize = meta.fileSize;
    this.chunkSize = meta.chunkSize;
    this.totalChunks = meta.totalChunks;
    this.targetPath = meta.targetPath;
    this.uploadMethod = meta.uploadMethod;
    this.fingerprint = meta.fingerprint;
    this.idempotency = meta.idempotency;
    this.#received = meta.received;
    this.startTime = meta.startTime;
    this.lastActivityTime = meta.lastActivityTime;
    this.#status = meta.status;
    this.finalName = meta.finalName;
    this.fileId = meta.fileId;
    this.endTime = meta.endTime;
    this.failure = meta.failure as Upload['failure'];
    this.shared = shared;
  }

  get status(): UploadStatus {
    return this.#status;
  }

  set status(s: UploadStatus) {
    this.#status = s;
    // Atomics.store: workers read H_STATE before writing; seq-cst so a cancelled upload is seen by the next task.
    if (this.shared) Atomics.store(this.shared.header, H_STATE, STATE_WORD[s]);
  }

  get receivedChunks(): number {
    if (!this.shared) return this.#status === 'completed' ? this.totalChunks : (this.#received?.chunks ?? 0);
    return Atomics.load(this.shared.header, H_RECEIVED_CHUNKS);
  }

  get receivedBytes(): number {
    if (!this.shared) return this.#status === 'completed' ? this.fileSize : (this.#received?.bytes ?? 0);
    return Number(Atomics.load(this.shared.counters, B_RECEIVED_BYTES));
  }

  /** Tasks dispatched to workers and not yet settled (the reaper and cancel wait for 0). */
  get tasksInFlight(): number {
    return this.shared ? Atomics.load(this.shared.header, H_TASKS_IN_FLIGHT) : 0;
  }

  get claimCount(): number {
    return this.#claims.size;
  }

  touch(now = Date.now()): void {
    this.lastActivityTime = now;
  }

  toMeta(): UploadMeta {
    const meta: UploadMeta = {
      v: 1,
      guid: this.guid,
      user: this.user,
      fileName: this.fileName,
      fileSize: this.fileSize,
      chunkSize: this.chunkSize,
      totalChunks: this.totalChunks,
      targetPath: this.targetPath,
      startTime: this.startTime,
      lastActivityTime: this.lastActivityTime,
      status: this.#status,
    };
    if (this.uploadMethod !== undefined) meta.uploadMethod = this.uploadMethod;
    if (this.fingerprint !== undefined) meta.fingerprint = this.fingerprint;
    if (this.idempotency !== undefined) meta.idempotency = this.idempotency;
    if (this.finalName !== undefined) meta.finalName = this.finalName;
    if (this.fileId !== undefined) meta.fileId = this.fileId;
    if (this.endTime !== undefined) meta.endTime = this.endTime;
    if (this.failure !== undefined) meta.failure = this.failure;
    if (this.#status !== 'completed') meta.received = { chunks: this.receivedChunks, bytes: this.receivedBytes };
    return meta;
  }

  statusData(): StatusData {
    const s = this.#status;
    const data: StatusData = {
      guid: this.guid,
      fileName: this.fileName,
      fileSize: this.fileSize,
      chunkSize: this.chunkSize,
      totalChunks: this.totalChunks,
      receivedChunks: this.receivedChunks,
      receivedBytes: this.receivedBytes,
      // Only a live upload asks for chunks: an ended one (completed, cancelled, failed) accepts none.
      missingChunks: this.shared && (s === 'active' || s === 'finalizing') ? missingChunks(this.shared) : [],
      uploadStatus: s === 'finalizing' ? 'active' : s === 'expired' ? 'failed' : s,
      startTime: this.startTime,
      lastActivityTime: this.lastActivityTime,
      targetPath: this.targetPath.join('/'),
    };
    if (this.finalName !== undefined && s === 'completed') data.finalName = this.finalName;
    if (this.fingerprint !== undefined) data.fingerprint = this.fingerprint;
    return data;
  }

  /** Throws the error a chunk for this upload gets when it can no longer be written. */
  assertWritable(): void {
    switch (this.#status) {
      case 'active':
        return;
      case 'finalizing':
        throw new UploadError('ERR_UPLOAD_FINALIZING');
      case 'cancelled':
        throw new UploadError('ERR_UPLOAD_CANCELLED');
      case 'expired':
        throw new UploadError('ERR_UPLOAD_EXPIRED');
      case 'failed':
        throw new UploadError('ERR_UPLOAD_FAILED', this.failure ? `Upload failed: ${this.failure.message}` : undefined);
      case 'completed':
        return; // callers answer "already received" with the completion record
    }
  }

  // --- claims ------------------------------------------------------------------------------------------------------

  /** Takes the chunk for `writerId` when nobody holds it. Never blocks. */
  tryClaim(chunk: number, writerId: number): boolean {
    if (this.#claims.has(chunk)) return false;
    this.#claims.set(chunk, writerId);
    return true;
  }

  /** Some writer holds the chunk (it may be writing it, or committing it after its bit was set). */
  isClaimed(chunk: number): boolean {
    return this.#claims.has(chunk);
  }

  releaseClaim(chunk: number, writerId: number): void {
    if (this.#claims.get(chunk) !== writerId) return;
    this.#claims.delete(chunk);
    const waiters = this.#claimWaiters.get(chunk);
    if (waiters) {
      this.#claimWaiters.delete(chunk);
      for (const w of waiters) w();
    }
  }

  /**
   * Resolves true when the chunk is claimed by `writerId`, false after `timeoutMs` (or when `signal` aborts).
   * Waiting is a promise on the main thread; nothing blocks.
   */
  async claim(chunk: number, writerId: number, timeoutMs: number, signal?: AbortSignal): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.tryClaim(chunk, writerId)) {
      const left = deadline - Date.now();
      if (left <= 0 || signal?.aborted) return false;
      await new Promise<void>((resolve) => {
        let set = this.#claimWaiters.get(chunk);
        if (!set) this.#claimWaiters.set(chunk, (set = new Set()));
        const done = (): void => {
          clearTimeout(timer);
          signal?.removeEventListener('abort', done);
          set!.delete(done);
          resolve();
        };
        const timer = setTimeout(done, left);
        signal?.addEventListener('abort', done, { once: true });
        set.add(done);
      });
    }
    return true;
  }

  // --- durability ----------------------------------------------------------------------------------------------------

  /**
   * `chunk` durability: resolves once an fdatasync that began after these chunks were written has finished and the
   * journal records them durably (group commit: one sync acknowledges everything written before it began).
   * Rejects with ERR_STORAGE_FAILED, and fails the upload, if a sync fails: a failed fsync is never retried into a
   * success (invariant 7).
   *
   * Resolves false when completion had begun (or finished) before the round: completion's fdatasync begins after
   * every chunk was written, so it covers these chunks, but the journal does not list them, and until the
   * completion is durable a crash would ask for them again. The caller must then wait for the completion before
   * acknowledging (chunk-ingest.ts settle).
   */
  commit(chunks: readonly number[]): Promise<boolean> {
    for (const c of chunks) this.#pending.push(c);
    return new Promise<boolean>((resolve, reject) => {
      this.#waiters.push({ resolve, reject });
      this.#committing ??= this.#runCommits();
    });
  }

  /**
   * `upload` durability: remember a written chunk for the next checkpoint, acknowledge at once. Refused once a stop
   * has begun: its last checkpoint may have been taken, and an acknowledged chunk must resume after the restart.
   */
  markWritten(chunk: number): void {
    if (this.stop !== 'none') throw new UploadError('ERR_SHUTTING_DOWN');
    this.#pending.push(chunk);
  }

  get hasUncommitted(): boolean {
    return this.#pending.length > 0;
  }

  /** Waits until no commit is running. */
  async commitsIdle(): Promise<void> {
    while (this.#committing) await this.#committing;
  }

  async #runCommits(): Promise<void> {
    // commit() stores this promise in #committing when this returns, and the finally below clears it: a run that
    // never awaited (files already closed, or the upload failed) would clear it before it was stored, leaving a
    // settled promise there for good (no later commit would start, and commitsIdle would spin on it forever).
    await null;
    try {
      while (this.#waiters.length > 0 || this.#pending.length > 0) {
        const waiters = this.#waiters;
        const chunks = this.#pending;
        this.#waiters = [];
        this.#pending = [];
        try {
          if (this.stop === 'closing') throw new UploadError('ERR_SHUTTING_DOWN');
          if (this.failure) throw new UploadError('ERR_UPLOAD_FAILED');
          let journaled = true;
          if (this.#status === 'finalizing' || this.#status === 'completed') {
            // Completion began after every chunk was written, so its own fdatasync covers these chunks; they are not
            // in the journal, so they are safe only once the completion is (the caller waits for it). The files
            // are not touched: completion closes them once the rounds it waited for have ended, maybe while this
            // one would still be appending.
            journaled = this.#status === 'completed';
          } else if (this.fd === null || this.journal === null) {
            throw new UploadError('ERR_UPLOAD_FAILED');
          } else {
            const t0 = performance.now();
            await fdatasync(this.fd);
            this.observeSync?.((performance.now() - t0) / 1000);
            await this.journal.append(chunks);
          }
          for (const w of waiters) w.resolve(journaled);
        } catch (e) {
          const err = e instanceof UploadError ? e : storageFailure(e);
          // A stop refuses the round without failing the upload: its chunks are simply not acknowledged.
          if (!this.failure && err.code !== 'ERR_SHUTTING_DOWN') this.failure = { code: err.code, message: err.message };
          for (const w of waiters) w.reject(err);
        }
      }
    } finally {
      this.#committing = null;
    }
  }
}

export function storageFailure(e: unknown): UploadError {
  const errno = (e as NodeJS.ErrnoException)?.code;
  const err = new UploadError(
    'ERR_STORAGE_FAILED',
    errno ? `Writing to storage failed (${errno}); the upload cannot continue` : undefined,
  );
  err.cause = e; // for the logs and for callers that tell errors apart (never sent to a client)
  return err;
}

/**
 * The path is not there (ENOENT, or a folder on the way turned into a file: ENOTDIR), also behind a storageFailure.
 * Every other failure to look at a file (EIO, EMFILE, EACCES) may pass by the next start.
 */
export function isGone(e: unknown): boolean {
  const errno = e instanceof UploadError ? (e.cause as NodeJS.ErrnoException | undefined)?.code : (e as NodeJS.ErrnoException)?.code;
  return errno === 'ENOENT' || errno === 'ENOTDIR';
}
