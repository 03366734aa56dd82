import { describe, expect, it } from 'vitest';
import { SPILL_BYTES, SPILL_SLOTS, SlabPool, copyIntoSlab, type Slab } from '../../src/main/slab-pool.js';

const KIB = 1024;

/** Lets queued microtasks run (onAvailable serves an immediately available slab in one). */
const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('SlabPool', () => {
  it('defaults to 2 MiB slabs and a 64 MiB budget, allocated lazily', () => {
    const pool = new SlabPool();
    expect(pool.slabSize).toBe(2 * 1024 * KIB);
    expect(pool.capacityBytes).toBe(64 * 1024 * KIB);
    expect(pool.allocatedBytes).toBe(0);
    const slab = pool.tryAcquire()!;
    expect(slab.size).toBe(2 * 1024 * KIB);
    expect(pool.inUseBytes).toBe(slab.size);
    expect(pool.allocatedBytes).toBe(slab.size);
    pool.release(slab);
    expect(pool.inUseBytes).toBe(0);
  });

  it('carves disjoint slabs out of SharedArrayBuffers, up to the budget and no further', () => {
    // 10 slabs of 4 KiB in arenas of 3: arenas of 3, 3, 3 and a last one cut to 1.
    const pool = new SlabPool({ slabSize: 4 * KIB, maxBytes: 10 * 4 * KIB + 100, arenaBytes: 3 * 4 * KIB });
    expect(pool.capacityBytes).toBe(40 * KIB); // rounded down to whole slabs
    const slabs: Slab[] = [];
    for (let s = pool.tryAcquire(); s !== null; s = pool.tryAcquire()) slabs.push(s);
    expect(slabs).toHaveLength(10);
    expect(pool.inUseBytes).toBe(40 * KIB);
    expect(pool.allocatedBytes).toBe(40 * KIB);
    const arenas = new Set(slabs.map((s) => s.sab));
    // Arenas are shared WebAssembly memory (page-aligned, for O_DIRECT), so each is rounded up to whole 64 KiB pages.
    expect([...arenas].map((a) => a.byteLength)).toEqual([12 * KIB, 12 * KIB, 12 * KIB, 4 * KIB].map((n) => Math.ceil(n / (64 * KIB)) * 64 * KIB));
    for (const s of slabs) {
      expect(s.sab).toBeInstanceOf(SharedArrayBuffer);
      expect(s.bytes.buffer).toBe(s.sab);
      expect(s.bytes.byteOffset).toBe(s.offset);
      expect(s.bytes.byteLength).toBe(s.size);
      expect(s.offset + s.size).toBeLessThanOrEqual(s.sab.byteLength);
    }
    // No two slabs share a byte: each writes its index everywhere and reads it back intact.
    slabs.forEach((s, i) => s.bytes.fill(i + 1));
    slabs.forEach((s, i) => expect(s.bytes.every((b) => b === i + 1)).toBe(true));
  });

  it('copyIntoSlab copies exactly the source bytes at the offset and touches nothing around them', () => {
    const pool = new SlabPool({ slabSize: 4 * KIB, maxBytes: 8 * KIB });
    const [a, b] = [pool.tryAcquire()!, pool.tryAcquire()!];
    a.bytes.fill(0xaa);
    b.bytes.fill(0xbb);
    const src = Uint8Array.from({ length: 1000 }, (_, i) => i % 251);
    copyIntoSlab(a, src.subarray(10, 510), 4 * KIB - 500); // ends exactly at the slab's end
    copyIntoSlab(a, src.subarray(0, 3), 7);
    copyIntoSlab(a, new Uint8Array(0), 100); // nothing to copy
    const want = Buffer.alloc(4 * KIB, 0xaa);
    want.set(src.subarray(10, 510), 4 * KIB - 500);
    want.set(src.subarray(0, 3), 7);
    expect(Buffer.compare(a.bytes, want)).toBe(0);
    expect(b.bytes.every((x) => x === 0xbb)).toBe(true); // the neighbour in the same arena is intact
  });

  it('reuses released slabs instead of allocating', () => {
    const pool = new SlabPool({ slabSize: KIB, maxBytes: 4 * KIB, arenaBytes: 2 * KIB });
    const a = pool.tryAcquire()!;
    const b = pool.tryAcquire()!;
    pool.release(a);
    const c = pool.tryAcquire()!;
    expect(c).toBe(a); // the same slab object, same memory
    expect(pool.allocatedBytes).toBe(2 * KIB);
    pool.release(b);
    pool.release(c);
    for (let i = 0; i < 100; i++) pool.release(pool.tryAcquire()!);
    expect(pool.allocatedBytes).toBe(2 * KIB);
  });

  it('throws on a double release or a foreign slab, without corrupting the accounting', () => {
    const pool = new SlabPool({ slabSize: KIB, maxBytes: 2 * KIB });
    const other = new SlabPool({ slabSize: KIB, maxBytes: 2 * KIB });
    const a = pool.tryAcquire()!;
    pool.release(a);
    expect(() => pool.release(a)).toThrow(/not in use/);
    expect(() => pool.release(other.tryAcquire()!)).toThrow(/not in use/);
    // Had the double release been accepted, two acquires would return the same slab.
    const x = pool.tryAcquire()!;
    const y = pool.tryAcquire()!;
    expect(x).not.toBe(y);
    expect(pool.tryAcquire()).toBeNull();
  });

  it('resumes waiters in FIFO order, handing each the released slab directly', () => {
    const pool = new SlabPool({ slabSize: KIB, maxBytes: 2 * KIB });
    const held = [pool.tryAcquire()!, pool.tryAcquire()!];
    expect(pool.tryAcquire()).toBeNull();
    const served: Array<[string, Slab]> = [];
    for (const name of ['a', 'b', 'c']) pool.onAvailable((slab) => served.push([name, slab]));
    expect(pool.waiting).toBe(3);
    pool.release(held[1]!);
    expect(served).toEqual([['a', held[1]]]); // synchronously, inside release
    pool.release(held[0]!);
    expect(served.map(([n]) => n)).toEqual(['a', 'b']);
    expect(pool.waiting).toBe(1);
    expect(pool.inUseBytes).toBe(2 * KIB); // both slabs now belong to a and b
    pool.release(served[0]![1]);
    expect(served.map(([n]) => n)).toEqual(['a', 'b', 'c']);
    expect(pool.waiting).toBe(0);
  });

  it('keeps newcomers from jumping the queue: tryAcquire returns null while anyone waits', () => {
    const pool = new SlabPool({ slabSize: KIB, maxBytes: 1 * KIB });
    const held = pool.tryAcquire()!;
    const served: Slab[] = [];
    pool.onAvailable((s) => served.push(s));
    expect(pool.tryAcquire()).toBeNull();
    pool.release(held);
    expect(served).toEqual([held]);
    expect(pool.tryAcquire()).toBeNull(); // the waiter has it
    pool.release(served[0]!);
    expect(pool.tryAcquire()).toBe(held);
  });

  it('cancels an aborted waiter so it neither holds a place nor receives a slab', () => {
    const pool = new SlabPool({ slabSize: KIB, maxBytes: 1 * KIB });
    const held = pool.tryAcquire()!;
    const served: string[] = [];
    const cancelA = pool.onAvailable(() => served.push('a'));
    pool.onAvailable(() => served.push('b'));
    cancelA();
    cancelA(); // idempotent
    expect(pool.waiting).toBe(1);
    pool.release(held);
    expect(served).toEqual(['b']);
  });

  it('serves a waiter in a microtask when a slab is free at once, never before onAvailable returns', async () => {
    const pool = new SlabPool({ slabSize: KIB, maxBytes: 2 * KIB });
    let got: Slab | null = null;
    pool.onAvailable((s) => (got = s));
    expect(got).toBeNull();
    await tick();
    expect(got).not.toBeNull();
    expect(pool.inUseBytes).toBe(KIB);
    // A waiter cancelled before its microtask runs gets nothing and takes nothing.
    const cancel = pool.onAvailable(() => expect.fail('cancelled waiter was served'));
    cancel();
    await tick();
    expect(pool.inUseBytes).toBe(KIB);
  });

  it('does not strand later waiters when one callback throws, and returns that slab', () => {
    const pool = new SlabPool({ slabSize: KIB, maxBytes: 1 * KIB });
    const held = pool.tryAcquire()!;
    const served: Slab[] = [];
    pool.onAvailable(() => {
      throw new Error('waiter bug');
    });
    pool.onAvailable((s) => served.push(s));
    expect(() => pool.release(held)).toThrow('waiter bug');
    expect(served).toEqual([held]);
    expect(pool.inUseBytes).toBe(KIB);
  });

  it('validates its options', () => {
    expect(() => new SlabPool({ slabSize: 0 })).toThrow(RangeError);
    expect(() => new SlabPool({ slabSize: 1.5 })).toThrow(RangeError);
    expect(() => new SlabPool({ slabSize: 4 * KIB, maxBytes: KIB })).toThrow(RangeError);
    expect(() => new SlabPool({ slabSize: 4 * KIB, maxBytes: 8 * KIB, arenaBytes: KIB })).toThrow(RangeError);
  });

  describe('maxFilling (bodies read at once)', () => {
    it('hands out at most maxFilling unsealed slabs; seal frees a reading place but not the bytes', async () => {
      const pool = new SlabPool({ slabSize: KIB, maxBytes: 8 * KIB, maxFilling: 2 });
      const a = pool.tryAcquire()!;
      const b = pool.tryAcquire()!;
      expect(pool.filling).toBe(2);
      expect(pool.tryAcquire()).toBeNull(); // budget left (6 slabs), but two are being filled
      const served: Slab[] = [];
      pool.onAvailable((s) => served.push(s));
      await tick();
      expect(served).toHaveLength(0);
      pool.seal(a); // a goes to a writer: still in use, no longer filling
      expect(served).toHaveLength(1);
      expect(served[0]).not.toBe(a);
      expect(pool.inUseBytes).toBe(3 * KIB);
      expect(pool.filling).toBe(2);
      // Releasing a slab that is still being filled frees its place too.
      pool.release(b);
      expect(pool.filling).toBe(1);
      expect(() => pool.seal(b)).toThrow(/not in use/);
      expect(pool.tryAcquire()).not.toBeNull();
    });

    it('takes an idle slab back through onIdle while others wait, and never one that is being written into', async () => {
      const pool = new SlabPool({ slabSize: KIB, maxBytes: 8 * KIB, maxFilling: 2, idleYieldMs: 20 });
      const idle: string[] = [];
      const busy = pool.tryAcquire(() => idle.push('busy'))!;
      const stalled = pool.tryAcquire(() => {
        idle.push('stalled');
        pool.release(stalled);
      })!;
      // Nobody waits: an idle holder keeps its slab.
      await new Promise((r) => setTimeout(r, 60));
      expect(idle).toEqual([]);
      const served: Slab[] = [];
      pool.onAvailable((s) => served.push(s));
      const keepBusy = setInterval(() => pool.touch(busy), 2);
      try {
        await new Promise((r) => setTimeout(r, 80));
      } finally {
        clearInterval(keepBusy);
      }
      expect(idle).toEqual(['stalled']); // called once, only for the holder that stopped touching its slab
      expect(served).toEqual([stalled]); // its place went to the waiter
      pool.release(busy);
      pool.release(served[0]!);
      expect(pool.filling).toBe(0);
    });

    it('takes a slab held past maxHoldMs back (\'slow\') while others wait, one per waiter, the longest held first', async () => {
      const pool = new SlabPool({ slabSize: KIB, maxBytes: 8 * KIB, maxFilling: 2, idleYieldMs: 1000, maxHoldMs: 40 });
      const calls: string[] = [];
      const first = pool.tryAcquire((reason) => {
        calls.push(`first:${reason}`);
        pool.release(first);
      })!;
      await new Promise((r) => setTimeout(r, 5));
      const second = pool.tryAcquire((reason) => calls.push(`second:${reason}`))!;
      // Both keep writing (never idle); with nobody waiting, neither is asked to yield however long it holds.
      const keepBusy = setInterval(() => {
        pool.touch(first);
        pool.touch(second);
      }, 2);
      try {
        await new Promise((r) => setTimeout(r, 80));
        expect(calls).toEqual([]);
        const served: Slab[] = [];
        pool.onAvailable((s) => served.push(s));
        await new Promise((r) => setTimeout(r, 80));
        expect(calls).toEqual(['first:slow']); // one waiter: only the longest-held slab is taken back
        expect(served).toEqual([first]);
        pool.release(served[0]!);
      } finally {
        clearInterval(keepBusy);
      }
      pool.release(second);
      expect(pool.filling).toBe(0);
    });

    it('with one waiter, the slow yield goes to the slab held longest (by when it was taken), not the first listed', async () => {
      const pool = new SlabPool({ slabSize: KIB, maxBytes: 8 * KIB, maxFilling: 2, idleYieldMs: 1000, maxHoldMs: 40 });
      const calls: string[] = [];
      const x = pool.tryAcquire()!;
      const y = pool.tryAcquire()!;
      let a: Slab | null = null;
      pool.onAvailable((slab) => (a = slab)); // a waits, so it is listed before b once served
      pool.release(x);
      await new Promise((r) => setTimeout(r, 0));
      expect(a).not.toBeNull();
      pool.release(y);
      const b = pool.tryAcquire((reason) => {
        calls.push(`b:${reason}`);
        pool.release(b); // as a holder does: its place goes to the waiter
      })!;
      await new Promise((r) => setTimeout(r, 20));
      pool.watchIdle(a!, (reason) => calls.push(`a:${reason}`)); // a's hold restarts here: b is now the older one
      const keepBusy = setInterval(() => {
        pool.touch(a!);
        pool.touch(b);
      }, 2);
      try {
        await new Promise((r) => setTimeout(r, 80));
        pool.onAvailable((slab) => pool.release(slab));
        await new Promise((r) => setTimeout(r, 60));
        expect(calls).toEqual(['b:slow']);
      } finally {
        clearInterval(keepBusy);
      }
      pool.release(a!);
      expect(pool.filling).toBe(0);
    });

    it('sealAndTake keeps the holder\'s reading place: a waiter does not get it in between', async () => {
      const pool = new SlabPool({ slabSize: KIB, maxBytes: 3 * KIB, maxFilling: 1 });
      const a = pool.tryAcquire()!;
      const served: Slab[] = [];
      pool.onAvailable((s) => served.push(s));
      await tick();
      const b = pool.sealAndTake(a)!;
      expect(b).not.toBeNull();
      expect(b).not.toBe(a);
      expect(served).toHaveLength(0); // the place went on to b, not to the waiter
      expect(pool.filling).toBe(1);
      // Byte budget spent (a and b with the writers, c being filled): the place is given up and goes to the waiter.
      const c = pool.sealAndTake(b)!;
      expect(pool.sealAndTake(c)).toBeNull();
      expect(served).toHaveLength(0); // no bytes left for the waiter either
      pool.release(a);
      expect(served).toEqual([a]);
      for (const s of [b, c, a]) pool.release(s);
      expect(pool.inUseBytes).toBe(0);
    });

    it('tryAcquireFilled takes bytes of the budget but no reading place', () => {
      const pool = new SlabPool({ slabSize: KIB, maxBytes: 3 * KIB, maxFilling: 1 });
      const reading = pool.tryAcquire()!;
      expect(pool.tryAcquire()).toBeNull(); // the one reading place is taken
      const whole = pool.tryAcquireFilled()!; // a frame at hand still gets a slab
      expect(whole).not.toBeNull();
      expect(pool.filling).toBe(1);
      expect(pool.tryAcquireFilled()).not.toBeNull();
      expect(pool.tryAcquireFilled()).toBeNull(); // the byte budget is spent
      pool.release(whole);
      pool.release(reading);
    });

    it('a waiter without a reading place (filling false) gets a slab when bytes come back, reading places all taken', () => {
      const pool = new SlabPool({ slabSize: KIB, maxBytes: 2 * KIB, maxFilling: 1 });
      const reading = pool.tryAcquire()!;
      const whole = pool.tryAcquireFilled()!; // the byte budget is spent
      const got: Slab[] = [];
      pool.onAvailable((slab) => got.push(slab), false);
      pool.release(whole);
      expect(got).toHaveLength(1); // the reading place is still held, and this waiter needs none
      expect(pool.filling).toBe(1); // and it took none
      expect(pool.tryAcquire()).toBeNull();
      // A waiter that needs a reading place still waits for one, and queues whoever comes after it.
      const later: Slab[] = [];
      pool.onAvailable((slab) => later.push(slab));
      pool.onAvailable((slab) => later.push(slab), false);
      pool.release(got[0]!);
      expect(later).toHaveLength(0);
      pool.seal(reading);
      expect(later).toHaveLength(1);
      pool.release(reading);
      expect(later).toHaveLength(2);
      for (const slab of later) pool.release(slab);
      expect(pool.inUseBytes).toBe(0);
    });

    it('rejects a bad maxFilling or idleYieldMs', () => {
      expect(() => new SlabPool({ maxFilling: 0 })).toThrow(RangeError);
      expect(() => new SlabPool({ maxFilling: 1.5 })).toThrow(RangeError);
      expect(() => new SlabPool({ idleYieldMs: 0 })).toThrow(RangeError);
      expect(() => new SlabPool({ maxHoldMs: 0 })).toThrow(RangeError);
    });
  });
  describe('carveAll (the budget made up front, for prefaulting)', () => {
    it('carves every slab the budget allows and returns each new arena once; they are then taken in carve order', () => {
      // 10 slabs of 4 KiB in arenas of 3: arenas of 3, 3, 3 and a last one cut to 1.
      const pool = new SlabPool({ slabSize: 4 * KIB, maxBytes: 40 * KIB, arenaBytes: 3 * 4 * KIB });
      const arenas = pool.carveAll();
      expect(arenas).toHaveLength(4);
      expect(new Set(arenas).size).toBe(4);
      expect(arenas).not.toContain(pool.spill(Uint8Array.of(1)).buffer); // the spill slots are not the budget's
      expect(pool.allocatedBytes).toBe(pool.capacityBytes);
      expect(pool.inUseBytes).toBe(0);
      const slabs: Slab[] = [];
      for (let s = pool.tryAcquire(); s !== null; s = pool.tryAcquire()) slabs.push(s);
      expect(slabs.map((s) => [arenas.indexOf(s.sab), s.offset / (4 * KIB)])).toEqual([
        [0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2], [2, 0], [2, 1], [2, 2], [3, 0],
      ]);
      expect(pool.allocatedBytes).toBe(40 * KIB); // nothing carved beyond the budget
      expect(pool.carveAll()).toEqual([]);
    });

    it('after slabs were carved lazily: returns the arena being carved and the new ones; released slabs are taken first', () => {
      const pool = new SlabPool({ slabSize: 4 * KIB, maxBytes: 24 * KIB, arenaBytes: 4 * 4 * KIB });
      const a = pool.tryAcquire()!;
      const b = pool.tryAcquire()!;
      pool.release(b);
      const arenas = pool.carveAll();
      expect(arenas).toEqual([a.sab, expect.any(SharedArrayBuffer)]);
      expect(arenas[1]).not.toBe(a.sab);
      expect(pool.allocatedBytes).toBe(24 * KIB);
      expect(pool.tryAcquire()).toBe(b); // the warm, released slab before the new ones
      const next = pool.tryAcquire()!;
      expect([next.sab, next.offset]).toEqual([a.sab, 2 * 4 * KIB]);
      pool.release(a);
      expect(pool.carveAll()).toEqual([]);
    });
  });

  describe('spill copies (bytes read when no slab was free)', () => {
    it('copies the bytes exactly into a slot of one shared arena, and a slot given back is reused', () => {
      const pool = new SlabPool({ slabSize: 4 * KIB, maxBytes: 8 * KIB });
      expect(pool.freeSpillSlots).toBe(SPILL_SLOTS);
      const src = Uint8Array.from({ length: 3000 }, (_, i) => (i * 7) % 256);
      const a = pool.spill(src.subarray(100, 2100));
      expect(Buffer.from(a).equals(Buffer.from(src.subarray(100, 2100)))).toBe(true);
      expect(a.buffer).toBeInstanceOf(SharedArrayBuffer);
      expect(a.byteOffset % SPILL_BYTES).toBe(0);
      src.fill(0); // the copy does not see later changes of the source
      expect(a[0]).toBe((100 * 7) % 256);
      const b = pool.spill(Uint8Array.of(1, 2, 3));
      expect(b.buffer).toBe(a.buffer);
      expect(b.byteOffset).not.toBe(a.byteOffset);
      expect(pool.freeSpillSlots).toBe(SPILL_SLOTS - 2);
      pool.returnSpill(a);
      pool.returnSpill(a.subarray(10)); // the same slot again (a view inside it): freed once
      expect(pool.freeSpillSlots).toBe(SPILL_SLOTS - 1);
      const c = pool.spill(Uint8Array.of(4, 5));
      expect(c.byteOffset).toBe(a.byteOffset);
      expect([...c]).toEqual([4, 5]);
      expect([...b]).toEqual([1, 2, 3]); // a neighbour slot untouched
    });

    it('gives a copy of its own, never freed into the slots, to an empty, an oversized, or a piece finding every slot taken', () => {
      const pool = new SlabPool({ slabSize: 4 * KIB, maxBytes: 8 * KIB });
      const big = pool.spill(new Uint8Array(SPILL_BYTES + 1).fill(9));
      expect(big.length).toBe(SPILL_BYTES + 1);
      expect(big.every((x) => x === 9)).toBe(true);
      expect(big.buffer).not.toBeInstanceOf(SharedArrayBuffer);
      expect(pool.spill(new Uint8Array(0)).buffer).not.toBeInstanceOf(SharedArrayBuffer);
      const copies = Array.from({ length: SPILL_SLOTS + 2 }, (_, i) => pool.spill(Uint8Array.of(i)));
      expect(new Set(copies.slice(0, SPILL_SLOTS).map((c) => c.byteOffset)).size).toBe(SPILL_SLOTS);
      expect(copies.slice(SPILL_SLOTS).map((c) => c.buffer instanceof SharedArrayBuffer)).toEqual([false, false]);
      expect(copies.map((c) => c[0])).toEqual(copies.map((_, i) => i));
      expect(pool.freeSpillSlots).toBe(0);
      pool.returnSpill(big);
      pool.returnSpill(copies.at(-1)!);
      pool.returnSpill(new Uint8Array(SPILL_BYTES)); // foreign
      expect(pool.freeSpillSlots).toBe(0);
      for (const c of copies) pool.returnSpill(c);
      expect(pool.freeSpillSlots).toBe(SPILL_SLOTS);
    });
  });
});
