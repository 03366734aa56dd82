/**
 * The same properties as lock-bitmap.test.ts with real threads: writers race through the real write pool (piscina
 * workers running src/workers/write-task.ts) into a real staging file, under the real main-thread claims of
 * src/main/upload.ts.
 *
 * A writer of several pieces claims its chunk first (as ChunkReceiver does), so its pieces are never interleaved
 * with another writer's; a writer of one whole-chunk piece sometimes skips the claim, leaving the worker's lock and
 * bitmap alone to keep two writers apart. Whatever the thread timing: every chunk holds exactly the bytes of the one
 * writer whose last piece flipped its bit, the counters are exact, exactly one task reports `finalize`, and no lock
 * is left held. fast-check draws the writers and their order; the threads decide the interleaving.
 */
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { Upload } from '../../src/main/upload.js';
import { WritePool } from '../../src/main/write-pool.js';
import { holder } from '../../src/workers/lock-table.js';
import {
  B_RECEIVED_BYTES,
  H_RECEIVED_CHUNKS,
  H_TASKS_IN_FLIGHT,
  chunkLength,
  createSharedState,
  isChunkSet,
} from '../../src/workers/shared-layout.js';
import type { LockMode } from '../../src/workers/shared-layout.js';
import type { WriteResult } from '../../src/workers/task-types.js';

const SEED = 0x5eed_0002;

let dir: string;
let pool: WritePool;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'updraft-prop-pool-'));
  pool = new WritePool({ workers: 2 });
});

afterAll(async () => {
  await pool.close();
  rmSync(dir, { recursive: true, force: true });
});

interface Writer {
  chunk: number;
  fill: number;
  pieces: number;
  /** One-piece writers only: go straight to the pool, without the main-thread claim. */
  unclaimed: boolean;
}

const scenarioArb = fc
  .record({
    chunkSize: fc.integer({ min: 1, max: 3000 }),
    totalChunks: fc.integer({ min: 1, max: 12 }),
    lastShort: fc.nat(),
    lockMode: fc.constantFrom<LockMode>('chunk', 'upload'),
    pieces: fc.array(fc.integer({ min: 1, max: 3 }), { minLength: 12, maxLength: 12 }),
    extra: fc.array(fc.record({ chunk: fc.nat(), pieces: fc.integer({ min: 1, max: 3 }), unclaimed: fc.boolean() }), { maxLength: 16 }),
  })
  .chain((r) => {
    const fileSize = Math.max(1, r.totalChunks * r.chunkSize - (r.lastShort % r.chunkSize));
    const total = Math.ceil(fileSize / r.chunkSize);
    const writers: Writer[] = [];
    for (let c = 0; c < total; c++) writers.push({ chunk: c, fill: 0, pieces: r.pieces[c]!, unclaimed: false });
    for (const e of r.extra) writers.push({ chunk: e.chunk % total, fill: 0, pieces: e.pieces, unclaimed: e.unclaimed && e.pieces === 1 });
    return fc.shuffledSubarray(writers, { minLength: writers.length, maxLength: writers.length }).map((ws) => ({
      fileSize,
      chunkSize: r.chunkSize,
      lockMode: r.lockMode,
      writers: ws.map((w, i) => ({ ...w, fill: (i % 250) + 1 })),
    }));
  });

let run = 0;

describe('write pool with real worker threads', () => {
  it('never tears a chunk, counts each chunk once and completes exactly once', async () => {
    await fc.assert(
      fc.asyncProperty(scenarioArb, async (sc) => {
        const total = Math.ceil(sc.fileSize / sc.chunkSize);
        const shared = createSharedState(total, sc.chunkSize, sc.lockMode);
        const u = new Upload(
          {
            v: 1,
            guid: `prop-${run}`,
            user: 'u',
            fileName: 'f',
            fileSize: sc.fileSize,
            chunkSize: sc.chunkSize,
            totalChunks: total,
            targetPath: [],
            startTime: 0,
            lastActivityTime: 0,
            status: 'active',
          },
          shared,
        );
        const file = join(dir, `f-${run++}.part`);
        const fd = openSync(file, 'w+');
        const flippedBy = new Array<number>(total).fill(0);
        const flips = new Array<number>(total).fill(0);
        let finalizers = 0;
        const failures: string[] = [];
        const note = (w: Writer, r: WriteResult): void => {
          if (r.failure) failures.push(`${r.failure.code}: ${r.failure.message}`);
          if (r.flipped) {
            flips[w.chunk]!++;
            flippedBy[w.chunk] = w.fill;
          }
          if (r.finalize) finalizers++;
        };
        try {
          await Promise.all(
            sc.writers.map(async (w, i) => {
              const ownerId = i + 1;
              if (!w.unclaimed) {
                if (!(await u.claim(w.chunk, ownerId, 30_000))) throw new Error('claim timed out');
              }
              try {
                if (!w.unclaimed && isChunkSet(shared, w.chunk)) return;
                const len = chunkLength(sc.fileSize, sc.chunkSize, w.chunk);
                // Pieces one after another, as ChunkReceiver dispatches them: the last one sets the bit.
                for (let p = 0; p < w.pieces; p++) {
                  const from = Math.floor((p * len) / w.pieces);
                  const to = Math.floor(((p + 1) * len) / w.pieces);
                  const data = new ArrayBuffer(to - from);
                  new Uint8Array(data).fill(w.fill);
                  const r = await pool.write({
                    sab: shared.sab,
                    fd,
                    fileSize: sc.fileSize,
                    chunkSize: sc.chunkSize,
                    chunk: w.chunk,
                    chunkOffset: from,
                    data,
                    dataOffset: 0,
                    length: to - from,
                    first: p === 0,
                    last: p === w.pieces - 1,
                    ownerId,
                    lockTimeoutMs: 10_000,
                  });
                  note(w, r);
                  if (r.duplicate || r.failure) return;
                }
              } finally {
                if (!w.unclaimed) u.releaseClaim(w.chunk, ownerId);
              }
            }),
          );
          const bytes = readFileSync(file);
          if (failures.length > 0) throw new Error(`write failures: ${failures.join('; ')}`);
          for (let c = 0; c < total; c++) {
            if (flips[c] !== 1) throw new Error(`chunk ${c} flipped ${flips[c]} times`);
            const base = c * sc.chunkSize;
            const len = chunkLength(sc.fileSize, sc.chunkSize, c);
            for (let k = 0; k < len; k++) {
              if (bytes[base + k] !== flippedBy[c]) throw new Error(`chunk ${c} torn at byte ${k}: ${bytes[base + k]} != ${flippedBy[c]}`);
            }
          }
          if (finalizers !== 1) throw new Error(`${finalizers} tasks reported finalize`);
          if (Atomics.load(shared.header, H_RECEIVED_CHUNKS) !== total) throw new Error('receivedChunks is off');
          if (Number(Atomics.load(shared.counters, B_RECEIVED_BYTES)) !== sc.fileSize) throw new Error('receivedBytes is off');
          if (Atomics.load(shared.header, H_TASKS_IN_FLIGHT) !== 0) throw new Error('tasks still counted in flight');
          for (let s = 0; s < shared.locks.length; s++) if (holder(shared.locks, s) !== 0) throw new Error(`lock ${s} still held`);
          if (u.claimCount !== 0) throw new Error('a claim is still held');
        } finally {
          closeSync(fd);
        }
      }),
      { seed: SEED, numRuns: 40 },
    );
  }, 60_000);
});
