/**
 * The write path end to end below HTTP: real piscina workers (src/workers/write-task.ts through WritePool) writing
 * pieces of chunks into staging files, checked byte by byte against the source.
 */
import { randomBytes, createHash } from 'node:crypto';
import { closeSync, fstatSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SlabPool, type Slab } from '../../src/main/slab-pool.js';
import { WritePool } from '../../src/main/write-pool.js';
import { UploadError } from '../../src/protocol/errors.js';
import { forceRelease, holder } from '../../src/workers/lock-table.js';
import {
  B_RECEIVED_BYTES,
  H_FINALIZER,
  H_RECEIVED_CHUNKS,
  H_STATE,
  H_TASKS_IN_FLIGHT,
  STATE_CANCELLED,
  STATE_EXPIRED,
  STATE_FAILED,
  STATE_FINALIZING,
  chunkLength,
  createSharedState,
  isChunkSet,
  lockSlot,
  missingChunks,
  type LockMode,
  type SharedState,
} from '../../src/workers/shared-layout.js';
import type { WriteResult, WriteTask } from '../../src/workers/task-types.js';

let dir: string;
let pool: WritePool;
const fds: number[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'updraft-write-pool-'));
  pool = new WritePool({ workers: 2 });
});

afterAll(async () => {
  await pool.close();
  for (const fd of fds.splice(0)) closeSync(fd);
  rmSync(dir, { recursive: true, force: true });
});

/** mulberry32: a seeded generator, so a failing shuffle can be replayed from the seed in the test name. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function shuffle<T>(items: T[], rand: () => number): T[] {
  const out = items.slice();
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

interface Upload {
  name: string;
  state: SharedState;
  fd: number;
  path: string;
  source: Buffer;
  fileSize: number;
  chunkSize: number;
}

let uploadSeq = 0;

/** A staging file opened the way the engine does it: created exclusively ('wx'), never in append mode. */
function makeUpload(fileSize: number, chunkSize: number, lockMode: LockMode): Upload {
  const name = `upload-${++uploadSeq}`;
  const path = join(dir, name);
  const fd = openSync(path, 'wx');
  fds.push(fd);
  const state = createSharedState(Math.ceil(fileSize / chunkSize), chunkSize, lockMode);
  return { name, state, fd, path, source: randomBytes(fileSize), fileSize, chunkSize };
}

function chunkBytes(u: Upload, chunk: number): Buffer {
  const start = chunk * u.chunkSize;
  return u.source.subarray(start, start + chunkLength(u.fileSize, u.chunkSize, chunk));
}

function baseTask(u: Upload, chunk: number, ownerId: number): Omit<WriteTask, 'data' | 'dataOffset' | 'length' | 'chunkOffset' | 'first' | 'last'> {
  return { sab: u.state.sab, fd: u.fd, fileSize: u.fileSize, chunkSize: u.chunkSize, chunk, ownerId, lockTimeoutMs: 5_000 };
}

/** A whole chunk as one task in a fresh ArrayBuffer (moved to the worker). */
function wholeChunkTask(u: Upload, chunk: number, ownerId: number, extra: Partial<WriteTask> = {}): WriteTask {
  const bytes = chunkBytes(u, chunk);
  const data = new Uint8Array(bytes).buffer; // own buffer, byteOffset 0
  return { ...baseTask(u, chunk, ownerId), data, dataOffset: 0, length: bytes.length, chunkOffset: 0, first: true, last: true, ...extra };
}

/** Where in `bytes` the pieces of one chunk end: 1 to 3 pieces at random cut points. */
function cuts(length: number, rand: () => number): number[] {
  const pieces = 1 + Math.floor(rand() * 3);
  const points = new Set<number>();
  for (let i = 1; i < pieces && length > 1; i++) points.add(1 + Math.floor(rand() * (length - 1)));
  return [...[...points].sort((a, b) => a - b), length];
}

async function slabFrom(slabs: SlabPool): Promise<Slab> {
  return slabs.tryAcquire() ?? new Promise<Slab>((resolve) => slabs.onAvailable(resolve));
}

/**
 * One writer sending one chunk the way the engine does: pieces in order, each awaited before the next (the `last`
 * piece must come after the others). Bytes come from a SAB slab or from a moved ArrayBuffer with a non-zero
 * dataOffset. Stops at the first duplicate (someone else completed the chunk).
 */
async function sendChunk(u: Upload, chunk: number, ownerId: number, rand: () => number, slabs: SlabPool): Promise<WriteResult[]> {
  const bytes = chunkBytes(u, chunk);
  const results: WriteResult[] = [];
  let start = 0;
  for (const end of cuts(bytes.length, rand)) {
    const piece = bytes.subarray(start, end);
    const common = { ...baseTask(u, chunk, ownerId), chunkOffset: start, length: piece.length, first: start === 0, last: end === bytes.length };
    let r: WriteResult;
    if (rand() < 0.5) {
      const slab = await slabFrom(slabs);
      slab.bytes.set(piece);
      try {
        r = await pool.write({ ...common, data: slab.sab, dataOffset: slab.offset });
      } finally {
        slabs.release(slab); // only after the task settled: the worker read the slab's bytes in place
      }
    } else {
      const pad = 1 + Math.floor(rand() * 15);
      const data = new ArrayBuffer(pad + piece.length);
      new Uint8Array(data, pad).set(piece);
      r = await pool.write({ ...common, data, dataOffset: pad });
      expect(data.byteLength).toBe(0); // moved, not copied
    }
    results.push(r);
    if (r.duplicate || r.failure !== undefined) break;
    start = end;
  }
  return results;
}

function expectFileEquals(u: Upload): void {
  const written = readFileSync(u.path);
  expect(written.length, `${u.name} length`).toBe(u.fileSize);
  if (!written.equals(u.source)) {
    let i = 0;
    while (written[i] === u.source[i]) i++;
    expect.fail(`${u.name}: first differing byte at ${i} (chunk ${Math.floor(i / u.chunkSize)})`);
  }
}

function expectUntouched(u: Upload): void {
  // Size 0: no byte reached the file anywhere, including at the fd's current position (where fs.write lands for a
  // NaN or negative position).
  expect(fstatSync(u.fd).size).toBe(0);
  expect(Atomics.load(u.state.header, H_RECEIVED_CHUNKS)).toBe(0);
  expect(u.state.counters[B_RECEIVED_BYTES]).toBe(0n);
  expect(missingChunks(u.state)).toHaveLength(u.state.totalChunks);
}

function expectQuiet(u: Upload): void {
  expect(Atomics.load(u.state.header, H_TASKS_IN_FLIGHT)).toBe(0);
  expect(Array.from(u.state.locks).every((w) => w === 0)).toBe(true);
}

describe.each(['chunk', 'upload'] as const)('WritePool with %s locks', (lockMode) => {
  const seed = lockMode === 'chunk' ? 0x5eed1 : 0x5eed2;

  it(`writes several uploads at once from random pieces, duplicates and racing writers (seed ${seed})`, async () => {
    const rand = rng(seed);
    // 17 chunks with a short last one; 33 and 31 chunks around a bitmap word boundary; a single-byte file.
    const uploads = [
      makeUpload(16 * 65_536 + 12_345, 65_536, lockMode),
      makeUpload(33 * 16_384, 16_384, lockMode),
      makeUpload(31 * 8_192 - 100, 8_192, lockMode),
      makeUpload(1, 4_096, lockMode),
    ];
    // Few slabs, so that writers queue in onAvailable and slabs are reused under load.
    const slabs = new SlabPool({ slabSize: 65_536, maxBytes: 4 * 65_536, arenaBytes: 2 * 65_536 });
    let nextOwner = 1;
    const perChunk = new Map<string, WriteResult[]>();
    const sends: Promise<void>[] = [];
    for (const u of uploads) {
      for (const chunk of shuffle([...Array(u.state.totalChunks).keys()], rand)) {
        // About a third of the chunks are sent by three writers at once (same bytes, different ids and cuts).
        const writers = rand() < 0.33 ? 3 : 1;
        const key = `${u.name}/${chunk}`;
        perChunk.set(key, []);
        for (let w = 0; w < writers; w++) {
          const ownerId = nextOwner++;
          const writerRand = rng(seed + ownerId);
          sends.push(sendChunk(u, chunk, ownerId, writerRand, slabs).then((rs) => void perChunk.get(key)!.push(...rs)));
        }
      }
    }
    await Promise.all(sends);

    // Resend a few chunks of every upload after completion: duplicates write nothing and count nothing.
    for (const u of uploads) {
      for (const chunk of [0, u.state.totalChunks - 1, Math.floor(u.state.totalChunks / 2)]) {
        const r = await pool.write(wholeChunkTask(u, chunk, nextOwner++));
        expect(r).toMatchObject({ duplicate: true, flipped: false, finalize: false, written: 0 });
        expect(r.failure).toBeUndefined();
        perChunk.get(`${u.name}/${chunk}`)!.push(r);
      }
    }

    for (const u of uploads) {
      const results = [...perChunk].filter(([k]) => k.startsWith(`${u.name}/`));
      for (const [key, rs] of results) {
        expect(rs.filter((r) => r.failure !== undefined), key).toEqual([]);
        expect(rs.filter((r) => r.flipped).length, `${key} flipped`).toBe(1);
      }
      const all = results.flatMap(([, rs]) => rs);
      expect(all.filter((r) => r.finalize).length, `${u.name} finalize`).toBe(1);
      expect(all.find((r) => r.finalize)!.receivedChunks).toBe(u.state.totalChunks);
      // Bytes reported written never exceed what racing writers could have sent, and cover the file at least once.
      expect(all.reduce((n, r) => n + r.written, 0)).toBeGreaterThanOrEqual(u.fileSize);
      expect(Atomics.load(u.state.header, H_RECEIVED_CHUNKS)).toBe(u.state.totalChunks);
      expect(Number(Atomics.load(u.state.counters, B_RECEIVED_BYTES))).toBe(u.fileSize);
      expect(Atomics.load(u.state.header, H_FINALIZER)).toBe(1);
      expect(missingChunks(u.state)).toEqual([]);
      expectQuiet(u);
      expectFileEquals(u);
    }
    expect(slabs.inUseBytes).toBe(0);
    expect(slabs.allocatedBytes).toBe(slabs.capacityBytes);
    expect(pool.inFlight).toBe(0);
  });

  it('lets several writers race on every chunk of one upload: one flip per chunk, one finalize', async () => {
    const u = makeUpload(8 * 4_096, 4_096, lockMode);
    const chunks = [...Array(8).keys()];
    // Four writers per chunk, all dispatched before any settles; each is a single whole-chunk task.
    const results = await Promise.all(chunks.flatMap((c) => [1, 2, 3, 4].map((w) => pool.write(wholeChunkTask(u, c, c * 10 + w)))));
    expect(results.filter((r) => r.failure !== undefined)).toEqual([]);
    for (const c of chunks) {
      const mine = results.slice(c * 4, c * 4 + 4);
      expect(mine.filter((r) => r.flipped).length).toBe(1);
      // Whole-chunk tasks check the bit under the lock: every loser finds it set and writes nothing.
      expect(mine.filter((r) => r.duplicate && r.written === 0).length).toBe(3);
    }
    expect(results.filter((r) => r.finalize).length).toBe(1);
    expect(Atomics.load(u.state.header, H_RECEIVED_CHUNKS)).toBe(8);
    expectQuiet(u);
    expectFileEquals(u);
  });

  it('keeps racing writers of one chunk apart: the bytes on disk are exactly the flipping writer\'s', async () => {
    // Large chunks, so a write lasts long enough for the other worker's task to arrive in the middle of it; two
    // writers per chunk with different bytes (a client that changed the file between retries).
    const size = 1 << 20;
    const u = makeUpload(4 * size, size, lockMode);
    const alt = randomBytes(4 * size);
    const tasks = [0, 1, 2, 3].flatMap((c) => [
      wholeChunkTask(u, c, 100 + c),
      { ...wholeChunkTask(u, c, 200 + c), data: new Uint8Array(alt.subarray(c * size, (c + 1) * size)).buffer },
    ]);
    const results = await Promise.all(tasks.map((t) => pool.write(t)));
    const disk = readFileSync(u.path);
    for (let c = 0; c < 4; c++) {
      const [a, b] = [results[2 * c]!, results[2 * c + 1]!];
      expect([a.flipped, b.flipped].filter(Boolean).length).toBe(1);
      // The loser wrote nothing: it found the bit set under the lock.
      expect((a.flipped ? b : a).written).toBe(0);
      const expected = a.flipped ? chunkBytes(u, c) : alt.subarray(c * size, (c + 1) * size);
      expect(disk.subarray(c * size, (c + 1) * size).equals(expected), `chunk ${c}`).toBe(true);
    }
    expectQuiet(u);
  });

  it('writes nothing for a checksum mismatch and leaves the bit unset', async () => {
    const u = makeUpload(3 * 1_000, 1_000, lockMode);
    const zeros = '0'.repeat(64);
    const bad = await pool.write(wholeChunkTask(u, 1, 1, { checksum: { algorithm: 'sha256', expected: zeros } }));
    expect(bad.failure?.code).toBe('ERR_CHECKSUM_MISMATCH');
    expect(bad).toMatchObject({ written: 0, flipped: false, duplicate: false, finalize: false });
    const badCrc = await pool.write(wholeChunkTask(u, 2, 2, { checksum: { algorithm: 'crc32', expected: 'deadbeef' } }));
    expect(badCrc.failure?.code).toBe('ERR_CHECKSUM_MISMATCH');
    expectUntouched(u);

    // The right digests pass (hex case does not matter), and the same chunk can then be written.
    const sha = createHash('sha256').update(chunkBytes(u, 1)).digest('hex').toUpperCase();
    const ok = await pool.write(wholeChunkTask(u, 1, 3, { checksum: { algorithm: 'sha256', expected: sha } }));
    expect(ok).toMatchObject({ written: 1_000, flipped: true });
    expect(ok.failure).toBeUndefined();
    const crc = crc32(chunkBytes(u, 2)).toString(16).padStart(8, '0');
    const okCrc = await pool.write(wholeChunkTask(u, 2, 4, { checksum: { algorithm: 'crc32', expected: crc } }));
    expect(okCrc).toMatchObject({ written: 1_000, flipped: true });
    expect(isChunkSet(u.state, 0)).toBe(false);
    expect(isChunkSet(u.state, 1)).toBe(true);
    expect(isChunkSet(u.state, 2)).toBe(true);
    // Chunk 0 was never written: its bytes are still the zeros of a sparse file.
    expect(readFileSync(u.path).subarray(0, 1_000).every((b) => b === 0)).toBe(true);
    expect(readFileSync(u.path).subarray(1_000).equals(u.source.subarray(1_000))).toBe(true);
    expectQuiet(u);
  });

  it('writes nothing for invalid positions (NaN, -1, 2**53, fractions, past the end)', async () => {
    const u = makeUpload(2 * 1_000 + 10, 1_000, lockMode); // chunks 0 and 1 are 1000 bytes, chunk 2 is 10
    const whole = (c: number, over: Partial<WriteTask>): WriteTask => wholeChunkTask(u, c, 7, over);
    const bad: Array<[string, WriteTask]> = [
      ['chunk NaN', whole(0, { chunk: Number.NaN })],
      ['chunk -1', whole(0, { chunk: -1 })],
      ['chunk 2**53', whole(0, { chunk: 2 ** 53 })],
      ['chunk 0.5', whole(0, { chunk: 0.5 })],
      ['chunk past the last', whole(2, { chunk: 3 })],
      ['chunk Infinity', whole(0, { chunk: Number.POSITIVE_INFINITY })],
      ['chunkOffset NaN', whole(0, { chunkOffset: Number.NaN, first: false })],
      ['chunkOffset -1', whole(0, { chunkOffset: -1, first: false, last: false })],
      ['chunkOffset 2**53', whole(0, { chunkOffset: 2 ** 53, first: false, last: false })],
      // A middle piece checks no end, so only the offset check itself stands between these and fs.writeSync, which
      // writes at the fd's current position for a position of NaN or 0.5.
      ['middle piece at chunkOffset NaN', whole(0, { chunkOffset: Number.NaN, length: 10, first: false, last: false })],
      ['middle piece at chunkOffset 0.5', whole(0, { chunkOffset: 0.5, length: 10, first: false, last: false })],
      ['length NaN', whole(0, { length: Number.NaN })],
      ['length -1', whole(0, { length: -1, last: false })],
      ['length past the chunk', whole(2, { length: 11, data: new ArrayBuffer(11) })],
      ['piece past the short last chunk', whole(2, { chunkOffset: 5, length: 6, first: false, data: new ArrayBuffer(6) })],
      ['dataOffset -1', whole(0, { dataOffset: -1 })],
      ['dataOffset 1.5', whole(0, { dataOffset: 1.5 })],
      ['data range past the buffer', whole(0, { dataOffset: 1 })],
      ['first piece not at 0', whole(0, { chunkOffset: 1, length: 999, data: new ArrayBuffer(999) })],
      ['last piece short of the end', whole(0, { length: 999, first: true, last: true })],
    ];
    for (const [what, task] of bad) {
      const r = await pool.write(task);
      expect(r.failure?.code, what).toBe('ERR_INVALID_CHUNK_NUMBER');
      expect(r.written, what).toBe(0);
    }
    expectUntouched(u);
    expectQuiet(u);
  });

  it('writes nothing into an upload that is not active, and says why by its state', async () => {
    for (const [state, code] of [
      [STATE_CANCELLED, 'ERR_UPLOAD_CANCELLED'],
      [STATE_FINALIZING, 'ERR_UPLOAD_FINALIZING'],
      [STATE_FAILED, 'ERR_UPLOAD_FAILED'],
      [STATE_EXPIRED, 'ERR_UPLOAD_EXPIRED'],
    ] as const) {
      const u = makeUpload(2_000, 1_000, lockMode);
      Atomics.store(u.state.header, H_STATE, state);
      const r = await pool.write(wholeChunkTask(u, 0, 1));
      expect(r.failure?.code).toBe(code);
      expect(r).toMatchObject({ written: 0, flipped: false });
      expectUntouched(u);
      expectQuiet(u);
    }
  });

  it('answers ERR_CHUNK_BUSY while an abandoned writer holds the lock, and writes once it is freed', async () => {
    const u = makeUpload(3_000, 1_000, lockMode);
    const slot = lockSlot(u.state, 1);
    Atomics.store(u.state.locks, slot, 999); // a writer that went away with the lock held
    const busy = await pool.write(wholeChunkTask(u, 1, 5, { lockTimeoutMs: 20 }));
    expect(busy.failure?.code).toBe('ERR_CHUNK_BUSY');
    expectUntouched(u);
    expect(forceRelease(u.state.locks, slot, 999)).toBe(true);
    const ok = await pool.write(wholeChunkTask(u, 1, 5, { lockTimeoutMs: 20 }));
    expect(ok).toMatchObject({ written: 1_000, flipped: true });
    expectQuiet(u);
  });

  it('writes nothing when the upload is cancelled while the task waits for the lock', async () => {
    const u = makeUpload(2_000, 1_000, lockMode);
    const slot = lockSlot(u.state, 0);
    Atomics.store(u.state.locks, slot, 999);
    const pending = pool.write(wholeChunkTask(u, 0, 8, { lockTimeoutMs: 5_000 }));
    // Handshake: notify returns 1 once the worker sleeps in acquire, i.e. it passed the state check made before the
    // lock while the upload was still active. The wake-up is harmless: it finds 999 in the word and sleeps again.
    let sleeping = 0;
    for (let i = 0; i < 400 && sleeping === 0; i++) {
      await new Promise((r) => setTimeout(r, 5));
      sleeping = Atomics.notify(u.state.locks, slot, 1);
    }
    expect(sleeping).toBe(1);
    Atomics.store(u.state.header, H_STATE, STATE_CANCELLED);
    expect(forceRelease(u.state.locks, slot, 999)).toBe(true);
    const r = await pending;
    expect(r.failure?.code).toBe('ERR_UPLOAD_CANCELLED');
    expect(r).toMatchObject({ written: 0, flipped: false, finalize: false });
    expectUntouched(u);
    expectQuiet(u);
  });

  it('counts a task in H_TASKS_IN_FLIGHT from dispatch until it settles', async () => {
    const u = makeUpload(2_000, 1_000, lockMode);
    const slot = lockSlot(u.state, 0);
    Atomics.store(u.state.locks, slot, 999);
    const pending = pool.write(wholeChunkTask(u, 0, 6, { lockTimeoutMs: 30_000 }));
    // Incremented synchronously in write(), before the worker can start.
    expect(Atomics.load(u.state.header, H_TASKS_IN_FLIGHT)).toBe(1);
    expect(pool.inFlight).toBe(1);
    // The task cannot finish while the lock is held, so it is still counted a while later.
    await new Promise((r) => setTimeout(r, 30));
    expect(Atomics.load(u.state.header, H_TASKS_IN_FLIGHT)).toBe(1);
    expect(forceRelease(u.state.locks, slot, 999)).toBe(true);
    expect(await pending).toMatchObject({ written: 1_000, flipped: true });
    expect(holder(u.state.locks, slot)).toBe(0);
    expectQuiet(u);
  });
});

describe('WritePool failures', () => {
  it('reports an I/O error as ERR_STORAGE_FAILED with its errno, and leaves the bit unset', async () => {
    const path = join(dir, 'read-only');
    writeFileSync(path, '');
    const fd = openSync(path, 'r');
    fds.push(fd);
    const state = createSharedState(1, 100, 'chunk');
    const r = await pool.write({
      sab: state.sab, fd, fileSize: 100, chunkSize: 100, chunk: 0, chunkOffset: 0, data: new ArrayBuffer(100), dataOffset: 0,
      length: 100, first: true, last: true, ownerId: 1, lockTimeoutMs: 100,
    });
    expect(r.failure?.code).toBe('ERR_STORAGE_FAILED');
    expect(r.failure?.errno).toBe('EBADF');
    expect(r).toMatchObject({ written: 0, flipped: false, finalize: false, receivedChunks: 0 });
    expect(isChunkSet(state, 0)).toBe(false);
    expect(Atomics.load(state.header, H_FINALIZER)).toBe(0);
    expect(Atomics.load(state.locks, 0)).toBe(0);
    expect(Atomics.load(state.header, H_TASKS_IN_FLIGHT)).toBe(0);
  });

  it('rebuilds what a worker throws (a broken contract) into ERR_INTERNAL with the cause', async () => {
    const u = makeUpload(2_000, 1_000, 'chunk');
    const cases: Array<Partial<WriteTask>> = [
      { chunkSize: 500 }, // does not match the shared state
      { fileSize: 5_000 }, // gives another chunk count
      { ownerId: 0 },
      { fd: -1 },
      { checksum: { algorithm: 'sha256', expected: '00' }, last: false, length: 10 }, // checksum on a partial chunk
    ];
    for (const over of cases) {
      const err: unknown = await pool.write(wholeChunkTask(u, 0, 1, over)).then(
        () => expect.fail(`resolved for ${JSON.stringify(over)}`),
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(UploadError);
      expect((err as UploadError).code).toBe('ERR_INTERNAL');
      expect((err as UploadError).message).toBe('Internal server error');
      expect((err as UploadError).cause).toBeInstanceOf(Error);
    }
    expectUntouched(u);
    expectQuiet(u);
  });

  it('close() waits for a running task, then refuses new ones with ERR_SHUTTING_DOWN', async () => {
    const own = new WritePool({ workers: 1 });
    const u = makeUpload(1_000, 1_000, 'chunk');
    Atomics.store(u.state.locks, 0, 999);
    const running = own.write(wholeChunkTask(u, 0, 2, { lockTimeoutMs: 30_000 }));
    const closed = own.close();
    await expect(own.write(wholeChunkTask(u, 0, 3))).rejects.toMatchObject({ code: 'ERR_SHUTTING_DOWN' });
    let closedYet = false;
    void closed.then(() => (closedYet = true));
    await new Promise((r) => setTimeout(r, 50));
    expect(closedYet).toBe(false); // still waiting for the task
    forceRelease(u.state.locks, 0, 999);
    expect(await running).toMatchObject({ written: 1_000, flipped: true, finalize: true });
    await closed;
    expectFileEquals(u);
    expectQuiet(u);
  });

  it('rejects a full queue with ERR_SERVER_BUSY instead of queueing without bound', async () => {
    const own = new WritePool({ workers: 1, maxQueue: 1, tasksPerWorker: 1 });
    try {
      const u = makeUpload(3_000, 1_000, 'chunk');
      Atomics.store(u.state.locks, 0, 999);
      // The first task blocks its worker on the held lock; the second fills the one queue place (whether the first
      // is already running or still queued for the booting worker, piscina counts that worker's pending capacity).
      const running = own.write(wholeChunkTask(u, 0, 2, { lockTimeoutMs: 30_000 }));
      const queued = own.write(wholeChunkTask(u, 1, 3));
      await expect(own.write(wholeChunkTask(u, 2, 4))).rejects.toMatchObject({ code: 'ERR_SERVER_BUSY' });
      forceRelease(u.state.locks, 0, 999);
      expect((await running).flipped).toBe(true);
      expect((await queued).flipped).toBe(true);
      expect(missingChunks(u.state)).toEqual([2]);
      expectQuiet(u);
    } finally {
      await own.close();
    }
  });
});

describe('WritePool.prefault', () => {
  it('makes every page of the arenas resident in a worker and leaves bytes written meanwhile exactly as written', async () => {
    const slabs = new SlabPool({ slabSize: 64 * 1024, maxBytes: 48 * 1024 * 1024, arenaBytes: 16 * 1024 * 1024 });
    const arenas = slabs.carveAll();
    expect(arenas).toHaveLength(3);
    const want = arenas.map((a) => Buffer.alloc(a.byteLength));
    const pending = pool.prefault(arenas);
    // While the worker walks the pages, the main thread writes into them (as copies of request bytes would, right
    // after a start): stripes of random bytes across every arena, then a pass over whole arenas.
    const fillFrom = (n: number): void => {
      for (let i = 0; i < arenas.length; i++) {
        for (let at = n * 4096; at < arenas[i]!.byteLength; at += 16 * 4096) {
          const piece = randomBytes(Math.min(6000, arenas[i]!.byteLength - at));
          Buffer.from(arenas[i]!).set(piece, at);
          want[i]!.set(piece, at);
        }
      }
    };
    for (let n = 0; n < 16; n++) fillFrom(n);
    expect(await pending).toBe(arenas.reduce((sum, a) => sum + a.byteLength / 4096, 0));
    arenas.forEach((a, i) => expect(Buffer.compare(Buffer.from(a), want[i]!)).toBe(0));
  });

  it('leaves the pages resident: the process holds the arenas\' memory afterwards, not only their mapping', async () => {
    const slabs = new SlabPool({ slabSize: 1024 * 1024, maxBytes: 64 * 1024 * 1024, arenaBytes: 16 * 1024 * 1024 });
    // The mappings the arenas add (found by difference), measured by their own Rss: the process's RSS would also move
    // with whatever the garbage collector frees meanwhile.
    const ranges = (): Map<string, number> => {
      const found = new Map<string, number>();
      let range = '';
      for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
        const head = /^([0-9a-f]+-[0-9a-f]+) /.exec(line);
        if (head) range = head[1]!;
        const rss = /^Rss:\s+(\d+) kB/.exec(line);
        if (rss) found.set(range, Number(rss[1]) * 1024);
      }
      return found;
    };
    const before = ranges();
    const arenas = slabs.carveAll(); // mapped, never touched
    const ours = [...ranges().keys()].filter((r) => !before.has(r));
    const resident = (): number => {
      const now = ranges();
      return ours.reduce((sum, r) => sum + (now.get(r) ?? 0), 0);
    };
    expect(resident()).toBeLessThan(8 * 1024 * 1024);
    expect(await pool.prefault(arenas)).toBe((64 * 1024 * 1024) / 4096);
    expect(resident()).toBeGreaterThanOrEqual(64 * 1024 * 1024);
  });

  it('starts nothing for no arenas or once close() has begun', async () => {
    expect(await pool.prefault([])).toBe(0);
    const own = new WritePool({ workers: 1 });
    const closed = own.close();
    expect(await own.prefault([new SharedArrayBuffer(8192)])).toBe(0);
    await closed;
  });

  it('refuses anything but SharedArrayBuffers as a bug in the caller (ERR_INTERNAL)', async () => {
    await expect(pool.prefault([new ArrayBuffer(8192) as unknown as SharedArrayBuffer])).rejects.toMatchObject({ code: 'ERR_INTERNAL' });
  });
});
