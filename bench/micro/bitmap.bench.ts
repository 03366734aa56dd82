/**
 * Micro benchmark: marking a chunk received and counting it once.
 *
 * Updraft keeps the bitmap and counters in the upload's SharedArrayBuffer and updates them with Atomics
 * (setChunkBit = Atomics.or, then Atomics.add on an Int32 and a BigInt64 counter), because several workers mark
 * chunks of one upload at once. The alternative is what a single-threaded server would do: a plain Uint8Array of
 * flags and two number counters. The ratio is the price of sharing the state across threads.
 *
 * One operation = every chunk of a 4096-chunk upload marked twice in random order (the second pass is all
 * duplicates, which must not count), then the completion check.
 *
 *   node --import tsx bench/micro/bitmap.bench.ts [--quick]
 */
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Bench } from 'tinybench';
import {
  B_RECEIVED_BYTES,
  H_RECEIVED_CHUNKS,
  allChunksSet,
  createSharedState,
  setChunkBit,
} from '../../src/workers/shared-layout.js';

export interface MicroResult {
  name: string;
  opsPerSec: number;
  p50Ms: number;
  mbPerSec?: number;
}

const CHUNKS = 4096;
const CHUNK_SIZE = 1 << 20;

export async function run(opts: { quick: boolean }): Promise<MicroResult[]> {
  // A fixed shuffle (LCG), so both contenders walk the same order and runs are comparable.
  const order = Array.from({ length: CHUNKS }, (_, i) => i);
  let seed = 12345;
  for (let i = CHUNKS - 1; i > 0; i--) {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    const j = seed % (i + 1);
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  const visits = [...order, ...order];

  const state = createSharedState(CHUNKS, CHUNK_SIZE, 'chunk');
  const flags = new Uint8Array(CHUNKS);
  let sink = 0;

  const bench = new Bench({ time: opts.quick ? 500 : 2000, warmupTime: opts.quick ? 150 : 300 });
  bench.add(
    `Atomics bitmap in a SAB (${CHUNKS} chunks x2)`,
    () => {
      let received = 0;
      for (const c of visits) {
        if (setChunkBit(state, c)) {
          // The same three atomic updates write-task.ts makes per flipped chunk.
          Atomics.add(state.header, H_RECEIVED_CHUNKS, 1);
          Atomics.add(state.counters, B_RECEIVED_BYTES, BigInt(CHUNK_SIZE));
          received++;
        }
      }
      if (!allChunksSet(state) || received !== CHUNKS) throw new Error('bitmap miscounted');
      sink += received;
    },
    {
      beforeEach: () => {
        state.bitmap.fill(0);
        state.header[H_RECEIVED_CHUNKS] = 0;
        state.counters[B_RECEIVED_BYTES] = 0n;
      },
    },
  );
  bench.add(
    `plain Uint8Array flags + counters (${CHUNKS} chunks x2)`,
    () => {
      let received = 0;
      let chunks = 0;
      let bytes = 0;
      for (const c of visits) {
        if (flags[c] === 0) {
          flags[c] = 1;
          chunks++;
          bytes += CHUNK_SIZE;
          received++;
        }
      }
      if (chunks !== CHUNKS || !flags.every((f) => f === 1)) throw new Error('flags miscounted');
      sink += received + (bytes > 0 ? 0 : 1);
    },
    { beforeEach: () => void flags.fill(0) },
  );
  await bench.run();
  if (sink === 0) throw new Error('nothing measured');
  return results(bench);
}

function results(bench: Bench): MicroResult[] {
  return bench.tasks.map((t) => {
    const r = t.result;
    if (r.state !== 'completed') throw new Error(`${t.name}: ${r.state === 'errored' ? r.error.message : r.state}`);
    return { name: t.name, opsPerSec: r.throughput.mean, p50Ms: r.latency.p50 };
  });
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  void run({ quick: process.argv.includes('--quick') }).then((rows) => {
    console.table(rows.map((r) => ({ name: r.name, 'ops/s': Math.round(r.opsPerSec), 'p50 ms': r.p50Ms.toFixed(4) })));
    console.log(`Atomics / plain, time per op (p50): ${(rows[0]!.p50Ms / rows[1]!.p50Ms).toFixed(2)}x`);
  });
}
