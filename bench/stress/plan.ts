/**
 * The run's configuration and the plan of every upload, all derived from the seed (prng.ts).
 */
import { Prng } from './prng.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;

export type Transport = 'put' | 'ws';

export interface StressConfig {
  seed: number;
  /** Uploads to run (each by one simulated client). */
  uploads: number;
  /** Hard cap on the client phase; uploads still running then count as unfinished. */
  durationMs: number;
  /** Uploads running at once. */
  concurrency: number;
  chunkSize: number;
  /** Largest file size drawn (the plan includes it once when there are enough uploads). */
  maxSize: number;
  transports: Transport[];
  /** Kill the server with SIGKILL at random moments and restart it (self-started server only). */
  crash: boolean;
  /** Most kills in a run (crash mode). */
  maxCrashes: number;
  /** Time between the server being up and the next kill, drawn uniformly (ms). */
  crashEveryMs: [number, number];
  /** Probability scale of per-request faults (0 = none, 1 = default mix). */
  faultScale: number;
  /** Drive a running server instead of starting one. */
  url?: string;
  /** The server's upload root: a fresh temp folder for a self-started server; needed with --url to verify files. */
  dir?: string;
  keepDir: boolean;
  /** Server writer threads (self-started). */
  workers: number;
  requestTimeoutMs: number;
  /** Write the full result as JSON here. */
  jsonPath?: string;
  /** Progress line every few seconds on stderr. */
  progress: boolean;
  prefix: string;
  /**
   * Bearer tokens, one per simulated user (uploads are spread over them). A self-started server gets `--token` for
   * each; with --url, pass the server's own (none: anonymous).
   */
  tokens: string[];
}

export const DEFAULTS: Omit<StressConfig, 'seed'> = {
  uploads: 500,
  durationMs: 10 * 60_000,
  concurrency: 12,
  chunkSize: 1 * MiB,
  maxSize: 64 * MiB,
  transports: ['put', 'ws'],
  crash: false,
  maxCrashes: Number.POSITIVE_INFINITY,
  crashEveryMs: [1500, 6000],
  faultScale: 1,
  keepDir: false,
  workers: 2,
  requestTimeoutMs: 20_000,
  progress: true,
  prefix: '/api/v1/files',
  tokens: [],
};

/** Users of a self-started server: WebSocket connections are capped per user, and users must not see each other. */
export const SELF_TOKENS = ['stress-token-0a', 'stress-token-1b', 'stress-token-2c', 'stress-token-3d'];

export interface UploadPlan {
  index: number;
  size: number;
  chunkSize: number;
  transport: Transport;
  /** Chunk requests (PUT) or window (WebSocket) in flight at once. */
  parallel: number;
  /** Fraction of PUTs sent in the PSWebHost body form (10-byte header) instead of `?chunk=N`. */
  psForm: number;
  /** This upload also sends chunks with different bytes under the same chunk number. */
  alt: boolean;
  /** Cancel when the n-th chunk request starts (concurrently with it). */
  cancelAtSend?: number;
  /** Vanish during the n-th chunk request (drop it mid-body and never come back). */
  vanishAtSend?: number;
  /** Slow sender: every chunk is written in timed pieces. */
  slow: boolean;
  /** WebSocket uploads: the native `updraft.v1` protocol, or PSWebHost's JSON + binary messages. */
  wsProtocol: 'updraft.v1' | 'pswebhost';
}

/**
 * File sizes: the edges first (0, 1, chunkSize-1, chunkSize, chunkSize+1, two-chunk edges, the maximum), then mostly
 * small files, some of a few chunks and a few large ones; shuffled so that edges do not all run first.
 */
export function planSizes(rng: Prng, n: number, chunkSize: number, maxSize: number): number[] {
  const cs = chunkSize;
  const edges = [0, 1, cs - 1, cs, cs + 1, 2 * cs - 1, 2 * cs, 2 * cs + 1, maxSize].filter((s) => s >= 0 && s <= maxSize);
  const sizes: number[] = [];
  for (const e of edges) if (sizes.length < n && !sizes.includes(e)) sizes.push(e);
  while (sizes.length < n) {
    const kind = rng.weighted({ tiny: 30, small: 30, medium: 32, large: 8 });
    const cap = (x: number): number => Math.max(0, Math.min(maxSize, Math.round(x)));
    if (kind === 'tiny') sizes.push(cap(rng.int(0, 4 * KiB)));
    else if (kind === 'small') sizes.push(cap(rng.int(4 * KiB, cs + 256 * KiB)));
    else if (kind === 'medium') sizes.push(cap(rng.int(cs, Math.min(maxSize, 8 * cs))));
    else sizes.push(cap(rng.int(Math.min(maxSize, 8 * cs), maxSize)));
  }
  return rng.shuffle(sizes);
}

export function planUploads(config: StressConfig, available: Transport[]): UploadPlan[] {
  const root = new Prng(config.seed, 'plan');
  const sizes = planSizes(root.split('sizes'), config.uploads, config.chunkSize, config.maxSize);
  return sizes.map((size, index) => {
    const r = root.split(`upload ${index}`);
    const totalChunks = Math.ceil(size / config.chunkSize);
    const transport = available.length > 0 ? r.pick(available) : 'put';
    const f = config.faultScale;
    const plan: UploadPlan = {
      index,
      size,
      chunkSize: config.chunkSize,
      transport,
      parallel: r.int(1, 4),
      psForm: r.chance(0.3) ? r.next() : 0,
      alt: r.chance(0.15 * f),
      slow: r.chance(0.04 * f),
      wsProtocol: 'updraft.v1',
    };
    if (totalChunks > 0 && r.chance(0.06 * f)) plan.cancelAtSend = r.int(0, totalChunks);
    else if (totalChunks > 0 && r.chance(0.04 * f)) plan.vanishAtSend = r.int(0, totalChunks - 1);
    // A quarter of the WebSocket uploads speak PSWebHost's protocol (no cancel message in it: those cancel over HTTP).
    if (transport === 'ws' && r.chance(0.25)) plan.wsProtocol = 'pswebhost';
    return plan;
  });
}
