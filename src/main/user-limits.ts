/**
 * Limits that keep one client from hurting the others (issue 6). Per user: open uploads (checked at init against
 * the registry) and chunk bytes being received at once (reserved when a chunk starts, released when it ends);
 * over a limit the request gets 429 with Retry-After. Global limits answer 503 (open uploads) or pause requests
 * (bytes in flight: the slab pool).
 */
import { UploadError } from '../protocol/errors.js';

export class UserLimits {
  readonly #inFlight = new Map<string, number>();

  constructor(private readonly maxBytesPerUser: number) {}

  /** Reserves `bytes` of in-flight chunk data for `user`, or throws 429. A single chunk is always allowed alone. */
  reserve(user: string, bytes: number): void {
    const now = this.#inFlight.get(user) ?? 0;
    if (now > 0 && now + bytes > this.maxBytesPerUser) {
      throw new UploadError('ERR_RATE_LIMITED', 'Too many chunk bytes in flight for this user; retry when some finish');
    }
    this.#inFlight.set(user, now + bytes);
  }

  release(user: string, bytes: number): void {
    const left = (this.#inFlight.get(user) ?? 0) - bytes;
    if (left > 0) this.#inFlight.set(user, left);
    else this.#inFlight.delete(user);
  }

  inFlight(user: string): number {
    return this.#inFlight.get(user) ?? 0;
  }
}
