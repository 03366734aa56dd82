/**
 * What survives a restart (durability.md invariants 5, 6 and 8), all inside the staging folder:
 *
 *   <guid>.part     the staging file: chunk c at byte c * chunkSize
 *   <guid>.meta     msgpack UploadMeta, replaced atomically (write tmp -> fdatasync -> rename -> fsync folder)
 *   <guid>.journal  append-only chunk numbers (after a 4-byte header, 8-byte records: the number and a check, see
 *                   JOURNAL_MAGIC). A number is appended only after an fdatasync of the .part
 *                   file that began after that chunk's bytes were written, and the append is itself fdatasync'ed
 *                   before anyone is told the chunk is safe. So the journal never claims bytes a crash could lose.
 *                   A torn, zero-filled or stale tail fails the check and is ignored on load (and overwritten).
 *   <guid>.prev     onConflict 'overwrite' only, while the completion runs: a hard link to the file the upload is
 *                   replacing, put back under its name if the completion fails (a hook refuses, a sync fails), and
 *                   removed once the completion is recorded. Kept on load only for a `finalizing` upload.
 *
 * The meta file changes rarely (init, finalizing, completed, cancelled, failed, expired), so its three syncs are
 * off the per-chunk path; the per-chunk cost is one group-committed fdatasync of .part plus one of .journal.
 *
 * All I/O here is fs/promises (libuv's pool): the main thread never blocks on the disk.
 */
import fsp from 'node:fs/promises';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { Packr } from 'msgpackr';
import { MAX_NAME_BYTES, MAX_TARGET_DEPTH, totalChunksFor } from '../protocol/validate.js';

export type UploadStatus = 'active' | 'finalizing' | 'completed' | 'cancelled' | 'failed' | 'expired';

export interface UploadMeta {
  v: 1;
  guid: string;
  user: string;
  fileName: string;
  fileSize: number;
  chunkSize: number;
  totalChunks: number;
  targetPath: string[];
  uploadMethod?: string;
  fingerprint?: string;
  /**
   * The init's `Idempotency-Key` and a digest of the request it came with: an init repeated with the same key (its
   * reply was lost) gets this upload again, also after a restart, rather than a second one holding the same space.
   */
  idempotency?: { key: string; digest: string };
  startTime: number;
  lastActivityTime: number;
  status: UploadStatus;
  /** Name chosen in the target folder; recorded before the move so recovery after a crash picks the same one. */
  finalName?: string;
  /**
   * onUploadComplete was called for the file under `finalName` (recorded just before): after a crash, a file gone
   * from there is one the hook moved, not a lost one.
   */
  hookStarted?: boolean;
  /** onUploadComplete refused the file (recorded before the file is removed): a crash then still ends it failed. */
  hookRefused?: boolean;
  /**
   * The staging file's identity, "ino:birthtime" (kept by link and rename, and across reboots, unlike the device
   * number), recorded with `finalName`: a file found
   * under that name after a crash, or removed when a completion fails, is this upload's only if it matches. Another
   * upload may have taken the name once this one's file left it.
   */
  fileId?: string;
  endTime?: number;
  failure?: { code: string; message: string };
  /**
   * Chunks and bytes received, as upload-status reported them when the record was written (not kept for completed
   * uploads, whose counts are their size): what upload-status still says of a cancelled, failed or expired upload
   * after a restart, when its journal is gone.
   */
  received?: { chunks: number; bytes: number };
}

const packr = new Packr({ useRecords: false });

const STATUSES: readonly string[] = ['active', 'finalizing', 'completed', 'cancelled', 'failed', 'expired'];
/** The largest chunk and chunk count any configuration accepts (options.ts maxChunkSize and maxChunks). */
const MAX_CHUNK_SIZE = 1024 * 1024 * 1024;
const MAX_CHUNKS = 16_777_216;

/**
 * A decoded meta that the engine could have written for upload `guid`: every field of the right type and range, and
 * every name a single harmless path segment. A damaged or foreign record must neither stop the start (a bitmap sized
 * from a negative or huge chunk count throws) nor name a file outside the root (`finalName: '../x'`).
 */
export function validMeta(m: unknown, guid: string): m is UploadMeta {
  if (typeof m !== 'object' || m === null) return false;
  const r = m as Record<string, unknown>;
  const int = (v: unknown, min: number, max = Number.MAX_SAFE_INTEGER): boolean => Number.isSafeInteger(v) && (v as number) >= min && (v as number) <= max;
  const time = (v: unknown): boolean => typeof v === 'number' && Number.isFinite(v);
  // What a name needs to be harmless as one path segment. Not the init rules (validateFileName): those may grow
  // stricter between versions, and a record written under older rules must still reload, not be deleted.
  const name = (v: unknown): boolean =>
    typeof v === 'string' && v !== '' && v !== '.' && v !== '..' && !v.includes('/') && !v.includes('\0') && Buffer.byteLength(v) <= MAX_NAME_BYTES;
  const segments = (v: unknown): boolean => Array.isArray(v) && v.length <= MAX_TARGET_DEPTH && v.every(name);
  return (
    r.v === 1 &&
    r.guid === guid &&
    typeof r.user === 'string' &&
    name(r.fileName) &&
    int(r.fileSize, 0) &&
    int(r.chunkSize, 1, MAX_CHUNK_SIZE) &&
    int(r.totalChunks, 0, MAX_CHUNKS) &&
    r.totalChunks === totalChunksFor(r.fileSize as number, r.chunkSize as number) &&
    segments(r.targetPath) &&
    (r.uploadMethod === undefined || typeof r.uploadMethod === 'string') &&
    (r.fingerprint === undefined || typeof r.fingerprint === 'string') &&
    (r.idempotency === undefined || (typeof r.idempotency === 'object' && r.idempotency !== null && typeof (r.idempotency as Record<string, unknown>).key === 'string' && typeof (r.idempotency as Record<string, unknown>).digest === 'string')) &&
    time(r.startTime) &&
    time(r.lastActivityTime) &&
    typeof r.status === 'string' &&
    STATUSES.includes(r.status) &&
    (r.finalName === undefined || name(r.finalName)) &&
    (r.fileId === undefined || typeof r.fileId === 'string') &&
    (r.endTime === undefined || time(r.endTime)) &&
    (r.received === undefined || (typeof r.received === 'object' && r.received !== null && int((r.received as Record<string, unknown>).chunks, 0, MAX_CHUNKS) && int((r.received as Record<string, unknown>).bytes, 0))) &&
    (r.failure === undefined || (typeof r.failure === 'object' && r.failure !== null && typeof (r.failure as Record<string, unknown>).code === 'string' && typeof (r.failure as Record<string, unknown>).message === 'string'))
  );
}

/** A guid as the engine makes it: optional instance id, a dot, a UUID. Anything else is never a file name. */
export const GUID_RE = /^(?:[A-Za-z0-9-]{1,32}\.)?[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export class StateStore {
  constructor(readonly dir: string) {}

  partPath(guid: string): string {
    return path.join(this.dir, `${guid}.part`);
  }
  metaPath(guid: string): string {
    return path.join(this.dir, `${guid}.meta`);
  }
  journalPath(guid: string): string {
    return path.join(this.dir, `${guid}.journal`);
  }
  prevPath(guid: string): string {
    return path.join(this.dir, `${guid}.prev`);
  }

  async init(): Promise<void> {
    await fsp.mkdir(this.dir, { recursive: true, mode: 0o700 });
  }

  /** Meta writes in flight, per upload. */
  readonly #metaWrites = new Map<string, Promise<void>>();

  /**
   * Replaces the meta file atomically and durably. Writes of one upload's meta run one after another, in call
   * order: two at once would share the temporary name, and the second rename would fail with ENOENT (seen when a
   * cancel and a failure ended the same upload at the same time).
   */
  writeMeta(meta: UploadMeta): Promise<void> {
    const prev = this.#metaWrites.get(meta.guid);
    const run = (prev ? prev.catch(() => {}) : Promise.resolve()).then(() => this.#writeMeta(meta));
    this.#metaWrites.set(meta.guid, run);
    const forget = (): void => {
      if (this.#metaWrites.get(meta.guid) === run) this.#metaWrites.delete(meta.guid);
    };
    run.then(forget, forget);
    return run;
  }

  async #writeMeta(meta: UploadMeta): Promise<void> {
    const final = this.metaPath(meta.guid);
    const tmp = `${final}.tmp`;
    const fh = await fsp.open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(packr.pack(meta));
      await fh.datasync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, final);
    await this.syncDir();
  }

  async syncDir(dir = this.dir): Promise<void> {
    const fh = await fsp.open(dir, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  }

  /** Removes every file of an upload (missing ones are fine). */
  async removeAll(guid: string, keepMeta = false): Promise<void> {
    const files = [this.partPath(guid), this.journalPath(guid), this.prevPath(guid), `${this.metaPath(guid)}.tmp`];
    if (!keepMeta) files.push(this.metaPath(guid));
    await Promise.all(files.map((f) => fsp.rm(f, { force: true })));
  }

  /**
   * Reads every upload's meta and journal. Files that belong to no meta (orphan .part/.journal, .tmp left by a crash
   * mid-write) are removed, and so are the files of a meta that does not decode to a valid record
   * (`validMeta`): without a trustworthy meta nobody can resume them. A meta or journal that cannot be *read*
   * (EIO, EACCES, EMFILE) says nothing about the upload: its files are left as they are, for a start that can read
   * them, and the upload is reported in `unreadable`.
   */
  async loadAll(): Promise<{ uploads: Array<{ meta: UploadMeta; journal: number[] }>; unreadable: Array<{ guid: string; err: unknown }> }> {
    const names = await fsp.readdir(this.dir);
    const metas = new Map<string, UploadMeta>();
    const unreadable: Array<{ guid: string; err: unknown }> = [];
    const keep = new Set<string>();
    for (const name of names) {
      if (!name.endsWith('.meta')) continue;
      const guid = name.slice(0, -'.meta'.length);
      if (!GUID_RE.test(guid)) continue;
      let bytes: Buffer;
      try {
        bytes = await fsp.readFile(path.join(this.dir, name));
      } catch (err) {
        unreadable.push({ guid, err });
        keep.add(guid);
        continue;
      }
      let meta: unknown;
      try {
        meta = packr.unpack(bytes);
      } catch {
        continue; // does not decode: cannot be trusted to describe its bytes, so the upload is dropped below
      }
      if (validMeta(meta, guid)) metas.set(guid, meta);
    }
    const out: Array<{ meta: UploadMeta; journal: number[] }> = [];
    for (const meta of metas.values()) {
      let journal: number[] = [];
      if (meta.status === 'active' || meta.status === 'finalizing') {
        try {
          journal = await this.readJournal(meta.guid, meta.totalChunks);
        } catch (err) {
          unreadable.push({ guid: meta.guid, err });
          keep.add(meta.guid);
          continue;
        }
      }
      out.push({ meta, journal });
    }
    for (const name of names) {
      const m = /^(.*)\.(part|journal|prev|meta|meta\.tmp)$/.exec(name);
      const guid = m?.[1];
      if (guid !== undefined && keep.has(guid)) continue;
      // A replaced file is only of use to a completion still to be decided (finalizing); one that ended has kept or
      // restored it already.
      const stalePrev = m?.[2] === 'prev' && metas.get(guid!)?.status !== 'finalizing';
      if (guid === undefined || !metas.has(guid) || m?.[2] === 'meta.tmp' || stalePrev) {
        await fsp.rm(path.join(this.dir, name), { force: true, recursive: true });
      }
    }
    return { uploads: out, unreadable };
  }

  async readJournal(guid: string, totalChunks: number): Promise<number[]> {
    let buf: Buffer;
    try {
      buf = await fsp.readFile(this.journalPath(guid));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
    return parseJournal(buf, journalSalt(this.journalPath(guid))).chunks.filter((c) => c < totalChunks);
  }
}

/**
 * The journal's first 4 bytes: records after it are 8 bytes, the chunk number and a check (uint32 LE each): the
 * number's complement XOR a salt made from the upload's guid. A tail that a crash left zero-filled or stale (some
 * filesystems expose such blocks after a power loss, and a stale block may hold another journal's records) fails
 * the check, so it can never claim a chunk, not even chunk 0. A journal without the header was written by an
 * earlier version: bare uint32 records, read (and appended to) as they are.
 */
const JOURNAL_MAGIC = Buffer.from('UPJ\x02', 'latin1');
const RECORD = 8;

/** The chunk numbers a journal records, and how many of its bytes hold whole, valid records. */
export function parseJournal(buf: Buffer, salt: number): { chunks: number[]; validBytes: number; checked: boolean } {
  const chunks: number[] = [];
  if (buf.length >= JOURNAL_MAGIC.length && buf.subarray(0, JOURNAL_MAGIC.length).equals(JOURNAL_MAGIC)) {
    let at = JOURNAL_MAGIC.length;
    for (; at + RECORD <= buf.length; at += RECORD) {
      const c = buf.readUInt32LE(at);
      if (buf.readUInt32LE(at + 4) !== recordCheck(c, salt)) break; // torn, zeroed or stale: the records end here
      chunks.push(c);
    }
    return { chunks, validBytes: at, checked: true };
  }
  const whole = buf.length - (buf.length % 4); // a torn last record is ignored
  for (let i = 0; i < whole; i += 4) chunks.push(buf.readUInt32LE(i));
  return { chunks, validBytes: whole, checked: false };
}

/** One record for `chunk` in the journal of upload `guid`, as Journal.append writes it (for tests and tools). */
export function journalRecord(guid: string, chunk: number): Buffer {
  const b = Buffer.allocUnsafe(RECORD);
  b.writeUInt32LE(chunk, 0);
  b.writeUInt32LE(recordCheck(chunk, crc32(guid)), 4);
  return b;
}

function recordCheck(chunk: number, salt: number): number {
  return (~chunk ^ salt) >>> 0;
}

/** The salt of an upload's journal records: the CRC-32 of its guid (the journal file's name). */
function journalSalt(file: string): number {
  return crc32(path.basename(file, '.journal'));
}

/** An open journal: appends chunk numbers at explicit positions and syncs them. */
export class Journal {
  #offset: number;
  private constructor(
    private readonly fh: fsp.FileHandle,
    offset: number,
    private readonly checked: boolean,
    private readonly salt: number,
  ) {
    this.#offset = offset;
  }

  /**
   * Opens (or creates) a journal. A new one gets JOURNAL_MAGIC, synced before the caller records the upload's meta,
   * so a journal that a meta refers to never has its header lost. Appends go after the last valid record.
   */
  static async open(file: string): Promise<Journal> {
    // Never O_APPEND: every record goes to an explicit position, so a torn tail is overwritten by the next append.
    const fh = await fsp.open(file, 'r+').catch(async (e: NodeJS.ErrnoException) => {
      if (e.code !== 'ENOENT') throw e;
      return fsp.open(file, 'w+', 0o600);
    });
    const salt = journalSalt(file);
    try {
      const buf = await fh.readFile();
      if (buf.length === 0) {
        await fh.write(JOURNAL_MAGIC, 0, JOURNAL_MAGIC.length, 0);
        await fh.datasync();
        return new Journal(fh, JOURNAL_MAGIC.length, true, salt);
      }
      const { validBytes, checked } = parseJournal(buf, salt);
      return new Journal(fh, validBytes, checked, salt);
    } catch (e) {
      await fh.close().catch(() => {});
      throw e;
    }
  }

  /** Appends the chunk numbers and fdatasyncs them; resolves only when they are durable. */
  async append(chunks: readonly number[]): Promise<void> {
    if (chunks.length === 0) return;
    const size = this.checked ? RECORD : 4;
    const buf = Buffer.allocUnsafe(size * chunks.length);
    for (let i = 0; i < chunks.length; i++) {
      buf.writeUInt32LE(chunks[i]!, size * i);
      if (this.checked) buf.writeUInt32LE(recordCheck(chunks[i]!, this.salt), size * i + 4);
    }
    const at = this.#offset;
    this.#offset += buf.length;
    let done = 0;
    while (done < buf.length) {
      const { bytesWritten } = await this.fh.write(buf, done, buf.length - done, at + done);
      done += bytesWritten;
    }
    await this.fh.datasync();
  }

  async close(): Promise<void> {
    await this.fh.close().catch(() => {});
  }
}
