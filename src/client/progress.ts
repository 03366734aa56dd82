/**
 * Throughput over a sliding window of acknowledged bytes, and the ETA it implies. A window (rather than bytes over
 * the whole run) lets the figure follow a change of network or transport, and decays to 0 while stalled or paused.
 */

export interface UploadProgress {
  guid: string | undefined;
  fileName: string;
  /** Bytes the server has acknowledged (including what it had before a resume). */
  loaded: number;
  total: number;
  /** loaded / total, 0..1 (1 for an empty file). */
  fraction: number;
  /** Acknowledged bytes per second over the last few seconds. */
  bytesPerSecond: number;
  /** Seconds left at the current rate; null when unknown (no rate yet, stalled or paused). */
  etaSeconds: number | null;
  /** The transport carrying chunks now; null before the first one starts and after the end. */
  transport: 'websocket' | 'http' | null;
  bytesByTransport: { websocket: number; http: number };
  state: UploadState;
}

export type UploadState = 'starting' | 'uploading' | 'paused' | 'finalizing' | 'done' | 'failed' | 'cancelled';

const now = (): number => (typeof performance !== 'undefined' ? performance.now() : Date.now());

export class SpeedMeter {
  readonly #windowMs: number;
  /** [time ms, cumulative bytes] samples, oldest first. */
  readonly #samples: Array<[number, number]> = [];
  #bytes = 0;

  constructor(windowMs = 5000) {
    this.#windowMs = windowMs;
  }

  /** Counts `n` more bytes acknowledged now. */
  add(n: number): void {
    this.#bytes += n;
    this.#samples.push([now(), this.#bytes]);
    this.#trim();
  }

  /** Forgets the history (after a pause, so the time paused does not dilute the rate). */
  reset(): void {
    this.#samples.length = 0;
    this.#samples.push([now(), this.#bytes]);
  }

  #trim(): void {
    const cutoff = now() - this.#windowMs;
    // Keep one sample at or before the cutoff so the window spans its full width.
    while (this.#samples.length > 2 && this.#samples[1]![0] <= cutoff) this.#samples.shift();
  }

  /** Bytes per second over the window, measured up to now (so a stall pulls it towards 0). */
  rate(): number {
    this.#trim();
    if (this.#samples.length < 2) return 0;
    const [t0, b0] = this.#samples[0]!;
    const span = Math.max(now() - t0, 1);
    // Under ~200 ms the figure is mostly noise (one chunk's ack); wait for a little history.
    if (span < 200) return 0;
    return ((this.#bytes - b0) * 1000) / span;
  }
}

export function etaSeconds(remaining: number, bytesPerSecond: number): number | null {
  if (remaining <= 0) return 0;
  if (bytesPerSecond <= 0) return null;
  return remaining / bytesPerSecond;
}

/** Bytes for people: "512 B", "1.5 MiB", "120 GiB" (three significant digits at most). */
export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v >= 100 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}
