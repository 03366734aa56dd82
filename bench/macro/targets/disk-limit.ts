/**
 * The disk limits: the same bytes written in this process, no network, no server, uploads one after another (sync
 * calls serialize anyway). Its CPU is this process's own, measured with cpuUsage().
 *   - `disk`: each upload as one file with `fs.writeSync` of 8 MiB blocks through the page cache, then `fdatasync`,
 *     so the figure includes getting the data to the disk;
 *   - `disk-direct`: the same with `O_DIRECT` from page-aligned memory (what Updraft's workers do), then
 *     `fdatasync`: the ceiling of Updraft's write path on this disk. A tail that is not a whole 4 KiB block goes
 *     through a buffered fd, as in Updraft.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { RunningTarget, TargetSpec, UploadClient, UploadJob, UploadReceipt } from '../model.js';

const BLOCK = 8 * 1024 * 1024;
/** O_DIRECT needs buffer address, file offset and length aligned; 4 KiB is safe on every common filesystem. */
const DIRECT_ALIGN = 4096;

class DiskWriteClient implements UploadClient {
  readonly #dir: string;
  readonly #direct: boolean;
  /** Page-aligned (WebAssembly memory is mapped on a page boundary), as O_DIRECT needs. */
  readonly #block = Buffer.from(new WebAssembly.Memory({ initial: BLOCK / 65536, maximum: BLOCK / 65536 }).buffer);

  constructor(dir: string, direct: boolean) {
    this.#dir = dir;
    this.#direct = direct;
  }

  describe(): string {
    return this.#direct ? 'in-process O_DIRECT 8 MiB + fdatasync' : 'in-process writeSync 8 MiB + fdatasync';
  }

  async upload(job: UploadJob): Promise<UploadReceipt> {
    const block = this.#block;
    const file = path.join(this.#dir, job.fileName);
    const fd = fs.openSync(file, 'w');
    const directFd = this.#direct ? fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_DIRECT) : null;
    try {
      let filled = 0;
      let position = 0;
      const flush = (): void => {
        // Whole 4 KiB blocks through O_DIRECT; only a file's last partial block goes through the page cache.
        const direct = directFd === null ? 0 : filled - (filled % DIRECT_ALIGN);
        for (let done = 0; done < filled; ) {
          const target = done < direct ? directFd! : fd;
          const end = done < direct ? direct : filled;
          done += fs.writeSync(target, block, done, end - done, position + done);
        }
        position += filled;
        filled = 0;
      };
      for (const file of job.content.chunkPaths) {
        const source = fs.openSync(file, 'r');
        try {
          for (let i = 0; i < 1_000_000; i++) {
            const read = fs.readSync(source, block, filled, BLOCK - filled, null);
            if (read === 0) break;
            filled += read;
            if (filled === BLOCK) flush();
          }
        } finally {
          fs.closeSync(source);
        }
      }
      flush();
      if (position !== job.content.fileSize) throw new Error(`wrote ${position} bytes, expected ${job.content.fileSize}`);
      if (directFd !== null) fs.fdatasyncSync(directFd);
      fs.fdatasyncSync(fd);
    } finally {
      if (directFd !== null) fs.closeSync(directFd);
      fs.closeSync(fd);
    }
    return { id: job.fileName };
  }
}

function diskTarget(direct: boolean): TargetSpec {
  return {
    id: direct ? 'disk-direct' : 'disk',
    label: direct ? 'disk limit, O_DIRECT' : 'disk limit',
    role: 'limit',
    description: direct
      ? "this process writes the same bytes to the same disk with O_DIRECT (8 MiB blocks, as Updraft's workers do), then fdatasync"
      : 'this process writes the same bytes to the same disk: writeSync of 8 MiB blocks, then fdatasync',
    async start(context): Promise<RunningTarget> {
      return {
        client: new DiskWriteClient(context.dataDir, direct),
        stored: (job) => ({ kind: 'file', path: path.join(context.dataDir, job.fileName) }),
        stop: async () => {},
      };
    },
  };
}

export const diskLimitTarget = diskTarget(false);
export const directDiskLimitTarget = diskTarget(true);
