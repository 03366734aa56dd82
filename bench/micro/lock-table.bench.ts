/**
 * Micro benchmark: the write lock, one per chunk (lockMode 'chunk') against one per upload ('upload').
 *
 * Two worker threads (as many as this machine has cores) take and release locks of one 64-chunk upload, each on its
 * own pseudo-random sequence of chunks, with two critical sections:
 *   - short (a few bitmap reads): the cost of the lock traffic itself (compareExchange, Atomics.wait/notify and the
 *     cache lines the lock words share);
 *   - 10 us (a spin standing in for a small positioned write): how much serializing an upload's writers costs; with
 *     per-chunk locks the two workers overlap, with one upload lock they take turns.
 * A last row is the uncontended acquire + release pair on one thread, the floor both modes pay.
 *
 * One operation = both workers finishing their cycles.
 *
 *   node --import tsx bench/micro/lock-table.bench.ts [--quick]
 */
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { isMainThread } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { Bench } from 'tinybench';
import { workerSpec } from '../../src/main/worker-spec.js';
import { acquire, release } from '../../src/workers/lock-table.js';
import { createSharedState, isChunkSet, lockSlot, viewSharedState, type LockMode } from '../../src/workers/shared-layout.js';

export interface MicroResult {
  name: string;
  opsPerSec: number;
  p50Ms: number;
  mbPerSec?: number;
}

const CHUNKS = 64;
const WORKERS = 2;
/** Cycles per worker per operation, per critical section, chosen so that one operation takes 10-20 ms. */
const SHORT_CYCLES = 20_000;
const LONG_CYCLES = 800;
const LONG_SECTION_MS = 0.01;

export interface CyclesTask {
  sab: SharedArrayBuffer;
  ownerId: number;
  cycles: number;
  seed: number;
  /** Extra time to spend under the lock, in ms (0 = only the bitmap reads). */
  sectionMs: number;
}

/** Worker side (piscina task): `cycles` acquire / critical section / release rounds; returns lock timeouts (0). */
export function lockCycles(task: CyclesTask): number {
  const state = viewSharedState(task.sab);
  let seed = task.seed >>> 0;
  let timeouts = 0;
  let sink = 0;
  for (let i = 0; i < task.cycles; i++) {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    const chunk = seed % state.totalChunks;
    const slot = lockSlot(state, chunk);
    if (!acquire(state.locks, slot, task.ownerId, 10_000)) {
      timeouts++;
      continue;
    }
    // Stand-in for the bookkeeping done under the lock (bit check, counters).
    for (let k = 0; k < 8; k++) sink += isChunkSet(state, (chunk + k) % state.totalChunks) ? 1 : 0;
    if (task.sectionMs > 0) {
      // A time-based spin: the same duration on any CPU, and it keeps the core busy the way a write(2) copy does.
      const end = performance.now() + task.sectionMs;
      while (performance.now() < end) sink++;
    }
    release(state.locks, slot, task.ownerId);
  }
  return timeouts + (sink < 0 ? 1 : 0);
}

export async function run(opts: { quick: boolean }): Promise<MicroResult[]> {
  const pool = new Piscina<CyclesTask, number>({
    ...workerSpec('./lock-table.bench', import.meta.url),
    name: 'lockCycles', // must exist: piscina loads the module through it at worker start
    minThreads: WORKERS,
    maxThreads: WORKERS,
    concurrentTasksPerWorker: 1,
  });
  try {
    const bench = new Bench({ time: opts.quick ? 250 : 1500, warmupTime: opts.quick ? 80 : 250, iterations: 5 });
    let round = 0;
    for (const [section, cycles, sectionMs] of [['short', SHORT_CYCLES, 0], ['10 us', LONG_CYCLES, LONG_SECTION_MS]] as const) {
      for (const mode of ['chunk', 'upload'] as LockMode[]) {
        const state = createSharedState(CHUNKS, 1 << 20, mode);
        const name = `${mode === 'chunk' ? 'per-chunk' : 'per-upload'} lock, ${section} section, ${WORKERS} workers x ${cycles}`;
        bench.add(name, async () => {
          round++;
          const timeouts = await Promise.all(
            Array.from({ length: WORKERS }, (_, w) =>
              pool.run({ sab: state.sab, ownerId: w + 1, cycles, seed: round * 31 + w, sectionMs }),
            ),
          );
          if (timeouts.some((t) => t !== 0)) throw new Error('lock timed out');
        });
      }
    }
    // The short section on one thread without contention (acquire never waits here, so running it on the main
    // thread of a benchmark blocks nothing).
    const solo = createSharedState(CHUNKS, 1 << 20, 'chunk');
    bench.add(`uncontended, short section, 1 thread x ${WORKERS * SHORT_CYCLES}`, () => {
      if (lockCycles({ sab: solo.sab, ownerId: 1, cycles: WORKERS * SHORT_CYCLES, seed: 7, sectionMs: 0 }) !== 0) {
        throw new Error('timeout');
      }
    });
    await bench.run();
    return bench.tasks.map((t) => {
      const r = t.result;
      if (r.state !== 'completed') throw new Error(`${t.name}: ${r.state === 'errored' ? r.error.message : r.state}`);
      return { name: t.name, opsPerSec: r.throughput.mean, p50Ms: r.latency.p50 };
    });
  } finally {
    await pool.destroy();
  }
}

if (isMainThread && process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  void run({ quick: process.argv.includes('--quick') }).then((rows) => {
    console.table(rows.map((r) => ({ name: r.name, 'ops/s': r.opsPerSec.toFixed(1), 'p50 ms': r.p50Ms.toFixed(3) })));
    const ratio = (a: number, b: number): string => (rows[a]!.p50Ms / rows[b]!.p50Ms).toFixed(2);
    console.log(`per-upload / per-chunk, time per op (p50): short section ${ratio(1, 0)}x, 10 us section ${ratio(3, 2)}x`);
  });
}
