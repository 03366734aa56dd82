/**
 * A table of per-slot locks in shared memory (durability.md invariant 3: two writers of one chunk never interleave).
 *
 * Each slot is one Int32 word of the upload's SharedArrayBuffer (shared-layout.ts `locks`): 0 = free, otherwise the
 * id (> 0) of the writer that holds it. Storing the owner rather than a bare 1 lets `release` catch a writer that
 * frees a lock it does not hold (a bug), and lets the main thread free exactly the lock of an abandoned writer with
 * `forceRelease` without ever touching a lock somebody else has taken since.
 *
 * Every operation on a lock word is an Atomics read-modify-write or wait/notify, all of which are sequentially
 * consistent in JavaScript. That is what makes this a lock and not only a flag:
 *   - acquire's successful compareExchange synchronizes with the compareExchange of the release that freed the word,
 *     so everything the previous holder wrote (bitmap bits, counters; and its fs.writeSync had already returned)
 *     is visible to the new holder before it reads the bitmap;
 *   - release's compareExchange orders every store of the critical section before the word becomes 0.
 *
 * Only workers call `acquire` with contention (it may block in Atomics.wait); the main thread uses `forceRelease`,
 * which never blocks (STYLE.md "Only workers call Atomics.wait").
 */

/** Largest owner id: lock words are Int32 and 0 means free. */
export const MAX_OWNER_ID = 0x7fff_ffff;

function checkOwner(ownerId: number): void {
  if (!Number.isInteger(ownerId) || ownerId <= 0 || ownerId > MAX_OWNER_ID) {
    throw new RangeError(`lock ownerId must be an integer in [1, ${MAX_OWNER_ID}], got ${ownerId}`);
  }
}

function checkSlot(locks: Int32Array, slot: number): void {
  if (!Number.isInteger(slot) || slot < 0 || slot >= locks.length) {
    throw new RangeError(`lock slot ${slot} is outside the table of ${locks.length}`);
  }
}

/**
 * Takes the lock of `slot` for `ownerId`, waiting up to `timeoutMs` (0 = try once). Returns false on timeout.
 *
 * The lock is not re-entrant: an owner that already holds the slot waits for itself and times out. It is not fair
 * either; a writer that arrives while the lock is free can take it ahead of a sleeping waiter. Neither matters here:
 * a task holds a lock for one piece of one chunk, and a waiter that loses keeps waiting until its deadline.
 *
 * Blocks the calling thread: call it from worker threads only.
 */
export function acquire(locks: Int32Array, slot: number, ownerId: number, timeoutMs: number): boolean {
  checkSlot(locks, slot);
  checkOwner(ownerId);
  if (!(timeoutMs >= 0)) throw new RangeError(`lock timeoutMs must be >= 0, got ${timeoutMs}`);
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    // compareExchange (seq-cst RMW): 0 -> ownerId succeeds for exactly one contender, and it acquires everything the
    // last releaser wrote before its own compareExchange freed the word.
    const seen = Atomics.compareExchange(locks, slot, 0, ownerId);
    if (seen === 0) return true;
    const remaining = deadline - performance.now();
    if (remaining <= 0) return false;
    // Atomics.wait re-reads the word atomically before sleeping and sleeps only while it still holds `seen`, so a
    // release that lands between our compareExchange and this call returns 'not-equal' at once instead of being
    // lost. Every wake-up (or 'not-equal', or a timeout with time left due to clock drift) goes back to
    // compareExchange first: a woken waiter either takes the lock or finds a new holder, whose own release will
    // notify again, so one notify per release never strands a sleeper while the lock is free.
    Atomics.wait(locks, slot, seen, remaining);
  }
}

/**
 * Frees the lock of `slot` held by `ownerId` and wakes one waiter. Throws when `ownerId` does not hold it: that is a
 * bug in the caller (double release, or a lock freed by someone else), never an outcome of client input.
 */
export function release(locks: Int32Array, slot: number, ownerId: number): void {
  checkSlot(locks, slot);
  checkOwner(ownerId);
  // compareExchange (seq-cst RMW) rather than a store: it frees the word only if we hold it, and it publishes
  // every write of the critical section to the next acquirer (see the module comment).
  const seen = Atomics.compareExchange(locks, slot, ownerId, 0);
  if (seen !== ownerId) {
    throw new Error(`lock slot ${slot} released by owner ${ownerId} but held by ${seen === 0 ? 'nobody' : seen}`);
  }
  // notify after the word is 0: a waiter woken here re-runs compareExchange and sees the free word. One waiter is
  // enough because every later release notifies again (see acquire).
  Atomics.notify(locks, slot, 1);
}

/**
 * Main-thread escape hatch for an abandoned writer (its task was killed with the lock held, or its request died):
 * frees `slot` only if `ownerId` still holds it, wakes one waiter, and reports whether it freed anything. Never
 * blocks and never throws for a lock held by someone else (it simply returns false).
 */
export function forceRelease(locks: Int32Array, slot: number, ownerId: number): boolean {
  checkSlot(locks, slot);
  checkOwner(ownerId);
  // compareExchange (seq-cst RMW), non-blocking: if another writer took the slot since, its id is in the word and
  // we leave it alone.
  if (Atomics.compareExchange(locks, slot, ownerId, 0) !== ownerId) return false;
  // notify (never wait) from the main thread: wakes one worker sleeping in acquire so it need not sit out its
  // timeout.
  Atomics.notify(locks, slot, 1);
  return true;
}

/** The current holder of `slot` (0 = free), for diagnostics and tests; it may change right after the read. */
export function holder(locks: Int32Array, slot: number): number {
  checkSlot(locks, slot);
  // Atomics.load: seq-cst read, so it never sees a torn or stale-cached word.
  return Atomics.load(locks, slot);
}
