/**
 * Micro benchmark: writing one piece of a chunk in a worker (WritePool -> write-task.ts) against a plain
 * fs.writeSync of the same bytes on the main thread, for 1, 8 and 32 MiB pieces.
 *
 * The worker path adds a task round trip, validation, the shared-state view and a lock acquire/release to the
 * write(2) itself; in exchange the main thread stays free to read sockets. The ratio shows the piece size above
 * which that overhead is noise. Both write the same bytes (a SharedArrayBuffer, no copy on either path) at offset 0
 * of one temp file, page cache only (no fsync). The worker task is a first-but-not-last piece, so it never sets the
 * chunk's bit and can be repeated.
 *
 *   node --import tsx bench/micro/write-piece.bench.ts [--quick]
 */
import { randomFillSync } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Bench } from 'tinybench';
import { WritePool } from '../../src/main/write-pool.js';
import { createSharedState } from '../../src/workers/shared-layout.js';

export interface MicroResult {
  name: string;
  opsPerSec: number;
  p50Ms: number;
  mbPerSec?: number;
}

const MIB = 1024 * 1024;
const SIZES_MIB = [1, 8, 32];
const CHUNK = 32 * MIB;

export async function run(opts: { quick: boolean }): Promise<MicroResult[]> {
  const dir = mkdtempSync(join(tmpdir(), 'updraft-bench-piece-'));
  const fd = openSync(join(dir, 'staging'), 'wx');
  const pool = new WritePool({ workers: 1 });
  const source = new SharedArrayBuffer(CHUNK);
  randomFillSync(new Uint8Array(source));
  const state = createSharedState(1, CHUNK, 'chunk');
  const bytes = new Map<string, number>();
  try {
    const bench = new Bench({ time: opts.quick ? 200 : 1200, warmupTime: opts.quick ? 50 : 200, iterations: 5 });
    for (const mib of SIZES_MIB) {
      const length = mib * MIB;
      const workerName = `worker (WritePool), ${mib} MiB piece`;
      const mainName = `main thread writeSync, ${mib} MiB piece`;
      bytes.set(workerName, length).set(mainName, length);
      bench.add(workerName, async () => {
        const r = await pool.write({
          sab: state.sab, fd, fileSize: CHUNK, chunkSize: CHUNK, chunk: 0, chunkOffset: 0, data: source, dataOffset: 0,
          length, first: true, last: false, ownerId: 1, lockTimeoutMs: 10_000,
        });
        if (r.failure !== undefined || r.written !== length) throw new Error(`write failed: ${JSON.stringify(r)}`);
      });
      const view = new Uint8Array(source, 0, length);
      bench.add(mainName, () => {
        // The same short-write loop as write-task.ts, so both sides do the same syscalls.
        for (let done = 0; done < length; ) done += writeSync(fd, view, done, length - done, done);
      });
    }
    await bench.run();
    return bench.tasks.map((t) => {
      const r = t.result;
      if (r.state !== 'completed') throw new Error(`${t.name}: ${r.state === 'errored' ? r.error.message : r.state}`);
      const mbPerSec = bytes.get(t.name)! / 1e6 / (r.latency.p50 / 1000);
      return { name: t.name, opsPerSec: r.throughput.mean, p50Ms: r.latency.p50, mbPerSec };
    });
  } finally {
    await pool.close();
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  void run({ quick: process.argv.includes('--quick') }).then((rows) => {
    console.table(
      rows.map((r) => ({ name: r.name, 'ops/s': r.opsPerSec.toFixed(1), 'p50 ms': r.p50Ms.toFixed(3), 'MB/s': r.mbPerSec!.toFixed(0) })),
    );
    for (let i = 0; i < rows.length; i += 2) {
      console.log(`${SIZES_MIB[i / 2]} MiB: worker / main time (p50) ${(rows[i]!.p50Ms / rows[i + 1]!.p50Ms).toFixed(2)}x`);
    }
  });
}
