/**
 * The global budget for request bytes in flight between the network and the write workers.
 *
 * A request body is copied out of uWS's callback-scoped buffers into a slab (STYLE.md: copy before the first
 * await), and the slab is handed to a write task as shared memory: no copy to the worker and no transfer. The pool
 * caps the sum of slabs in use at `maxBytes`; when it is exhausted, requests pause (uWS `res.pause()`) and queue
 * with `onAvailable`, and each released slab goes straight to the oldest waiter, so paused requests resume in the
 * order they paused and a newcomer cannot starve them.
 *
 * Memory is kept: slabs are carved from SharedArrayBuffer arenas when no released slab is free (or all at once by
 * `carveAll`, for the engine's `prefault`), and a released slab is reused as is (same SAB, same view object), so a
 * busy server does not churn large allocations. Main thread only; nothing here is shared with workers except the slab bytes themselves.
 */

export interface Slab {
  readonly sab: SharedArrayBuffer;
  /** Byte offset of the slab inside `sab`: the `dataOffset` of a write task. */
  readonly offset: number;
  readonly size: number;
  /** `size` bytes of `sab` starting at `offset`. Copy into it with `copyIntoSlab`. */
  readonly bytes: Buffer;
}

/**
 * Copies `src` into `slab` at byte `at` (the caller checks that it fits). `Buffer#fill` with a value exactly as long
 * as the range is one native memcpy. The obvious `slab.bytes.set(src, at)` is not: V8 copies into a
 * SharedArrayBuffer with `relaxed_memmove` (word by word, so that racing threads see no torn words), which perf
 * found in a quarter of the server's samples during 16 uploads at once; the memcpy costs about 0.06 s less
 * main-thread CPU per GiB (.probe measurements, 2026-12-07).
 */
export function copyIntoSlab(slab: Slab, src: Uint8Array, at: number): void {
  if (src.length > 0) slab.bytes.fill(src, at, at + src.length);
}

export interface SlabPoolOptions {
  /** Bytes per slab; default 2 MiB. */
  slabSize?: number;
  /** Most bytes in slabs at once; rounded down to whole slabs; default 64 MiB. */
  maxBytes?: number;
  /** Bytes per SharedArrayBuffer that slabs are carved from; rounded down to whole slabs; default 16 MiB. */
  arenaBytes?: number;
  /**
   * Most slabs being filled at once (taken, not yet `seal`ed); default: no limit besides `maxBytes`. Every request
   * reading a body holds one slab while it fills it, so this is also the number of requests reading at once: the
   * others are paused. It bounds the bytes the main thread reads in one turn of the event loop (uWS reads up to
   * 512 KiB per ready socket per turn), and keeps slabs for the writers when many requests arrive at once.
   */
  maxFilling?: number;
  /**
   * A slab being filled whose holder has not `touch`ed it for this long (ms), while others wait for a slab, is taken
   * back through the holder's `onIdle` (see `tryAcquire`): a client that stops sending in the middle of a body
   * must not keep a reading place from the ones that send. Default 250 ms.
   */
  idleYieldMs?: number;
  /**
   * A slab being filled for longer than this (ms) since its holder took it, while others wait, is taken back the
   * same way (`onIdle('slow')`), even though bytes still arrive: a body too slow to fill a slab in this time (under
   * slabSize per maxHoldMs: 2 MiB/s with the defaults) takes turns with the waiting ones instead of keeping its
   * place, so a few slow or trickling clients cannot hold every reading place. Default 1000 ms.
   */
  maxHoldMs?: number;
}

/** Why a holder's slab is taken back: it sent nothing for idleYieldMs, or it held the slab for maxHoldMs. */
export type YieldReason = 'idle' | 'slow';
export type OnIdle = (reason: YieldReason) => void;

/** Called with a slab that now belongs to the waiter; it must `release` it like one from `tryAcquire`. */
export type SlabWaiter = (slab: Slab) => void;

const MIB = 1024 * 1024;
/** Size of a spill slot: uWS reads at most 512 KiB from a socket at once. */
export const SPILL_BYTES = 512 * 1024;
/** Spill slots (32 MiB: one for each paused request of 16 uploads sending 4 PUTs each); more spills get own buffers. */
export const SPILL_SLOTS = 64;

export class SlabPool {
  readonly slabSize: number;
  readonly #maxSlabs: number;
  readonly #slabsPerArena: number;
  /** Released slabs, reused last-in first-out (the most recently touched memory is the likeliest to be resident). */
  readonly #free: Slab[] = [];
  readonly #inUse = new Set<Slab>();
  /** Slabs taken and not yet sealed (a subset of #inUse), with when their holder last wrote into them. */
  readonly #filling = new Map<Slab, { since: number; lastUse: number; onIdle: OnIdle | null }>();
  readonly #maxFilling: number;
  readonly #idleYieldMs: number;
  readonly #maxHoldMs: number;
  #sweep: ReturnType<typeof setInterval> | null = null;
  /** Slabs carved so far (free + in use); never more than #maxSlabs. */
  #carved = 0;
  /** The arena being carved and how many of its slabs are handed out. */
  #arena: SharedArrayBuffer | null = null;
  #arenaSlabs = 0;
  #arenaUsed = 0;
  /** FIFO of paused requests. A cancelled waiter is removed at once (aborted requests must not hold a place). */
  readonly #waiters: Array<{ cb: SlabWaiter; filling: boolean }> = [];
  /** The spill slots' arena (made at the first spill) and the slots free in it. */
  #spillArena: SharedArrayBuffer | null = null;
  readonly #freeSpillSlots: number[] = [];
  readonly #spillSlotFree = new Uint8Array(SPILL_SLOTS);

  constructor(options: SlabPoolOptions = {}) {
    const { slabSize = 2 * MIB, maxBytes = 64 * MIB, arenaBytes = 16 * MIB, maxFilling = Number.POSITIVE_INFINITY, idleYieldMs = 250, maxHoldMs = 1000 } = options;
    if (!Number.isSafeInteger(slabSize) || slabSize <= 0) throw new RangeError(`slabSize must be a positive integer, got ${slabSize}`);
    if (!Number.isSafeInteger(maxBytes) || maxBytes < slabSize) {
      throw new RangeError(`maxBytes must be an integer >= slabSize (${slabSize}), got ${maxBytes}`);
    }
    if (!Number.isSafeInteger(arenaBytes) || arenaBytes < slabSize) {
      throw new RangeError(`arenaBytes must be an integer >= slabSize (${slabSize}), got ${arenaBytes}`);
    }
    if (!(maxFilling === Number.POSITIVE_INFINITY || (Number.isSafeInteger(maxFilling) && maxFilling >= 1))) {
      throw new RangeError(`maxFilling must be an integer >= 1, got ${maxFilling}`);
    }
    if (!Number.isFinite(idleYieldMs) || idleYieldMs <= 0) throw new RangeError(`idleYieldMs must be > 0, got ${idleYieldMs}`);
    if (!Number.isFinite(maxHoldMs) || maxHoldMs <= 0) throw new RangeError(`maxHoldMs must be > 0, got ${maxHoldMs}`);
    this.#maxFilling = maxFilling;
    this.#idleYieldMs = idleYieldMs;
    this.#maxHoldMs = maxHoldMs;
    this.slabSize = slabSize;
    this.#maxSlabs = Math.floor(maxBytes / slabSize);
    this.#slabsPerArena = Math.floor(arenaBytes / slabSize);
  }

  /** Bytes the pool may hand out at most (maxBytes rounded down to whole slabs). */
  get capacityBytes(): number {
    return this.#maxSlabs * this.slabSize;
  }

  /** Bytes in slabs currently held by callers. */
  get inUseBytes(): number {
    return this.#inUse.size * this.slabSize;
  }

  /** Bytes of slabs created so far (in use or free); grows lazily up to `capacityBytes` and never shrinks. */
  get allocatedBytes(): number {
    return this.#carved * this.slabSize;
  }

  /** Slabs taken and not yet sealed. */
  get filling(): number {
    return this.#filling.size;
  }

  /** Requests waiting for a slab. */
  get waiting(): number {
    return this.#waiters.length;
  }

  /**
   * A slab now, or null when the budget (or `maxFilling`) is spent. Also null while requests are queued in
   * `onAvailable`, even if a slab could be carved: they asked first. `onIdle`, when given, is called (once) if the
   * slab sits untouched for `idleYieldMs` while others wait: the holder must then `seal` or `release` it at once.
   */
  tryAcquire(onIdle?: OnIdle): Slab | null {
    if (this.#waiters.length > 0) return null;
    const slab = this.#take();
    if (slab && onIdle) this.#filling.get(slab)!.onIdle = onIdle;
    return slab;
  }

  /**
   * A slab for bytes that are all at hand (a whole WebSocket frame): it is filled at once and goes straight to a
   * writer, so it takes no reading place (`maxFilling`), only bytes of the budget. Null when the budget is spent or
   * requests are queued (they asked first).
   */
  tryAcquireFilled(): Slab | null {
    if (this.#waiters.length > 0) return null;
    return this.#take(false);
  }

  /** The holder wrote into a slab it is filling (it is not idle). */
  touch(slab: Slab): void {
    const f = this.#filling.get(slab);
    if (f) f.lastUse = performance.now();
  }

  /** Sets the idle callback of a slab being filled (for a slab that came through `onAvailable`). */
  watchIdle(slab: Slab, onIdle: OnIdle): void {
    const f = this.#filling.get(slab);
    if (f) {
      f.onIdle = onIdle;
      f.lastUse = f.since = performance.now();
    }
  }

  /**
   * Queues `cb` for the next slab (FIFO). `cb` receives the slab already acquired, so nobody can take it between
   * the wake-up and the acquire. If a slab is available right now (and nobody is queued), `cb` runs in a microtask
   * rather than before `onAvailable` returns. Returns a cancel function for an aborted request: it removes the
   * waiter if it has not been served yet and is a no-op afterwards (a served slab must be released by its owner).
   * `filling` false: the slab comes with no reading place (as `tryAcquireFilled`), for bytes of a transport that
   * cannot pause; it still waits behind the requests queued before it.
   */
  onAvailable(cb: SlabWaiter, filling = true): () => void {
    const waiter = { cb, filling };
    this.#waiters.push(waiter);
    this.#startSweep();
    if (this.#waiters.length === 1 && this.#canTake(filling)) queueMicrotask(() => this.#serve());
    return () => {
      const i = this.#waiters.indexOf(waiter);
      if (i !== -1) this.#waiters.splice(i, 1);
    };
  }

  /**
   * The slab is filled and handed to a writer: it stays in use (its bytes are not reused until `release`) but no
   * longer counts against `maxFilling`, so a waiting request may start filling another one.
   */
  seal(slab: Slab): void {
    if (!this.#inUse.has(slab)) throw new Error('SlabPool.seal: slab is not in use');
    if (this.#filling.delete(slab)) this.#serve();
  }

  /**
   * `full` is filled and goes to a writer (as `seal`), and its holder goes on filling a new slab without giving up
   * its reading place: the new slab is taken before the place is freed, so no waiter takes it in between. Returns
   * null (and the holder has no reading place any more) when the byte budget is spent.
   */
  sealAndTake(full: Slab, onIdle?: OnIdle): Slab | null {
    if (!this.#inUse.has(full)) throw new Error('SlabPool.sealAndTake: slab is not in use');
    const next = this.#freeOrCarved();
    this.#filling.delete(full);
    if (next === undefined) {
      this.#serve();
      return null;
    }
    this.#inUse.add(next);
    const now = performance.now();
    this.#filling.set(next, { since: now, lastUse: now, onIdle: onIdle ?? null });
    return next;
  }

  /**
   * Gives a slab back. With requests waiting, it goes straight to the oldest one (its callback runs synchronously,
   * inside this call); otherwise it joins the free list. Releasing a slab that is not in use here is a bug (a
   * double release would hand the same memory to two requests) and throws.
   */
  release(slab: Slab): void {
    if (!this.#inUse.delete(slab)) throw new Error('SlabPool.release: slab is not in use (double release or foreign slab)');
    this.#filling.delete(slab);
    this.#free.push(slab);
    this.#serve();
  }

  /**
   * Carves every slab the budget still allows now, instead of as requests need them, and returns the arenas made
   * for them (for WritePool.prefault). The new slabs join the free list so that they are taken in the order they
   * were carved. Returns [] when everything is carved already. (The spill arena is not made here: making its 32 MiB
   * resident too put the peak RSS of 16 WebSocket uploads at once over 300 MiB; its slots stay resident once used.)
   */
  carveAll(): SharedArrayBuffer[] {
    const arenas: SharedArrayBuffer[] = [];
    const carved: Slab[] = [];
    while (this.#carved < this.#maxSlabs) {
      const slab = this.#carve();
      if (arenas.at(-1) !== slab.sab) arenas.push(slab.sab);
      carved.push(slab);
    }
    // #free is popped from its end: the first carved slab goes last, and slabs already free are taken before these.
    this.#free.unshift(...carved.reverse());
    return arenas;
  }

  /**
   * A copy of `bytes` outside the budget: the bytes a request had already read when it found no slab (about one
   * network read) wait in it until a slab comes. A copy that fits in SPILL_BYTES goes into a free slot of the spill
   * arena (SPILL_SLOTS of them, made at the first spill and kept), so that, once a slot has been used, the main
   * thread does not write fresh memory on every such pause (a page fault per 4 KiB page: on a VM that made these
   * copies run at 0.4 GB/s instead of 20). A larger one, or one finding every slot taken, gets a buffer of its own.
   * Pass the copy to `returnSpill` once nothing reads it any more: its bytes were copied on, or the write task given
   * them settled.
   */
  spill(bytes: Uint8Array): Uint8Array {
    if (bytes.length === 0 || bytes.length > SPILL_BYTES) return new Uint8Array(bytes);
    const arena = this.#spillArena ?? this.#makeSpillArena();
    const slot = this.#freeSpillSlots.pop();
    if (slot === undefined) return new Uint8Array(bytes);
    this.#spillSlotFree[slot] = 0;
    const copy = Buffer.from(arena, slot * SPILL_BYTES, bytes.length);
    copy.fill(bytes); // one memcpy into a SharedArrayBuffer, as copyIntoSlab
    return copy;
  }

  /**
   * Frees the spill slot under a copy made by `spill`. Anything else is ignored: a copy of its own, a slot already
   * free (given back twice).
   */
  returnSpill(copy: Uint8Array): void {
    if (copy.buffer !== this.#spillArena) return;
    const slot = Math.floor(copy.byteOffset / SPILL_BYTES);
    if (this.#spillSlotFree[slot] === 1) return;
    this.#spillSlotFree[slot] = 1;
    this.#freeSpillSlots.push(slot);
  }

  /** Spill slots free (all of them before the first spill). */
  get freeSpillSlots(): number {
    return this.#spillArena === null ? SPILL_SLOTS : this.#freeSpillSlots.length;
  }

  #makeSpillArena(): SharedArrayBuffer {
    this.#spillArena = alignedSharedBuffer(SPILL_SLOTS * SPILL_BYTES);
    // Popped from the end: slot 0 first.
    for (let slot = SPILL_SLOTS - 1; slot >= 0; slot--) this.#freeSpillSlots.push(slot);
    this.#spillSlotFree.fill(1);
    return this.#spillArena;
  }

  #canTake(filling: boolean): boolean {
    return (this.#free.length > 0 || this.#carved < this.#maxSlabs) && (!filling || this.#filling.size < this.#maxFilling);
  }

  /** A released slab, or a new one while the byte budget allows; not yet marked in use. */
  #freeOrCarved(): Slab | undefined {
    return this.#free.pop() ?? (this.#carved < this.#maxSlabs ? this.#carve() : undefined);
  }

  /** A slab within the byte budget; `filling`: also a reading place (within maxFilling). */
  #take(filling = true): Slab | null {
    if (filling && this.#filling.size >= this.#maxFilling) return null;
    const slab = this.#freeOrCarved();
    if (slab === undefined) return null;
    this.#inUse.add(slab);
    if (filling) {
      const now = performance.now();
      this.#filling.set(slab, { since: now, lastUse: now, onIdle: null });
    }
    return slab;
  }

  #carve(): Slab {
    if (this.#arena === null || this.#arenaUsed === this.#arenaSlabs) {
      // The last arena is cut to what the budget still allows, so allocated memory never exceeds capacityBytes.
      this.#arenaSlabs = Math.min(this.#slabsPerArena, this.#maxSlabs - this.#carved);
      this.#arena = alignedSharedBuffer(this.#arenaSlabs * this.slabSize);
      this.#arenaUsed = 0;
    }
    const offset = this.#arenaUsed * this.slabSize;
    const slab: Slab = { sab: this.#arena, offset, size: this.slabSize, bytes: Buffer.from(this.#arena, offset, this.slabSize) };
    this.#arenaUsed++;
    this.#carved++;
    return slab;
  }

  /**
   * While requests wait, checks every idleYieldMs / 2 for slabs left idle by their holders (all of them are taken
   * back), and for slabs held longer than maxHoldMs (the longest held first, one per waiter not served otherwise).
   */
  #startSweep(): void {
    if (this.#sweep !== null || this.#maxFilling === Number.POSITIVE_INFINITY) return;
    this.#sweep = setInterval(() => {
      if (this.#waiters.length === 0) {
        clearInterval(this.#sweep!);
        this.#sweep = null;
        return;
      }
      const now = performance.now();
      const idle: OnIdle[] = [];
      const slow: Array<{ since: number; lastUse: number; onIdle: OnIdle | null }> = [];
      for (const f of this.#filling.values()) {
        if (f.onIdle === null) continue;
        if (now - f.lastUse >= this.#idleYieldMs) {
          idle.push(f.onIdle);
          f.onIdle = null;
        } else if (now - f.since >= this.#maxHoldMs) {
          slow.push(f);
        }
      }
      slow.sort((a, b) => a.since - b.since);
      const turns = slow.slice(0, Math.max(0, this.#waiters.length - idle.length)).map((f) => {
        const cb = f.onIdle!;
        f.onIdle = null;
        return cb;
      });
      for (const cb of idle) cb('idle');
      for (const cb of turns) cb('slow');
    }, Math.max(1, Math.floor(Math.min(this.#idleYieldMs, this.#maxHoldMs) / 2)));
    this.#sweep.unref?.();
  }

  /** Hands slabs to waiters, oldest first, while any can be had. */
  #serve(): void {
    let firstError: unknown = null;
    while (this.#waiters.length > 0) {
      const slab = this.#take(this.#waiters[0]!.filling);
      if (slab === null) break;
      const { cb } = this.#waiters.shift()!;
      try {
        cb(slab);
      } catch (e) {
        // A throwing waiter must not strand the ones behind it, nor leak the slab it was given.
        if (this.#inUse.delete(slab)) {
          this.#filling.delete(slab);
          this.#free.push(slab);
        }
        firstError ??= e;
      }
    }
    if (firstError !== null) throw firstError;
  }
}

/**
 * A SharedArrayBuffer whose memory starts on a page boundary: the memory of a shared WebAssembly.Memory is mapped
 * page-aligned, while `new SharedArrayBuffer` comes from malloc and is not. Aligned slabs let the workers write them
 * with O_DIRECT (buffer address, offset and length must all be aligned). Wasm pages are 64 KiB.
 */
export function alignedSharedBuffer(bytes: number): SharedArrayBuffer {
  const pages = Math.ceil(bytes / 65536);
  return new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true }).buffer as unknown as SharedArrayBuffer;
}
