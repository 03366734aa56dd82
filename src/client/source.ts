/**
 * What the client uploads, behind one small interface that reads byte ranges on demand: a browser `File`/`Blob`,
 * and in Node a `Blob`, a `Buffer` (any ArrayBuffer view or ArrayBuffer) or a file path. A path is opened once and
 * read one chunk at a time at its offset, so a file of any size never sits in memory whole.
 *
 * The `node:fs/promises` import is dynamic and only reached for a path, so the browser bundle never loads it
 * (esbuild marks `node:*` external).
 */
import { ClientError } from './errors.js';

/** Anything `upload()` accepts. A string is a file path (Node only); so is a `file:` URL. */
export type UploadSource = Blob | ArrayBuffer | ArrayBufferView | string | URL;

export interface ChunkSource {
  /** The name to upload under, unless the caller passes `fileName`. */
  readonly name: string;
  readonly size: number;
  /**
   * When the file was last modified, in whole ms since the epoch: a browser File's `lastModified` (part of the
   * resume key), a file path's mtime; undefined for a plain Blob and for bytes. With the size it makes the
   * upload's fingerprint (see sourceFingerprint).
   */
  readonly lastModified: number | undefined;
  /** True for browser File/Blob sources: the key for localStorage resume applies. */
  readonly isBlob: boolean;
  /** The bytes [start, end) as a fresh array the caller may keep. */
  read(start: number, end: number): Promise<Uint8Array>;
  /** The bytes [start, end) as a fetch body: a Blob slice where possible (the browser streams it from disk). */
  body(start: number, end: number): Promise<Blob | Uint8Array>;
  close(): Promise<void>;
}

/**
 * ERR_SOURCE for a file that changed (was written to, grew or shrank) after it was opened: the chunks already stored
 * come from a version that no longer exists, so the upload can never be finished correctly. The client deletes it on
 * the server (upload.ts).
 */
export class SourceChangedError extends ClientError {
  constructor(message: string) {
    super('ERR_SOURCE', message);
  }
}

class BlobSource implements ChunkSource {
  readonly isBlob = true;
  readonly name: string;
  readonly size: number;
  readonly lastModified: number | undefined;
  readonly #blob: Blob;

  constructor(blob: Blob) {
    this.#blob = blob;
    this.size = blob.size;
    const f = blob as Partial<File>;
    this.name = typeof f.name === 'string' && f.name !== '' ? f.name : 'blob';
    this.lastModified = typeof f.lastModified === 'number' ? f.lastModified : undefined;
  }

  async read(start: number, end: number): Promise<Uint8Array> {
    try {
      return new Uint8Array(await this.#blob.slice(start, end).arrayBuffer());
    } catch (e) {
      // A browser File whose underlying file changed or vanished fails here (NotReadableError).
      throw new ClientError('ERR_SOURCE', `Cannot read the file: ${(e as Error)?.message ?? String(e)}`, { cause: e });
    }
  }

  async body(start: number, end: number): Promise<Blob | Uint8Array> {
    // Node's fetch sends a Blob too, but reading it first surfaces a read error as ERR_SOURCE, not a network error.
    return typeof window === 'undefined' ? this.read(start, end) : this.#blob.slice(start, end);
  }

  async close(): Promise<void> {}
}

class BytesSource implements ChunkSource {
  readonly isBlob = false;
  readonly lastModified = undefined;
  readonly size: number;
  readonly #bytes: Uint8Array;

  constructor(
    readonly name: string,
    bytes: Uint8Array,
  ) {
    this.#bytes = bytes;
    this.size = bytes.length;
  }

  async read(start: number, end: number): Promise<Uint8Array> {
    return this.#bytes.slice(start, end); // a copy: the caller's buffer may change under an upload in progress
  }

  body(start: number, end: number): Promise<Uint8Array> {
    return this.read(start, end);
  }

  async close(): Promise<void> {}
}

/** Minimal shape of node:fs/promises FileHandle that this file uses. */
interface FileHandleLike {
  read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesRead: number }>;
  stat(): Promise<{ size: number; mtimeMs: number; isFile(): boolean }>;
  close(): Promise<void>;
}

class PathSource implements ChunkSource {
  readonly isBlob = false;
  readonly lastModified: number;

  private constructor(
    readonly name: string,
    readonly size: number,
    readonly fh: FileHandleLike,
    /** The file's modification time at open: a read that finds another one was made from a file being changed. */
    private readonly mtimeMs: number,
  ) {
    this.lastModified = Math.trunc(mtimeMs); // whole ms, as a browser's File.lastModified has it
  }

  static async open(path: string | URL): Promise<PathSource> {
    if (typeof process === 'undefined' || typeof process.versions?.node !== 'string') {
      throw new ClientError('ERR_SOURCE', 'A file path can only be uploaded from Node; in a browser pass a File');
    }
    const fsp = await import('node:fs/promises');
    let fh: FileHandleLike;
    try {
      // O_NONBLOCK: a FIFO without a writer would block open() (and a thread of the pool, so even Ctrl-C) for good;
      // it changes nothing for a regular file, and anything else is refused below.
      fh = (await fsp.open(path, fsp.constants.O_RDONLY | fsp.constants.O_NONBLOCK)) as unknown as FileHandleLike;
    } catch (e) {
      throw new ClientError('ERR_SOURCE', `Cannot open ${String(path)}: ${(e as Error).message}`, { cause: e });
    }
    const st = await fh.stat();
    if (!st.isFile()) {
      await fh.close();
      throw new ClientError('ERR_SOURCE', `${String(path)} is not a regular file`);
    }
    const p = typeof path === 'string' ? path : decodeURIComponent(path.pathname);
    const name = p.split(/[\\/]/).filter(Boolean).pop() ?? 'file';
    return new PathSource(name, st.size, fh, st.mtimeMs);
  }

  async read(start: number, end: number): Promise<Uint8Array> {
    const out = new Uint8Array(end - start);
    let have = 0;
    while (have < out.length) {
      const { bytesRead } = await this.fh.read(out, have, out.length - have, start + have);
      if (bytesRead === 0) {
        throw new SourceChangedError(`The file shrank while uploading: no bytes at offset ${start + have}`);
      }
      have += bytesRead;
    }
    // Checked after the read: these bytes come from the file as it was at open only if it has not been written to
    // since. Otherwise the upload would store a mix of two versions (or a prefix of a growing file) and call it done.
    const st = await this.fh.stat();
    if (st.size !== this.size || st.mtimeMs !== this.mtimeMs) {
      throw new SourceChangedError(`The file changed while uploading (${st.size !== this.size ? `its size went from ${this.size} to ${st.size} bytes` : 'it was written to'}); upload a copy that does not change`);
    }
    return out;
  }

  body(start: number, end: number): Promise<Uint8Array> {
    return this.read(start, end);
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}

/**
 * What the client sends as `fingerprint` at init and compares with upload-status before resuming by guid:
 * `<size>:<lastModified>`, or undefined for a source without a modification time (bytes, a plain Blob). The same
 * file has the same fingerprint in a browser (File.lastModified) and in Node (its mtime, whole ms).
 */
export function sourceFingerprint(src: ChunkSource): string | undefined {
  return src.lastModified === undefined ? undefined : `${src.size}:${src.lastModified}`;
}

export async function openSource(source: UploadSource): Promise<ChunkSource> {
  if (typeof Blob !== 'undefined' && source instanceof Blob) return new BlobSource(source);
  if (typeof source === 'string' || source instanceof URL) return PathSource.open(source);
  if (source instanceof ArrayBuffer) return new BytesSource('data.bin', new Uint8Array(source));
  if (ArrayBuffer.isView(source)) {
    return new BytesSource('data.bin', new Uint8Array(source.buffer, source.byteOffset, source.byteLength));
  }
  throw new ClientError('ERR_SOURCE', 'source must be a File/Blob, a Buffer or typed array, an ArrayBuffer, or a file path');
}
