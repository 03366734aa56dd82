/**
 * The main thread's handle on the write workers: a piscina pool running src/workers/write-task.ts.
 *
 * Besides the engine, this is the only main-thread module that imports piscina. It adds three things to a bare
 * `pool.run`:
 *   - H_TASKS_IN_FLIGHT bookkeeping in the upload's shared state, so the reaper and cancel never remove a staging
 *     file under a running write (durability.md invariant 9);
 *   - zero-copy hand-over of ArrayBuffer bodies (Piscina.move), and none needed for SAB slabs;
 *   - errors as `UploadError`s: what a worker throws is a bug (expected outcomes come back as `failure` data), and
 *     structured clone has already stripped its properties, so it becomes ERR_INTERNAL with the original as `cause`.
 *
 * Nothing here blocks: the main thread only awaits promises.
 */
import { Piscina, move, transferableSymbol, valueSymbol } from 'piscina';
import { UploadError } from '../protocol/errors.js';
import { HEADER_WORDS, H_TASKS_IN_FLIGHT } from '../workers/shared-layout.js';
import type { PrefaultTask, WriteResult, WriteTask } from '../workers/task-types.js';
import { workerSpec } from './worker-spec.js';

export interface WritePoolOptions {
  /** Worker threads, started up front and kept (a write must not wait for a thread to boot). */
  workers: number;
  /**
   * Tasks that may wait for a free worker before `write` rejects with ERR_SERVER_BUSY. Default: unbounded; the
   * engine bounds the bytes in flight with the slab pool instead.
   */
  maxQueue?: number;
  /** Tasks handed to one worker at once (they run one after another in it); default 8. */
  tasksPerWorker?: number;
  /** Errors the pool reports outside any task (e.g. a close that timed out); default: ignored. */
  onError?: (err: Error) => void;
}

// piscina's own messages (dist/errors.js); matched so that back-pressure is not reported as an internal error.
const QUEUE_FULL = new Set(['Task queue is at limit', 'No task queue available and all Workers are busy']);

export class WritePool {
  readonly #pool: Piscina<WriteTask, WriteResult>;
  readonly #inFlight = new Set<Promise<unknown>>();
  #closing: Promise<void> | null = null;

  constructor(options: WritePoolOptions) {
    const { workers, maxQueue = Number.POSITIVE_INFINITY, tasksPerWorker = 8, onError } = options;
    if (!Number.isSafeInteger(tasksPerWorker) || tasksPerWorker < 1) throw new RangeError(`tasksPerWorker must be an integer >= 1, got ${tasksPerWorker}`);
    if (!Number.isSafeInteger(workers) || workers < 1) throw new RangeError(`workers must be an integer >= 1, got ${workers}`);
    if (!(maxQueue === Number.POSITIVE_INFINITY || (Number.isSafeInteger(maxQueue) && maxQueue >= 0))) {
      throw new RangeError(`maxQueue must be a non-negative integer, got ${maxQueue}`);
    }
    const spec = workerSpec('../workers/write-task', import.meta.url);
    this.#pool = new Piscina<WriteTask, WriteResult>({
      filename: spec.filename,
      ...(spec.execArgv === undefined ? {} : { execArgv: spec.execArgv }),
      name: 'write',
      minThreads: workers,
      maxThreads: workers,
      maxQueue,
      // Several tasks (default 8) handed to each worker at once. writePiece is synchronous, so they run one after
      // another, but the next one is already in the worker's port when one ends: with 1, a worker idles until the
      // main thread (busy reading sockets) takes the result and posts the next task, and with 16 uploads at once
      // the queue then waits on the main thread rather than on the disk. No task holds a lock past its own end, so
      // a task waiting for a lock behind another worker's task never waits on a task queued behind itself.
      concurrentTasksPerWorker: tasksPerWorker,
    });
    // piscina emits 'error' for failures outside a task; an EventEmitter without a listener would throw it instead.
    this.#pool.on('error', (err: Error) => onError?.(err));
  }

  /**
   * Runs one write task. Resolves with the worker's result (including expected failures as `result.failure`);
   * rejects only with an `UploadError`: ERR_SERVER_BUSY when the queue is full, ERR_SHUTTING_DOWN after `close()`,
   * ERR_INTERNAL for anything a worker threw.
   *
   * An ArrayBuffer `task.data` is moved to the worker and is detached (byteLength 0) here once this returns; a
   * SharedArrayBuffer slab stays shared, and the caller must leave its bytes alone until the promise settles.
   */
  write(task: WriteTask): Promise<WriteResult> {
    if (this.#closing !== null) return Promise.reject(new UploadError('ERR_SHUTTING_DOWN'));
    if (!(task.sab instanceof SharedArrayBuffer)) {
      return Promise.reject(internal(new TypeError('write task: sab must be a SharedArrayBuffer')));
    }
    const header = new Int32Array(task.sab, 0, HEADER_WORDS);
    // Atomics.add (seq-cst) before dispatch: once the reaper or cancel reads a non-zero count (Atomics.load), it
    // knows a worker may still touch the staging file; the worker cannot start before this add.
    Atomics.add(header, H_TASKS_IN_FLIGHT, 1);
    let run: Promise<WriteResult>;
    if (task.data instanceof ArrayBuffer) {
      // Piscina.move transfers only when the task itself is the movable value (a moved field inside a plain task
      // object is sent as an empty wrapper), so the whole task is wrapped: [transferableSymbol] names the buffer to
      // transfer and [valueSymbol] is what the worker receives.
      const data = task.data;
      const moved = move({
        get [transferableSymbol]() {
          return data;
        },
        get [valueSymbol]() {
          return task;
        },
      });
      run = this.#pool.run(moved as unknown as WriteTask, { name: 'write' });
    } else {
      run = this.#pool.run(task, { name: 'write' });
    }
    const settled = run.then(
      (result) => result,
      (err: unknown) => {
        throw this.#rebuild(err);
      },
    );
    const tracked = settled.finally(() => {
      // Atomics.sub (seq-cst) after the worker has returned: every write it made happened before this decrement.
      Atomics.sub(header, H_TASKS_IN_FLIGHT, 1);
      this.#inFlight.delete(tracked);
    });
    this.#inFlight.add(tracked);
    return tracked;
  }

  /**
   * Makes the arenas' pages resident in one worker (write-task.ts `prefault`), leaving their bytes as they are.
   * Resolves with the pages touched, or 0 once `close()` has begun (nothing is started then). One task for all of
   * them, so the other workers stay free for writes that arrive meanwhile.
   */
  prefault(arenas: SharedArrayBuffer[]): Promise<number> {
    if (this.#closing !== null || arenas.length === 0) return Promise.resolve(0);
    const task: PrefaultTask = { arenas };
    const run = (this.#pool as unknown as Piscina<PrefaultTask, number>).run(task, { name: 'prefault' });
    const settled = run.catch((err: unknown) => {
      throw this.#rebuild(err);
    });
    const tracked = settled.finally(() => this.#inFlight.delete(tracked));
    this.#inFlight.add(tracked);
    return tracked;
  }

  /** Tasks waiting for a free worker. */
  get queueSize(): number {
    return this.#pool.queueSize;
  }

  /** Fraction (0..1) of the pool's thread time spent running tasks since it started (piscina's estimate). */
  get utilization(): number {
    return this.#pool.utilization;
  }

  /** Tasks dispatched by this pool that have not settled yet (queued or running). */
  get inFlight(): number {
    return this.#inFlight.size;
  }

  /** Tasks completed (fulfilled or rejected) since the pool started. */
  get completed(): number {
    return this.#pool.completed;
  }

  get threadCount(): number {
    return this.#pool.threads.length;
  }

  /**
   * Refuses new tasks (ERR_SHUTTING_DOWN), waits until every task already accepted has settled (running and queued
   * ones: each is bounded by its lock timeout and its I/O), then stops the workers. Idempotent.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await Promise.allSettled([...this.#inFlight]);
      await this.#pool.close();
    })();
    return this.#closing;
  }

  #rebuild(err: unknown): UploadError {
    if (err instanceof UploadError) return err;
    const message = err instanceof Error ? err.message : '';
    if (QUEUE_FULL.has(message)) return withCause(new UploadError('ERR_SERVER_BUSY'), err);
    // Tasks cut short by close() (only possible if piscina's close timeout fired) are shutdown, not bugs.
    if (this.#closing !== null) return withCause(new UploadError('ERR_SHUTTING_DOWN'), err);
    return internal(err);
  }
}

function internal(cause: unknown): UploadError {
  // The catalogue's message, never the worker's: it may name server paths. The original stays in `cause` for the
  // one log line respond.ts writes.
  return withCause(new UploadError('ERR_INTERNAL'), cause);
}

function withCause(err: UploadError, cause: unknown): UploadError {
  err.cause = cause;
  return err;
}
