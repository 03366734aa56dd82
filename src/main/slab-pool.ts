/**
 * The global budget for request bytes in flight between the network and the write workers.
 *
 * A request body is copied out of uWS's callback-scoped buffers into a slab (STYLE.md: copy before the first
 * await), and the slab is handed to a write task as shared memory: no copy to the worker and no transfer. The pool
 * caps the sum of slabs in use at `maxBytes`; when it is exhausted, requests pause (uWS `res.pause()`) and queue
 * with `onAvailable`, and each released slab goes straight to the oldest waiter, so paused requests resume in the
 * order they paused and a newcomer cannot starve them.
 *
 * Memory is taken lazily and kept: slabs are carved from SharedArrayBuffer arenas only when no released slab is
 * free, and a released slab is reused as is (same SAB, same view object), so a busy server does not churn large
 * allocations. Main thread only; nothing here is shared with workers except the slab bytes themselves.
 */

export interface Slab {
  readonly sab: SharedArrayBuffer;
  /** Byte offset of the slab inside `sab`: the `dataOffset` of a write task. */
  readonly offset: number;
  readonly size: number;
  /** `size` bytes of `sab` starting at `offset`. */
  readonly bytes: Uint8Array;
}

export interface SlabPoolOptions {
  /** Bytes per slab; default 2 MiB. */
  slabSize?: number;
  /** Most bytes in slabs at once; rounded down to whole slabs; default 64 MiB. */
  maxBytes?: number;
  /** Bytes per SharedArrayBuffer that slabs are carved from; rounded down to whole slabs; default 16 MiB. */
  arenaBytes?: number;
}

/** Called with a slab that now belongs to the waiter; it must `release` it like one from `tryAcquire`. */
export type SlabWaiter = (slab: Slab) => void;

const MIB = 1024 * 1024;

export class SlabPool {
  readonly slabSize: number;
  readonly #maxSlabs: number;
  readonly #slabsPerArena: number;
  /** Released slabs, reused last-in first-out (the most recently touched memory is the likeliest to be resident). */
  readonly #free: Slab[] = [];
  readonly #inUse = new Set<Slab>();
  /** Slabs carved so far (free + in use); never more than #maxSlabs. */
  #carved = 0;
  /** The arena being carved and how many of its slabs are handed out. */
  #arena: SharedArrayBuffer | null = null;
  #arenaSlabs = 0;
  #arenaUsed = 0;
  /** FIFO of paused requests. A cancelled waiter is removed at once (aborted requests must not hold a place). */
  readonly #waiters: Array<{ cb: SlabWaiter }> = [];

  constructor(options: SlabPoolOptions = {}) {
    const { slabSize = 2 * MIB, maxBytes = 64 * MIB, arenaBytes = 16 * MIB } = options;
    if (!Number.isSafeInteger(slabSize) || slabSize <= 0) throw new RangeError(`slabSize must be a positive integer, got ${slabSize}`);
    if (!Number.isSafeInteger(maxBytes) || maxBytes < slabSize) {
      throw new RangeError(`maxBytes must be an integer >= slabSize (${slabSize}), got ${maxBytes}`);
    }
    if (!Number.isSafeInteger(arenaBytes) || arenaBytes < slabSize) {
      throw new RangeError(`arenaBytes must be an integer >= slabSize (${slabSize}), got ${arenaBytes}`);
    }
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

  /** Requests waiting for a slab. */
  get waiting(): number {
    return this.#waiters.length;
  }

  /**
   * A slab now, or null when the budget is spent. Also null while requests are queued in `onAvailable`, even if a
   * slab could be carved: they asked first.
   */
  tryAcquire(): Slab | null {
    if (this.#waiters.length > 0) return null;
    return this.#take();
  }

  /**
   * Queues `cb` for the next slab (FIFO). `cb` receives the slab already acquired, so nobody can take it between
   * the wake-up and the acquire. If a slab is available right now (and nobody is queued), `cb` runs in a microtask
   * rather than before `onAvailable` returns. Returns a cancel function for an aborted request: it removes the
   * waiter if it has not been served yet and is a no-op afterwards (a served slab must be released by its owner).
   */
  onAvailable(cb: SlabWaiter): () => void {
    const waiter = { cb };
    this.#waiters.push(waiter);
    if (this.#waiters.length === 1 && this.#canTake()) queueMicrotask(() => this.#serve());
    return () => {
      const i = this.#waiters.indexOf(waiter);
      if (i !== -1) this.#waiters.splice(i, 1);
    };
  }

  /**
   * Gives a slab back. With requests waiting, it goes straight to the oldest one (its callback runs synchronously,
   * inside this call); otherwise it joins the free list. Releasing a slab that is not in use here is a bug (a
   * double release would hand the same memory to two requests) and throws.
   */
  release(slab: Slab): void {
    if (!this.#inUse.delete(slab)) throw new Error('SlabPool.release: slab is not in use (double release or foreign slab)');
    this.#free.push(slab);
    this.#serve();
  }

  #canTake(): boolean {
    return this.#free.length > 0 || this.#carved < this.#maxSlabs;
  }

  #take(): Slab | null {
    let slab = this.#free.pop();
    if (slab === undefined) {
      if (this.#carved >= this.#maxSlabs) return null;
      slab = this.#carve();
    }
    this.#inUse.add(slab);
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
    const slab: Slab = { sab: this.#arena, offset, size: this.slabSize, bytes: new Uint8Array(this.#arena, offset, this.slabSize) };
    this.#arenaUsed++;
    this.#carved++;
    return slab;
  }

  /** Hands slabs to waiters, oldest first, while any can be had. */
  #serve(): void {
    let firstError: unknown = null;
    while (this.#waiters.length > 0) {
      const slab = this.#take();
      if (slab === null) break;
      const { cb } = this.#waiters.shift()!;
      try {
        cb(slab);
      } catch (e) {
        // A throwing waiter must not strand the ones behind it, nor leak the slab it was given.
        if (this.#inUse.delete(slab)) this.#free.push(slab);
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
