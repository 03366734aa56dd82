/**
 * writePiece in the test thread, with node:fs's writeSync replaced by one that writes less than it is asked: the
 * kernel may do that near a quota or on a signal, and a real disk in a test never does. A short write must be
 * continued until every byte is on the file, and a write that makes no progress must fail the piece with its bit
 * unset (durability.md invariant 1).
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { B_RECEIVED_BYTES, H_RECEIVED_CHUNKS, createSharedState, isChunkSet, lockSlot } from '../../src/workers/shared-layout.js';
import type { WriteTask } from '../../src/workers/task-types.js';
import { writePiece } from '../../src/workers/write-task.js';

/** How the fake writeSync behaves: 'half' writes half of each request; 'stall' writes half once, then returns 0. */
const disk = vi.hoisted(() => ({ mode: 'half' as 'half' | 'stall', calls: 0 }));

vi.mock('node:fs', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:fs')>();
  const writeSync = vi.fn((fd: number, buffer: Uint8Array, offset: number, length: number, position: number): number => {
    disk.calls++;
    if (disk.mode === 'stall' && disk.calls > 1) return 0;
    return real.writeSync(fd, buffer, offset, Math.max(1, Math.floor(length / 2)), position);
  });
  return { ...real, default: { ...real, writeSync }, writeSync };
});

let dir: string;
const fds: number[] = [];

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'updraft-write-task-'));
});
afterEach(() => {
  disk.calls = 0;
  disk.mode = 'half';
});
afterAll(() => {
  for (const fd of fds.splice(0)) fs.closeSync(fd);
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Chunk 1 of a 3 x 1000-byte upload as one whole-chunk task, in a fresh staging file. */
function setUp(name: string) {
  const file = path.join(dir, name);
  const fd = fs.openSync(file, 'wx');
  fds.push(fd);
  const state = createSharedState(3, 1_000, 'chunk');
  const bytes = randomBytes(1_000);
  const task: WriteTask = {
    sab: state.sab, fd, fileSize: 3_000, chunkSize: 1_000, chunk: 1, chunkOffset: 0, data: new Uint8Array(bytes).buffer,
    dataOffset: 0, length: 1_000, first: true, last: true, ownerId: 1, lockTimeoutMs: 100,
  };
  return { file, state, bytes, task };
}

describe('writePiece and short writes', () => {
  it('continues a short write until every byte of the piece is written, then sets the bit', () => {
    const { file, state, bytes, task } = setUp('half');
    const r = writePiece(task);
    expect(r.failure).toBeUndefined();
    expect(r).toMatchObject({ written: 1_000, flipped: true, duplicate: false });
    // 500, 250, 125, ... bytes per call: ten calls or so, each at the position where the last one stopped.
    expect(disk.calls).toBeGreaterThan(1);
    expect(isChunkSet(state, 1)).toBe(true);
    const onDisk = fs.readFileSync(file);
    expect(onDisk.length).toBe(2_000);
    expect(onDisk.subarray(1_000).equals(bytes)).toBe(true);
    expect(onDisk.subarray(0, 1_000).every((b) => b === 0)).toBe(true);
  });

  it('fails a write that stops making progress with ERR_STORAGE_FAILED and leaves the bit unset', () => {
    const { state, task } = setUp('stall');
    disk.mode = 'stall';
    const r = writePiece(task);
    expect(r.failure?.code).toBe('ERR_STORAGE_FAILED');
    expect(r.failure?.message).toMatch(/no progress after 500 of 1000 bytes/);
    expect(r).toMatchObject({ written: 0, flipped: false, finalize: false });
    expect(disk.calls).toBe(2);
    expect(isChunkSet(state, 1)).toBe(false);
    expect(Atomics.load(state.header, H_RECEIVED_CHUNKS)).toBe(0);
    expect(state.counters[B_RECEIVED_BYTES]).toBe(0n);
    expect(Atomics.load(state.locks, lockSlot(state, 1))).toBe(0);
  });
});
