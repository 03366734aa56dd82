import type { Piscina } from 'piscina';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  B_RECEIVED_BYTES,
  H_CHUNK_SIZE,
  H_LOCK_COUNT,
  H_STATE,
  H_TOTAL_CHUNKS,
  LOCKS_BYTE_OFFSET,
  STATE_ACTIVE,
  allChunksSet,
  bitmapWords,
  chunkLength,
  createSharedState,
  isChunkSet,
  lockSlot,
  missingChunks,
  setChunkBit,
  snapshotBitmap,
  viewSharedState,
} from '../../src/workers/shared-layout.js';
import type { SetBitsReply, SetBitsRequest } from '../fixtures/shared-layout-worker.js';
import { startedThreads } from '../fixtures/thread-pool.js';

describe('shared layout', () => {
  it('creates a state with the geometry in the header and nothing received', () => {
    const s = createSharedState(70, 1 << 20, 'chunk');
    expect(s.header[H_TOTAL_CHUNKS]).toBe(70);
    expect(s.header[H_CHUNK_SIZE]).toBe(1 << 20);
    expect(s.header[H_LOCK_COUNT]).toBe(70);
    expect(s.header[H_STATE]).toBe(STATE_ACTIVE);
    expect(s.locks.byteOffset).toBe(LOCKS_BYTE_OFFSET);
    expect(s.bitmap.length).toBe(bitmapWords(70));
    expect(s.bitmap.byteOffset).toBe(LOCKS_BYTE_OFFSET + 4 * 70);
    expect(s.sab.byteLength % 8).toBe(0);
    expect(s.bitmap.byteOffset + s.bitmap.byteLength).toBeLessThanOrEqual(s.sab.byteLength);
    expect(missingChunks(s)).toHaveLength(70);
    expect(s.counters[B_RECEIVED_BYTES]).toBe(0n);
  });

  it('lets the bitmap, the lock table and the byte counter use disjoint memory', () => {
    const s = createSharedState(40, 100, 'chunk');
    s.locks.fill(-1);
    s.counters[B_RECEIVED_BYTES] = -1n;
    expect(missingChunks(s)).toHaveLength(40);
    expect(Array.from(s.header.subarray(0, 7))).toEqual([STATE_ACTIVE, 40, 0, 0, 0, 40, 100]);
  });

  it('views an existing SAB the way it was created, in both lock modes', () => {
    for (const [n, mode] of [[10, 'chunk'], [10, 'upload'], [1, 'chunk'], [1, 'upload']] as const) {
      const created = createSharedState(n, 64, mode);
      setChunkBit(created, n - 1);
      const viewed = viewSharedState(created.sab);
      expect(viewed.totalChunks).toBe(n);
      expect(viewed.locks.length).toBe(created.locks.length);
      expect(viewed.bitmap.byteOffset).toBe(created.bitmap.byteOffset);
      expect(isChunkSet(viewed, n - 1)).toBe(true);
      // A single-chunk upload has one lock either way; only a multi-chunk upload can tell the modes apart.
      if (n > 1) expect(viewed.lockMode).toBe(mode);
    }
  });

  it('maps every chunk to its own lock slot in chunk mode and to slot 0 in upload mode', () => {
    const perChunk = createSharedState(5, 10, 'chunk');
    const perUpload = createSharedState(5, 10, 'upload');
    expect([0, 1, 2, 3, 4].map((c) => lockSlot(perChunk, c))).toEqual([0, 1, 2, 3, 4]);
    expect([0, 1, 2, 3, 4].map((c) => lockSlot(perUpload, c))).toEqual([0, 0, 0, 0, 0]);
  });

  it('flips each bit once: only the first setChunkBit returns true', () => {
    const s = createSharedState(100, 10, 'chunk');
    for (const c of [0, 31, 32, 63, 64, 99]) {
      expect(isChunkSet(s, c)).toBe(false);
      expect(setChunkBit(s, c)).toBe(true);
      expect(setChunkBit(s, c)).toBe(false);
      expect(isChunkSet(s, c)).toBe(true);
    }
    // Neighbours in the same word are untouched.
    expect(isChunkSet(s, 1)).toBe(false);
    expect(isChunkSet(s, 30)).toBe(false);
    expect(isChunkSet(s, 33)).toBe(false);
  });

  // 31 and 63 chunks guard the mask of a last word with 31 used bits: (1 << 31) - 1 is not an Int32.
  for (const n of [1, 2, 31, 32, 33, 63, 64, 65]) {
    it(`allChunksSet with ${n} chunks: false until the last bit, in any order`, () => {
      const s = createSharedState(n, 10, 'chunk');
      // Reverse order, so the bits of the first (full) word are set last.
      const order = Array.from({ length: n }, (_, i) => n - 1 - i);
      for (const [i, c] of order.entries()) {
        expect(allChunksSet(s)).toBe(false);
        setChunkBit(s, c);
        expect(missingChunks(s)).toHaveLength(n - i - 1);
      }
      expect(allChunksSet(s)).toBe(true);
      expect(missingChunks(s)).toEqual([]);
    });
  }

  it('completes uploads whose last bitmap word uses 31 bits (31, 63, 95 chunks)', () => {
    // Regression: the mask (1 << 31) - 1 is -2147483649 as a double and never equalled the Int32 result of `&`, so
    // these uploads could never finalize.
    for (const n of [31, 63, 95]) {
      const s = createSharedState(n, 10, 'upload');
      for (let c = 0; c < n; c++) setChunkBit(s, c);
      expect(allChunksSet(s), `${n} chunks`).toBe(true);
    }
  });

  it('allChunksSet ignores nothing: each single missing chunk keeps it false', () => {
    for (const n of [31, 33, 64, 65]) {
      for (let missing = 0; missing < n; missing++) {
        const s = createSharedState(n, 10, 'chunk');
        for (let c = 0; c < n; c++) if (c !== missing) setChunkBit(s, c);
        expect(allChunksSet(s), `${n} chunks, ${missing} missing`).toBe(false);
        expect(missingChunks(s)).toEqual([missing]);
      }
    }
  });

  it('lists missing chunks in order and snapshots the bitmap words', () => {
    const s = createSharedState(40, 10, 'chunk');
    for (const c of [0, 2, 33, 39]) setChunkBit(s, c);
    const missing = missingChunks(s);
    expect(missing).toHaveLength(36);
    expect(missing.slice(0, 4)).toEqual([1, 3, 4, 5]);
    expect(missing).not.toContain(33);
    expect(missing.at(-1)).toBe(38);
    const snap = snapshotBitmap(s);
    expect(Array.from(snap)).toEqual([0b101, (1 << 1) | (1 << 7)]);
    setChunkBit(s, 1);
    expect(snap[0]).toBe(0b101); // a copy, not a view
  });

  it('chunkLength gives full chunks and a short last one', () => {
    expect(chunkLength(10, 4, 0)).toBe(4);
    expect(chunkLength(10, 4, 1)).toBe(4);
    expect(chunkLength(10, 4, 2)).toBe(2);
    expect(chunkLength(12, 4, 2)).toBe(4);
    expect(chunkLength(1, 1 << 20, 0)).toBe(1);
    // Large files: positions beyond 2^32 stay exact.
    const big = 5 * 2 ** 32 + 7;
    const size = 2 ** 30;
    const last = Math.ceil(big / size) - 1;
    expect(chunkLength(big, size, last)).toBe(7);
    expect(chunkLength(big, size, last - 1)).toBe(size);
  });
});

describe('shared layout, real worker threads', () => {
  const THREADS = 2;
  let pool: Piscina;

  beforeAll(() => {
    pool = startedThreads('shared-layout-worker', 'setBits', THREADS);
  });

  afterAll(async () => {
    await pool.destroy();
  });

  /** Resolves once word `index` of `words` equals `value`; the test thread never blocks (Atomics.waitAsync). */
  async function until(words: Int32Array, index: number, value: number): Promise<void> {
    for (;;) {
      const seen = Atomics.load(words, index);
      if (seen === value) return;
      const r = Atomics.waitAsync(words, index, seen, 5_000);
      if (r.async) await r.value;
    }
  }

  it('setChunkBit loses no bit and counts each once when two threads set neighbours in the same words', async () => {
    // Worker 0 sets the even chunks, worker 1 the odd ones, so every bitmap word is written by both threads, and each
    // sets its share many times over (duplicate chunks). A read-modify-write that is not one atomic step (Atomics.or)
    // lets one thread store a stale word over a bit the other just set: the chunk is lost, or is counted again when
    // its duplicate flips it back. A small bitmap (128 words) keeps the threads on the same words all the time; eight
    // fresh states, which the workers start together.
    const chunks = 2 ** 12;
    const passes = 64;
    const states = Array.from({ length: 8 }, () => createSharedState(chunks, 1, 'upload'));
    const ctl = new SharedArrayBuffer(12);
    const done = Array.from({ length: THREADS }, (_, first) => {
      const req: SetBitsRequest = { ctl, states: states.map((s) => s.sab), first, stride: THREADS, threads: THREADS, passes, seed: 0x9e3779b9 * (first + 1) };
      return pool.run(req, { name: 'setBits' }) as Promise<SetBitsReply>;
    });
    // Handshake: start only when both workers sit at the barrier; a worker that fails first must not hang the test.
    await Promise.race([until(new Int32Array(ctl), 0, THREADS), Promise.all(done).then(() => expect.fail('workers returned before the barrier'))]);
    Atomics.store(new Int32Array(ctl), 1, 1);
    Atomics.notify(new Int32Array(ctl), 1);
    const replies = await Promise.all(done);
    for (const [i, state] of states.entries()) {
      expect(missingChunks(state).slice(0, 5), `state ${i}: chunks lost`).toEqual([]);
      expect(allChunksSet(state), `state ${i}`).toBe(true);
      // Only the call that flipped a bit counts it: each worker exactly its share, however many duplicates it sent.
      expect(replies.map((r) => r.flips[i]), `state ${i}: flips per worker`).toEqual([chunks / 2, chunks / 2]);
    }
  }, 30_000);
});
