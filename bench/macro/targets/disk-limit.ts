/**
 * The disk limit: the same bytes written in this process, no network, no server. Each upload is written as one file
 * with `fs.writeSync` of 8 MiB blocks, then `fdatasync`, so the figure includes getting the data to the disk; uploads
 * run one after another (sync calls serialize anyway). Its CPU is this process's own, measured with cpuUsage().
 */
import fs from 'node:fs';
import path from 'node:path';
import type { RunningTarget, TargetSpec, UploadClient, UploadJob, UploadReceipt } from '../model.js';

const BLOCK = 8 * 1024 * 1024;

class DiskWriteClient implements UploadClient {
  readonly #dir: string;
  readonly #block = Buffer.allocUnsafe(BLOCK);

  constructor(dir: string) {
    this.#dir = dir;
  }

  describe(): string {
    return 'in-process writeSync 8 MiB + fdatasync';
  }

  async upload(job: UploadJob): Promise<UploadReceipt> {
    const block = this.#block;
    const fd = fs.openSync(path.join(this.#dir, job.fileName), 'w');
    try {
      let filled = 0;
      let position = 0;
      const flush = (): void => {
        for (let done = 0; done < filled; ) done += fs.writeSync(fd, block, done, filled - done, position + done);
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
      fs.fdatasyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    return { id: job.fileName };
  }
}

export const diskLimitTarget: TargetSpec = {
  id: 'disk',
  label: 'disk limit',
  role: 'limit',
  description: 'this process writes the same bytes to the same disk: writeSync of 8 MiB blocks, then fdatasync',
  async start(context): Promise<RunningTarget> {
    return {
      client: new DiskWriteClient(context.dataDir),
      stored: (job) => ({ kind: 'file', path: path.join(context.dataDir, job.fileName) }),
      stop: async () => {},
    };
  },
};
