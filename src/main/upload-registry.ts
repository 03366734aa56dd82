/**
 * Upload id -> state: create, find, cancel, complete, fail, expire, and reload after a restart.
 *
 * Completion follows durability.md invariant 6 exactly: every bit set -> no commit running -> fdatasync the staging
 * file -> close -> record the chosen name (meta 'finalizing') -> link to the final name, which fails rather than
 * replace an existing file (or rename, under onConflict 'overwrite') -> unlink the staging name -> fsync the target
 * folder -> record 'completed' -> only then resolve, so the client hears "complete" last.
 */
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { createHash, randomUUID } from 'node:crypto';
import { promisify } from 'node:util';
import type { Logger } from 'pino';
import { UploadError } from '../protocol/errors.js';
import type { InitRequest } from '../protocol/validate.js';
import {
  B_RECEIVED_BYTES,
  H_RECEIVED_CHUNKS,
  allChunksSet,
  chunkLength,
  createSharedState,
  setChunkBit,
} from '../workers/shared-layout.js';
import { STAGING_DIR_NAME } from './options.js';
import { logValue } from './http-policy.js';
import type { ResolvedOptions } from './options.js';
import { GUID_RE, Journal, StateStore } from './state-store.js';
import type { UploadMeta } from './state-store.js';
import { Upload, isGone, storageFailure } from './upload.js';
import type { CompletionInfo } from './upload.js';

const fdatasync = promisify(fs.fdatasync);
const closeFd = promisify(fs.close);
const ftruncate = promisify(fs.ftruncate);
const fstat = promisify(fs.fstat);
// A plain numeric fd (not a FileHandle, which would close it when garbage-collected): workers write through it.
const openFd = promisify(fs.open) as (p: string, flags: string | number, mode?: number) => Promise<number>;

export interface ChunkEvent {
  guid: string;
  user: string;
  chunk: number;
  /** Bytes of this chunk. */
  size: number;
  receivedChunks: number;
  totalChunks: number;
  /** Seconds from the chunk's first byte handed to the pool to its last byte written (before any commit). */
  writeSeconds: number;
}

export interface UploadEvents {
  created: [info: UploadInfo];
  chunk: [info: ChunkEvent];
  completed: [info: UploadInfo & { finalName: string; durationMs: number }];
  failed: [info: UploadInfo & { code: string; message: string }];
  cancelled: [info: UploadInfo];
  expired: [info: UploadInfo];
}

/** What hooks and events see of an upload (no server paths). */
export interface UploadInfo {
  guid: string;
  user: string;
  fileName: string;
  fileSize: number;
  chunkSize: number;
  totalChunks: number;
  targetPath: string;
}

export function uploadInfo(u: Upload): UploadInfo {
  return {
    guid: u.guid,
    user: u.user,
    fileName: u.fileName,
    fileSize: u.fileSize,
    chunkSize: u.chunkSize,
    totalChunks: u.totalChunks,
    targetPath: u.targetPath.join('/'),
  };
}

/**
 * Inits between their limit check and their arrival in the registry (the onUploadCreate hook and the files take
 * several awaits): they count against maxUploads, maxUploadsPerUser and the free space like the uploads they are
 * about to be, so a burst of inits cannot all pass the checks at once.
 */
export class PendingCreations {
  readonly #byUser = new Map<string, number>();
  readonly #bytesByUser = new Map<string, number>();
  total = 0;
  bytes = 0;

  of(user: string): number {
    return this.#byUser.get(user) ?? 0;
  }

  /** File bytes of the user's inits still being created. */
  bytesOf(user: string): number {
    return this.#bytesByUser.get(user) ?? 0;
  }

  /** Takes a place; its `release` gives it back (once). */
  take(user: string, bytes: number): CreationPlace {
    this.total++;
    this.bytes += bytes;
    this.#byUser.set(user, this.of(user) + 1);
    this.#bytesByUser.set(user, this.bytesOf(user) + bytes);
    let held = true;
    return {
      bytes,
      release: () => {
        if (!held) return;
        held = false;
        this.total--;
        this.bytes -= bytes;
        const n = this.of(user) - 1;
        if (n > 0) this.#byUser.set(user, n);
        else this.#byUser.delete(user);
        const b = this.bytesOf(user) - bytes;
        if (n > 0) this.#bytesByUser.set(user, b);
        else this.#bytesByUser.delete(user);
      },
    };
  }
}

export interface CreationPlace {
  readonly bytes: number;
  release(): void;
}

/** An init's `Idempotency-Key` and the digest of its request (initDigest). */
export interface InitIdempotency {
  key: string;
  digest: string;
}

/**
 * What an init asked for, as the client sent it (before onUploadCreate's placement, and without the server's default
 * chunk size, which a restart may change between an init and its repeat): an init repeated with the same key must
 * ask for the same thing. The key itself is the client's; this only tells a reuse from a repeat.
 */
export function initDigest(req: InitRequest, chunkSizeSent: boolean): string {
  const asked = [req.fileName, req.fileSize, chunkSizeSent ? req.chunkSize : null, req.targetPath, req.fingerprint ?? null];
  return createHash('sha256').update(JSON.stringify(asked)).digest('base64url').slice(0, 22);
}

/** An upload keeps its init's key while it is open or completed; a cancelled, failed or expired one frees it. */
function holdsKey(u: Upload): boolean {
  return u.status === 'active' || u.status === 'finalizing' || u.status === 'completed';
}

function keyId(user: string, key: string): string {
  return `${user}\0${key}`;
}

export class UploadRegistry extends EventEmitter<UploadEvents> {
  /** How long an end or a stop waits for write tasks to leave an upload's files (ms); tests lower it. */
  static workersLeftMs = 30_000;

  readonly #uploads = new Map<string, Upload>();
  readonly creating = new PendingCreations();
  readonly store: StateStore;
  #rootReal = '';
  #reaper: NodeJS.Timeout | undefined;
  #checkpointer: NodeJS.Timeout | undefined;
  #closed = false;
  /** Called with the duration of every fdatasync of a staging file (metrics). */
  onSync: ((seconds: number) => void) | undefined;

  constructor(
    readonly options: ResolvedOptions,
    readonly log: Logger,
  ) {
    super();
    this.store = new StateStore(options.stagingDir);
  }

  /**
   * Listeners are the embedder's code (and the metrics'): one that throws must not fail what emitted the event (a
   * chunk about to be committed, an init or a completion already durable, a cancel already recorded), nor keep the
   * listeners after it from running. Each runs in turn; an exception is logged and dropped.
   */
  override emit<K extends keyof UploadEvents>(event: K, ...args: UploadEvents[K]): boolean {
    const listeners = this.rawListeners(event as never) as Array<(...a: unknown[]) => void>;
    for (const listener of listeners) {
      try {
        listener.apply(this, args);
      } catch (e) {
        this.log.error({ err: e, event }, `a listener of '${String(event)}' threw; ignored`);
      }
    }
    return listeners.length > 0;
  }

  get size(): number {
    return this.#uploads.size;
  }

  *uploads(): IterableIterator<Upload> {
    yield* this.#uploads.values();
  }

  async start(): Promise<void> {
    await fsp.mkdir(this.options.dir, { recursive: true });
    this.#rootReal = await fsp.realpath(this.options.dir);
    // Inside another engine's staging folder, this one's files would be that engine's to remove (or reload).
    if (this.#rootReal.split(path.sep).some((seg) => seg.toLowerCase() === STAGING_DIR_NAME)) {
      throw new Error(`the upload root ${this.options.dir} is inside a staging folder (${STAGING_DIR_NAME}) of another engine`);
    }
    await this.store.init();
    await this.#reload();
    this.#reaper = setInterval(() => {
      this.reap().catch((e: unknown) => this.log.error({ err: e }, 'reaper round failed; the next round tries again'));
    }, this.options.reapInterval).unref();
    if (this.options.durability === 'upload') {
      this.#checkpointer = setInterval(() => void this.checkpoint(), this.options.checkpointInterval).unref();
    }
  }

  // --- lookup ---------------------------------------------------------------------------------------------------------

  /**
   * The caller's upload. Another user's guid is answered exactly like an unknown one (404). A cancelled upload is
   * refused (410) except where `withCancelled` asks for its record (upload-status reports it as `cancelled`).
   */
  find(guid: string | null | undefined, user: string, withCancelled = false): Upload {
    if (guid === null || guid === undefined || guid === '') throw new UploadError('ERR_MISSING_GUID');
    const u = GUID_RE.test(guid) ? this.#uploads.get(guid) : undefined;
    if (!u || u.user !== user) throw new UploadError('ERR_UPLOAD_NOT_FOUND');
    if (u.status === 'expired') throw new UploadError('ERR_UPLOAD_EXPIRED');
    if (u.status === 'cancelled' && !withCancelled) throw new UploadError('ERR_UPLOAD_CANCELLED');
    return u;
  }

  // --- inits repeated with their Idempotency-Key -----------------------------------------------------------------------

  /**
   * Inits sent with an `Idempotency-Key`, per user (`user NUL key`): the upload each made, or its creation while it
   * runs. Kept as long as the upload's record (an ended upload's for recordTtl), rebuilt at start from the records.
   */
  readonly #byKey = new Map<string, { digest: string; upload: Upload | Promise<Upload> }>();

  /**
   * The upload an earlier init of `user` with this key made (or is making), for an init repeated because its reply
   * was lost: the client gets that upload again instead of a second one holding the same space and counting against
   * its limits until it expires. None when there is no such init, or its upload ended without completing (cancelled,
   * failed, expired: the key is free again). The same key with a different request is ERR_IDEMPOTENCY_KEY_REUSED.
   */
  earlierInit(user: string, idempotency: InitIdempotency): Upload | Promise<Upload> | undefined {
    const id = keyId(user, idempotency.key);
    const entry = this.#byKey.get(id);
    if (entry === undefined) return undefined;
    // An upload that ended without completing has given its key up, whatever request comes with it now.
    if (entry.upload instanceof Upload && !holdsKey(entry.upload)) {
      this.#byKey.delete(id);
      return undefined;
    }
    if (entry.digest !== idempotency.digest) {
      throw new UploadError('ERR_IDEMPOTENCY_KEY_REUSED', 'This Idempotency-Key was sent before with a different init request (name, size, chunk size, folder or fingerprint)');
    }
    return entry.upload;
  }

  /**
   * Registers the creation of an init sent with a key, before its first await: the same init repeated meanwhile
   * waits for it (earlierInit). A creation that fails frees the key.
   */
  rememberInit(user: string, idempotency: InitIdempotency, creation: Promise<Upload>): void {
    const id = keyId(user, idempotency.key);
    const entry = { digest: idempotency.digest, upload: creation as Upload | Promise<Upload> };
    this.#byKey.set(id, entry);
    creation.then(
      (u) => {
        if (this.#byKey.get(id) === entry) entry.upload = u;
      },
      () => {
        if (this.#byKey.get(id) === entry) this.#byKey.delete(id);
      },
    );
  }

  #forgetKey(u: Upload): void {
    if (u.idempotency === undefined) return;
    const id = keyId(u.user, u.idempotency.key);
    if (this.#byKey.get(id)?.upload === u) this.#byKey.delete(id);
  }

  // --- create ---------------------------------------------------------------------------------------------------------

  /** `place`: the caller counted this init in `creating` (http-routes), so the free-space check leaves it out. */
  async create(user: string, req: InitRequest, requestId?: string, place?: CreationPlace, idempotency?: InitIdempotency): Promise<Upload> {
    if (this.#closed) throw new UploadError('ERR_SHUTTING_DOWN');
    // close() waits for creations under way: one finishing after the stop had closed every file would keep its
    // files open, and write them, after the engine let go of the root.
    const creation = this.#create(user, req, requestId, place, idempotency);
    this.#creations.add(creation);
    const forget = (): void => void this.#creations.delete(creation);
    creation.then(forget, forget);
    return creation;
  }

  /** Inits still being created (close() waits for them). */
  readonly #creations = new Set<Promise<Upload>>();

  async #create(user: string, req: InitRequest, requestId: string | undefined, place: CreationPlace | undefined, idempotency: InitIdempotency | undefined): Promise<Upload> {
    if (reservedName(req.fileName)) {
      throw new UploadError('ERR_INVALID_FILE_NAME', 'File names starting with ".updraft" are reserved');
    }
    // The final path, with room for a conflict suffix, must fit the system's limit, or the move would fail after
    // every byte was sent (ENAMETOOLONG, a 500 at the end). Checked before the folders are made, and again on the
    // real folder (a symlink may lengthen it).
    this.#checkPathLength(path.join(this.#rootReal, ...req.targetPath, req.fileName));
    const dir = await this.resolveTargetDir(req.targetPath);
    this.#checkPathLength(path.join(dir, req.fileName));
    if (this.options.onConflict === 'reject' && (await exists(path.join(dir, req.fileName)))) {
      throw new UploadError('ERR_FILE_EXISTS');
    }
    if (this.options.onConflict === 'overwrite' && (await fsp.lstat(path.join(dir, req.fileName)).catch(() => null))?.isDirectory()) {
      throw new UploadError('ERR_FILE_EXISTS', FOLDER_EXISTS);
    }
    const own = place?.bytes ?? 0;
    await this.#checkFreeSpace(user, req.fileSize, this.creating.bytes - own, this.creating.bytesOf(user) - own);

    const guid = (this.options.instanceId ? `${this.options.instanceId}.` : '') + randomUUID();
    const now = Date.now();
    const meta: UploadMeta = {
      v: 1,
      guid,
      user,
      fileName: req.fileName,
      fileSize: req.fileSize,
      chunkSize: req.chunkSize,
      totalChunks: req.totalChunks,
      targetPath: req.targetPath,
      startTime: now,
      lastActivityTime: now,
      status: 'active',
    };
    if (req.uploadMethod !== undefined) meta.uploadMethod = req.uploadMethod;
    if (req.fingerprint !== undefined) meta.fingerprint = req.fingerprint;
    if (idempotency !== undefined) meta.idempotency = idempotency;
    const u = new Upload(meta, createSharedState(req.totalChunks, req.chunkSize, this.options.lockMode));
    try {
      // 'wx': a fresh file, never append mode, so every write lands at the position it names (invariant 10).
      // Mode 0666 less the umask, like any file a program creates: it becomes the completed file, which other
      // readers (a web server, a scanner) may need. Nobody else reaches it before: the staging folder is 0700.
      u.fd = await openFd(this.store.partPath(guid), 'wx', 0o666);
      u.directFd = await this.#openDirect(this.store.partPath(guid));
      await ftruncate(u.fd, req.fileSize);
      u.journal = await Journal.open(this.store.journalPath(guid));
      await this.store.writeMeta(meta);
      // A stop began meanwhile and has already closed every upload it knew of: this one was never announced, so it
      // goes, and its client hears the stop.
      if (this.#closed) throw new UploadError('ERR_SHUTTING_DOWN');
    } catch (e) {
      await this.#closeFiles(u);
      await this.store.removeAll(guid);
      throw e instanceof UploadError ? e : storageFailure(e);
    }
    u.observeSync = (sec) => this.onSync?.(sec);
    this.#uploads.set(guid, u);
    this.log.info({ event: 'upload.created', reqId: requestId, guid, user: logValue(user), fileName: logValue(req.fileName), size: req.fileSize, chunks: req.totalChunks, method: logValue(req.uploadMethod) }, 'upload created');
    this.emit('created', uploadInfo(u));
    return u;
  }

  /**
   * Walks the target folder from the upload root one segment at a time, creating what is missing, and refuses any
   * step that leaves the root (a symlink pointing outside, or a non-folder). `mkdir -p` would follow a symlink out of
   * the root before any check could run, so it is not used.
   */
  async resolveTargetDir(segments: readonly string[]): Promise<string> {
    if (segments.some(reservedName)) {
      throw new UploadError('ERR_INVALID_TARGET_PATH', `Target folders starting with ".updraft" are reserved`);
    }
    let cur = this.#rootReal;
    for (const seg of segments) {
      const next = path.join(cur, seg);
      let st: fs.Stats | undefined;
      try {
        st = await fsp.lstat(next);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw storageFailure(e);
      }
      if (!st) {
        const made = await fsp.mkdir(next).then(
          () => true,
          (e: NodeJS.ErrnoException) => {
            if (e.code !== 'EEXIST') throw storageFailure(e);
            return false;
          },
        );
        // The new folder's entry is durable in its parent before a file in it can be announced complete (the
        // completion syncs only the folder the file lands in).
        if (made) await this.store.syncDir(cur).catch((e: unknown) => {
          throw storageFailure(e);
        });
        st = await fsp.lstat(next);
      }
      if (st.isSymbolicLink()) {
        const real = await fsp.realpath(next).catch(() => '');
        if (!this.#insideRoot(real)) throw new UploadError('ERR_INVALID_TARGET_PATH', 'Target path leaves the upload root');
        st = await fsp.stat(real);
        cur = real;
      } else {
        cur = next;
      }
      if (!st.isDirectory()) throw new UploadError('ERR_INVALID_TARGET_PATH', 'Target path names a file, not a folder');
      if (path.resolve(cur) === path.resolve(this.#rootReal, STAGING_DIR_NAME)) {
        throw new UploadError('ERR_INVALID_TARGET_PATH', 'Target path names the staging folder');
      }
    }
    return cur;
  }

  #checkPathLength(file: string): void {
    if (Buffer.byteLength(file) + CONFLICT_SUFFIX_BYTES >= PATH_MAX) {
      throw new UploadError('ERR_INVALID_TARGET_PATH', 'Target path and file name are too long together for this server');
    }
  }

  #insideRoot(p: string): boolean {
    return p !== '' && (p === this.#rootReal || p.startsWith(this.#rootReal + path.sep));
  }

  /** `pending`: bytes of other inits still being created. */
  /**
   * An init reserves its whole size against the free space (the staging file is sparse: nothing is taken until the
   * bytes come). It must fit beside what every active upload (and every init being created) still has to send, and,
   * below `maxReservedShare` 1, what this user's uploads would then hold may not pass that share of the free space:
   * one user's large uploads that send little cannot leave everyone else's inits refused.
   */
  async #checkFreeSpace(user: string, fileSize: number, pending: number, pendingOfUser: number): Promise<void> {
    if (fileSize === 0) return;
    let reserved = pending;
    let mine = pendingOfUser;
    for (const u of this.#uploads.values()) {
      if (u.status !== 'active') continue;
      const left = u.fileSize - u.receivedBytes;
      reserved += left;
      if (u.user === user) mine += left;
    }
    const st = await fsp.statfs(this.options.stagingDir);
    const free = st.bavail * st.bsize;
    if (fileSize + reserved > free) throw new UploadError('ERR_INSUFFICIENT_STORAGE');
    const share = this.options.maxReservedShare;
    if (share < 1 && mine + fileSize > share * free) {
      throw new UploadError(
        'ERR_INSUFFICIENT_STORAGE',
        `Your open uploads would hold more than ${Math.round(share * 100)}% of the free space; finish or cancel some first`,
      );
    }
  }

  // --- completion -------------------------------------------------------------------------------------------------------

  /** Finalizes once; every caller gets the same promise. */
  finalize(u: Upload): Promise<CompletionInfo> {
    u.completion ??= this.#finalize(u);
    return u.completion;
  }

  async #finalize(u: Upload): Promise<CompletionInfo> {
    // A worker decided "every bit set", but the upload may have ended since (a cancel accepted while the last
    // chunk was being committed: cancel only waits for that commit). That end is final and its client has been
    // answered; finalizing anyway would turn 'cancelled' into 'finalizing' and then fail on the removed staging
    // file, or place a file for an upload its client was told is gone. The last chunk's writer gets the end's error.
    // A cancel or expiry being recorded wins too, but only once it is durable: the last chunk's writer hears of it
    // from here, and a crash before the record would otherwise bring the upload back complete (see cancel).
    if (u.ending) await u.ending.catch(() => {});
    if (u.status !== 'active') {
      u.assertWritable();
      throw new UploadError('ERR_UPLOAD_FAILED');
    }
    // A stop has begun and is closing the files: the upload finishes after the restart (every chunk is durable in
    // `chunk` durability; the rest is asked for again). Refused before anything changes, so nothing fails.
    if (u.stop !== 'none') throw new UploadError('ERR_SHUTTING_DOWN');
    u.status = 'finalizing';
    let placed: string | null = null; // the final file, once linked, until the completion is recorded
    try {
      await u.commitsIdle();
      if (u.failure) throw new UploadError('ERR_UPLOAD_FAILED');
      // The staging file is open until this point in every active upload; skipping the sync here would announce a
      // file whose last bytes may not be on disk.
      if (u.fd === null) throw new UploadError('ERR_INTERNAL', 'The staging file was closed before completion');
      const t0 = performance.now();
      await fdatasync(u.fd);
      this.onSync?.((performance.now() - t0) / 1000);
      u.fileId = fileId(await fsp.stat(this.store.partPath(u.guid), { bigint: true }));
      await this.#closeFiles(u);
      const folder = await this.#openTargetDir(await this.resolveTargetDir(u.targetPath));
      const dir = folder.path;
      let name: string;
      try {
        name = await this.#place(u, folder);
        placed = path.join(dir, name);
        // Linked (rename and reject policies): the staging name goes once the file is safe under its final one. Set
        // `placed` first, so a failure here removes the file again instead of leaving a failed upload in place.
        await fsp.rm(this.store.partPath(u.guid), { force: true });
        await this.store.syncDir(dir);
      } finally {
        await closeFd(folder.fd).catch(() => {});
      }
      await this.store.syncDir();
      u.finalName = name;
      if (this.options.onUploadComplete) {
        // Recorded first: a hook may move the file, and a crash after that must not read as a lost staging file.
        await this.store.writeMeta({ ...u.toMeta(), hookStarted: true });
        try {
          await this.#completeHook(u, dir, name);
        } catch (e) {
          placed = null; // the refusal has removed the file; the name may already be another upload's
          throw e;
        }
      }
      placed = null; // from here the file stays: it is durable in place and the hook (if any) accepted it
      u.endTime = Date.now();
      u.status = 'completed';
      // The record on disk says `finalizing` with this name, which a restart already completes (see #reopen): a
      // `completed` record that cannot be written (ENOSPC) does not undo a durable completion.
      await this.store.writeMeta(u.toMeta()).catch((e: unknown) => {
        this.log.error({ err: e, guid: u.guid }, 'could not record the completion; a restart completes it again');
      });
      await fsp.rm(this.store.journalPath(u.guid), { force: true }).catch(() => {});
      await fsp.rm(this.store.prevPath(u.guid), { force: true }).catch(() => {}); // the replaced file, kept until now
      const durationMs = u.endTime - u.startTime;
      this.log.info(
        {
          event: 'upload.completed',
          guid: u.guid,
          user: u.user,
          size: u.fileSize,
          method: u.uploadMethod,
          durationMs,
          mbPerSec: durationMs > 0 ? Math.round(u.fileSize / 1000 / durationMs) : null,
        },
        'upload completed',
      );
      this.emit('completed', { ...uploadInfo(u), finalName: name, durationMs });
      return { guid: u.guid, fileName: name, size: u.fileSize, targetPath: u.targetPath.join('/') };
    } catch (e) {
      // The upload fails with this error: final whatever its code (a hook's ERR_SERVER_BUSY too), so the client that
      // hears it does not ask again only to learn the upload has failed.
      const cause = e instanceof UploadError ? e : storageFailure(e);
      const err = new UploadError(cause.code, cause.message, cause.details, false);
      // A file already placed (its folder could not be synced, the staging name not unlinked) goes again: a failed
      // upload leaves nothing under its final name, as when the hook refuses it.
      if (placed !== null) {
        await this.#removePlaced(placed, u.fileId, u.guid).catch((e2: unknown) => this.log.error({ err: e2, guid: u.guid }, 'could not undo a failed completion'));
        u.finalName = undefined;
      } else {
        await fsp.rm(this.store.prevPath(u.guid), { force: true }).catch(() => {}); // not replaced: the file is where it was
      }
      await this.fail(u, err);
      throw err;
    }
  }

  /**
   * The embedder's onUploadComplete: the file is durable in place. If the hook throws, the file is removed again
   * (and the removal synced) so a refused upload leaves nothing behind, and the completion fails with the hook's
   * UploadError or ERR_HOOK_FAILED.
   */
  async #completeHook(u: Upload, dir: string, name: string): Promise<void> {
    const file = path.join(dir, name);
    try {
      await this.options.onUploadComplete!({
        guid: u.guid,
        user: u.user,
        fileName: name,
        size: u.fileSize,
        targetPath: u.targetPath.join('/'),
        path: file,
      });
    } catch (e) {
      this.log.warn({ err: e, guid: u.guid }, 'onUploadComplete failed; removing the file');
      // Recorded first, so a crash before the `failed` record cannot read the removed file as one the hook moved.
      await this.store.writeMeta({ ...u.toMeta(), hookStarted: true, hookRefused: true }).catch(() => {});
      await this.#removePlaced(file, u.fileId, u.guid);
      u.finalName = undefined;
      throw e instanceof UploadError ? e : new UploadError('ERR_HOOK_FAILED');
    }
  }

  /**
   * The target folder, opened: the file is placed through `/proc/self/fd/N` (`via`), which names the folder that was
   * opened whatever happens to the path afterwards, and that folder's real path (`path`, from the kernel) is checked
   * to be inside the root. Resolving the path again at the link would follow a folder swapped for a symlink after
   * resolveTargetDir checked it, and could place the file outside the root. Without /proc, the path is used as is.
   */
  async #openTargetDir(dir: string): Promise<{ fd: number; path: string; via: string }> {
    const fd = await openFd(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY).catch((e: unknown) => {
      throw storageFailure(e);
    });
    const via = `/proc/self/fd/${fd}`;
    const real = await fsp.readlink(via).catch(() => null);
    if (real === null) return { fd, path: dir, via: dir };
    if (!this.#insideRoot(real) || path.resolve(real) === path.resolve(this.#rootReal, STAGING_DIR_NAME)) {
      await closeFd(fd).catch(() => {});
      throw new UploadError('ERR_INVALID_TARGET_PATH', 'Target path leaves the upload root');
    }
    return { fd, path: real, via };
  }

  /** Moves the staging file to its final name under the conflict policy; returns the name used. */
  async #place(u: Upload, folder: { path: string; via: string }): Promise<string> {
    const staging = this.store.partPath(u.guid);
    const policy = this.options.onConflict;
    if (policy === 'overwrite') {
      u.finalName = u.fileName;
      await this.store.writeMeta(u.toMeta());
      const target = path.join(folder.via, u.fileName);
      const prev = this.store.prevPath(u.guid);
      // Under the name's lock: a failing upload checks whose file is there and removes it in one step (#removePlaced).
      await this.#underNameLock(path.join(folder.path, u.fileName), async () => {
        // The file being replaced is kept (a second link, durable before the rename) until the completion is
        // recorded: a completion that fails after the rename (a hook refuses, a sync fails) puts it back, so a
        // failed overwrite loses neither version. A link left by an attempt before a crash is made again.
        await fsp.rm(prev, { force: true });
        const kept = await fsp.link(target, prev).then(
          () => true,
          (e: NodeJS.ErrnoException) => {
            if (e.code === 'ENOENT') return false; // nothing to replace
            if (e.code === 'EPERM' || e.code === 'EISDIR') throw new UploadError('ERR_FILE_EXISTS', FOLDER_EXISTS); // a folder
            throw e;
          },
        );
        if (kept) await this.store.syncDir();
        await fsp.rename(staging, target);
      }).catch((e: unknown) => {
        if (e instanceof UploadError) throw e;
        // A folder of that name appeared after the init's check: overwriting means files, never folders.
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EISDIR' || code === 'ENOTEMPTY' || code === 'EEXIST') throw new UploadError('ERR_FILE_EXISTS', FOLDER_EXISTS);
        throw storageFailure(e);
      });
      return u.fileName;
    }
    for (let i = 0; i < 10_000; i++) {
      const name = i === 0 ? u.fileName : withCounter(u.fileName, i);
      if (Buffer.byteLength(name) > 255) break;
      const target = path.join(folder.via, name);
      if (await exists(target)) {
        if (policy === 'reject') throw new UploadError('ERR_FILE_EXISTS');
        continue;
      }
      u.finalName = name;
      await this.store.writeMeta(u.toMeta()); // status 'finalizing': recovery looks for this name
      try {
        await fsp.link(staging, target); // fails with EEXIST instead of replacing (rename would replace silently)
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') {
          if (policy === 'reject') throw new UploadError('ERR_FILE_EXISTS');
          continue;
        }
        throw storageFailure(e);
      }
      return name; // the caller unlinks the staging name
    }
    throw new UploadError('ERR_FILE_EXISTS', 'No free name for the file in the target folder');
  }

  /** Final paths being replaced or removed: a rename (onConflict 'overwrite') and a removal take turns per name. */
  readonly #nameLocks = new Map<string, Promise<unknown>>();

  #underNameLock<T>(file: string, f: () => Promise<T>): Promise<T> {
    const prev = this.#nameLocks.get(file);
    const run = (prev ? prev.catch(() => {}) : Promise.resolve()).then(f);
    this.#nameLocks.set(file, run);
    const forget = (): void => {
      if (this.#nameLocks.get(file) === run) this.#nameLocks.delete(file);
    };
    run.then(forget, forget);
    return run;
  }

  /**
   * Removes a file this upload placed, and syncs the removal, but only if the file under that name is still this
   * upload's (`id`, its "ino:birthtime"): once it left the name (a hook moved it, a refusal or an earlier try removed it),
   * another upload may have completed under the same name. Without a recorded identity nothing is removed.
   */
  async #removePlaced(file: string, id: string | undefined, guid: string): Promise<void> {
    const prev = this.store.prevPath(guid);
    await this.#underNameLock(file, async () => {
      const st = await fsp.lstat(file, { bigint: true }).catch(() => null);
      if (st !== null && (id === undefined || fileId(st) !== id)) {
        // Another upload's file since (an overwrite after this one's): the file this one replaced stays replaced.
        this.log.warn({ event: 'upload.file_kept' }, 'a file under a failed upload\'s final name is not its own; left in place');
      } else {
        // onConflict 'overwrite': the file this upload replaced goes back under its name, in one rename over this
        // upload's file (or a link, where a hook had moved that file away); otherwise the name is freed.
        const restored = await (st !== null ? fsp.rename(prev, file) : fsp.link(prev, file)).then(
          () => true,
          (e: NodeJS.ErrnoException) => {
            if (e.code === 'ENOENT' || e.code === 'EEXIST') return false;
            throw e;
          },
        );
        if (!restored && st !== null) await fsp.rm(file, { force: true });
        if (restored || st !== null) await this.store.syncDir(path.dirname(file)).catch(() => {});
      }
      await fsp.rm(prev, { force: true });
    });
  }

  // --- ending -----------------------------------------------------------------------------------------------------------

  async fail(u: Upload, err: UploadError): Promise<void> {
    if (u.status === 'completed' || u.status === 'failed' || u.status === 'cancelled' || u.status === 'expired') return;
    u.failure ??= { code: err.code, message: err.message };
    u.status = 'failed';
    u.endTime = Date.now();
    this.log.warn({ event: 'upload.failed', guid: u.guid, user: u.user, size: u.fileSize, code: err.code }, 'upload failed');
    await this.#end(u);
    this.emit('failed', { ...uploadInfo(u), code: u.failure.code, message: u.failure.message });
  }

  async cancel(u: Upload): Promise<void> {
    // A stop writes each upload's record as it closes it; a cancel recorded meanwhile could be overwritten by it.
    if (this.#closed) throw new UploadError('ERR_SHUTTING_DOWN');
    // An end being recorded (another cancel, or an expiry) decides first; this one answers by its outcome.
    if (u.ending) await u.ending.catch(() => {});
    // Not retryable: the file is placed, or being placed, and a later cancel finds it complete (or failed).
    if (u.status === 'completed') throw new UploadError('ERR_UPLOAD_FINALIZING', 'Upload is already complete', undefined, false);
    if (u.status === 'finalizing') throw new UploadError('ERR_UPLOAD_FINALIZING', undefined, undefined, false);
    if (u.status === 'expired') throw new UploadError('ERR_UPLOAD_EXPIRED');
    if (u.status === 'failed') u.assertWritable(); // ERR_UPLOAD_FAILED: it is gone, but not by this cancel
    if (u.status !== 'active') return;
    u.ending = this.#cancel(u);
    return u.ending;
  }

  /**
   * The cancel is recorded durably before anyone can learn of it. The in-memory status is what every request and
   * connection observes (410, a 4001 close, a refused last chunk), so it flips to 'cancelled' only once the record
   * is on disk; until then the upload stays active (a chunk written meanwhile is harmless: it goes with the rest).
   * Flipping first let replies announce a cancel that a SIGKILL before the record undid: the upload came back
   * active with its data, or was even completed on reload when every chunk was already durable (found by the
   * stress harness; test/integration/stress.test.ts). Completion, expiry and shutdown wait for `ending`.
   */
  async #cancel(u: Upload): Promise<void> {
    await null; // cancel has stored this promise in u.ending before the record is begun (claimChunk waits for it)
    const endTime = Date.now();
    try {
      await this.store.writeMeta({ ...u.toMeta(), status: 'cancelled', endTime });
    } catch (e) {
      const err = storageFailure(e);
      await this.fail(u, err);
      throw err;
    }
    if (u.status !== 'active') {
      // It failed meanwhile; that end records itself, and this cancel answers ERR_UPLOAD_FAILED.
      if (u.status === 'failed') u.assertWritable();
      return;
    }
    u.status = 'cancelled';
    u.endTime = endTime;
    this.log.info({ event: 'upload.cancelled', guid: u.guid, user: u.user }, 'upload cancelled');
    await this.#end(u);
    this.emit('cancelled', uploadInfo(u));
  }

  /** Waits for the workers to leave the file, then removes the staging data and keeps a tombstone record. */
  async #end(u: Upload): Promise<void> {
    // The state word is already non-active, so no new task writes; tasks already running finish first.
    await workersLeft(u);
    await u.commitsIdle();
    await this.#closeFiles(u);
    await this.store.removeAll(u.guid, true);
    await this.store.writeMeta(u.toMeta()).catch((e) => this.log.error({ err: e, guid: u.guid }, 'could not record upload end'));
  }

  /** The staging file with O_DIRECT, or null where the filesystem refuses it (tmpfs) or the option is off. */
  async #openDirect(file: string): Promise<number | null> {
    if (!this.options.directIo) return null;
    return openFd(file, fs.constants.O_RDWR | fs.constants.O_DIRECT).catch(() => null);
  }

  async #closeFiles(u: Upload): Promise<void> {
    const fd = u.fd;
    const direct = u.directFd;
    u.fd = null;
    u.directFd = null;
    const closeData = async (): Promise<void> => {
      if (direct !== null) await closeFd(direct).catch(() => {});
      if (fd !== null) await closeFd(fd).catch(() => {});
    };
    if (u.tasksInFlight === 0) {
      await closeData();
    } else if (fd !== null || direct !== null) {
      // A write task still holds these numbers (the disk stalled past workersLeft's wait). Closed now, a number could
      // be reused by the next open, and the task's next write would land in that other file: they are closed once
      // the last task has returned.
      this.log.error({ guid: u.guid, tasks: u.tasksInFlight }, 'write tasks still running; the staging file is closed when they end');
      void whenWorkersLeft(u).then(closeData);
    }
    const j = u.journal;
    u.journal = null;
    if (j) await j.close();
  }

  /** Expires idle uploads (never one with a writer or a task in flight) and drops old records. */
  async reap(now = Date.now()): Promise<void> {
    for (const u of [...this.#uploads.values()]) {
      // A stop writes each upload's record as it closes it; an expiry recorded meanwhile could be overwritten.
      if (this.#closed) return;
      try {
        if (u.status === 'active') {
          if (now - u.lastActivityTime < this.options.uploadTtl) continue;
          if (u.claimCount > 0 || u.tasksInFlight > 0 || u.ending || u.completion) continue;
          u.ending = this.#expire(u, now);
          await u.ending;
        } else if (u.status !== 'finalizing' && (u.endTime ?? 0) + this.options.recordTtl <= now) {
          this.#uploads.delete(u.guid);
          this.#forgetKey(u);
          await this.store.removeAll(u.guid);
        }
      } catch (e) {
        // One upload's files that cannot be removed (EACCES, EBUSY) must not stop the round for the others.
        this.log.error({ err: e, guid: u.guid }, 'reaper could not end an upload');
      }
    }
  }

  /**
   * Like a cancel, an expiry is recorded durably before anyone can learn of it (410, a 4010 close): a crash in
   * between would otherwise bring back, active, an upload whose clients were told it was gone. A record that cannot
   * be written leaves the upload active, and the next round tries again.
   */
  async #expire(u: Upload, now: number): Promise<void> {
    await null; // reap has stored this promise in u.ending before the record is begun (claimChunk waits for it)
    try {
      await this.store.writeMeta({ ...u.toMeta(), status: 'expired', endTime: now });
    } catch (e) {
      this.log.error({ err: e, guid: u.guid }, 'could not record the expiry; the upload stays active for now');
      u.ending = null;
      return;
    }
    if (u.status !== 'active') return; // it failed meanwhile; that end records itself
    u.status = 'expired';
    u.endTime = now;
    this.log.info({ event: 'upload.expired', guid: u.guid, user: u.user, size: u.fileSize }, 'upload expired');
    await this.#end(u);
    this.emit('expired', uploadInfo(u));
  }

  /** `upload` durability: sync and journal whatever was written since the last checkpoint. */
  async checkpoint(): Promise<void> {
    await Promise.all(
      [...this.#uploads.values()]
        .filter((u) => u.status === 'active' && u.hasUncommitted)
        .map((u) => u.commit([]).catch(() => this.fail(u, new UploadError('ERR_STORAGE_FAILED')))),
    );
  }

  /** Stop: commit what was written (so it resumes after restart), close every file. In-flight writes are done first. */
  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#reaper);
    clearInterval(this.#checkpointer);
    await Promise.allSettled([...this.#creations]);
    await Promise.all(
      [...this.#uploads.values()].map(async (u) => {
        if (u.ending) await u.ending.catch(() => {}); // its record must not be overwritten with 'active'
        if (u.completion) await u.completion.catch(() => {});
        if (u.status !== 'active') return;
        // From here (synchronously after the check above) no task starts, no chunk is acknowledged without a commit
        // and no completion begins; bodies still arriving (engine.close waited graceMs for them) get 503.
        u.stop = 'stopping';
        await workersLeft(u);
        // Chunks written before the stop: committed (or, in `upload` durability, checkpointed) so they resume.
        if (u.hasUncommitted) await u.commit([]).catch(() => {});
        await u.commitsIdle();
        // A commit asked for after this point is refused; once the rounds already running end, nothing touches the
        // files (a task result still on its way is answered 503, its chunk asked for again after the restart).
        u.stop = 'closing';
        await workersLeft(u);
        await u.commitsIdle();
        if (u.status !== 'active') return; // a commit failed: that end recorded itself and closed the files
        if (u.failure) {
          // A sync failed in the stop's own checkpoint (upload durability): the upload cannot be resumed truthfully.
          await this.fail(u, new UploadError(u.failure.code, u.failure.message));
          return;
        }
        await this.store.writeMeta(u.toMeta()).catch(() => {});
        await this.#closeFiles(u);
      }),
    );
  }

  // --- restart ----------------------------------------------------------------------------------------------------------

  async #reload(): Promise<void> {
    const now = Date.now();
    const { uploads, unreadable } = await this.store.loadAll();
    for (const { guid, err } of unreadable) {
      this.log.error({ err, guid }, 'could not read an upload record; the upload is left on disk for the next start');
    }
    for (const { meta, journal } of uploads) {
      // One upload that cannot be taken over (its folder unreadable, a file that cannot be removed) must not keep
      // the engine, and every other upload, from starting: it stays on disk as it is, for the next start.
      try {
        if (meta.status === 'active' || meta.status === 'finalizing') {
          const u = await this.#reopen(meta, journal);
          if (u) this.#uploads.set(u.guid, u);
        } else if ((meta.endTime ?? now) + this.options.recordTtl > now) {
          // An ended upload keeps only its record. A crash after the record was written but before the data went
          // (completion writes "completed" and then removes the journal) leaves files nothing would ever remove
          // until the record expires.
          await this.store.removeAll(meta.guid, true);
          this.#uploads.set(meta.guid, new Upload(meta, null));
        } else {
          await this.store.removeAll(meta.guid);
        }
      } catch (err) {
        this.log.error({ err, guid: meta.guid }, 'could not reload an upload; it is left on disk for the next start');
      }
    }
    // Only uploads that hold their key: a cancelled one may share it with the upload made after it (earlierInit).
    for (const u of this.#uploads.values()) {
      if (u.idempotency === undefined || !holdsKey(u)) continue;
      this.#byKey.set(keyId(u.user, u.idempotency.key), { digest: u.idempotency.digest, upload: u });
    }
    const resumed = [...this.#uploads.values()].filter((u) => u.status === 'active');
    if (resumed.length > 0) this.log.info({ event: 'uploads.reloaded', count: resumed.length }, 'uploads reloaded');
    // Uploads whose every chunk was durable before the stop finish now.
    for (const u of resumed) {
      if (u.shared && allChunksSet(u.shared)) void this.finalize(u).catch(() => {});
    }
  }

  /** A finalizing upload that a reload ends (completed, or refused by the hook): its record, and no journal. */
  async #endedOnReload(meta: UploadMeta): Promise<Upload> {
    const u = new Upload(meta, null);
    await this.store.writeMeta(u.toMeta());
    await fsp.rm(this.store.journalPath(meta.guid), { force: true });
    await fsp.rm(this.store.prevPath(meta.guid), { force: true });
    this.#announceEnded(u);
    return u;
  }

  /** An upload whose bytes a reload cannot trust: recorded failed (ERR_STORAGE_FAILED), its data removed. */
  async #lostOnReload(meta: UploadMeta, message: string): Promise<Upload> {
    const u = new Upload({ ...meta, status: 'failed', endTime: Date.now(), failure: { code: 'ERR_STORAGE_FAILED', message } }, null);
    this.log.warn({ event: 'upload.failed', guid: u.guid, user: logValue(u.user), size: u.fileSize, code: 'ERR_STORAGE_FAILED', reason: message }, 'upload failed at the restart');
    await this.store.writeMeta(u.toMeta());
    await this.store.removeAll(meta.guid, true);
    this.#announceEnded(u);
    return u;
  }

  /**
   * A reload ended an upload that the crash left finalizing (or found damaged): its listeners (and the metrics) hear
   * of it as they would have without the crash. They are attached before listen()/attach() start the reload.
   */
  #announceEnded(u: Upload): void {
    if (u.status === 'completed') {
      this.emit('completed', { ...uploadInfo(u), finalName: u.finalName ?? u.fileName, durationMs: (u.endTime ?? Date.now()) - u.startTime });
    } else if (u.status === 'failed' && u.failure !== undefined) {
      this.emit('failed', { ...uploadInfo(u), code: u.failure.code, message: u.failure.message });
    }
  }

  async #reopen(meta: UploadMeta, journal: number[]): Promise<Upload | null> {
    const staging = this.store.partPath(meta.guid);
    if (meta.status === 'finalizing' && meta.finalName !== undefined) {
      // Crashed mid-move: decide from what is on disk whether the move happened. As for the staging file below, only
      // what is gone (or a folder that now leads elsewhere) decides: any other failure to look (EIO, EMFILE, EACCES)
      // throws, and the upload is left on disk for the next start (#reload) rather than a file safe in place be
      // recorded lost.
      const unlessPassing = (e: unknown): null => {
        if (isGone(e) || (e instanceof UploadError && e.code === 'ERR_INVALID_TARGET_PATH')) return null;
        throw e;
      };
      const dir = await this.resolveTargetDir(meta.targetPath).catch(unlessPassing);
      if (meta.hookRefused === true) {
        // The hook had refused the file; its removal may not have happened yet (if the name holds another upload's
        // file now, that one stays).
        if (dir) await this.#removePlaced(path.join(dir, meta.finalName), meta.fileId, meta.guid);
        const u = new Upload({ ...meta, status: 'failed', endTime: Date.now(), failure: { code: 'ERR_HOOK_FAILED', message: 'The server refused to complete the upload' } }, null);
        await this.store.writeMeta(u.toMeta());
        await this.store.removeAll(meta.guid, true);
        this.#announceEnded(u);
        return u;
      }
      const target = dir ? await fsp.stat(path.join(dir, meta.finalName), { bigint: true }).catch(unlessPassing) : null;
      const part = await fsp.stat(staging, { bigint: true }).catch(unlessPassing);
      // The file under the final name is this upload's if it is the staging file (linked, not yet unlinked) or, with
      // the staging name gone, the file recorded as this upload's (a record from before fileId existed: assumed).
      const ours = target !== null && (part ? fileId(part) === fileId(target) : meta.fileId === undefined || meta.fileId === fileId(target));
      if (ours) {
        // The crash may have come before the folder was synced after the move: the file's name is made durable
        // before the staging name goes and the completion is recorded, as in #finalize (durability.md invariant 6).
        await this.store.syncDir(dir!);
        if (part) await fsp.unlink(staging);
        // The stop may have come while onUploadComplete ran (it runs after the move, before 'completed' is
        // recorded): run it again, so a file the hook refuses does not stay in place (at least once per upload).
        if (this.options.onUploadComplete) {
          // A record from before fileId: the file was recognized above (its staging inode), so it is this one.
          const pending = new Upload({ ...meta, fileId: meta.fileId ?? fileId(target) }, null);
          try {
            await this.#completeHook(pending, dir!, meta.finalName);
          } catch (e) {
            const err = e instanceof UploadError ? e : new UploadError('ERR_HOOK_FAILED');
            return this.#endedOnReload({ ...meta, status: 'failed', endTime: Date.now(), failure: { code: err.code, message: err.message } });
          }
        }
        return this.#endedOnReload({ ...meta, status: 'completed', endTime: Date.now() });
      }
      if (!part && meta.hookStarted === true) {
        // The hook had the file and moved it before the crash: that completion stands (the hook is not run again,
        // there is no file for it).
        return this.#endedOnReload({ ...meta, status: 'completed', endTime: Date.now() });
      }
      if (!part) return this.#lostOnReload(meta, 'Staging file lost');
      // Not moved yet: every chunk was durable before 'finalizing' was recorded, so finish the completion.
      journal = Array.from({ length: meta.totalChunks }, (_, i) => i);
      meta = { ...meta, status: 'active' };
    }
    let fd: number;
    try {
      fd = await openFd(staging, 'r+');
    } catch (e) {
      // Only a staging file that is gone is lost. Any other error (EMFILE, EACCES, EIO) may pass: the upload is left
      // as it is on disk, unserved until a restart that can open it, rather than destroyed.
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') {
        this.log.error({ err: e, guid: meta.guid }, 'could not open a staging file; the upload is left on disk for the next start');
        return null;
      }
      return this.#lostOnReload(meta, 'Staging file lost');
    }
    // The staging file is made fileSize long at init and never changes length. Shorter now (cut by something outside
    // the engine, or a damaged filesystem), the chunks the journal claims past its end are gone, and holes in it would
    // read as zeros: the upload cannot be finished truthfully.
    const size = await fstat(fd).then((st) => st.size, () => -1);
    if (size === -1) {
      await closeFd(fd).catch(() => {});
      this.log.error({ guid: meta.guid }, 'could not stat a staging file; the upload is left on disk for the next start');
      return null;
    }
    if (size !== meta.fileSize) {
      await closeFd(fd).catch(() => {});
      this.log.error({ guid: meta.guid, size, fileSize: meta.fileSize }, 'a staging file has the wrong length; the upload fails');
      return this.#lostOnReload(meta, 'Staging file damaged');
    }
    const shared = createSharedState(meta.totalChunks, meta.chunkSize, this.options.lockMode);
    // No worker sees this state yet; Atomics are used only to keep one way of touching it.
    for (const c of journal) {
      if (setChunkBit(shared, c)) {
        Atomics.add(shared.header, H_RECEIVED_CHUNKS, 1);
        Atomics.add(shared.counters, B_RECEIVED_BYTES, BigInt(chunkLength(meta.fileSize, meta.chunkSize, c)));
      }
    }
    // The idle clock starts again at the restart: lastActivityTime is recorded only at init and at a graceful stop,
    // so after a crash the meta's value may be hours old for an upload that was busy until the crash.
    const u = new Upload({ ...meta, status: 'active', lastActivityTime: Math.max(meta.lastActivityTime, Date.now()) }, shared);
    u.fd = fd;
    u.directFd = await this.#openDirect(staging);
    u.observeSync = (sec) => this.onSync?.(sec);
    try {
      u.journal = await Journal.open(this.store.journalPath(meta.guid));
    } catch (e) {
      this.log.error({ err: e, guid: meta.guid }, 'could not open a journal; the upload is left on disk for the next start');
      await this.#closeFiles(u);
      return null;
    }
    return u;
  }
}

/**
 * A name like the engine's own (".updraft-staging", ".updraft-write-check"), also once NFKC-normalized and
 * case-folded: a layer that normalizes names later (a sync tool, a case-insensitive share) must not see it as the
 * staging folder. Refused in every folder, not only at the root: another engine may have its root in a folder below
 * (a tenant's), and an upload must not land in its staging folder, where that engine would take it for its own.
 */
function reservedName(name: string): boolean {
  return name.toLowerCase().startsWith('.updraft') || name.normalize('NFKC').toLowerCase().startsWith('.updraft');
}

const FOLDER_EXISTS = 'A folder with that name exists in the target folder';

/**
 * A file's identity as link and rename keep it: "ino:birthtime" (ns; 0 where the filesystem keeps none). Every file
 * compared is on the upload root's filesystem; its device number is left out because it may change across a reboot
 * or remount (device-mapper, btrfs subvolumes), which would make a placed file look foreign after a crash.
 */
function fileId(st: fs.BigIntStats): string {
  return `${st.ino}:${st.birthtimeNs}`;
}

/** Linux PATH_MAX (bytes, with the terminating NUL), and the longest suffix withCounter adds (" (9999)"). */
const PATH_MAX = 4096;
const CONFLICT_SUFFIX_BYTES = 7;

/** "name.ext" -> "name (n).ext"; a leading dot is part of the name (".bashrc" -> ".bashrc (1)"). */
export function withCounter(name: string, n: number): string {
  const dot = name.lastIndexOf('.');
  if (dot <= 0) return `${name} (${n})`;
  return `${name.slice(0, dot)} (${n})${name.slice(dot)}`;
}

async function exists(p: string): Promise<boolean> {
  try {
    await fsp.lstat(p);
    return true;
  } catch {
    return false;
  }
}

/**
 * Waits (up to UploadRegistry.workersLeftMs, 30 s) until no write task of the upload is in flight, so its files can
 * be closed or removed without a worker still writing into them (durability.md invariant 9); #closeFiles keeps the
 * data fds open past that if one still is. Polls the shared counter: the main thread never blocks.
 */
async function workersLeft(u: Upload): Promise<void> {
  const deadline = performance.now() + UploadRegistry.workersLeftMs;
  while (u.tasksInFlight > 0 && performance.now() < deadline) await sleep(10);
}

/** Resolves once no write task of the upload is in flight, however long that takes (polls; never keeps the process up). */
function whenWorkersLeft(u: Upload): Promise<void> {
  return new Promise((resolve) => {
    const timer = setInterval(() => {
      if (u.tasksInFlight > 0) return;
      clearInterval(timer);
      resolve();
    }, 100);
    timer.unref?.();
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
