/**
 * Micro benchmark: how the write path hands bytes to the workers. Batched (one task per 2 MiB chunk, the way
 * chunk-ingest fills a slab before dispatching) against unbatched (one task per 512 KiB piece, i.e. one task per
 * uWS onData call), the same 16 MiB per operation, both through WritePool into one temp file.
 *
 * Every task pays a main -> worker -> main round trip (about 20 us on one core, 60-70 us across cores, see
 * notes/performance.md), a lock acquire and a view over the shared state; unbatched pays it four times as often.
 * The bytes sit in a SharedArrayBuffer, so neither side copies them, and the file is rewritten in place each time
 * (page cache, no fsync): what differs is the dispatch. Chunks go out 8 at once; the pieces of one chunk go one
 * after another, as the `last` piece requires.
 *
 *   node --import tsx bench/micro/dispatch.bench.ts [--quick]
 */
import { randomFillSync } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Bench } from 'tinybench';
import { WritePool } from '../../src/main/write-pool.js';
import { createSharedState, type SharedState } from '../../src/workers/shared-layout.js';
import type { WriteResult } from '../../src/workers/task-types.js';

export interface MicroResult {
  name: string;
  opsPerSec: number;
  p50Ms: number;
  mbPerSec?: number;
}

const MIB = 1024 * 1024;
const CHUNK = 2 * MIB;
const CHUNKS = 8;
const TOTAL = CHUNK * CHUNKS;

export async function run(opts: { quick: boolean }): Promise<MicroResult[]> {
  const dir = mkdtempSync(join(tmpdir(), 'updraft-bench-dispatch-'));
  const fd = openSync(join(dir, 'staging'), 'wx');
  const pool = new WritePool({ workers: 2 });
  const source = new SharedArrayBuffer(TOTAL);
  randomFillSync(new Uint8Array(source));
  try {
    let state: SharedState = createSharedState(CHUNKS, CHUNK, 'chunk');
    let owner = 0;
    // A fresh shared state per operation (outside the timing): otherwise every chunk after the first operation is a
    // duplicate and nothing is written.
    const fresh = { beforeEach: () => void (state = createSharedState(CHUNKS, CHUNK, 'chunk')) };

    const sendChunk = async (chunk: number, pieceSize: number): Promise<void> => {
      const ownerId = ++owner;
      for (let off = 0; off < CHUNK; off += pieceSize) {
        const r: WriteResult = await pool.write({
          sab: state.sab, fd, fileSize: TOTAL, chunkSize: CHUNK, chunk, chunkOffset: off, data: source,
          dataOffset: chunk * CHUNK + off, length: pieceSize, first: off === 0, last: off + pieceSize === CHUNK,
          ownerId, lockTimeoutMs: 10_000,
        });
        if (r.failure !== undefined || r.written !== pieceSize) throw new Error(`write failed: ${JSON.stringify(r)}`);
      }
    };
    const sendAll = async (pieceSize: number): Promise<void> => {
      await Promise.all(Array.from({ length: CHUNKS }, (_, c) => sendChunk(c, pieceSize)));
    };

    const bench = new Bench({ time: opts.quick ? 600 : 3500, warmupTime: opts.quick ? 150 : 500, iterations: 5 });
    bench.add(`batched: 2 MiB tasks (${CHUNKS} per 16 MiB)`, () => sendAll(CHUNK), fresh);
    bench.add(`unbatched: 512 KiB tasks (${CHUNKS * 4} per 16 MiB)`, () => sendAll(CHUNK / 4), fresh);
    await bench.run();
    return bench.tasks.map((t) => {
      const r = t.result;
      if (r.state !== 'completed') throw new Error(`${t.name}: ${r.state === 'errored' ? r.error.message : r.state}`);
      return { name: t.name, opsPerSec: r.throughput.mean, p50Ms: r.latency.p50, mbPerSec: TOTAL / 1e6 / (r.latency.p50 / 1000) };
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
      rows.map((r) => ({ name: r.name, 'ops/s': r.opsPerSec.toFixed(1), 'p50 ms': r.p50Ms.toFixed(2), 'MB/s': r.mbPerSec!.toFixed(0) })),
    );
    console.log(`batched / unbatched throughput (p50): ${(rows[0]!.mbPerSec! / rows[1]!.mbPerSec!).toFixed(2)}x`);
  });
}
