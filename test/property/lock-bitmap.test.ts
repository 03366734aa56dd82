/**
 * The lock table and the chunk bitmap under fast-check's scheduler: many writers of the same upload run the write
 * protocol of src/workers/write-task.ts step by step (lock, duplicate check, the chunk's bytes in pieces, set the bit,
 * count it, decide completion, unlock), and the scheduler picks which writer takes the next step, at every point a
 * real worker thread could be pre-empted. Whatever the interleaving:
 *
 *   - no torn chunk: every chunk holds exactly the bytes of one writer, the one whose setChunkBit flipped its bit
 *     (durability.md invariants 1 and 3);
 *   - no lost update: the counters equal the number of chunks and the file size, and every bit flipped exactly once
 *     (invariant 2);
 *   - exactly one completion: exactly one writer wins H_FINALIZER, even when the last bits flip "at once";
 *   - every lock word is free at the end.
 *
 * The functions are the real ones (lock-table.ts, shared-layout.ts); only the byte copy stands in for fs.writeSync.
 * A control run without the lock must be caught, so the property is known to have teeth.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { acquire, holder, release } from '../../src/workers/lock-table.js';
import {
  B_RECEIVED_BYTES,
  H_FINALIZER,
  H_RECEIVED_CHUNKS,
  allChunksSet,
  chunkLength,
  createSharedState,
  isChunkSet,
  lockSlot,
  setChunkBit,
} from '../../src/workers/shared-layout.js';
import type { LockMode } from '../../src/workers/shared-layout.js';

const SEED = 0x5eed_0001;

interface Writer {
  chunk: number;
  /** Fill byte of this writer's version of the chunk (distinct per writer). */
  fill: number;
  /** The chunk is written in this many pieces, with a scheduling point before each. */
  pieces: number;
}

interface Scenario {
  fileSize: number;
  chunkSize: number;
  lockMode: LockMode;
  writers: Writer[];
}

const scenarioArb: fc.Arbitrary<Scenario> = fc
  .record({
    chunkSize: fc.integer({ min: 1, max: 16 }),
    totalChunks: fc.integer({ min: 1, max: 40 }),
    lastShort: fc.integer({ min: 0, max: 15 }),
    lockMode: fc.constantFrom<LockMode>('chunk', 'upload'),
    extra: fc.array(fc.record({ chunk: fc.nat(), pieces: fc.integer({ min: 1, max: 3 }) }), { maxLength: 40 }),
    basePieces: fc.array(fc.integer({ min: 1, max: 3 }), { minLength: 40, maxLength: 40 }),
  })
  .chain((r) => {
    const fileSize = Math.max(1, r.totalChunks * r.chunkSize - Math.min(r.lastShort, r.chunkSize - 1));
    const total = Math.ceil(fileSize / r.chunkSize);
    // Every chunk has at least one writer (so the upload must complete); extra writers duplicate some chunks.
    const writers: Writer[] = [];
    for (let c = 0; c < total; c++) writers.push({ chunk: c, fill: 0, pieces: r.basePieces[c]! });
    for (const e of r.extra) writers.push({ chunk: e.chunk % total, fill: 0, pieces: e.pieces });
    return fc.shuffledSubarray(writers, { minLength: writers.length, maxLength: writers.length }).map((ws) => ({
      fileSize,
      chunkSize: r.chunkSize,
      lockMode: r.lockMode,
      writers: ws.map((w, i) => ({ ...w, fill: (i % 250) + 1 })),
    }));
  });

interface Outcome {
  flips: number[];
  finalizers: number;
  file: Uint8Array;
  /** For each chunk, the fill byte of the writer that flipped it. */
  flippedBy: number[];
}

/**
 * Runs every writer under the scheduler. `useLock: false` is the control: the same protocol without the lock.
 */
async function runWriters(s: fc.Scheduler, sc: Scenario, useLock = true): Promise<{ outcome: Outcome; locksFree: boolean; counters: { chunks: number; bytes: number } }> {
  const state = createSharedState(Math.ceil(sc.fileSize / sc.chunkSize), sc.chunkSize, sc.lockMode);
  const total = state.totalChunks;
  const file = new Uint8Array(sc.fileSize);
  const flips = new Array<number>(total).fill(0);
  const flippedBy = new Array<number>(total).fill(0);
  let finalizers = 0;
  const step = (label: string): Promise<void> => s.schedule(Promise.resolve(), label);

  const write = async (w: Writer, ownerId: number): Promise<void> => {
    const slot = lockSlot(state, w.chunk);
    // acquire with timeout 0 never blocks (Atomics.wait is for worker threads): a writer that finds the lock taken
    // yields and tries again, so the scheduler decides when it gets its next chance.
    if (useLock) while (!acquire(state.locks, slot, ownerId, 0)) await step(`w${ownerId} spins on slot ${slot}`);
    try {
      if (isChunkSet(state, w.chunk)) return; // duplicate: nothing written
      const len = chunkLength(sc.fileSize, sc.chunkSize, w.chunk);
      const base = w.chunk * sc.chunkSize;
      for (let p = 0; p < w.pieces; p++) {
        await step(`w${ownerId} piece ${p} of chunk ${w.chunk}`);
        const from = Math.floor((p * len) / w.pieces);
        const to = Math.floor(((p + 1) * len) / w.pieces);
        file.fill(w.fill, base + from, base + to);
      }
      // The bit only after every byte (invariant 1); only the flipping call counts (invariant 2).
      if (setChunkBit(state, w.chunk)) {
        flips[w.chunk]!++;
        flippedBy[w.chunk] = w.fill;
        Atomics.add(state.header, H_RECEIVED_CHUNKS, 1);
        Atomics.add(state.counters, B_RECEIVED_BYTES, BigInt(len));
      }
      // Another worker may run between the flip and the completion check, and between the check and the claim.
      await step(`w${ownerId} flipped chunk ${w.chunk}`);
      if (allChunksSet(state)) {
        await step(`w${ownerId} saw every bit`);
        if (Atomics.compareExchange(state.header, H_FINALIZER, 0, 1) === 0) finalizers++;
      }
    } finally {
      if (useLock) release(state.locks, slot, ownerId);
    }
  };

  const all = Promise.all(sc.writers.map((w, i) => write(w, i + 1)));
  await s.waitFor(all);
  let locksFree = true;
  for (let i = 0; i < state.locks.length; i++) if (holder(state.locks, i) !== 0) locksFree = false;
  return {
    outcome: { flips, finalizers, file, flippedBy },
    locksFree,
    counters: { chunks: Atomics.load(state.header, H_RECEIVED_CHUNKS), bytes: Number(Atomics.load(state.counters, B_RECEIVED_BYTES)) },
  };
}

/** Returns a description of the first broken property, or null. */
function problems(sc: Scenario, r: Awaited<ReturnType<typeof runWriters>>): string | null {
  const { flips, finalizers, file, flippedBy } = r.outcome;
  const total = flips.length;
  for (let c = 0; c < total; c++) {
    if (flips[c] !== 1) return `chunk ${c} flipped ${flips[c]} times`;
    const base = c * sc.chunkSize;
    const len = chunkLength(sc.fileSize, sc.chunkSize, c);
    for (let i = 0; i < len; i++) {
      if (file[base + i] !== flippedBy[c]) return `chunk ${c} torn: byte ${i} is ${file[base + i]}, the flipping writer wrote ${flippedBy[c]}`;
    }
  }
  if (finalizers !== 1) return `${finalizers} completions`;
  if (r.counters.chunks !== total) return `receivedChunks ${r.counters.chunks} != ${total}`;
  if (r.counters.bytes !== sc.fileSize) return `receivedBytes ${r.counters.bytes} != ${sc.fileSize}`;
  if (!r.locksFree) return 'a lock word is still held';
  return null;
}

describe('lock table + bitmap under the scheduler', () => {
  it('never tears a chunk, never loses a count, and completes exactly once', async () => {
    await fc.assert(
      fc.asyncProperty(fc.scheduler(), scenarioArb, async (s, sc) => {
        const r = await runWriters(s, sc);
        const p = problems(sc, r);
        if (p !== null) throw new Error(p);
      }),
      { seed: SEED, numRuns: 150 },
    );
  });

  it('control: without the lock, the scheduler finds a torn chunk', async () => {
    const out = await fc.check(
      fc.asyncProperty(fc.scheduler(), scenarioArb, async (s, sc) => {
        const r = await runWriters(s, sc, false);
        const p = problems(sc, r);
        if (p !== null) throw new Error(p);
      }),
      { seed: SEED, numRuns: 300 },
    );
    expect(out.failed).toBe(true);
    expect(String((out.errorInstance as Error | undefined)?.message)).toMatch(/torn/);
  });
});
