/**
 * Test data, prepared once and sent many times: each upload's bytes are pre-split into one file per chunk, in RAM
 * (/dev/shm), so that curl reads them at memory speed and the client costs little of the 2 cores it shares with the
 * server.
 *
 * Bytes are an AES-128-CTR keystream (incompressible, fast with AES-NI), keyed by the content index, so content i is
 * the same bytes whatever the chunk size and its sha256 is computed once. A scenario with 16 uploads uses 16
 * different contents, so a server that mixed two uploads up would fail verification.
 */
import { createCipheriv, createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

export interface Content {
  readonly index: number;
  readonly fileSize: number;
  readonly chunkSize: number;
  /** One file per chunk, in order; all are chunkSize long except possibly the last. */
  readonly chunkPaths: readonly string[];
  /** Hex sha256 of the whole content; empty when not computed (warm-up slices). */
  readonly sha256: string;
}

export interface Dataset {
  readonly fileSize: number;
  readonly chunkSize: number;
  readonly contents: readonly Content[];
  readonly dir: string;
}

const KEY = Buffer.from('updraft-bench-k1'); // 16 bytes: AES-128

export class DataStore {
  readonly #root: string;
  readonly #hashes = new Map<string, string>();

  constructor(root: string) {
    this.#root = root;
  }

  /** Writes (or reuses) `count` contents of `fileSize` bytes split into `chunkSize` files. */
  prepare(fileSize: number, chunkSize: number, count: number): Dataset {
    const dir = path.join(this.#root, `${fileSize}-${chunkSize}`);
    fs.mkdirSync(dir, { recursive: true });
    const contents: Content[] = [];
    for (let index = 0; index < count; index++) contents.push(this.#content(dir, fileSize, chunkSize, index));
    return { fileSize, chunkSize, contents, dir };
  }

  /** Frees the RAM a dataset holds; prepare() writes it again if asked. */
  drop(dataset: Dataset): void {
    fs.rmSync(dataset.dir, { recursive: true, force: true });
  }

  #content(dir: string, fileSize: number, chunkSize: number, index: number): Content {
    const contentDir = path.join(dir, String(index));
    const totalChunks = Math.max(1, Math.ceil(fileSize / chunkSize));
    const chunkPaths = Array.from({ length: totalChunks }, (_, n) => path.join(contentDir, String(n).padStart(6, '0')));
    const hashKey = `${fileSize}:${index}`;
    const known = this.#hashes.get(hashKey);
    const last = chunkPaths[totalChunks - 1]!;
    const lastSize = fileSize - (totalChunks - 1) * chunkSize;
    if (known !== undefined && fs.existsSync(last) && fs.statSync(last).size === lastSize) {
      return { index, fileSize, chunkSize, chunkPaths, sha256: known };
    }
    fs.mkdirSync(contentDir, { recursive: true });
    const iv = Buffer.alloc(16);
    iv.writeUInt32BE(index, 0);
    const cipher = createCipheriv('aes-128-ctr', KEY, iv);
    const hash = createHash('sha256');
    const zeros = Buffer.alloc(Math.min(chunkSize, Math.max(fileSize, 1)));
    for (let n = 0; n < totalChunks; n++) {
      const size = Math.min(chunkSize, fileSize - n * chunkSize);
      const bytes = cipher.update(size === zeros.length ? zeros : zeros.subarray(0, size));
      hash.update(bytes);
      fs.writeFileSync(chunkPaths[n]!, bytes);
    }
    const sha256 = hash.digest('hex');
    this.#hashes.set(hashKey, sha256);
    return { index, fileSize, chunkSize, chunkPaths, sha256 };
  }
}

/** The first chunks of a content, as a small upload for warming a server up (not verified). */
export function warmupSlice(content: Content, chunks: number): Content {
  const count = Math.min(chunks, content.chunkPaths.length);
  const fileSize = count === content.chunkPaths.length ? content.fileSize : count * content.chunkSize;
  return { ...content, fileSize, chunkPaths: content.chunkPaths.slice(0, count), sha256: '' };
}

/** sha256 of a file, or of several files read one after another (nginx stores one file per chunk). */
export async function sha256OfFiles(paths: readonly string[]): Promise<{ sha256: string; bytes: number }> {
  const hash = createHash('sha256');
  let bytes = 0;
  for (const file of paths) {
    const stream = fs.createReadStream(file, { highWaterMark: 1024 * 1024 });
    for await (const piece of stream) {
      hash.update(piece as Buffer);
      bytes += (piece as Buffer).length;
    }
  }
  return { sha256: hash.digest('hex'), bytes };
}
