/**
 * Backoff for retried requests and reconnects: exponential with jitter, and never sooner than the server's
 * Retry-After. Jitter matters here because many clients hit by the same 503 would otherwise come back in lockstep.
 */

export interface RetryOptions {
  /** How many times one request (or one WebSocket reconnect run) is retried before the upload fails. Default 6. */
  attempts?: number;
  /** Delay before the first retry; doubles for each further one. Default 250 ms. */
  baseDelayMs?: number;
  /** Upper bound of the computed delay (a longer Retry-After from the server still wins). Default 15 s. */
  maxDelayMs?: number;
}

export interface RetryPolicy {
  readonly attempts: number;
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
}

export function resolveRetry(r: RetryOptions | undefined): RetryPolicy {
  const num = (v: unknown, def: number, name: string): number => {
    if (v === undefined) return def;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new TypeError(`retry.${name} must be a number >= 0`);
    return v;
  };
  return {
    attempts: Math.floor(num(r?.attempts, 6, 'attempts')),
    baseDelayMs: num(r?.baseDelayMs, 250, 'baseDelayMs'),
    maxDelayMs: num(r?.maxDelayMs, 15_000, 'maxDelayMs'),
  };
}

/**
 * The wait before retry number `attempt` (1 = the first retry): "equal jitter", a random point in the upper half of
 * min(max, base * 2^(attempt-1)), so the wait still grows while clients spread out. A Retry-After from the server
 * is a floor: waiting less would only earn another 429/503.
 */
export function backoffDelay(policy: RetryPolicy, attempt: number, retryAfterMs?: number): number {
  const ceiling = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** Math.max(0, attempt - 1));
  const jittered = ceiling / 2 + Math.random() * (ceiling / 2);
  return Math.round(Math.max(jittered, retryAfterMs ?? 0));
}

/** Retry-After in ms: delta-seconds or an HTTP date; undefined when absent or unreadable. */
export function parseRetryAfter(value: string | null, now = Date.now()): number | undefined {
  if (value === null || value.trim() === '') return undefined;
  const v = value.trim();
  if (/^[0-9]+$/.test(v)) return Number(v) * 1000;
  const t = Date.parse(v);
  return Number.isNaN(t) ? undefined : Math.max(0, t - now);
}

/** Resolves after `ms`, or rejects with the signal's reason as soon as it aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
