/**
 * O_DIRECT path of the workers: aligned slab pieces go through the O_DIRECT fd, anything unaligned through the page
 * cache, and a refused O_DIRECT write is redone through the page cache. Every byte of the file is checked.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SlabPool } from '../../src/main/slab-pool.js';
import { WritePool } from '../../src/main/write-pool.js';
import { createSharedState } from '../../src/workers/shared-layout.js';
import type { WriteTask } from '../../src/workers/task-types.js';

const KIB = 1024;
let dir: string;
let pool: WritePool;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'updraft-dio-'));
  pool = new WritePool({ workers: 2 });
});
afterAll(async () => {
  await pool.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

function openDirect(file: string): number | null {
  try {
    return fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_DIRECT);
  } catch {
    return null;
  }
}

describe('O_DIRECT writes', () => {
  it('writes aligned slab pieces and unaligned tails into the right places', async (ctx) => {
    const file = path.join(dir, 'a.part');
    const fd = fs.openSync(file, 'wx');
    const directFd = openDirect(file);
    if (directFd === null) ctx.skip(); // a filesystem without O_DIRECT (tmpfs): the page-cache path is tested elsewhere
    const chunkSize = 64 * KIB;
    const fileSize = 3 * chunkSize + 1000; // last chunk unaligned
    const data = randomBytes(fileSize);
    const state = createSharedState(4, chunkSize, 'chunk');
    const slabs = new SlabPool({ slabSize: 16 * KIB, maxBytes: 256 * KIB });
    const results = [];
    for (const chunk of [2, 0, 3, 1]) {
      const len = Math.min(chunkSize, fileSize - chunk * chunkSize);
      for (let off = 0; off < len; off += 16 * KIB) {
        const n = Math.min(16 * KIB, len - off);
        const slab = slabs.tryAcquire()!;
        slab.bytes.set(data.subarray(chunk * chunkSize + off, chunk * chunkSize + off + n));
        const task: WriteTask = {
          sab: state.sab, fd, directFd: directFd!, fileSize, chunkSize, chunk, chunkOffset: off,
          data: slab.sab, dataOffset: slab.offset, length: n, first: off === 0, last: off + n === len,
          ownerId: 1, lockTimeoutMs: 1000,
        };
        results.push(await pool.write(task));
        slabs.release(slab);
      }
    }
    for (const r of results) {
      expect(r.failure).toBeUndefined();
      expect(r.directRefused).toBeUndefined();
    }
    expect(results.filter((r) => r.finalize)).toHaveLength(1);
    fs.fdatasyncSync(fd);
    fs.closeSync(directFd!);
    fs.closeSync(fd);
    expect(Buffer.compare(fs.readFileSync(file), data)).toBe(0);
  });

  it('redoes through the page cache a write the O_DIRECT fd refuses (unaligned buffer) and reports it', async () => {
    // O_DIRECT refuses (EINVAL) a buffer that is not suitably aligned. A plain SharedArrayBuffer comes from malloc
    // (16-byte alignment), unlike the slab pool's page-aligned WebAssembly memory, so the worker must fall back. One
    // in 32 such buffers happens to be 512-byte aligned (this disk's block) and O_DIRECT takes it: try fresh ones
    // (all kept alive, so none reuses another's address) until one is refused.
    const chunkSize = 8 * KIB;
    const buffers: SharedArrayBuffer[] = [];
    let refused = false;
    for (let attempt = 0; attempt < 8 && !refused; attempt++) {
      const file = path.join(dir, `b${attempt}.part`);
      const fd = fs.openSync(file, 'wx');
      const directFd = openDirect(file);
      const data = randomBytes(chunkSize);
      const sab = new SharedArrayBuffer(chunkSize + 16);
      buffers.push(sab);
      new Uint8Array(sab, 0, chunkSize).set(data);
      const state = createSharedState(1, chunkSize, 'chunk');
      const r = await pool.write({
        sab: state.sab, fd, ...(directFd !== null ? { directFd } : {}), fileSize: chunkSize, chunkSize, chunk: 0,
        chunkOffset: 0, data: sab, dataOffset: 0, length: chunkSize, first: true, last: true, ownerId: 1, lockTimeoutMs: 1000,
      });
      expect(r.failure).toBeUndefined();
      expect(r.flipped).toBe(true);
      refused = directFd === null || r.directRefused === true;
      fs.closeSync(fd);
      if (directFd !== null) fs.closeSync(directFd);
      expect(Buffer.compare(fs.readFileSync(file), data)).toBe(0);
    }
    expect(refused).toBe(true);
  });
});
