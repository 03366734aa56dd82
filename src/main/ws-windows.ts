/**
 * Windows of the `updraft.v1` connections: how many chunk frames each may have unanswered.
 *
 * Every frame in flight is memory: uWS buffers a frame whole while it arrives, and the chunk is then copied into the
 * in-flight slabs until its write ends. So the windows of all open connections share one budget of bytes
 * (`budgetBytes`), instead of each connection having its own fixed window (16 connections x 8 x 8 MiB was 1 GiB).
 *
 * - While the budget has room for every connection, each gets an even share: `floor(budget / (n * chunkSize))`
 *   chunks, at most its cap (`wsWindow`, and 64 MiB of chunks). A holder's `chunkSize` is the bytes one slot
 *   stands for: ws-routes.ts counts a connection that sends its chunks as `part` frames at half a chunk (no whole
 *   chunk waits in uWS's buffer), with twice the cap, and calls `reweigh` when that changes.
 * - A new connection starts with a window of 1, doubled each time one of its chunks is answered, up to its share
 *   (slow start). Connections tend to open in bursts: the first of a burst would otherwise be told a whole budget's
 *   window and send it all before it hears of the others.
 * - When there are more connections than chunks fit in the budget, connections take turns: as many as fit have a
 *   window of 1, the others 0 (they wait, first come first served). When a chunk of a connection with a window is
 *   answered and others wait, that connection gives its slot to the one that has waited longest. The new window
 *   (0) goes out before the chunk's answer, so the client reads it before anything that would let it send again.
 * - A connection holding a slot that has sent nothing for `idleMs` while others wait gives its slot up too (a
 *   paused or vanished client cannot keep the others waiting).
 *
 * Raising a window is safe at once; a lowered window applies to the frames the client sends after it reads it, so
 * the sum is exact for conforming clients. The engine still enforces, per connection, the largest window it ever
 * told (ws-routes.ts). Main thread only.
 */

/** One connection as the scheduler sees it. */
export interface WindowHolder {
  /** The upload's chunk size: the bytes one window slot stands for. */
  readonly chunkSize: number;
  /** The most this connection may ever be given (wsWindow, 64 MiB of chunks). At least 1. */
  readonly cap: number;
  /** Chunks sent on this connection and not answered yet. */
  readonly inFlight: number;
  /**
   * The window changed (called with the new value; the holder tells its client). It must not call `remove` for
   * itself before returning (a connection that closes over it ends in a later microtask); the scheduler skips a
   * holder removed meanwhile all the same.
   */
  windowChanged(window: number): void;
}

interface Entry {
  window: number;
  /** The holder's chunkSize and cap when it was added or last reweighed (`#used` is counted with this size). */
  slot: number;
  cap: number;
  /** Slow start: the most this connection may be given yet (1, then doubled per answered chunk, up to its cap). */
  ramp: number;
  /** When the holder last had a chunk in flight or was given its window (for the idle check). */
  lastActive: number;
}

export class WindowScheduler {
  readonly #budget: number;
  readonly #idleMs: number;
  /** Every open connection, in the order it arrived. */
  readonly #entries = new Map<WindowHolder, Entry>();
  /** Connections with window 0, oldest first. */
  readonly #waiting: WindowHolder[] = [];
  /** Sum of window x chunkSize over all connections. */
  #used = 0;
  #sweep: ReturnType<typeof setInterval> | null = null;

  constructor(budgetBytes: number, idleMs = 250) {
    if (!Number.isSafeInteger(budgetBytes) || budgetBytes < 1) throw new RangeError(`budgetBytes must be a positive integer, got ${budgetBytes}`);
    if (!Number.isFinite(idleMs) || idleMs <= 0) throw new RangeError(`idleMs must be > 0, got ${idleMs}`);
    this.#budget = budgetBytes;
    this.#idleMs = idleMs;
  }

  /** True while some open connection waits for a slot (window 0, others hold the budget). */
  get othersWait(): boolean {
    return this.#waiting.some((h) => this.#entries.has(h));
  }

  /** The current window of `h` (0 for a connection that waits, or one not added). */
  windowOf(h: WindowHolder): number {
    return this.#entries.get(h)?.window ?? 0;
  }

  /** Bytes of chunks all windows together allow. */
  get usedBytes(): number {
    return this.#used;
  }

  get waiting(): number {
    return this.#waiting.length;
  }

  /** A connection opened. Its window is set (and `windowChanged` called) before this returns. */
  add(h: WindowHolder): void {
    if (this.#entries.has(h)) return;
    this.#entries.set(h, { window: 0, slot: h.chunkSize, cap: h.cap, ramp: 1, lastActive: performance.now() });
    this.#rebalance(h);
  }

  /** A connection closed: its slots go to the others. */
  remove(h: WindowHolder): void {
    const e = this.#entries.get(h);
    if (!e) return;
    this.#used -= e.window * e.slot;
    this.#entries.delete(h);
    const i = this.#waiting.indexOf(h);
    if (i !== -1) this.#waiting.splice(i, 1);
    this.#rebalance(null);
  }

  /**
   * `h.chunkSize` or `h.cap` changed (its client started or stopped sending chunks as parts): its slots are counted
   * at the new size from now on, and every window is worked out again.
   */
  reweigh(h: WindowHolder): void {
    const e = this.#entries.get(h);
    if (!e || (e.slot === h.chunkSize && e.cap === h.cap)) return;
    this.#used += e.window * (h.chunkSize - e.slot);
    e.slot = h.chunkSize;
    e.cap = h.cap;
    this.#rebalance(null);
  }

  /**
   * A chunk of `h` is about to be answered (ack or chunk error). Call before sending the answer: if others wait,
   * `h` gives up a slot now and its new window reaches the client before the answer does.
   */
  answering(h: WindowHolder): void {
    const e = this.#entries.get(h);
    if (!e) return;
    e.lastActive = performance.now();
    if (this.#waiting.length === 0) {
      if (e.ramp < e.cap) {
        e.ramp = Math.min(e.cap, e.ramp * 2);
        const target = this.#fitting(e, this.#target(e));
        if (target > e.window) this.#set(h, e, target);
      }
      return;
    }
    if (e.window === 0) return;
    this.#set(h, e, e.window - 1);
    if (e.window === 0) this.#wait(h, e);
    this.#grant();
  }

  /** `h` sent a chunk (it is active: the idle check leaves it alone). */
  sent(h: WindowHolder): void {
    const e = this.#entries.get(h);
    if (e) e.lastActive = performance.now();
  }

  /**
   * Recomputes every window after a connection came (`added`) or went (null). With room for all, everyone gets its
   * even share; otherwise windows above 1 drop to 1, a newcomer waits unless a slot is free, and free slots go to
   * the waiting connections in order.
   */
  #rebalance(added: WindowHolder | null): void {
    if (this.#entries.size === 0) return;
    let roomForAll = true;
    for (const e of this.#entries.values()) if (this.#share(e) < 1) roomForAll = false;
    if (roomForAll) {
      this.#waiting.length = 0;
      // Lower first, then raise: the sum never passes the budget in between.
      // A holder's windowChanged must not remove it synchronously; skipping removed ones keeps the sum right anyway.
      const entries = [...this.#entries];
      for (const [h, e] of entries) if (this.#entries.has(h) && this.#target(e) < e.window) this.#set(h, e, this.#target(e));
      for (const [h, e] of entries) {
        if (!this.#entries.has(h)) continue;
        const target = this.#fitting(e, this.#target(e));
        if (target > e.window) this.#set(h, e, target);
      }
      this.#stopSweep();
      return;
    }
    for (const [h, e] of this.#entries) if (e.window > 1) this.#set(h, e, 1);
    // Windows of 1 can still pass the budget (a reweigh made slots larger): the newest give theirs up and wait, until
    // the sum fits or one window is left (one chunk always goes through).
    let open = 0;
    for (const e of this.#entries.values()) if (e.window > 0) open++;
    for (const [h, e] of [...this.#entries].reverse()) {
      if (this.#used <= this.#budget || open <= 1) break;
      if (e.window === 0 || !this.#entries.has(h)) continue;
      this.#set(h, e, 0);
      open--;
      this.#wait(h, e);
    }
    if (added !== null) {
      const e = this.#entries.get(added);
      if (e) this.#wait(added, e);
    }
    this.#grant();
    if (this.#waiting.length > 0) this.#startSweep();
  }

  /** The even share of the budget for a connection among the open ones, capped. 0 when the budget is short. */
  #share(e: Entry): number {
    return Math.min(e.cap, Math.floor(this.#budget / (this.#entries.size * e.slot)));
  }

  /** The window a connection should have while there is room for all: its share, within its slow start. */
  #target(e: Entry): number {
    return Math.min(this.#share(e), e.ramp);
  }

  /**
   * `target`, lowered to what the budget has room for. Even shares fit when every connection has the same chunk
   * size; with different sizes, a connection's share can count on room that a larger-chunk one already holds.
   */
  #fitting(e: Entry, target: number): number {
    if (target <= e.window) return target;
    return Math.min(target, e.window + Math.max(0, Math.floor((this.#budget - this.#used) / e.slot)));
  }

  /** Hands free slots (window 0 -> 1) to waiting connections, oldest first. One chunk always fits an idle budget. */
  #grant(): void {
    while (this.#waiting.length > 0) {
      const h = this.#waiting[0]!;
      const e = this.#entries.get(h);
      if (e === undefined) {
        this.#waiting.shift(); // removed while waiting (see remove): nothing to grant
        continue;
      }
      if (this.#used > 0 && this.#used + e.slot > this.#budget) break;
      this.#waiting.shift();
      e.lastActive = performance.now();
      this.#set(h, e, 1);
    }
    if (this.#waiting.length === 0) this.#stopSweep();
  }

  #set(h: WindowHolder, e: Entry, window: number): void {
    if (window === e.window) return;
    this.#used += (window - e.window) * e.slot;
    e.window = window;
    h.windowChanged(window);
  }

  #startSweep(): void {
    if (this.#sweep !== null) return;
    this.#sweep = setInterval(() => this.#takeIdleSlots(), Math.max(1, Math.floor(this.#idleMs / 2)));
    this.#sweep.unref?.();
  }

  #stopSweep(): void {
    if (this.#sweep === null) return;
    clearInterval(this.#sweep);
    this.#sweep = null;
  }

  /**
   * Queues `h` for a slot: only while it is open, has window 0 and is not queued already (a windowChanged callback
   * that removes another holder runs a rebalance in between, which may have given `h` a slot again).
   */
  #wait(h: WindowHolder, e: Entry): void {
    if (e.window === 0 && this.#entries.has(h) && !this.#waiting.includes(h)) this.#waiting.push(h);
  }

  /** Connections holding a slot with nothing in flight for idleMs give it to the waiting ones. */
  #takeIdleSlots(): void {
    if (this.#waiting.length === 0) return this.#stopSweep();
    const now = performance.now();
    for (const [h, e] of this.#entries) {
      if (this.#waiting.length === 0) break;
      if (e.window === 0 || h.inFlight > 0 || now - e.lastActive < this.#idleMs) continue;
      this.#set(h, e, 0);
      this.#wait(h, e);
      this.#grant();
    }
  }
}
