/**
 * The slice of the Updraft wire API that the benchmark peers speak, so one client drives them and Updraft alike:
 *
 *   POST <prefix>/upload-chunk  {"action":"init","fileName","fileSize","chunkSize"}
 *     -> 200 {"status":"success","message":"...","data":{"guid","uploadUrl","fileName","fileSize","chunkSize","totalChunks"}}
 *   PUT  <prefix>/upload-chunk?guid=G&chunk=N   raw body of exactly that chunk's length
 *     -> 200 {"status":"success","message":"...","data":{"guid","chunk","complete"}}
 *
 * Errors answer {"status":"fail","message"} with a 4xx. This module is transport-free: the uWS and node:http peers
 * both call it, so they validate the same way and differ only in how they move bytes.
 */
import path from 'node:path';
import { randomUUID } from 'node:crypto';

export const DEFAULT_PREFIX = '/api/v1/files';

/** Chunks are far below uWS's 1e9-byte Content-Length limit; a bound also keeps a typo from allocating a file. */
const MAX_CHUNK_SIZE = 512 * 1024 * 1024;
const MAX_FILE_SIZE = 64 * 1024 * 1024 * 1024;

export interface PeerUpload {
  readonly guid: string;
  readonly fileName: string;
  readonly fileSize: number;
  readonly chunkSize: number;
  readonly totalChunks: number;
  /** Absolute path of the one file this upload is written into. */
  readonly filePath: string;
  /** Chunks that arrived whole; the upload is complete when its size equals totalChunks. */
  readonly received: Set<number>;
}

export interface ChunkPlace {
  readonly offset: number;
  readonly length: number;
}

/** A refusal the peer turns into a 4xx; the message is for the person reading the benchmark's error output. */
export class PeerRequestError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export class UploadTable {
  readonly #dir: string;
  readonly #uploads = new Map<string, PeerUpload>();

  constructor(dir: string) {
    this.#dir = dir;
  }

  /** Validates an init body and registers the upload. Throws PeerRequestError for anything a client got wrong. */
  create(body: unknown): PeerUpload {
    if (typeof body !== 'object' || body === null) throw new PeerRequestError(400, 'body must be a JSON object');
    const { action, fileName, fileSize, chunkSize } = body as Record<string, unknown>;
    if (action !== 'init') throw new PeerRequestError(400, 'unknown action');
    if (typeof fileName !== 'string' || fileName === '' || fileName === '.' || fileName === '..' ||
        fileName !== path.basename(fileName) || fileName.includes('\0')) {
      throw new PeerRequestError(400, 'invalid fileName');
    }
    if (typeof fileSize !== 'number' || !Number.isSafeInteger(fileSize) || fileSize < 0 || fileSize > MAX_FILE_SIZE) {
      throw new PeerRequestError(400, 'invalid fileSize');
    }
    if (typeof chunkSize !== 'number' || !Number.isSafeInteger(chunkSize) || chunkSize < 1 || chunkSize > MAX_CHUNK_SIZE) {
      throw new PeerRequestError(400, 'invalid chunkSize');
    }
    const upload: PeerUpload = {
      guid: randomUUID(),
      fileName,
      fileSize,
      chunkSize,
      totalChunks: Math.max(1, Math.ceil(fileSize / chunkSize)),
      filePath: path.join(this.#dir, fileName),
      received: new Set(),
    };
    this.#uploads.set(upload.guid, upload);
    return upload;
  }

  /** Finds the upload and the byte range of chunk `chunkParam`; both come straight from the query string. */
  locate(guid: string, chunkParam: string): { upload: PeerUpload; chunk: number; place: ChunkPlace } {
    const upload = this.#uploads.get(guid);
    if (upload === undefined) throw new PeerRequestError(404, 'upload not found');
    if (!/^\d{1,9}$/.test(chunkParam)) throw new PeerRequestError(400, 'invalid chunk number');
    const chunk = Number(chunkParam);
    if (chunk >= upload.totalChunks) throw new PeerRequestError(400, 'chunk number past the last chunk');
    const offset = chunk * upload.chunkSize;
    // fs.write at a NaN or unsafe position silently writes at the file position instead (STYLE.md).
    if (!Number.isSafeInteger(offset)) throw new PeerRequestError(400, 'chunk offset is not a safe integer');
    return { upload, chunk, place: { offset, length: Math.min(upload.chunkSize, upload.fileSize - offset) } };
  }

  /** Records a whole chunk; returns true when it was the last one missing. Drops the entry once complete. */
  markReceived(upload: PeerUpload, chunk: number): boolean {
    upload.received.add(chunk);
    if (upload.received.size < upload.totalChunks) return false;
    this.#uploads.delete(upload.guid);
    return true;
  }
}

export function initReply(upload: PeerUpload, prefix: string): string {
  return JSON.stringify({
    status: 'success',
    message: 'Upload initialized',
    data: {
      guid: upload.guid,
      uploadUrl: `${prefix}/upload-chunk?guid=${upload.guid}`,
      fileName: upload.fileName,
      fileSize: upload.fileSize,
      chunkSize: upload.chunkSize,
      totalChunks: upload.totalChunks,
    },
  });
}

export function chunkReply(upload: PeerUpload, chunk: number, complete: boolean): string {
  return JSON.stringify({
    status: 'success',
    message: complete ? 'Upload complete' : 'Chunk stored',
    data: { guid: upload.guid, chunk, complete },
  });
}

export function failReply(message: string): string {
  return JSON.stringify({ status: 'fail', message });
}
