/**
 * The bytes a simulated client means to send, generated on demand instead of kept in memory (500 uploads of up to
 * 64 MiB would not fit): chunk c of upload u is an AES-128-CTR keystream keyed by (seed, u) with the chunk number in
 * the counter block, so any chunk can be made again, in any order, in about a millisecond per MiB.
 *
 * A chunk has versions. Version 0 is what the client means to send. Version v > 0 is the same chunk with every byte
 * XORed with a non-zero constant: a client bug or a tampered retry that reuses the chunk number with different
 * bytes. It differs from version 0 in every byte, so a file that holds a mix of two versions, or the wrong one, can
 * never hash like the right one by chance (not even for a 1-byte chunk).
 */
import { createCipheriv, createHash } from 'node:crypto';

export const ALT_VERSIONS = 2;

function xorConst(version: number): number {
  // 0x5b, 0xb6: non-zero and distinct, so versions differ from each other and from version 0 in every byte.
  return (version * 0x5b) & 0xff || 0xff;
}

export class UploadContent {
  readonly #key: Buffer;

  constructor(
    seed: number,
    readonly index: number,
    readonly fileSize: number,
    readonly chunkSize: number,
  ) {
    this.#key = createHash('sha256').update(`updraft-stress:${seed >>> 0}:${index}`).digest().subarray(0, 16);
  }

  get totalChunks(): number {
    return Math.ceil(this.fileSize / this.chunkSize);
  }

  chunkLength(c: number): number {
    return Math.min(this.chunkSize, this.fileSize - c * this.chunkSize);
  }

  /** The bytes of chunk `c`, version `version` (0 = the intended bytes). A fresh buffer each call. */
  chunk(c: number, version = 0): Buffer {
    const len = this.chunkLength(c);
    const iv = Buffer.alloc(16);
    iv.writeUInt32BE(c >>> 0, 0);
    iv.writeUInt32BE(Math.floor(c / 0x1_0000_0000), 4);
    const cipher = createCipheriv('aes-128-ctr', this.#key, iv);
    const out = cipher.update(Buffer.alloc(len));
    cipher.final();
    if (version !== 0) {
      const k = xorConst(version);
      for (let i = 0; i < out.length; i++) out[i] = out[i]! ^ k;
    }
    return out;
  }

  /** SHA-256 (hex) of chunk `c` in `version`. */
  chunkSha(c: number, version = 0): string {
    return createHash('sha256').update(this.chunk(c, version)).digest('hex');
  }

  /** SHA-256 (hex) of the whole file when chunk c holds version `versionOf(c)`. */
  fileSha(versionOf: (c: number) => number = () => 0): string {
    const h = createHash('sha256');
    for (let c = 0; c < this.totalChunks; c++) h.update(this.chunk(c, versionOf(c)));
    return h.digest('hex');
  }
}
